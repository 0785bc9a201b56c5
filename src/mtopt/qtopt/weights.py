"""Published, versioned weights: ``<dir>/<prefix>-<version:08d>.safetensors`` + ``latest.json``.

The learner publishes; robots and Bellman updaters poll ``latest.json`` (written
atomically, after the weights file) and load with safetensors (no pickle). The metadata
carries the network config, so loading into a different architecture fails with a
clear message instead of a shape error from deep inside PyTorch.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

from mtopt._io import atomic_write_bytes, atomic_write_json


class WeightsError(RuntimeError):
    """Missing, corrupt or incompatible weights."""


@contextlib.contextmanager
def publish_lock(directory: Path, prefix: str) -> Iterator[None]:
    """Hold ``<dir>/.<prefix>-publish.lock`` (an advisory POSIX lock; none where the
    platform has no fcntl): two processes publishing into one folder (a run's SD rounds
    and ``mtopt sd improve``) take turns, so neither overwrites the other's version."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    with open(directory / f".{prefix}-publish.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def publish(
    directory: str | Path,
    tensors: dict[str, torch.Tensor],
    version: int,
    meta: dict[str, Any],
    prefix: str = "q",
    keep: int = 5,
) -> Path:
    """Write weights ``version`` atomically, then point ``latest.json`` at it. The check
    that ``version`` is new and the writes happen under ``publish_lock``."""
    return _publish(directory, tensors, version, meta, prefix, keep)[1]


def publish_next(
    directory: str | Path,
    tensors: dict[str, torch.Tensor],
    meta: dict[str, Any],
    prefix: str = "q",
    keep: int = 5,
) -> tuple[int, Path]:
    """``publish`` as the version after the latest one, picked under ``publish_lock``:
    for folders more than one process publishes into (a run's SD rounds, ``mtopt sd
    train`` and ``mtopt sd improve``), where a version read before the lock may be taken
    by the time it is written. Returns the version and its file."""
    return _publish(directory, tensors, None, meta, prefix, keep)


def _publish(
    directory: str | Path,
    tensors: dict[str, torch.Tensor],
    version: int | None,
    meta: dict[str, Any],
    prefix: str,
    keep: int,
) -> tuple[int, Path]:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    blob = save(
        {k: v.detach().contiguous().cpu() for k, v in tensors.items()},
        metadata={"meta": json.dumps(meta)},
    )
    with publish_lock(d, prefix):
        latest = read_latest(d, prefix)
        newest = 0 if latest is None else int(latest["version"])
        if version is None:
            version = newest + 1
        elif version <= newest:
            raise WeightsError(f"version {version} is not newer than published version {newest}")
        path = d / f"{prefix}-{version:08d}.safetensors"
        atomic_write_bytes(path, blob)
        atomic_write_json(
            d / f"{prefix}-latest.json", {"version": version, "file": path.name, "meta": meta}
        )
        old = sorted(d.glob(f"{prefix}-*.safetensors"))[:-keep]
        for p in old:
            p.unlink(missing_ok=True)
    return version, path


def read_latest(directory: str | Path, prefix: str = "q") -> dict[str, Any] | None:
    p = Path(directory) / f"{prefix}-latest.json"
    if not p.exists():
        return None
    try:
        data = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise WeightsError(f"corrupt {p}: {exc}") from None
    # what publish writes: {"version": int, "file": name, "meta": {...}}
    problem = None
    if not isinstance(data, dict):
        problem = f"a JSON {type(data).__name__}, not an object"
    elif isinstance(data.get("version"), bool) or not isinstance(data.get("version"), int):
        problem = f"version {data.get('version')!r} is not an integer"
    elif not isinstance(data.get("file"), str):
        problem = f"file {data.get('file')!r} is not a file name"
    elif not isinstance(data.get("meta", {}), dict):
        problem = "meta is not an object"
    if problem is not None:
        raise WeightsError(f"malformed {p.name} in {p.parent}: {problem}")
    return cast(dict[str, Any], data)


