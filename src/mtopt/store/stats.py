"""Store statistics: episodes per task and policy, success per task (ground truth and SD)."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from mtopt._plots import save_figure
from mtopt.store.reader import QUARANTINE, EpisodeReader, shard_paths


def sd_scores(
    store_dir: str | Path, sd_dir: str | Path, batch: int = 256
) -> tuple[dict[str, float], int]:
    """P(success) of every episode for its own task, from the success detector in
    ``sd_dir``, and how many episodes have images of another size than the detector
    judges (left unscored: a store a robot of another camera wrote to).

    Streams the store shard by shard, reading only final images (``final_views``) and
    scoring them in batches; episodes whose task the detector does not know are left
    out.
    """
    from mtopt.success.network import SuccessDetector

    sd = SuccessDetector.load(sd_dir)
    side = sd.net.cfg.image_size
    known = set(sd.tasks)
    out: dict[str, float] = {}
    other_size = 0
    ids: list[str] = []
    images: list[np.ndarray] = []
    cols: list[int] = []

    def flush() -> None:
        if ids:
            p = sd.score(np.stack(images), batch)
            for k, eid in enumerate(ids):
                out[eid] = float(p[k, cols[k]])
            ids.clear()
            images.clear()
            cols.clear()

    for v in EpisodeReader(store_dir).final_views(sorted(known)):
        if v.final_image.shape != (side, side, 3):
            other_size += 1
            continue
        ids.append(v.episode_id)
        images.append(v.final_image)
        cols.append(sd.task_index(v.task))
        if len(ids) >= batch:
            flush()
    flush()
    return out, other_size


def unique_episodes(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The first row of each ``episode_id``, in order: a store where a client wrote an
    episode twice counts it once, as LogReplay learns from it once."""
    return first_of_each(rows, lambda r: r["episode_id"])


T = TypeVar("T")


def first_of_each(items: Iterable[T], episode_id: Callable[[T], str]) -> list[T]:
    """The first item of each episode id (``episode_id(item)``), in order."""
    seen: set[str] = set()
    out = []
    for item in items:
        eid = episode_id(item)
        if eid not in seen:
            seen.add(eid)
            out.append(item)
    return out


def store_stats(
    store_dir: str | Path, sd_scores: Mapping[str, float] | None = None
) -> dict[str, Any]:
    """Counts per task and policy; success per task by ground truth and, given
    ``sd_scores`` (episode id -> P(success) for its task), by the success detector.

    An episode id met again (a client that wrote the same episode twice, say after a
    retry) counts once, as LogReplay learns from it once; ``duplicates`` says how many
    rows were left out."""
    reader = EpisodeReader(store_dir)
    every = reader.metadata()
    rows = unique_episodes(every)
    sd = sd_scores or {}
    per_task: dict[str, dict[str, Any]] = defaultdict(
        lambda: {"episodes": 0, "gt_success": 0, "gt_known": 0, "sd_success": 0, "sd_known": 0}
    )
    per_policy: dict[str, int] = defaultdict(int)
    for r in rows:
        t = per_task[r["task"]]
        t["episodes"] += 1
        per_policy[r["policy"]] += 1
        if r["gt_success"] is not None:
            t["gt_known"] += 1
            t["gt_success"] += int(r["gt_success"])
        s = sd.get(r["episode_id"])
        if s is not None:
            t["sd_known"] += 1
            t["sd_success"] += int(s >= 0.5)  # as LogReplay's rewards and evaluate judge
    tasks = {
        k: {
            "episodes": v["episodes"],
            "gt_success_rate": v["gt_success"] / v["gt_known"] if v["gt_known"] else None,
            "sd_success_rate": v["sd_success"] / v["sd_known"] if v["sd_known"] else None,
        }
        for k, v in sorted(per_task.items())
    }
    return {
        "episodes": len(rows),
        "shards": len(shard_paths(store_dir)),  # the files the reader reads
        # every shard set aside so far: by this read, by an SD scoring of the same
        # store just before it (``sd_scores``, which reads the images), or earlier
        "quarantined": sum(1 for q in (Path(store_dir) / QUARANTINE).glob("*/*") if q.is_file()),
        "duplicates": len(every) - len(rows),
        "tasks": tasks,
        "policies": dict(sorted(per_policy.items())),
    }


