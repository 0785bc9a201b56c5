"""Episode reader: streams episodes from a store directory, quarantines bad shards.

``poll()`` returns episodes from shards it has not seen yet (a tailing consumer such as
LogReplay calls it repeatedly). A shard that is corrupt, truncated, not an mtopt shard, or
whose rows do not decode into episodes is moved to ``<store>/quarantine/`` with a log
line, and reading goes on. An operating-system error (EIO, too many open files, no
permission, out of memory) says nothing about the shard: ``poll()`` leaves it in place
and tries it again on the next call, and one-shot reads (``episodes()``, ``metadata()``)
raise it. A shard that cannot be opened yet and was modified within ``FRESH_SHARD_S``
(another tool writing it in place) is not corrupt yet: polls try it again (for at most
that long), one-shot reads skip it with a warning. A shard of an unknown schema
version (a newer writer) is not corrupt either:
reading stops with ``UnknownSchemaVersionError``. Temp files of writers that are still
writing (``.*.tmp``) are never read.

A decoder of the caller's own (``poll_decoded``, ``drain_decoded``) that raises is a bug
of the caller, not of the shard: its error propagates and the shard stays where it is
(unread, so the next poll tries it again). Asking for a column that no episode shard has
is a ``ValueError`` before anything is read.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import shutil
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mtopt.store.schema import (
    ARROW_SCHEMA,
    LATER_COLUMNS,
    META_COLUMNS,
    SCHEMA_KEY,
    SCHEMA_VERSION,
    Episode,
    SchemaError,
    UnknownSchemaVersionError,
    check_table_version,
    check_version,
)
from mtopt.store.writer import SHARDS

log = logging.getLogger(__name__)
T = TypeVar("T")
QUARANTINE = "quarantine"


class StoreNotFoundError(FileNotFoundError):
    pass


_warned_strays: set[Path] = set()


def shard_paths(store_dir: str | Path, skip_unlistable: bool = False) -> list[Path]:
    """The store's shards, ``shards/<robot>/<name>.parquet``, oldest first (names start
    with their time); none (an empty list) without a ``shards/`` folder. A robot folder that
    cannot be listed raises its ``OSError`` (a one-shot read that skipped it would be
    silently short; ``Path.glob`` skipped it without a word), or with
    ``skip_unlistable`` (a tailing poll, which lists again next time) is left out with a
    warning, so that one such folder does not stop the reading of every other robot's.
    A Parquet file elsewhere under ``shards/`` (which ``pyarrow.dataset`` would read) is
    named in a warning, once: the store does not read it."""
    root = Path(store_dir) / SHARDS
    found: list[Path] = []
    try:
        robots = sorted(os.scandir(root), key=lambda d: d.name)
    except FileNotFoundError:
        return []
    for robot in robots:
        if not robot.is_dir():
            if robot.name.endswith(".parquet"):
                _warn_stray(Path(robot.path))
            continue
        try:
            with os.scandir(robot.path) as entries:
                for entry in entries:
                    # a folder named x.parquet (pandas' partition_cols, Spark) is a
                    # dataset of another tool, not a shard: warned of, never quarantined
                    if entry.is_dir():
                        if not entry.name.startswith("."):
                            _warn_stray(Path(entry.path))
                    elif entry.name.endswith(".parquet"):
                        found.append(Path(entry.path))
        except FileNotFoundError:  # a robot folder removed while listing: nothing lost
            continue
        except OSError as exc:
            if not skip_unlistable:
                raise
            log.warning("could not list %s (%s); retrying on the next poll", robot.path, exc)
    return sorted(found, key=lambda p: (p.name, p.parent.name))


def _warn_stray(path: Path) -> None:
    if path not in _warned_strays:
        _warned_strays.add(path)
        log.warning(
            "%s is not read: the store's shards are shards/<robot>/<name>.parquet "
            "(pyarrow.dataset would read it; move it into a robot's folder, or out)",
            path,
        )


def stored_image_size(store_dir: str | Path) -> tuple[int, int] | None:
    """The image height and width of the store's newest readable shard (None: no shard
    reads): what a robot writing to the store should give, since a success detector and
    a Q-network judge one size. Reads two integer columns of at most five shards."""
    try:
        paths = shard_paths(store_dir, skip_unlistable=True)
    except OSError:  # (a file named shards, no permission): the store's readers say so
        return None
    for path in reversed(paths[-5:]):
        try:
            table = pq.read_table(path, columns=["image_height", "image_width"])
        except Exception:  # corrupt, vanished, or a foreign file: the reader's to handle
            continue
        if table.num_rows:
            return int(table["image_height"][-1].as_py()), int(table["image_width"][-1].as_py())
    return None


def shard_part(path: Path, parts: int) -> int:
    """Which of ``parts`` readers takes this shard: a stable hash of its robot folder and
    name (the same in every process and run, unlike Python's ``hash``)."""
    return zlib.crc32(f"{path.parent.name}/{path.name}".encode()) % parts


def quarantine(store_dir: str | Path, path: Path, reason: str) -> Path | None:
    """Move a bad shard out of the store to ``quarantine/<robot>/<name>`` (None: it was
    gone, or could not be moved, as in a read-only store; the caller then skips it). A
    file already quarantined under that name (another tool's ``data_0.parquet``, a shard
    copied back) is kept: the newcomer gets a ``.1``, ``.2``, ... before its suffix."""
    folder = Path(store_dir) / QUARANTINE / path.parent.name
    try:
        folder.mkdir(parents=True, exist_ok=True)
        dest = folder / path.name
        n = 0
        while dest.exists():
            n += 1
            dest = folder / f"{path.stem}.{n}{path.suffix}"
        shutil.move(str(path), dest)
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.error("corrupt shard %s (%s) could not be quarantined: %s", path, reason, exc)
        return None
    log.warning("quarantined corrupt shard %s -> %s: %s", path, dest, reason)
    return dest


FRESH_SHARD_S = 60.0
"""A shard that cannot be opened (no footer yet) and was modified less than this long ago
may still be being written in place by another tool (pandas, DuckDB, ``cp``): it is left
for a later poll instead of being quarantined while its writer goes on writing."""


class ShardBeingWrittenError(OSError):
    """A shard that cannot be opened yet, modified moments ago: a tailing poll tries it
    again, a one-shot read skips it with a warning; neither quarantines it."""


def _is_os_error(exc: BaseException) -> bool:
    """An error of the machine, not of the file: a real errno (pyarrow reports corrupt
    Parquet as OSError without one), memory, or an Arrow error of no known kind (a worker
    thread pyarrow could not start, EAGAIN under a process or address-space limit: every
    shard of the poll would fail alike) or a cancelled read. Corrupt data is an
    ``OSError`` without errno or an ``ArrowInvalid`` (and its kin) instead."""
    if isinstance(exc, MemoryError) or (isinstance(exc, OSError) and exc.errno is not None):
        return True
    return type(exc) is pa.ArrowException or isinstance(exc, pa.ArrowCancelled)


def _compatible(have: pa.DataType, want: pa.DataType) -> bool:
    """``have`` (a shard's column type) reads as ``want`` (the schema's): the same kind in
    any width, offset size or layout (another tool's int64, large_string, string_view, a
    pandas categorical's dictionary, whole numbers stored as floats where a null made
    pandas use float64, decimal times), or all nulls."""
    t = pa.types
    if t.is_null(have):
        return True
    if t.is_dictionary(have):
        have = have.value_type
    if t.is_string(want):
        return bool(t.is_string(have) or t.is_large_string(have) or t.is_string_view(have))
    if t.is_integer(want):  # (a float that is no whole number fails its row's decode)
        return bool(t.is_integer(have) or t.is_floating(have))
    if t.is_floating(want):
        return bool(t.is_floating(have) or t.is_integer(have) or t.is_decimal(have))
    if t.is_boolean(want):
        return bool(t.is_boolean(have))
    if t.is_binary(want):
        return bool(t.is_binary(have) or t.is_large_binary(have) or t.is_binary_view(have))
    if t.is_list(want):
        listy = (
            t.is_list(have)
            or t.is_large_list(have)
            or t.is_fixed_size_list(have)
            or t.is_list_view(have)
            or t.is_large_list_view(have)
        )
        return bool(listy) and _compatible(have.value_type, want.value_type)
    return bool(have == want)


def _check_types(schema: pa.Schema, path: Path) -> None:
    """A ``SchemaError`` (the shard is quarantined) for a column of the wrong kind: a
    flipped bit in the footer made ``episode_id`` binary, read back as bytes without a
    word."""
    for field in schema:
        i = ARROW_SCHEMA.get_field_index(field.name)
        if i >= 0 and not _compatible(field.type, ARROW_SCHEMA.field(i).type):
            want = ARROW_SCHEMA.field(i).type
            raise SchemaError(f"{path}: column {field.name} is {field.type}, not {want}")


def _check_version(shard: pq.ParquetFile, path: Path) -> None:
    """The shard's schema version: its metadata key (``mtopt.schema_version``, written by
    ``EpisodeWriter``), else, for a shard another tool wrote from the documented columns
    (pandas, DuckDB keep no such key), its ``schema_version`` column."""
    schema = shard.schema_arrow
    if SCHEMA_KEY in (schema.metadata or {}) or "schema_version" not in schema.names:
        try:
            check_table_version(schema, str(path))
        except UnknownSchemaVersionError:
            # Parquet's footer has no checksum: a flipped bit there can make the key say
            # another version while the rows (checksummed pages) say this one's
            if "schema_version" in schema.names and set(
                shard.read(columns=["schema_version"]).column(0).to_pylist()
            ) == {SCHEMA_VERSION}:
                raise SchemaError(
                    f"{path}: its metadata names another schema version than its rows "
                    f"({SCHEMA_VERSION}): a damaged footer"
                ) from None
            raise
        foreign = {
            n for n in schema.names if n not in ARROW_SCHEMA.names and not n.startswith("__index")
        }  # (pandas keeps its index as __index_level_0__)
        missing = [n for n in ARROW_SCHEMA.names if n not in schema.names]
        if SCHEMA_KEY in (schema.metadata or {}) and foreign and missing:
            # a column of the schema missing and one it does not have in its place: a name
            # flipped in the footer ("poses" read as "qoses" would otherwise look like an
            # older shard without poses). A column added by a newer writer, with all of
            # these there, is read past.
            raise SchemaError(
                f"{path}: column(s) {sorted(foreign)} in place of {missing}: a damaged footer"
            )
        return
    versions = set(shard.read(columns=["schema_version"]).column(0).to_pylist())
    for v in sorted(versions, key=str):
        if not isinstance(v, int) or isinstance(v, bool):
            raise SchemaError(f"{path}: schema_version {v!r} is not a whole number")
        check_version(v, str(path))


def check_columns(columns: Iterable[str] | None) -> None:
    """A ``ValueError`` for a column no episode shard has (pyarrow would drop it silently,
    and the decoder would fail on every shard)."""
    unknown = [c for c in columns or () if c not in ARROW_SCHEMA.names]
    if unknown:
        raise ValueError(f"unknown column(s) {unknown}; an episode shard has {ARROW_SCHEMA.names}")


def _of_tasks(table: pa.Table, tasks: Iterable[str] | None) -> pa.Table:
    """The rows of ``tasks`` (all rows for None), before any row is decoded."""
    if tasks is None:
        return table
    return table.filter(pc.is_in(table["task"], value_set=pa.array(list(tasks), pa.string())))


def _episodes(table: pa.Table) -> list[Episode]:
    return [Episode.from_row(r) for r in table.to_pylist()]


def _rows(table: pa.Table) -> list[dict[str, Any]]:
    """The table's rows as dicts, decimal columns (times another tool wrote as decimals,
    which the schema's float columns accept) as floats: a ``decimal.Decimal`` is no
    number to ``isinstance(x, float)`` nor to arithmetic with floats."""
    for i, field in enumerate(table.schema):
        if pa.types.is_decimal(field.type):
            table = table.set_column(i, field.name, table.column(i).cast(pa.float64()))
    return table.to_pylist()


@dataclass(frozen=True)
class FinalView:
    """What a success detector's relabel round needs of an episode: its final image, its
    task, its ground truth (sim) and scene, without the frames and actions."""

    episode_id: str
    task: str
    final_image: np.ndarray
    gt_success_by_task: dict[str, bool] | None
    scene: dict[str, Any]


FINAL_VIEW_COLUMNS = [
    "schema_version",
    "episode_id",
    "task",
    "final_image",
    "image_height",
    "image_width",
    "gt_success_by_task",
    "scene",
]


def _final_views(table: pa.Table) -> list[FinalView]:
    out = []
    for r in table.to_pylist():
        h, w = int(r["image_height"]), int(r["image_width"])
        gt = r.get("gt_success_by_task")
        out.append(
            FinalView(
                episode_id=r["episode_id"],
                task=r["task"],
                final_image=np.frombuffer(r["final_image"], dtype=np.uint8).reshape(h, w, 3),
                gt_success_by_task=json.loads(gt) if gt else None,
                scene=json.loads(r["scene"]) if r.get("scene") else {},
            )
        )
    return out


def _task_list(tasks: Iterable[str] | None) -> list[str] | None:
    """``tasks`` as a list; a single name is one task (``list("lift-any")`` would be its
    letters, and match nothing)."""
    if tasks is None:
        return None
    out = [tasks] if isinstance(tasks, str) else list(tasks)
    bad = [t for t in out if not isinstance(t, str)]
    if bad:  # checked here: inside a shard's read it would look like a corrupt shard
        raise TypeError(
            f"tasks are task names (str), got {bad[0]!r} of type {type(bad[0]).__name__}"
            + (" (use its .name)" if hasattr(bad[0], "name") else "")
        )
    return out


@dataclass(frozen=True)
class CorruptShard:
    """A shard a reader found corrupt."""

    path: Path
    """Where it was found."""
    reason: str
    moved_to: Path | None
    """Where it went in ``quarantine/`` (None: left in place, or it could not be moved)."""


@dataclass
class VerifyReport:
    """What ``EpisodeReader.verify`` found."""

    shards: int = 0
    """Shards read whole without a fault."""
    episodes: int = 0
    steps: int = 0
    duplicates: int = 0
    """Rows whose episode id an earlier row had (readers count the first only)."""
    corrupt: list[CorruptShard] = dataclasses.field(default_factory=list)
    being_written: list[Path] = dataclasses.field(default_factory=list)
    """Shards that could not be opened and were modified moments ago: not judged."""

    @property
    def ok(self) -> bool:
        return not self.corrupt


class EpisodeReader:
    def __init__(
        self,
        store_dir: str | Path,
        must_exist: bool = True,
        shards_per_poll: int | None = None,
        part: tuple[int, int] | None = None,
        move_corrupt: bool = True,
    ):
        """``shards_per_poll`` bounds what one ``poll()`` reads (None: every new shard), so
        a consumer that keeps a bounded part of a large store never holds all of it.
        ``part=(i, n)``: this reader sees only the i-th of n disjoint parts of the store's
        shards (``shard_part``), so n readers together read each shard once.
        ``move_corrupt=False``: corrupt shards are skipped and listed in ``corrupt`` but
        left where they are (a look at a store without changing it)."""
        if shards_per_poll is not None and shards_per_poll < 1:
            raise ValueError(f"shards_per_poll must be >= 1 or None, got {shards_per_poll}")
        if part is not None and not (part[1] >= 1 and 0 <= part[0] < part[1]):
            raise ValueError(f"part must be (i, n) with 0 <= i < n, got {part}")
        self.part = part
        self.store_dir = Path(store_dir)
        self.shards_per_poll = shards_per_poll
        self.behind = 0
        """New shards the last ``poll()`` left for the next ones (0: it read them all)."""
        if must_exist and not (self.store_dir / SHARDS).is_dir():
            raise StoreNotFoundError(
                f"no episode store at {self.store_dir} (expected {self.store_dir / SHARDS}/)"
            )
        self._seen: set[Path] = set()
        self._failed: set[Path] = set()  # shards an OS error kept from being read
        self._fresh_since: dict[Path, float] = {}  # unopenable fresh shards: first failure
        self.retrying = 0
        """Of ``behind``, the shards the last ``poll()`` tried and could not read (OS
        errors, shards still being written): the rest wait only for a later poll."""
        self._attempted: list[Path] = []  # the shards the last poll tried
        self.move_corrupt = move_corrupt
        self.quarantined: list[Path] = []
        """Where the corrupt shards this reader found went (``quarantine/...``)."""
        self.corrupt: list[CorruptShard] = []
        """Every corrupt shard this reader found (moved or not)."""

    def _read(
        self,
        path: Path,
        decode: Callable[[pa.Table], T],
        columns: list[str] | None = None,
        own_decoder: bool = True,
    ) -> T | None:
        """``decode`` of the shard's table (``columns`` of it); None if the shard vanished
        or was quarantined (corrupt Parquet, a foreign file, a column missing, rows that do
        not decode into episodes). ``own_decoder=False`` (a caller's decoder): its errors
        propagate and the shard stays. Raises OS errors (see the module doc) and unknown
        versions."""
        try:
            try:
                # page checksums (shards since 2026-12-05): a flipped bit is a corrupt shard
                opened = pq.ParquetFile(path, page_checksum_verification=True)
            except Exception as exc:
                self._unless_still_written(path, exc)
                raise
            with opened as shard:
                # the version first: a newer writer's shard may lack a column asked for
                _check_version(shard, path)
                table = shard.read(columns=columns)
            wanted = columns if columns is not None else ARROW_SCHEMA.names
            have = set(table.column_names) | set(LATER_COLUMNS)  # older shards lack these
            missing = [c for c in wanted if c not in have]
            if missing:
                raise SchemaError(f"{path}: no column(s) {missing}")
            _check_types(table.schema, path)
            if own_decoder:
                return decode(table)
        except FileNotFoundError:
            return None
        except UnknownSchemaVersionError:
            raise
        except Exception as exc:  # corrupt Parquet, foreign files and bad rows alike
            if _is_os_error(exc):
                raise
            reason = f"{type(exc).__name__}: {exc}"
            q = None
            if self.move_corrupt:
                q = quarantine(self.store_dir, path, reason)
            else:
                log.warning("corrupt shard %s (left in place): %s", path, reason)
            self.corrupt.append(CorruptShard(path, reason, q))
            if q is not None:
                self.quarantined.append(q)
            return None
        return decode(table)  # outside the try: the caller's errors are not the shard's

    def _unless_still_written(self, path: Path, exc: Exception) -> None:
        """Raise ``ShardBeingWrittenError`` for a shard that failed to open with ``exc``,
        was modified less than ``FRESH_SHARD_S`` ago, and has not failed for this reader
        for longer than that (a clock ahead of ours, a future mtime, is no reason to hold
        a torn shard for good); return (the shard is corrupt) otherwise."""
        if _is_os_error(exc) or isinstance(exc, FileNotFoundError) or path in self._seen:
            return  # (a shard this reader read whole is no longer being written)
        try:
            age = time.time() - path.stat().st_mtime
        except OSError:
            return
        if not -FRESH_SHARD_S < age < FRESH_SHARD_S:
            return
        first = self._fresh_since.setdefault(path, time.monotonic())
        if time.monotonic() - first >= FRESH_SHARD_S:
            return
        raise ShardBeingWrittenError(
            errno.EBUSY,
            f"cannot open it yet ({type(exc).__name__}: {exc}), modified {age:.0f} s ago: "
            f"still being written? (it is quarantined if still unreadable "
            f"{FRESH_SHARD_S:.0f} s on; write shards under another name, then rename)",
            str(path),
        ) from exc

    def _read_now(
        self,
        path: Path,
        decode: Callable[[pa.Table], T],
        columns: list[str] | None = None,
    ) -> T | None:
        """``_read`` for one-shot reads: a shard still being written is not in the store
        yet (as a writer's temp file is not): skipped with a warning."""
        try:
            return self._read(path, decode, columns)
        except ShardBeingWrittenError as exc:
            log.warning("skipping shard %s: %s", path, exc.strerror)
            return None

    def new_shards(self) -> list[Path]:
        """Shards not read yet, oldest first (this reader's part only). A robot folder
        that cannot be listed is left for a later call (with a warning); the shards
        folder itself that cannot be listed raises its ``OSError``."""
        listed = shard_paths(self.store_dir, skip_unlistable=True)
        new = [p for p in listed if p not in self._seen]
        if self.part is None:
            return new
        i, n = self.part
        mine = [p for p in new if shard_part(p, n) == i]
        self._seen.update(set(new) - set(mine))  # other readers' shards: never looked at again
        return mine

    def skip(self, paths: Iterable[Path]) -> None:
        """Mark shards as read, so ``poll`` never returns their episodes (e.g. to start
        from the newest part of a store)."""
        self._seen.update(Path(p) for p in paths)

    def poll(self, max_shards: int | None = None) -> list[Episode]:
        """Episodes from shards not read before (oldest first): at most ``max_shards``
        shards (default: the reader's ``shards_per_poll``); ``behind`` says how many
        are left."""
        polled = self._poll(_episodes, None, max_shards, own_decoder=True)
        return [e for _, eps in polled for e in eps]

    def poll_decoded(
        self,
        decode: Callable[[pa.Table], T],
        columns: list[str] | None = None,
        max_shards: int | None = None,
        decode_errors_quarantine: bool = False,
    ) -> list[tuple[Path, T]]:
        """``poll`` with a decoder of one's own: each new shard's path and ``decode`` of its
        table (only ``columns`` read, e.g. no images), oldest first. A corrupt shard is
        quarantined, as in ``poll``; an error of ``decode`` propagates (module doc), unless
        ``decode_errors_quarantine`` (a decoder of rows that only fails on bad rows)."""
        check_columns(columns)
        return self._poll(decode, columns, max_shards, own_decoder=decode_errors_quarantine)

    def _poll(
        self,
        decode: Callable[[pa.Table], T],
        columns: list[str] | None,
        max_shards: int | None,
        own_decoder: bool,
    ) -> list[tuple[Path, T]]:
        limit = max_shards if max_shards is not None else self.shards_per_poll
        try:
            new = self.new_shards()
        except OSError as exc:  # listing the folder (EMFILE, EIO): the next poll lists again
            log.warning("could not list the shards of %s (%s); retrying on the next poll",
                        self.store_dir, exc)  # fmt: skip
            self.behind = self.retrying = 0
            self._attempted = []
            return []
        # shards that failed for the machine's reasons (no permission yet, EIO) are retried
        # after the others, so that a few such shards cannot hold back every newer one
        paths = [p for p in new if p not in self._failed] + [p for p in new if p in self._failed]
        self.behind = max(0, len(paths) - limit) if limit is not None else 0
        self.retrying = 0
        out: list[tuple[Path, T]] = []
        done: list[Path] = []
        self._attempted = paths[:limit]
        for path in self._attempted:
            try:  # an unknown version raises before any shard is marked: none is lost
                decoded = self._read(path, decode, columns, own_decoder)
            except Exception as exc:
                if not _is_os_error(exc):
                    raise
                if not isinstance(exc, ShardBeingWrittenError) or path not in self._failed:
                    # (a shard still being written: said once, not at every poll)
                    log.warning(
                        "could not read shard %s (%s); retrying on the next poll", path, exc
                    )
                self.behind += 1
                self.retrying += 1
                self._failed.add(path)
                continue
            self._failed.discard(path)
            self._fresh_since.pop(path, None)
            done.append(path)
            if decoded is not None:
                out.append((path, decoded))
        self._seen.update(done)
        return out

    def drain_decoded(
        self,
        decode: Callable[[pa.Table], T],
        columns: list[str] | None = None,
        decode_errors_quarantine: bool = False,
    ) -> Iterator[tuple[Path, T]]:
        """``poll_decoded`` in parts (``shards_per_poll`` each) until every new shard has
        been tried once: shards failing with OS errors wait for the next call, and the
        others, older or newer than them, are read now."""
        tried: set[Path] = set()
        while True:
            yield from self.poll_decoded(
                decode, columns, decode_errors_quarantine=decode_errors_quarantine
            )
            fresh = set(self._attempted) - tried
            tried |= fresh
            if not self.behind or not fresh:
                return  # (no fresh shard: the poll went only to ones failing again)
            try:
                left = self.new_shards()
            except OSError:
                return  # the next call lists again
            if tried.issuperset(left):
                return

    def poll_final_views(self) -> list[FinalView]:
        """``poll`` without the frames: each new episode's ``FinalView`` (a fraction of
        the decode, for a relabel round's tail of the store)."""
        polled = self._poll(_final_views, FINAL_VIEW_COLUMNS, None, own_decoder=True)
        return [v for _, vs in polled for v in vs]

    def read_episode(self, path: str | Path, episode_id: str) -> Episode | None:
        """One episode of one of the store's shards (``metadata()`` rows name theirs:
        ``row["shard"]``). None: not there, or the shard vanished or was quarantined.
        Raises ``ValueError`` for a path outside the store's shards, OS errors and unknown
        versions, as ``episodes()`` does."""
        if not isinstance(episode_id, str):  # (inside the read: a "corrupt" shard)
            raise TypeError(f"episode_id is the stored hex string, got {type(episode_id).__name__}")
        path = Path(path)
        shards = (self.store_dir / SHARDS).resolve()
        # the robot folder as named, not where a link to it points (a robot folder may be
        # a link to another disk)
        if (
            path.suffix != ".parquet"
            or Path(os.path.abspath(path)).parent.parent.resolve() != shards
        ):
            raise ValueError(f"{path} is not a shard of the store {self.store_dir}")

        def pick(table: pa.Table) -> list[Episode]:
            return _episodes(table.filter(pc.equal(table["episode_id"], episode_id)))

        found = self._read_now(path, pick)
        return found[0] if found else None

    def _all_shards(self) -> list[Path]:
        """The store's shards, oldest first (only this reader's part, if it has one)."""
        paths = shard_paths(self.store_dir)
        if self.part is None:
            return paths
        i, n = self.part
        return [p for p in paths if shard_part(p, n) == i]

    def verify(self, progress: Callable[[Path], None] | None = None) -> VerifyReport:
        """Read every shard whole (this reader's part, if it has one): every page against
        its checksum and every row decoded into an ``Episode``, one shard at a time. A
        corrupt shard is quarantined (or, with ``move_corrupt=False``, only listed). OS
        errors and unknown schema versions raise, as in ``episodes()``. ``progress`` is
        called with each shard after it is read."""
        report = VerifyReport()
        seen: set[str] = set()
        corrupt_before = len(self.corrupt)
        for path in self._all_shards():
            try:
                got = self._read(path, _episodes)
            except ShardBeingWrittenError:
                report.being_written.append(path)
                got = None
            if got is not None:
                report.shards += 1
                for e in got:
                    report.episodes += 1
                    report.steps += e.num_steps
                    if e.episode_id in seen:
                        report.duplicates += 1
                    seen.add(e.episode_id)
            if progress is not None:
                progress(path)
        report.corrupt = list(self.corrupt[corrupt_before:])
        return report

    def episodes(self, tasks: Iterable[str] | None = None) -> Iterator[Episode]:
        """Every episode in the store, or of ``tasks`` only (the other rows are never
        decoded); only this reader's part, if it has one. Does not change what ``poll``
        has seen. Frames are read-only views of the shard's bytes (copy to change them)."""
        wanted = _task_list(tasks)
        for path in self._all_shards():
            yield from self._read_now(path, lambda t: _episodes(_of_tasks(t, wanted))) or []

    def final_views(self, tasks: Iterable[str] | None = None) -> Iterator[FinalView]:
        """``episodes()`` without the frames and actions: every episode's ``FinalView``
        (or those of ``tasks``), a shard at a time; OS errors raise, as there."""
        wanted = _task_list(tasks)
        for path in self._all_shards():
            got = self._read_now(
                path, lambda t: _final_views(_of_tasks(t, wanted)), FINAL_VIEW_COLUMNS
            )
            yield from got or []

    def metadata(self, tasks: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """Every episode's non-image columns (cheap: images are not read), or those of
        ``tasks`` only; only this reader's part, if it has one. Each row also names its
        ``shard`` (for ``read_episode``). ``scene`` and ``gt_success_by_task`` are JSON
        text, as stored (``Episode`` has them parsed)."""
        wanted = _task_list(tasks)
        rows: list[dict[str, Any]] = []
        for path in self._all_shards():
            got = self._read_now(path, lambda t: _rows(_of_tasks(t, wanted)), META_COLUMNS) or []
            rows.extend({**r, "shard": str(path)} for r in got)
        return rows