def load_latest(
    directory: str | Path, prefix: str = "q"
) -> tuple[int, dict[str, torch.Tensor], dict[str, Any]]:
    latest = read_latest(directory, prefix)
    if latest is None:
        raise WeightsError(
            f"no published '{prefix}' weights in {directory} (missing {prefix}-latest.json)"
        )
    try:
        path = Path(directory) / str(latest["file"])
        version, meta = int(latest["version"]), dict(latest.get("meta", {}))
    except (KeyError, TypeError, ValueError) as exc:
        raise WeightsError(f"malformed {prefix}-latest.json in {directory}: {exc!r}") from None
    try:
        tensors = load_file(str(path))
    except (OSError, RuntimeError, SafetensorError) as exc:  # a truncated file: SafetensorError
        raise WeightsError(f"cannot read weights {path}: {exc}") from None
    return version, tensors, meta


def file_meta(path: str | Path) -> dict[str, Any]:
    """The metadata of one weights file (its header only; no tensors are read)."""
    try:
        with safe_open(str(path), "pt") as f:
            meta: dict[str, Any] = json.loads((f.metadata() or {}).get("meta", "{}"))
    except (OSError, RuntimeError, SafetensorError, json.JSONDecodeError) as exc:
        raise WeightsError(f"cannot read weights {path}: {exc}") from None
    return meta


def load_version(
    directory: str | Path, version: int, prefix: str = "q"
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An earlier published ``version`` (while kept: ``publish`` keeps the last few), with
    the metadata stored in its own file."""
    path = Path(directory) / f"{prefix}-{version:08d}.safetensors"
    try:
        with safe_open(str(path), "pt") as f:  # one read: the header's metadata, then tensors
            meta = json.loads((f.metadata() or {}).get("meta", "{}"))
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
    except FileNotFoundError:
        raise WeightsError(f"weights version {version} not found in {directory}") from None
    except (OSError, RuntimeError, SafetensorError, json.JSONDecodeError) as exc:
        raise WeightsError(f"cannot read weights {path}: {exc}") from None
    return tensors, meta


def check_config(expected: dict[str, Any], found: dict[str, Any], what: str) -> None:
    """Raise a one-line error naming every config field that differs."""
    diff = {k: (found.get(k), v) for k, v in expected.items() if found.get(k) != v}
    if diff:
        parts = ", ".join(
            f"{k}: weights have {a!r}, model wants {b!r}" for k, (a, b) in diff.items()
        )
        raise WeightsError(f"{what} was saved for a different architecture ({parts})")


def split_prefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    n = len(prefix) + 1
    return {k[n:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


def export_parts(
    src: str | Path,
    dst: str | Path,
    parts: tuple[str, ...] = ("acting", "online"),
    prefix: str = "q",
    snapshot: int | None = None,
) -> tuple[Path, int, dict[str, Any]]:
    """Copy the latest published weights of ``src`` (or, with ``snapshot``, that version
    from ``src/snapshots/``) into ``dst`` with only the networks ``parts`` (e.g. the
    acting and online networks a policy needs, not the target networks), keeping their
    version and metadata, so ``dst`` loads like a run's weights directory. Returns (the
    written file, version, meta)."""
    if snapshot is None:
        version, tensors, meta = load_latest(src, prefix)
        what = "the latest weights"
    else:
        kept_versions = [int(f.stem.rpartition("-")[2]) for f in snapshot_files(src, prefix)]
        if snapshot not in kept_versions:
            raise WeightsError(
                f"no snapshot of version {snapshot} in {Path(src) / SNAPSHOTS}: it keeps "
                + (", ".join(map(str, kept_versions)) if kept_versions else "none")
            )
        version = snapshot
        tensors, meta = load_version(Path(src) / SNAPSHOTS, snapshot, prefix)
        what = f"snapshot {snapshot}"
    kept = {k: v for k, v in tensors.items() if k.split(".", 1)[0] in parts}
    missing = [p for p in parts if not split_prefixed(tensors, p)]
    if missing:
        raise WeightsError(f"{what} in {src} has no {missing} network")
    _refuse_published(Path(dst), prefix)
    return publish(dst, kept, version, meta, prefix), version, meta


def _refuse_published(d: Path, prefix: str) -> None:
    if read_latest(d, prefix) is not None:
        raise WeightsError(f"{d} already holds published weights: write into a new folder")


# ------------------------------------------------------- snapshots and weight averages
SNAPSHOTS = "snapshots"


def snapshot_due(step: int, every: int, publish_every: int) -> bool:
    """Whether the weights published at ``step`` are the first at or after a multiple of
    ``every`` learner steps (publications come every ``publish_every`` steps; ``every``
    need not be a multiple of it). ``every`` 0: never."""
    return every > 0 and step % every < publish_every


def snapshot_files(directory: str | Path, prefix: str = "q") -> list[Path]:
    """The weight snapshots kept in ``<directory>/snapshots/``, oldest first."""
    return sorted((Path(directory) / SNAPSHOTS).glob(f"{prefix}-*.safetensors"))


def snapshot_latest(directory: str | Path, prefix: str = "q") -> Path:
    """Keep a copy of the latest published weights in ``<directory>/snapshots/``, which
    ``publish``'s pruning never touches (for averaging checkpoints after a run)."""
    latest = read_latest(directory, prefix)
    if latest is None:
        raise WeightsError(f"no published '{prefix}' weights in {directory} to snapshot")
    src = Path(directory) / latest["file"]
    dst = Path(directory) / SNAPSHOTS / src.name
    if not dst.exists():
        dst.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(dst, src.read_bytes())
    return dst


