"""StoreIngest: LogReplay's store tail in a thread of its own."""

import threading
import time

import pytest

from mtopt.replay.ingest import StoreIngest


class ListSource:
    """A store stand-in: ``add`` appends episodes, ``poll`` returns the unread ones."""

    def __init__(self, per_poll: int | None = None) -> None:
        self.items: list[int] = []
        self.read = 0
        self.lock = threading.Lock()
        self.fail: Exception | None = None
        self.per_poll = per_poll  # like EpisodeReader's shards_per_poll, one item a shard
        self.largest_poll = 0

    def add(self, *xs: int) -> None:
        with self.lock:
            self.items.extend(xs)

    def poll(self) -> list[int]:
        if self.fail is not None:
            raise self.fail
        with self.lock:
            end = len(self.items) if self.per_poll is None else self.read + self.per_poll
            out = self.items[self.read : end]
            self.read += len(out)
            self.largest_poll = max(self.largest_poll, len(out))
            return out


def test_ingests_what_arrives_counts_and_keeps_recent() -> None:
    src, got = ListSource(), []

    def take(eps: list[int]) -> int:
        got.extend(eps)
        return sum(1 for e in eps if e % 2 == 0)  # e.g. episodes without steps left out

    src.add(1, 2, 3)
    ing = StoreIngest(src, take, interval_s=0.01, keep_recent=4)
    assert ing.wait_for(1, timeout_s=5)
    src.add(4, 5, 6)
    deadline = time.monotonic() + 5
    while ing.polled < 6 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert got == [1, 2, 3, 4, 5, 6]
    assert ing.polled == 6 and ing.since_mark == 6 and ing.ingested == 3
    assert list(ing.recent()) == [3, 4, 5, 6]
    ing.mark()
    assert ing.since_mark == 0
    ing.close()


def test_close_reads_what_was_written_last() -> None:
    src, got = ListSource(), []
    ing = StoreIngest(src, lambda eps: got.extend(eps) or len(eps), interval_s=30.0)
    assert ing.wait_for(0, timeout_s=1)
    time.sleep(0.05)  # the thread found nothing and sleeps for 30 s
    src.add(7, 8)
    t0 = time.monotonic()
    ing.close()
    assert time.monotonic() - t0 < 10  # close wakes it, it does not wait out the interval
    assert got == [7, 8] and ing.ingested == 2 and not ing.alive


def test_paused_holds_ingestion() -> None:
    src, got = ListSource(), []
    ing = StoreIngest(src, lambda eps: got.extend(eps) or len(eps), interval_s=0.01)
    with ing.paused():
        src.add(1, 2)
        time.sleep(0.2)
        assert got == []  # nothing is filed while the reward model is being switched
    assert ing.wait_for(2, timeout_s=5)
    assert got == [1, 2]
    ing.close()


def test_an_error_in_the_thread_is_raised_to_the_caller() -> None:
    src = ListSource()
    src.fail = ValueError("bad shard schema")
    ing = StoreIngest(src, lambda eps: len(eps), interval_s=0.01)
    deadline = time.monotonic() + 5
    while ing.alive and time.monotonic() < deadline:
        time.sleep(0.01)
    with pytest.raises(RuntimeError, match="store ingestion failed") as info:
        ing.check()
    assert isinstance(info.value.__cause__, ValueError)
    with pytest.raises(RuntimeError):
        ing.close()


def test_a_resume_does_not_count_its_re_read_store_towards_the_next_sd_round() -> None:
    src = ListSource(per_poll=30)
    src.add(*range(100))  # the store as the resumed run finds it: 4 polls of at most 30
    ing = StoreIngest(src, lambda eps: len(eps), interval_s=0.01, since_mark=40, backlog_polls=4)
    assert ing.wait_for(100, timeout_s=5)
    assert ing.caught_up and ing.backlog_read == 100
    assert ing.since_mark == 40  # the saved count, not 40 + 100
    assert src.largest_poll == 30  # read in parts, never the whole store at once
    src.add(100, 101, 102)  # collected after the resume
    assert ing.wait_for(103, timeout_s=5)
    assert ing.since_mark == 43 and ing.polled == 103
    ing.close()


