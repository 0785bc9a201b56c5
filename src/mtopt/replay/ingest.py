"""Tail the episode store into LogReplay from a thread of its own.

Why a thread of its own, and not a poll between learner steps: besides taking the poll
(a directory listing that grows with the store: 23 ms per call at 3,900 shards) off the
learner's critical path, it keeps replay memory out of the learner's malloc arena. glibc
gives every thread its own arena, and the replay's episodes are allocated by the thread
that reads them and freed (returned to the same arena) when the bounded buffers evict
them. When the learner's thread did the reading, its arena filled with the holes that
evicted episodes leave between the ones still held, and every tensor allocation of the
training step searched them: after a resume re-read a 62k-episode store and kept a
quarter of it, `_int_malloc` took 37% of the learner's time and an Adam step took 3-4x
as long (`benchmarks/results/ingest_arena.json`; r38 made ~10 steps/s before its first
resume and ~3.5 after its second).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Generic, Protocol, TypeVar

E = TypeVar("E")


class EpisodeSource(Protocol[E]):
    """Where episodes come from. A source that reads a bounded part per poll (as
    ``EpisodeReader(shards_per_poll=...)``) may also say what its last poll left for
    later ones, as ``behind`` (shards not read yet) and ``retrying`` (those of them an
    error of the machine kept back): ``StoreIngest.close`` then drains it."""

    def poll(self) -> list[E]:
        """Episodes not returned before (oldest first)."""
        ...


def left_unread(source: object) -> int:
    """Shards ``source``'s last poll left unread for no error of their own (0 for a
    source that does not say)."""
    behind = getattr(source, "behind", 0)
    retrying = getattr(source, "retrying", 0)
    if not isinstance(behind, int) or not isinstance(retrying, int):
        return 0
    return max(0, behind - retrying)


class StoreIngest(Generic[E]):
    """Polls ``source`` every ``interval_s`` (at once while there is more) and hands the
    new episodes to ``ingest`` (e.g. ``lambda eps: replay.ingest(replay_items(eps))``,
    which returns how many it took), from a daemon thread.

    ``paused()`` holds ingestion while the caller switches the reward model (an SD
    round): an episode is never scored by one model and filed under another's version.
    An error in the thread stops it and is raised again by the next ``check()``.
    ``close()`` stops the thread after one last poll, so nothing already in the store is
    left out of the final counts.

    ``since_mark`` counts episodes read since the last ``mark()``, starting from
    ``since_mark`` (a resumed run's saved count). The first ``backlog_polls`` polls read
    the store as a resumed run found it, a bounded part per poll (the source's own
    limit, e.g. ``EpisodeReader(shards_per_poll=...)``): their episodes are ingested but
    not counted there, since they were counted before the run stopped, and
    ``caught_up`` is False until they are done, so a learner can wait for the newest
    data rather than train on the store's oldest. Reading the backlog in parts bounds
    memory by the replay buffers, not by the store: one poll of r39's 50k-episode store
    decoded ~6.5 GB of images at once (0.13 MB an episode), most of which the bounded
    buffers then dropped. (Start the thread before the robots, and count the backlog's
    polls from the shards there are then.) Robots started after that count may flush into
    the backlog's last polls: ``is_new`` (e.g. started after the count) picks their
    episodes out of a backlog poll, and they are counted.
    """

    def __init__(
        self,
        source: EpisodeSource[E],
        ingest: Callable[[list[E]], int],
        interval_s: float = 0.5,
        keep_recent: int = 0,
        name: str = "store-ingest",
        since_mark: int = 0,
        backlog_polls: int = 0,
        is_new: Callable[[E], bool] | None = None,
    ):
        if backlog_polls < 0:
            raise ValueError(f"backlog_polls must be >= 0, got {backlog_polls}")
        self._source = source
        self._ingest = ingest
        self._interval = interval_s
        self._keep_recent = keep_recent
        self._pause = threading.Lock()  # held while polling + ingesting
        self._state = threading.Lock()  # guards the counters below
        self._ingested = 0
        self._since_mark = since_mark
        self._backlog_left = backlog_polls
        self._is_new = is_new
        self._backlog_read = 0
        self._polled = 0
        self._recent: list[E] = []
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def _step(self) -> int:
        """One poll + ingest; returns how many episodes the poll found."""
        with self._pause:
            eps = self._source.poll()
            counted = self._backlog_left == 0
            # an empty poll still uses up a backlog part (its shards were all corrupt)
            taken = self._ingest(eps) if eps else 0
            fresh = len(eps)
            if not counted:  # a backlog poll: only what robots added since the count
                is_new = self._is_new
                fresh = sum(1 for e in eps if is_new(e)) if is_new is not None else 0
            with self._state:
                self._backlog_left = max(0, self._backlog_left - 1)
                if not eps:
                    return 0
                self._backlog_read += len(eps) - fresh
                self._ingested += taken
                self._since_mark += fresh
                self._polled += len(eps)
                if self._keep_recent:
                    self._recent = (self._recent + eps)[-self._keep_recent :]
            return len(eps)

    def _work(self) -> None:
        try:
            while not self._stop.is_set():
                if self._step() == 0:
                    self._stop.wait(self._interval)
            self._drain()
        except BaseException as e:
            self._error = e

    def _drain(self) -> None:
        """Poll until the source has nothing left: every part of the backlog, and every
        shard a bounded poll left (a run of corrupt shards returns no episodes but is
        not the end), while each poll leaves fewer (shards an OS error keeps back are
        tried once more at most: they would hold the loop forever)."""
        left = None
        while True:
            found = self._step()
            now = left_unread(self._source)
            if found or not self.caught_up or (now > 0 and (left is None or now < left)):
                left = now
                continue
            return

    @property
    def ingested(self) -> int:
        """Episodes ingest() took (replay items: those with at least one step)."""
        with self._state:
            return self._ingested

    @property
    def caught_up(self) -> bool:
        """The backlog (the first ``backlog_polls`` polls) is read."""
        with self._state:
            return self._backlog_left == 0

    @property
    def backlog_read(self) -> int:
        """Episodes the backlog's polls read."""
        with self._state:
            return self._backlog_read

    @property
    def polled(self) -> int:
        """Episodes read from the store."""
        with self._state:
            return self._polled

    @property
    def since_mark(self) -> int:
        """Episodes read since the last ``mark()`` (or the start)."""
        with self._state:
            return self._since_mark

    def mark(self) -> None:
        with self._state:
            self._since_mark = 0

    def recent(self) -> list[E]:
        """The last ``keep_recent`` episodes read."""
        with self._state:
            return list(self._recent)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @contextmanager
    def paused(self) -> Iterator[None]:
        """No ingestion while inside (waits for a poll in progress to finish)."""
        with self._pause:
            yield

    def check(self) -> None:
        """Raise the error that stopped the thread, if one did."""
        if self._error is not None:
            raise RuntimeError("store ingestion failed") from self._error

    def wait_for(self, n: int, timeout_s: float) -> bool:
        """Block until ``n`` episodes were ingested (tests, startup); False on timeout."""
        deadline = time.monotonic() + timeout_s
        while self.ingested < n:
            self.check()
            if time.monotonic() > deadline or not self.alive:
                return self.ingested >= n
            time.sleep(0.01)
        return True

    def close(self, timeout_s: float = 120.0) -> None:
        """Stop after one last poll; raise the thread's error, if any."""
        self._stop.set()
        self._thread.join(timeout_s)
        self.check()