def load_source(
    source: str | Path, prefix: str = "q"
) -> tuple[int, dict[str, torch.Tensor], dict[str, Any]]:
    """Weights from a run folder (its ``weights/``), a weights folder (its latest
    version) or one ``<prefix>-<version>.safetensors`` file (a snapshot): (version,
    tensors, meta)."""
    p = Path(source)
    if p.is_dir():
        return load_latest(p / "weights" if (p / "weights").is_dir() else p, prefix)
    stem = p.name.removesuffix(".safetensors")
    head, _, number = stem.rpartition("-")
    if p.suffix != ".safetensors" or head != prefix or not number.isdigit():
        raise WeightsError(
            f"{p} is neither a folder nor a published weights file ({prefix}-<version>.safetensors)"
        )
    tensors, meta = load_version(p.parent, int(number), prefix)
    return int(number), tensors, meta


def average_state_dicts(
    members: list[dict[str, torch.Tensor]],
) -> dict[str, torch.Tensor]:
    """The element-wise mean of several networks' parameters (checkpoint averaging, as in
    stochastic weight averaging). Every member must have the same keys and shapes;
    floating-point tensors are averaged in float64 and returned in their own dtype,
    other tensors (integer buffers) must be equal in every member."""
    if not members:
        raise WeightsError("nothing to average")
    keys = set(members[0])
    out: dict[str, torch.Tensor] = {}
    for i, m in enumerate(members[1:], 1):
        if set(m) != keys:
            raise WeightsError(
                f"member {i} has other tensors than member 0: {sorted(set(m) ^ keys)[:3]}"
            )
    for k, first in members[0].items():
        if any(m[k].shape != first.shape for m in members):
            raise WeightsError(f"tensor {k!r} differs in shape between members")
        if first.is_floating_point():
            acc = torch.stack([m[k].to(torch.float64) for m in members]).mean(0)
            out[k] = acc.to(first.dtype)
        elif all(torch.equal(m[k], first) for m in members):
            out[k] = first.clone()
        else:
            raise WeightsError(f"non-float tensor {k!r} differs between members: cannot average")
    return out


def _same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(
        a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a
    )


