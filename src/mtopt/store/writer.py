"""Episode writer: buffered episodes -> atomically written Parquet shards.

A shard is written whole to a temp file in the same directory, fsynced and renamed, so
a reader never sees half a shard. A crash loses at most the episodes buffered since the
last flush (bounded by ``flush_every`` episodes and ``flush_seconds``). Both are checked
when an episode is written: a writer that goes idle (a robot that stops collecting) holds
its last episodes until the next ``write``, ``flush()`` or ``close()``, so call ``flush()``
when you pause. Each episode is converted to its row when it is written: an episode that
cannot be stored raises ``SchemaError`` from ``write`` and is not buffered, so it never
blocks the good ones. An episode whose ``write`` raises an error (a full disk in the
flush it started, too) is not kept: write it again. The episodes written before it stay
buffered and go out with the next flush (Ctrl-C in that flush keeps them all, for the
``with`` block's ``close``). A writer that is dropped or still open when the interpreter
exits, never closed, writes its buffer then, with a warning (only a killed process
loses it).

Shards carry page checksums (CRC32), so a flipped bit on disk is found when the shard is
read and the shard quarantined, not served. A writer killed between its temp file's fsync
and the rename leaves a complete shard under a temp name: the next writer opened on the
same robot folder puts it in place (a temp file that does not read whole goes to the
quarantine), and a writer looks again every ``STALE_TEMP_S`` as it flushes (a robot
restarted at once met its predecessor's file too young). A termination (Ctrl-C) just
after the rename counts the shard as written, so ``close()`` does not write it again. A live writer holds a lock on its temp file until the rename, so one that
shares the robot id and stalls is never taken for dead; a temp file is also left until it
is ``STALE_TEMP_S`` old, for file systems whose locks other machines do not see.
"""

from __future__ import annotations

import atexit
import io
import logging
import os
import re
import secrets
import time
import weakref
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mtopt._io import atomic_write_bytes, fsync_dir, locked_by_another, make_dirs
from mtopt.store.schema import (
    Episode,
    UnknownSchemaVersionError,
    check_table_version,
    episode_to_table,
)

log = logging.getLogger(__name__)

SHARDS = "shards"
# a folder name: not ".", "..", hidden, nor starting with "_" (pyarrow.dataset and pandas
# skip such folders), and no trailing newline ("$" would let one through)
_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
STALE_TEMP_S = 300.0
"""A writer's temp file this old is left over from a process that died (a flush takes
seconds at most)."""


def write_shard(path: str | Path, table: pa.Table) -> Path:
    """``table`` as one shard at ``path``, written whole and atomically (zstd Parquet with
    page checksums)."""
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd", compression_level=3, write_page_checksum=True)
    return atomic_write_bytes(path, buf.getvalue())


def recover_temp_shards(folder: str | Path, stale_after_s: float = STALE_TEMP_S) -> list[Path]:
    """Temp files of writers that died in a flush: a complete shard is renamed into place
    (its episodes were written nowhere else); one that does not read whole goes to the
    store's quarantine. A temp file is taken only when no process holds its lock (a live
    writer locks it until the rename) and, for file systems whose locks other machines do
    not see, when it is ``stale_after_s`` old. A newer writer's shard, an OS error or a
    lack of memory leave the file for the next try. Returns the shards put in place."""
    from mtopt.store.reader import _is_os_error, quarantine  # (the reader imports this module)

    folder = Path(folder)
    recovered = []
    now = time.time()
    for tmp in sorted(folder.glob(".*.parquet.*.tmp")):
        final = folder / tmp.name[1:].rsplit(".", 2)[0]  # atomic_write's ".NAME.XXXX.tmp"
        try:
            if now - tmp.stat().st_mtime < stale_after_s:
                continue
            with open(tmp, "rb") as f:
                if locked_by_another(f.fileno()):
                    continue  # a live writer's (stalled, or its clock is off)
                os.fsync(f.fileno())  # a writer killed before its own fsync
                problem = _unreadable(tmp)
                if problem is None and final.exists():
                    log.warning("left %s: %s exists already", tmp, final.name)
                elif problem is None:
                    os.replace(tmp, final)  # under the lock: no second recoverer
                    fsync_dir(folder)
                    recovered.append(final)
                    log.warning("recovered a shard a dead writer had not renamed: %s", final)
                else:
                    quarantine(folder.parent.parent, tmp, f"left by a dead writer: {problem}")
        except Exception as exc:
            if not (_is_os_error(exc) or isinstance(exc, UnknownSchemaVersionError)):
                raise
            log.warning("could not recover %s (%s): left for the next writer", tmp, exc)
    return recovered


