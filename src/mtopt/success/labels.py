"""Append-only label store (JSON lines). Each label is written, flushed and fsynced before
the call returns, so a stopped or killed server loses nothing it acknowledged; a torn
last line (power loss mid-write) is skipped on read, and the next label starts on a line
of its own instead of being glued to it.

A label is taken back (the page's undo) by appending a retraction, never by editing the
file: ``{"episode_id", "task", "retracted": true, "source", "timestamp"}``. The episode
is then unlabeled for that task until a later label gives it one again. A reader from
before retractions skips such a line as unreadable and keeps the older label."""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mtopt._io import fsync_dir

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Label:
    episode_id: str
    task: str
    success: bool
    source: str  # "human" | "oracle" | "staged"
    timestamp: float


@dataclass(frozen=True)
class Retraction:
    """The label of (episode, task) given before this line no longer counts."""

    episode_id: str
    task: str
    source: str
    timestamp: float


class LabelStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._warned = 0  # unreadable lines last warned about (the page reads often)

    def add(self, episode_id: str, task: str, success: bool, source: str = "human") -> Label:
        label = Label(episode_id, task, bool(success), source, time.time())
        self._append(asdict(label))
        return label

    def retract(self, episode_id: str, task: str, source: str = "human") -> Retraction:
        """Take back the label of (episode, task): appended like a label, durable on return."""
        gone = Retraction(episode_id, task, source, time.time())
        self._append({**asdict(gone), "retracted": True})
        return gone

    def retract_if_latest(
        self, episode_id: str, task: str, timestamp: float | None, source: str = "human"
    ) -> Retraction | Label | None:
        """Take back the label of (episode, task) in force, only if it is the one given at
        ``timestamp`` (any, with None): the check and the retraction are one step for
        this store's threads, so a label another page gives in between stays. Returns the
        retraction; the label in force when it is another (nothing taken back); None when
        there is none."""
        with self._lock:
            now = self.latest().get((episode_id, task))
            if now is None or (timestamp is not None and now.timestamp != timestamp):
                return now
            gone = Retraction(episode_id, task, source, time.time())
            self._append_locked({**asdict(gone), "retracted": True})
            return gone

    def _append(self, row: dict[str, Any]) -> None:
        with self._lock:
            self._append_locked(row)

    def _append_locked(self, row: dict[str, Any]) -> None:
        """Append ``row`` as one line, durable on return; the caller holds ``_lock``."""
        line = (json.dumps(row) + "\n").encode()
        created = not self.path.exists()
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                line = b"\n" + line  # close a torn last line first
            view = memoryview(line)
            while view:  # os.write may write less than asked (a full disk, a signal)
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        if created:  # the file's name too, or a power loss could lose the file
            fsync_dir(self.path.parent)

    def records(self) -> list[Label | Retraction]:
        """Every readable line in file order: labels and retractions. A torn, foreign or
        malformed line (a field of the wrong type, say ``"success": "no"``) is skipped,
        with one warning that counts them; keys a later version may add are ignored."""
        if not self.path.exists():
            return []
        out: list[Label | Retraction] = []
        skipped = 0
        # bytes that are not UTF-8 (another program's line) spoil that line only
        for raw in self.path.read_bytes().decode("utf-8", errors="replace").splitlines():
            try:
                record = parse_record(json.loads(raw))
            except (ValueError, RecursionError):  # bad JSON, an int of 5000 digits, [[[[...
                record = None
            if record is None:
                skipped += bool(raw.strip())
            else:
                out.append(record)
        if skipped != self._warned:  # once per change, not on every queue request
            log.warning("%s: skipped %d unreadable label line(s)", self.path, skipped)
            self._warned = skipped
        return out

    def all(self) -> list[Label]:
        """Every label given, in file order, including ones relabeled or retracted since
        (the history; ``latest`` says which count)."""
        return [r for r in self.records() if isinstance(r, Label)]

    def latest(self) -> dict[tuple[str, str], Label]:
        """The label that counts per (episode, task): the most recent one, unless a
        retraction came after it (then the pair has none)."""
        out: dict[tuple[str, str], Label] = {}
        for r in self.records():
            if isinstance(r, Label):
                out[(r.episode_id, r.task)] = r
            else:
                out.pop((r.episode_id, r.task), None)
        return out


def parse_record(row: Any) -> Label | Retraction | None:
    """A label or a retraction (``"retracted": true``) from one decoded JSON line, or None."""
    common = _common_fields(row)
    if common is None:
        return None
    eid, task, source, ts = common
    if row.get("retracted") is True:
        return Retraction(eid, task, source, ts)
    success = row.get("success")
    return Label(eid, task, success, source, ts) if isinstance(success, bool) else None


def parse_label(row: Any) -> Label | None:
    """A label from one decoded JSON line, or None when it is not one: ``episode_id``,
    ``task`` and ``source`` strings, ``success`` a JSON boolean, ``timestamp`` a number
    (not a boolean). Other keys are ignored."""
    record = parse_record(row)
    return record if isinstance(record, Label) else None


def _common_fields(row: Any) -> tuple[str, str, str, float] | None:
    """(episode_id, task, source, timestamp) of a label or retraction line, or None when
    one is missing or of the wrong type."""
    if not isinstance(row, dict):
        return None
    eid, task, source, ts = (row.get(k) for k in ("episode_id", "task", "source", "timestamp"))
    if not (isinstance(eid, str) and isinstance(task, str) and isinstance(source, str)):
        return None
    if isinstance(ts, bool) or not isinstance(ts, (int, float)):
        return None
    try:
        when = float(ts)
    except OverflowError:  # an int too large for a float
        return None
    return (eid, task, source, when) if math.isfinite(when) else None