def test_episodes_robots_add_before_the_backlog_is_read_are_counted() -> None:
    """80 old episodes: 3 backlog polls of at most 30. Robots flush 10 episodes before the
    third poll, which reads them with the last 20 old ones: they count (is_new)."""
    src = ListSource(per_poll=30)
    src.add(*range(80), *range(1000, 1010))
    ing = StoreIngest(
        src,
        lambda eps: len(eps),
        interval_s=0.01,
        since_mark=40,
        backlog_polls=3,
        is_new=lambda e: e >= 1000,
    )
    assert ing.wait_for(90, timeout_s=5)
    assert ing.caught_up and ing.backlog_read == 80 and ing.since_mark == 50
    ing.close()


def test_caught_up_only_after_the_backlog_is_read() -> None:
    src, go = ListSource(per_poll=10), threading.Event()

    def take(eps: list[int]) -> int:
        go.wait(5)  # hold the first part until the test has looked
        return len(eps)

    src.add(*range(50))
    ing = StoreIngest(src, take, interval_s=0.01, backlog_polls=5)
    assert not ing.caught_up  # the first part is being read
    go.set()
    assert ing.wait_for(50, timeout_s=5)
    assert ing.caught_up and ing.since_mark == 0
    ing.close()
    fresh = StoreIngest(ListSource(), lambda eps: len(eps), interval_s=0.01)
    assert fresh.caught_up  # a new run has no backlog
    fresh.close()
    with pytest.raises(ValueError, match="backlog_polls"):
        StoreIngest(ListSource(), lambda eps: len(eps), backlog_polls=-1)


def test_close_reads_every_part_of_what_is_left() -> None:
    src, got = ListSource(per_poll=2), []
    ing = StoreIngest(src, lambda eps: got.extend(eps) or len(eps), interval_s=30.0)
    assert ing.wait_for(0, timeout_s=1)
    time.sleep(0.05)  # the thread found nothing and sleeps for 30 s
    src.add(*range(7))  # four parts
    ing.close()
    assert got == list(range(7)) and src.largest_poll == 2


def test_close_reads_past_corrupt_shards_that_a_bounded_poll_returns_empty(tmp_path) -> None:
    """A real store read one shard a poll: a corrupt shard that sorts first makes one
    poll return nothing; close() still reads the good shards after it (it used to stop
    at the first empty poll, leaving the store's newest episodes out of the counts)."""
    import os

    from tests.test_store import make_episode

    from mtopt.store import EpisodeReader, EpisodeWriter

    robot = tmp_path / "shards" / "r0"
    robot.mkdir(parents=True)
    reader = EpisodeReader(tmp_path, shards_per_poll=1)
    got: list[str] = []
    ing = StoreIngest(reader, lambda eps: got.extend(e.episode_id for e in eps) or len(eps), 30.0)
    assert ing.wait_for(0, timeout_s=1)
    time.sleep(0.05)  # the thread found nothing and sleeps for 30 s
    bad = robot / "0000-corrupt.parquet"  # sorts before the writer's time-named shards
    bad.write_bytes(b"not parquet")
    old = time.time() - 600
    os.utime(bad, (old, old))
    with EpisodeWriter(tmp_path, "r0", flush_every=1) as w:
        for i in range(3):
            w.write(make_episode(i))
    ing.close()
    assert sorted(got) == ["ep00000", "ep00001", "ep00002"]
    assert len(reader.quarantined) == 1 and reader.behind == 0


def test_close_stops_on_shards_an_os_error_keeps_back() -> None:
    """A source whose unread shards all fail for the machine's reasons (no permission):
    close() gives up once a poll leaves no fewer of them, instead of looping forever."""

    class Stuck:
        behind, retrying, polls = 0, 0, 0

        def poll(self) -> list[int]:
            self.polls += 1
            self.behind, self.retrying = 2, 1  # one tried and failed, one never reached
            return []

    src = Stuck()
    ing = StoreIngest(src, len, interval_s=30.0)
    ing.close()
    assert 2 <= src.polls <= 4
