"""Store statistics: episodes per task and policy, success per task (ground truth and SD)."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from mtopt.store.reader import EpisodeReader

SD_REWARDS_FILE = "sd_rewards.json"  # optional: {episode_id: {task: 0/1}} written by LogReplay


def store_stats(store_dir: str | Path) -> dict[str, Any]:
    reader = EpisodeReader(store_dir)
    rows = reader.metadata()
    sd: dict[str, dict[str, float]] = {}
    sd_path = Path(store_dir) / SD_REWARDS_FILE
    if sd_path.exists():
        sd = json.loads(sd_path.read_text())
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
        s = sd.get(r["episode_id"], {}).get(r["task"])
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
