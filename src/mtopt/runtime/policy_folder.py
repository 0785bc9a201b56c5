"""Policy folders: a run's learned policy on its own (``mtopt export``, ``mtopt average``,
and the averaged policy a run writes at its end).

A policy folder holds ``config.json`` (the run's config), ``weights/`` (published
weights with only the networks a policy needs) and ``exported.json`` (where it came
from). It acts like the run for ``mtopt sim demo --run`` and ``evaluate_run.py --run``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import time
from pathlib import Path
from typing import Any

from mtopt._io import atomic_write_json
from mtopt.config import save_config
from mtopt.qtopt.weights import (
    WeightsError,
    average_into,
    file_meta,
    read_latest,
    snapshot_files,
)
from mtopt.runtime.config import RunConfig, load_run_config

AVERAGED = "policy-averaged"
"""The folder in a run directory where the run writes its averaged policy at the end."""


def write_policy_folder(
    out: Path,
    run: Path,
    cfg: RunConfig,
    version: int,
    step: int | None,
    parts: list[str],
    **extra: object,
) -> None:
    """The rest of a policy folder, beside its weights: the run's config and
    ``exported.json`` (where it came from, version, learner step, networks)."""
    save_config(cfg, out / "config.json")
    atomic_write_json(
        out / "exported.json",
        {
            "from": str(run.resolve()),  # (a relative path means nothing once copied)
            "version": version,
            "learner_step": step,
            "parts": parts,
            **extra,
            "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
    )


def averaged_record(source: Path) -> dict[str, Any]:
    """For ``exported.json`` of a folder exported from ``source``: the ``averaged`` record
    of a ``source`` that is itself an average (``mtopt average``), so that the export
    still says what its network is; nothing for a run or a plain export."""
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        averaged = json.loads((source / "exported.json").read_text())["averaged"]
        if isinstance(averaged, dict):
            return {"averaged": averaged}
    return {}


def acting_search_record(source: Path, cfg: RunConfig) -> dict[str, Any]:
    """For ``exported.json``: how ``cfg``'s acting search (``--act``) differs from the one
    the run collected and evaluated with, which is ``source``'s own, or, where ``source``
    is a policy folder made with ``--act``, the run's it recorded. Nothing when the same."""
    run = dataclasses.asdict(load_run_config(source / "config.json").cem_act)
    # (a run, or a folder exported without --act, has no record: its own search stands)
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        earlier = json.loads((source / "exported.json").read_text())["acting_search"]["run"]
        run = dict(earlier) if isinstance(earlier, dict) else run
    changed = {k: v for k, v in dataclasses.asdict(cfg.cem_act).items() if run.get(k) != v}
    return {"acting_search": {"changed": changed, "run": run}} if changed else {}


def late_sources(root: Path, last: int) -> list[Path]:
    """What a run's end-of-run average takes: the run (its latest published weights) and
    its last ``last`` weight snapshots, leaving out a snapshot of the latest weights
    themselves: their version, or their learner step (a run publishes again at its end
    under a new version, the same network). Either would count twice. Only the run when
    it has no snapshots yet."""
    latest = read_latest(root / "weights")
    if latest is None:
        raise WeightsError(f"no published weights in {root / 'weights'}")
    step = (latest.get("meta") or {}).get("step")
    snaps = [
        s
        for s in snapshot_files(root / "weights")
        if s.name != latest["file"] and (step is None or file_meta(s).get("step") != step)
    ]
    return [root, *(snaps[-last:] if last > 0 else [])]


def average_run(
    root: Path, cfg: RunConfig, last: int, name: str = AVERAGED
) -> tuple[Path, dict[str, Any]]:
    """Average a run's latest acting and online weights with its last ``last`` snapshots
    (``late_sources``) into the policy folder ``root/name``, replacing the one an earlier
    invocation of the run wrote there. Built beside it first and swapped in by renames,
    so a crash leaves the old folder or the new one (or, between the two renames, the old
    one under ``.name.old``), never half of one. Returns (folder, its exported.json)."""
    sources = late_sources(root, last)
    dst, tmp, old = root / name, root / f".{name}.tmp", root / f".{name}.old"
    shutil.rmtree(tmp, ignore_errors=True)
    _, version, meta = average_into(tmp / "weights", list(sources), ("acting", "online"))
    averaged = {"parts": ["acting", "online"], "sources": meta["averaged"]}
    write_policy_folder(tmp, root, cfg, version, meta.get("step"), ["acting"], averaged=averaged)
    shutil.rmtree(old, ignore_errors=True)
    if dst.exists():
        dst.rename(old)
    tmp.rename(dst)
    shutil.rmtree(old, ignore_errors=True)
    return dst, {"version": version, "learner_step": meta.get("step"), "averaged": averaged}