def average_into(
    dst: str | Path,
    sources: list[str | Path],
    parts: tuple[str, ...] = ("acting", "online"),
    prefix: str = "q",
    expected_qnet: dict[str, Any] | None = None,
    expected_tasks: tuple[str, ...] | None = None,
    across_origins: bool = False,
) -> tuple[Path, int, dict[str, Any]]:
    """Average the networks ``parts`` of every source (``load_source``) into one network
    and publish it in the new folder ``dst`` as the ``acting`` network, under the newest
    source's version. All sources must have the same network config; each must have
    every part. Returns (file, version, meta); ``meta["averaged"]`` lists, per source,
    what went in (source, version, learner step). A source whose tensors equal an earlier
    one's (a run's latest weights and its last snapshot, often) is left out, in
    ``meta["left_out"]``, rather than counted twice. The fields in ``expected_qnet`` (what
    the policy's config needs of the network, e.g. its image size) must match the
    sources' network, and the sources' tasks (where their weights name them) must be
    ``expected_tasks`` (the policy's config's). Sources whose weights name different
    origins (``Learner.origin``: trained from other initial networks, as two runs of
    other seeds are) are refused unless ``across_origins``: the mean of two
    independently trained networks is not a network that does what either does. A mean
    of several origins names none."""
    _refuse_published(Path(dst), prefix)
    if not sources:
        raise WeightsError("no sources to average")
    seen: set[Path] = set()
    for src in sources:
        key = Path(src).resolve()
        if key in seen:
            raise WeightsError(f"{src} is given twice: each source counts once in an average")
        seen.add(key)
    members: list[dict[str, torch.Tensor]] = []
    used: list[dict[str, Any]] = []
    left_out: list[dict[str, Any]] = []
    kept: list[tuple[str | Path, dict[str, torch.Tensor]]] = []
    meta0: dict[str, Any] | None = None
    origins_seen: list[tuple[str | Path, Any]] = []
    for src in sources:
        version, tensors, meta = load_source(src, prefix)
        if meta0 is None:
            meta0 = meta
        else:
            check_config(meta0.get("qnet", {}), meta.get("qnet", {}), f"weights {src}")
            if "tasks" in meta0 and "tasks" in meta and meta0["tasks"] != meta["tasks"]:
                # one task input would average two tasks' networks
                raise WeightsError(
                    f"weights {src} were trained on the tasks {meta['tasks']}, "
                    f"{sources[0]} on {meta0['tasks']}: an average needs the same tasks"
                )
        origin = meta.get("origin")
        if origin:  # (weights from before origins: not checked)
            first = origins_seen[0] if origins_seen else (src, origin)
            if origin != first[1] and not across_origins:
                raise WeightsError(
                    f"weights {src} and {first[0]} were trained from different initial "
                    f"networks (origins {origin} and {first[1]}: other runs); their "
                    "average is no network of either (--across-runs, or across_origins, "
                    "averages them anyway)"
                )
            origins_seen.append((src, origin))
        # the networks that go in: a run's file holds target networks an export leaves out
        chosen = {k: v for k, v in tensors.items() if k.split(".", 1)[0] in parts}
        same = next((s for s, t in kept if _same_tensors(t, chosen)), None)
        if same is not None:
            # the same network under another name (a run republishes its last weights
            # at its end under a new version; its last snapshot may be them): it would
            # count twice
            left_out.append({"source": str(src), "version": version, "same_as": str(same)})
            continue
        kept.append((src, chosen))
        for part in parts:
            sd = split_prefixed(tensors, part)
            if not sd:
                raise WeightsError(f"weights {src} have no {part!r} network")
            members.append(sd)
        # absolute: a relative path means nothing in a folder copied elsewhere
        used.append(
            {"source": str(Path(src).resolve()), "version": version, "step": meta.get("step")}
        )
    assert meta0 is not None
    if (
        expected_tasks is not None
        and "tasks" in meta0
        and list(meta0["tasks"]) != list(expected_tasks)
    ):
        raise WeightsError(
            f"weights {sources[0]} were trained on the tasks {meta0['tasks']}, the policy's "
            f"config has {list(expected_tasks)}"
        )
    if expected_qnet is not None:  # fields the weights predate keep their defaults
        found = meta0.get("qnet", {})
        shared = {k: v for k, v in expected_qnet.items() if k in found}
        check_config(shared, found, f"weights {sources[0]} (for the config's Q-network)")
    avg = average_state_dicts(members)
    steps = [u["step"] for u in used if isinstance(u["step"], int)]
    meta = {**meta0, "step": max(steps) if steps else meta0.get("step"), "averaged": used}
    if len({o for _, o in origins_seen}) > 1:  # (across_origins) a mix of no one origin
        meta.pop("origin", None)
    if left_out:
        meta["left_out"] = left_out
    # the newest version of all, a left-out duplicate's too (a run's republished weights)
    version = max(int(u["version"]) for u in (*used, *left_out))
    path = publish(dst, {f"acting.{k}": v for k, v in avg.items()}, version, meta, prefix)
    return path, version, meta
