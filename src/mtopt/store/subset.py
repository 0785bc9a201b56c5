"""A store's episodes of some tasks, copied into a new store.

For baselines trained on exactly the data another run collected (a single-task model on
the multi-task run's episodes of its task, the paper's f_orig data-efficiency baseline),
and for moving one task's data elsewhere. Rows are copied as stored (no decoding and
re-encoding); each source shard becomes at most one destination shard of the same robot
and name, written atomically. A corrupt source shard is quarantined by the reader; one
that cannot be read for the machine's reasons (no permission, EIO) is an error, not a
silently shorter copy.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mtopt.store.reader import EpisodeReader, shard_paths
from mtopt.store.stats import collection_minutes, finite_time
from mtopt.store.writer import SHARDS, write_shard


def subset_store(
    src: str | Path,
    dst: str | Path,
    tasks: Sequence[str],
    minutes: float | None = None,
    shards_per_read: int = 64,
) -> dict[str, int]:
    """Copy the episodes of ``tasks`` (those started in the first ``minutes`` of the
    store's collection, when given: ``collection_minutes``, as ``mtopt store timeline``
    counts them) from ``src`` into ``dst``, which must hold no shards
    yet. Returns the number of episodes copied per task and the shards written."""
    if not tasks:
        raise ValueError("name at least one task")
    if minutes is not None and not (math.isfinite(minutes) and minutes > 0):
        raise ValueError(f"minutes must be a finite number > 0, got {minutes}")
    if Path(dst).exists() and not Path(dst).is_dir():
        raise ValueError(f"{dst} is a file, not a folder")
    if shard_paths(dst):
        raise ValueError(f"{dst} already holds shards; give an empty or new directory")
    reader = EpisodeReader(src, shards_per_poll=shards_per_read)
    cutoff = None
    if minutes is not None:
        # the minutes of `mtopt store timeline` (collection_minutes): a stop between two
        # invocations of a run (gaps clipped to a minute) is no collection time
        starts = np.sort(
            np.array(
                [r["started_at"] for r in reader.metadata() if finite_time(r["started_at"])],
                np.float64,
            )
        )
        over = np.nonzero(collection_minutes(starts) >= minutes)[0]
        # (inf: all of a shorter store, but not an episode without a finite start time)
        cutoff = float(starts[over[0]]) if over.size else math.inf
    wanted = pa.array(list(tasks), pa.string())

    def select(table: pa.Table) -> pa.Table:
        mask = pc.is_in(table["task"], value_set=wanted)
        if cutoff is not None:
            mask = pc.and_(mask, pc.less(table["started_at"], cutoff))
        return table.filter(mask)

    to_copy = set(reader.new_shards())  # not shards a live writer adds while we copy
    counts = {t: 0 for t in tasks}
    written: list[Path] = []
    try:
        for path, table in reader.drain_decoded(select):
            if table.num_rows == 0:
                continue
            out = Path(dst) / SHARDS / path.parent.name / path.name
            written.append(out)  # (before: a Ctrl-C just after the rename leaves none behind)
            write_shard(out, table)
            for task in table["task"].to_pylist():
                counts[task] += 1
    except BaseException:
        # an unknown schema version, a full disk, Ctrl-C: a partial copy looked like a
        # whole one (and blocked the retry: "already holds shards"); take it back
        _remove(written)
        raise
    shards = len(written)
    # OS errors (permissions, EIO): a copy without them is short
    unread = [p for p in reader.new_shards() if p in to_copy]
    if unread:
        names = ", ".join(str(p) for p in unread[:5]) + (" ..." if len(unread) > 5 else "")
        _remove(written)
        raise OSError(
            f"could not read {len(unread)} shard(s) of {src} (see the log): {names}; "
            f"nothing copied (the {shards} shards copied were taken back): try again"
        )
    return {**counts, "shards": shards}


def _remove(paths: list[Path]) -> None:
    """Delete the shards a failed copy wrote, and the robot folders left empty."""
    for p in paths:
        p.unlink(missing_ok=True)
    for folder in {p.parent for p in paths}:
        with contextlib.suppress(OSError):  # not empty (not ours alone) or already gone
            folder.rmdir()
