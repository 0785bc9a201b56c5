"""StoreIngest: LogReplay's store tail in a thread of its own."""

import threading
import time

import pytest

from mtopt.replay.ingest import StoreIngest


class ListSource:
    """A store stand-in: ``add`` appends episodes, ``poll`` returns the unread ones."""

    def __init__(self) -> None:
        self.items: list[int] = []
        self.read = 0
        self.lock = threading.Lock()
        self.fail: Exception | None = None

    def add(self, *xs: int) -> None:
        with self.lock:
            self.items.extend(xs)

    def poll(self) -> list[int]:
        if self.fail is not None:
            raise self.fail
        with self.lock:
            out = self.items[self.read :]
            self.read = len(self.items)
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
    src = ListSource()
    src.add(*range(100))  # the store as the resumed run finds it
    ing = StoreIngest(
        src, lambda eps: len(eps), interval_s=0.01, since_mark=40, count_first_poll=False
    )
    assert ing.wait_for(100, timeout_s=5)
    assert ing.since_mark == 40  # the saved count, not 40 + 100
    src.add(100, 101, 102)  # collected after the resume
    assert ing.wait_for(103, timeout_s=5)
    assert ing.since_mark == 43 and ing.polled == 103
    ing.close()