def _unreadable(path: Path) -> str | None:
    """Why ``path`` is not a whole shard of this store's version (None: it is). Raises
    OS errors of the machine, memory errors and ``UnknownSchemaVersionError``."""
    from mtopt.store.reader import _is_os_error

    try:
        with pq.ParquetFile(path, page_checksum_verification=True) as shard:
            check_table_version(shard.schema_arrow, str(path))
            shard.read()
    except UnknownSchemaVersionError:
        raise
    except Exception as exc:  # half written, not Parquet, not ours; or the machine's
        if _is_os_error(exc):
            raise
        return f"{type(exc).__name__}: {exc}"
    return None


_open_writers: weakref.WeakSet[EpisodeWriter] = weakref.WeakSet()


def _flush_unclosed(writer: EpisodeWriter) -> None:
    if writer._pid != os.getpid():
        return  # a forked child's copy: the parent writes these episodes
    n = writer.pending
    try:
        writer.flush()
    except Exception as exc:
        log.error("a writer of %s was not closed; its %d episodes are lost: %s",
                  writer.dir, n, exc)  # fmt: skip
        return
    log.warning("a writer of %s was not closed: its last %d episodes were written when it "
                "was dropped or at exit (close() it, or use it in a with block)",
                writer.dir, n)  # fmt: skip


@atexit.register
def _flush_open_writers() -> None:
    for writer in list(_open_writers):
        if writer.pending:
            _flush_unclosed(writer)


