"""Store statistics: episodes per task and policy, success per task (ground truth and SD)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mtopt.store.reader import EpisodeReader


def sd_scores(store_dir: str | Path, sd_dir: str | Path, batch: int = 256) -> dict[str, float]:
    """P(success) of every episode for its own task, from the success detector in ``sd_dir``.

    Streams the store shard by shard, scoring final images in batches; episodes whose task
    the detector does not know are left out.
    """
    from mtopt.success.network import SuccessDetector

    sd = SuccessDetector.load(sd_dir)
    known = set(sd.tasks)
    out: dict[str, float] = {}
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

    for e in EpisodeReader(store_dir).episodes():
        if e.task in known:
            ids.append(e.episode_id)
            images.append(e.final_image)
            cols.append(sd.task_index(e.task))
            if len(ids) >= batch:
                flush()
    flush()
    return out


def store_stats(
    store_dir: str | Path, sd_scores: Mapping[str, float] | None = None
) -> dict[str, Any]:
    """Counts per task and policy; success per task by ground truth and, given
    ``sd_scores`` (episode id -> P(success) for its task), by the success detector."""
    reader = EpisodeReader(store_dir)
    rows = reader.metadata()
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
            t["sd_success"] += int(s > 0.5)
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
        "shards": len(list((Path(store_dir) / "shards").glob("*/*.parquet"))),
        "quarantined": len(reader.quarantined),
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
    gt = [stats["tasks"][t]["gt_success_rate"] or 0.0 for t in tasks]
    sd = [stats["tasks"][t]["sd_success_rate"] or 0.0 for t in tasks]
    xs = range(len(tasks))
    a2.bar([x - 0.2 for x in xs], gt, 0.4, label="ground truth")
    a2.bar([x + 0.2 for x in xs], sd, 0.4, label="success detector")
    a2.set_xticks(list(xs), tasks)
    a2.set_ylim(0, 1)
    a2.set_title("success rate per task")
    a2.legend()
    for a in (a1, a2):
        a.tick_params(axis="x", rotation=45, labelsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
