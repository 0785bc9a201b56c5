"""Append-only label store (JSON lines). Each label is written, flushed and fsynced before
the call returns, so a stopped or killed server loses nothing it acknowledged; a torn
last line (power loss mid-write) is skipped on read, and the next label starts on a line
of its own instead of being glued to it."""

from __future__ import annotations

import json
import logging
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


class LabelStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._warned = 0  # unreadable lines last warned about (the page reads often)

    def add(self, episode_id: str, task: str, success: bool, source: str = "human") -> Label:
        label = Label(episode_id, task, bool(success), source, time.time())
        line = (json.dumps(asdict(label)) + "\n").encode()
        with self._lock:
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
        return label

    def all(self) -> list[Label]:
        """Every readable label in file order. A torn, foreign or malformed line (a field
        of the wrong type, say ``"success": "no"``) is skipped, with one warning that
        counts them; keys a later version may add are ignored."""
        if not self.path.exists():
            return []
        out = []
        skipped = 0
        # bytes that are not UTF-8 (another program's line) spoil that line only
        for raw in self.path.read_bytes().decode("utf-8", errors="replace").splitlines():
            try:
                label = parse_label(json.loads(raw))
            except json.JSONDecodeError:
                label = None
            if label is None:
                skipped += bool(raw.strip())
            else:
                out.append(label)
        if skipped != self._warned:  # once per change, not on every queue request
            log.warning("%s: skipped %d unreadable label line(s)", self.path, skipped)
            self._warned = skipped
        return out

    def latest(self) -> dict[tuple[str, str], Label]:
        """The most recent label per (episode, task): relabeling overrides."""
        return {(lab.episode_id, lab.task): lab for lab in self.all()}


def parse_label(row: Any) -> Label | None:
    """A label from one decoded JSON line, or None when it is not one: ``episode_id``,
    ``task`` and ``source`` strings, ``success`` a JSON boolean, ``timestamp`` a number
    (not a boolean). Other keys are ignored."""
    if not isinstance(row, dict):
        return None
    eid, task, source = row.get("episode_id"), row.get("task"), row.get("source")
    success, ts = row.get("success"), row.get("timestamp")
    if not (isinstance(eid, str) and isinstance(task, str) and isinstance(source, str)):
        return None
    if not isinstance(success, bool) or isinstance(ts, bool) or not isinstance(ts, (int, float)):
        return None
    return Label(eid, task, success, source, float(ts))