class EpisodeWriter:
    def __init__(
        self,
        store_dir: str | Path,
        robot_id: str,
        flush_every: int = 16,
        flush_seconds: float = 30.0,
    ):
        if not isinstance(robot_id, str) or not _SAFE.fullmatch(robot_id):
            raise ValueError(
                f"robot_id {robot_id!r} must be letters, digits, '_', '.' or '-', starting "
                "with a letter or digit (it names a folder)"
            )
        if (
            isinstance(flush_every, bool)
            or not isinstance(flush_every, (int, np.integer))
            or flush_every < 1
        ):
            raise ValueError(f"flush_every must be an int >= 1, got {flush_every!r}")
        if (
            isinstance(flush_seconds, bool)
            or not isinstance(flush_seconds, (int, float, np.integer, np.floating))
            or not flush_seconds >= 0  # (NaN too)
        ):
            raise ValueError(f"flush_seconds must be a number >= 0, got {flush_seconds!r}")
        self.dir = make_dirs(Path(store_dir) / SHARDS / robot_id)
        self.recovered = recover_temp_shards(self.dir)
        self.robot_id = robot_id
        self.flush_every = flush_every
        self.flush_seconds = flush_seconds
        self._buffer: list[pa.Table] = []
        self._last_flush = time.monotonic()
        # a dead predecessor's temp files younger than STALE_TEMP_S at start (a robot
        # restarted at once) are looked at again once they are old enough
        self._next_recovery = time.monotonic() + STALE_TEMP_S
        self._seq = 0
        # in the shard names: two writers of one robot id whose clocks read the same
        # nanosecond (a coarse clock: 16 ms steps on some systems) name different shards
        self._token = secrets.token_hex(4)
        self.written = 0
        self._ids: set[str] = set()  # episode ids this writer stored or holds
        self._foreign: set[str] = set()  # other robots' ids it was given (warned)
        self._pid = os.getpid()
        _open_writers.add(self)

    def write(self, episode: Episode) -> None:
        """Buffer ``episode`` (and flush when it is time). If this raises an error, the
        episode is not kept (a retry stores it once); the ones buffered before it stay. A
        ``KeyboardInterrupt`` in the flush keeps it buffered, for ``close()``. An episode
        id this writer already took is refused (``ValueError``): readers count an id once,
        so a second episode under it would be dropped without a word. An episode of
        another robot (``episode.robot_id``) is stored, with a warning once per robot:
        the folder names the writer's robot, and a resumed fleet counts each robot's
        episodes by the field to know where it stopped."""
        row = episode_to_table(episode)  # SchemaError here, not at flush
        if episode.robot_id != self.robot_id and episode.robot_id not in self._foreign:
            self._foreign.add(episode.robot_id)
            log.warning(
                "episode %s is robot %r's, stored in robot %r's folder %s (one "
                "EpisodeWriter per robot keeps a store's folders and robot ids the same)",
                episode.episode_id,
                episode.robot_id,
                self.robot_id,
                self.dir,
            )
        if episode.episode_id in self._ids:
            raise ValueError(
                f"episode {episode.episode_id} was already written by this writer of "
                f"{self.dir}: give each episode its own id (uuid4 hex)"
            )
        self._buffer.append(row)
        self._ids.add(episode.episode_id)
        if (
            len(self._buffer) >= self.flush_every
            or time.monotonic() - self._last_flush >= self.flush_seconds
        ):
            try:
                self.flush()
            except Exception:  # (Ctrl-C in the flush keeps it: the with block writes it)
                # a full disk: the caller hears it was not stored (a failed flush keeps
                # the buffer as it was, this row last)
                if self._buffer and self._buffer[-1] is row:
                    self._buffer.pop()
                    self._ids.discard(episode.episode_id)
                raise

    def _new_shard_path(self) -> Path:
        """``<time_ns>-<writer token>-<seq>.parquet``, oldest first by name, a name no
        shard has (the rename into place replaces a file of the same name)."""
        while True:
            name = f"{time.time_ns():020d}-{self._token}-{self._seq:06d}.parquet"
            self._seq += 1
            target = self.dir / name
            if not target.exists():
                return target

    def flush(self) -> Path | None:
        """Write buffered episodes as one shard; returns its path (None if nothing buffered)."""
        self._last_flush = time.monotonic()
        if not self._buffer:
            return None
        target = self._new_shard_path()
        try:
            path = write_shard(target, pa.concat_tables(self._buffer))
        except BaseException as exc:
            if not target.exists():
                if isinstance(exc, OSError) and exc.filename is None:  # (EFBIG, ENOSPC)
                    exc.add_note(f"while writing the shard {target}")
                raise  # nothing stored: the buffer stays, for a retry or close()
            # renamed into place before the error (in the folder's fsync, or Ctrl-C /
            # a termination just after the rename): the episodes are stored, and kept
            # buffered they would be written again by close()
            self._stored()
            if not isinstance(exc, Exception):
                raise
            log.warning("shard %s written, but the folder's sync failed: %s", target, exc)
            return target
        self._stored()
        if time.monotonic() >= self._next_recovery:  # a temp file that was young at start
            self._next_recovery = time.monotonic() + STALE_TEMP_S
            self.recovered += recover_temp_shards(self.dir)
        return path

    def _stored(self) -> None:
        self.written += len(self._buffer)
        self._buffer.clear()

    @property
    def pending(self) -> int:
        return len(self._buffer)

    def close(self) -> None:
        self.flush()

    def __del__(self) -> None:
        # a writer dropped with episodes buffered (never closed, no with block) writes
        # them, as a file object flushes its buffer; the atexit hook does it for one
        # still alive when the interpreter exits
        if getattr(self, "_buffer", None):
            _flush_unclosed(self)

    def __enter__(self) -> EpisodeWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
