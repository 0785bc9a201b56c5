"""Episode writer: buffered episodes -> atomically written Parquet shards.

A shard is written whole to a temp file in the same directory, fsynced and renamed, so
a reader never sees half a shard. A crash loses at most the episodes buffered since the
last flush (bounded by ``flush_every`` episodes and ``flush_seconds``). Both are checked
when an episode is written: a writer that goes idle (a robot that stops collecting) holds
its last episodes until the next ``write``, ``flush()`` or ``close()``, so call ``flush()``
when you pause. Each episode is converted to its row when it is written: an episode that
cannot be stored raises ``SchemaError`` from ``write`` and is not buffered, so it never
blocks the good ones.
"""

from __future__ import annotations

import io
import re
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from mtopt._io import atomic_write_bytes
from mtopt.store.schema import Episode, episode_to_table

SHARDS = "shards"
_SAFE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")  # not ".", "..", nor hidden


def write_shard(path: str | Path, table: pa.Table) -> Path:
    """``table`` as one shard at ``path``, written whole and atomically (zstd Parquet)."""
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd", compression_level=3)
    return atomic_write_bytes(path, buf.getvalue())


class EpisodeWriter:
    def __init__(
        self,
        store_dir: str | Path,
        robot_id: str,
        flush_every: int = 16,
        flush_seconds: float = 30.0,
    ):
        if not _SAFE.match(robot_id):
            raise ValueError(
                f"robot_id {robot_id!r} must be letters, digits, '_', '.' or '-', not "
                "starting with '.' or '-' (it names a folder)"
            )
        self.dir = Path(store_dir) / SHARDS / robot_id
        self.dir.mkdir(parents=True, exist_ok=True)
        self.robot_id = robot_id
        self.flush_every = flush_every
        self.flush_seconds = flush_seconds
        self._buffer: list[pa.Table] = []
        self._last_flush = time.monotonic()
        self._seq = 0
        self.written = 0

    def write(self, episode: Episode) -> None:
        self._buffer.append(episode_to_table(episode))  # SchemaError here, not at flush
        if (
            len(self._buffer) >= self.flush_every
            or time.monotonic() - self._last_flush >= self.flush_seconds
        ):
            self.flush()

    def flush(self) -> Path | None:
        """Write buffered episodes as one shard; returns its path (None if nothing buffered)."""
        self._last_flush = time.monotonic()
        if not self._buffer:
            return None
        name = f"{time.time_ns():020d}-{self._seq:06d}.parquet"
        self._seq += 1
        path = write_shard(self.dir / name, pa.concat_tables(self._buffer))
        self.written += len(self._buffer)
        self._buffer.clear()
        return path

    @property
    def pending(self) -> int:
        return len(self._buffer)

    def close(self) -> None:
        self.flush()

    def __enter__(self) -> EpisodeWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