def plot_stats(stats: dict[str, Any], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(stats["tasks"])
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.2))
    a1.bar(tasks, [stats["tasks"][t]["episodes"] for t in tasks], color="tab:blue")
    a1.set_title("episodes per task")
    xs = range(len(tasks))
    for shift, key, name in (
        (-0.2, "gt_success_rate", "ground truth"),
        (0.2, "sd_success_rate", "success detector"),
    ):
        rates = [stats["tasks"][t][key] for t in tasks]
        # an unknown rate (no ground truth, no SD score) is "n/a", not a bar at 0%
        a2.bar(
            [x + shift for x in xs], [np.nan if r is None else r for r in rates], 0.4, label=name
        )
        for x, r in zip(xs, rates, strict=True):
            if r is None:
                a2.text(x + shift, 0.01, "n/a", ha="center", va="bottom", fontsize=7)
    a2.set_xticks(list(xs), tasks)
    a2.set_xlim(-0.6, len(tasks) - 0.4)  # NaN bars do not count when autoscaling
    a2.set_ylim(0, 1)
    a2.set_title("success rate per task")
    a2.legend()
    for a in (a1, a2):
        a.tick_params(axis="x", rotation=45, labelsize=8)
    return save_figure(fig, out, dpi=100)


def collection_minutes(
    started_at: Sequence[float] | np.ndarray, max_gap_s: float = 60.0
) -> np.ndarray:
    """Minutes of collection before each episode (in ``started_at`` order given sorted
    times): the gaps between consecutive episodes, each clipped to ``max_gap_s``, summed,
    so a run that was stopped for a night and resumed does not show an empty night."""
    t = np.asarray(started_at, dtype=np.float64)
    if t.size == 0:
        return t
    gaps = np.clip(np.diff(t, prepend=t[0]), 0.0, max_gap_s)
    return np.cumsum(gaps) / 60.0


def success_over_time(
    rows: Sequence[Mapping[str, Any]],
    judge: str,
    episode_tasks: Collection[str],
    bin_minutes: float = 10.0,
    max_gap_s: float = 60.0,
) -> dict[str, Any]:
    """Ground-truth success at ``judge`` of the episodes collected for ``episode_tasks``
    (e.g. every lift-* episode judged as lift-any), per policy and per ``bin_minutes`` of
    collection time (:func:`collection_minutes` over the whole store).

    Returns ``{"judge", "bin_minutes", "minutes", "policies": {policy: [{"start",
    "episodes", "successes", "rate"}, ...]}}``; a bin without episodes of a policy is
    left out of that policy's list. Episodes without ground truth are skipped, and an
    episode id met again counts once (``unique_episodes``)."""
    if not (math.isfinite(bin_minutes) and bin_minutes > 0):
        raise ValueError(f"bin_minutes must be a finite number > 0, got {bin_minutes}")
    unique = unique_episodes(rows)
    # a shard another tool wrote may hold a NaN time: no place on the timeline (it broke
    # the sort and the binning, failing the command for the whole store)
    ordered = sorted(
        (r for r in unique if finite_time(r["started_at"])), key=lambda r: r["started_at"]
    )
    minutes = collection_minutes([r["started_at"] for r in ordered], max_gap_s)
    counts: dict[str, dict[int, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    wanted = set(episode_tasks)
    untimed = sum(r["task"] in wanted and not finite_time(r["started_at"]) for r in unique)
    for r, m in zip(ordered, minutes, strict=True):
        if r["task"] not in wanted or not r.get("gt_success_by_task"):
            continue
        by_task = json.loads(r["gt_success_by_task"])
        if judge not in by_task:
            continue
        c = counts[r["policy"]][int(m // bin_minutes)]
        c[0] += 1
        c[1] += int(bool(by_task[judge]))
    return {
        "judge": judge,
        "episode_tasks": sorted(wanted),
        "bin_minutes": bin_minutes,
        "minutes": float(minutes[-1]) if len(minutes) else 0.0,
        "untimed": untimed,
        "policies": {
            policy: [
                {"start": b * bin_minutes, "episodes": n, "successes": s, "rate": s / n}
                for b, (n, s) in sorted(bins.items())
            ]
            for policy, bins in sorted(counts.items())
        },
    }


def finite_time(value: Any) -> bool:
    """A usable ``started_at``: a finite number (a shard another tool wrote may hold a NaN
    or a null)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def plot_success_over_time(timeline: dict[str, Any], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    width = timeline["bin_minutes"]
    for policy, bins in timeline["policies"].items():
        ax.plot(
            [b["start"] + width / 2 for b in bins],
            [b["rate"] for b in bins],
            marker="o",
            label=f"{policy} ({sum(b['episodes'] for b in bins)} episodes)",
        )
    judge = timeline["judge"]
    of = timeline.get("episode_tasks") or [judge]
    ax.set_xlabel("collection minutes")
    ax.set_ylabel(f"ground-truth success at {judge}")
    ax.set_ylim(0, 1)
    # which episodes: a skill's tasks, whose outcomes are judged at this one
    names = ", ".join(of) if len(of) <= 3 else f"{len(of)} tasks ({of[0]}, ...)"
    ax.set_title(f"{judge}: episodes collected for {names}, by policy", fontsize=9)
    ax.legend(fontsize=8)
    return save_figure(fig, out, dpi=100)
