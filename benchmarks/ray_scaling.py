"""Ray scaling: episodes/s and learner steps/s with 1 and 2 robot actors on a local Ray
(2 CPUs), and the overhead of the Ray runtime versus the local runtime on the same config.

Usage:
  python benchmarks/ray_scaling.py --json OUT [--minutes 2] [--dir runs/ray_scaling]

Every arm is a full `mtopt run` (same code path as the CLI) on the `tiny` network with a
fixed wall-clock budget. The success detector and the scripted baseline are built once in
a template run directory and copied into every arm, so the arms time collection and
learning, not set-up. Rates are counted over each arm's whole run (Ray start-up included:
that is part of the overhead a user pays). Ratios are computed within this one run.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from _results import write_result


def arm_config(minutes: float, robots: int, runtime: str) -> Any:
    from mtopt.config import override
    from mtopt.runtime.config import preset

    return override(
        preset("tiny"),
        [
            f"robots={robots}",
            f"runtime={runtime}",
            f"budget_minutes={minutes}",
            "max_learner_steps=0",
            "max_episodes=0",
            "max_collect_rate=1000",
            "sd.improve_every_episodes=0",
            "eval.every_steps=1000000000",
            "eval.episodes_per_task=1",
            "eval.tasks=lift-any",
        ],
    )


def prepare_template(root: Path, minutes: float) -> Path:
    from mtopt.runtime.local import LocalRun

    tpl = root / "template"
    if not (tpl / "scripted_eval.json").exists():
        run = LocalRun(arm_config(minutes, 1, "local"), tpl, resume=True)
        run.init_sd()
        run.scripted_baseline()
    return tpl


def run_arm(root: Path, tpl: Path, name: str, minutes: float, robots: int, runtime: str) -> dict:
    from mtopt.runtime.local import LocalRun
    from mtopt.runtime.ray_runtime import run_ray
    from mtopt.store.reader import EpisodeReader

    out = root / name
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    shutil.copytree(tpl / "sd", out / "sd")
    shutil.copy(tpl / "scripted_eval.json", out / "scripted_eval.json")
    cfg = arm_config(minutes, robots, runtime)
    t = time.time()
    if runtime == "ray":
        summary = run_ray(cfg, out)
    else:
        summary = LocalRun(cfg, out).run()
    wall = time.time() - t
    episodes = sum(1 for _ in EpisodeReader(out / "store").metadata())
    return {
        "runtime": runtime,
        "robots": robots,
        "wall_s": round(wall, 1),
        "episodes": episodes,
        "learner_steps": summary["learner_steps"],
        "episodes_per_s": round(episodes / wall, 3),
        "learner_steps_per_s": round(summary["learner_steps"] / wall, 3),
        "config": dataclasses.asdict(cfg)["qnet"],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", required=True)
    ap.add_argument("--minutes", type=float, default=2.0)
    ap.add_argument("--dir", default="runs/ray_scaling")
    args = ap.parse_args()
    root = Path(args.dir)
    root.mkdir(parents=True, exist_ok=True)
    tpl = prepare_template(root, args.minutes)
    arms: dict[str, dict] = {}
    for name, runtime, robots in [
        ("local-1", "local", 1),
        ("local-2", "local", 2),
        ("ray-1", "ray", 1),
        ("ray-2", "ray", 2),
    ]:
        print(f"[ray_scaling] {name} ...", file=sys.stderr, flush=True)
        arms[name] = run_arm(root, tpl, name, args.minutes, robots, runtime)
        print(f"[ray_scaling] {name}: {arms[name]}", file=sys.stderr, flush=True)

    def ratio(a: str, b: str, key: str) -> float | None:
        den = arms[b][key]
        return round(arms[a][key] / den, 3) if den else None

    out = {
        "benchmark": "ray_scaling",
        "minutes_per_arm": args.minutes,
        "num_cpus": 2,
        "arms": arms,
        "ratios": {
            "ray_episodes_2_vs_1_robots": ratio("ray-2", "ray-1", "episodes_per_s"),
            "local_episodes_2_vs_1_robots": ratio("local-2", "local-1", "episodes_per_s"),
            "ray_vs_local_episodes_1_robot": ratio("ray-1", "local-1", "episodes_per_s"),
            "ray_vs_local_episodes_2_robots": ratio("ray-2", "local-2", "episodes_per_s"),
            "ray_vs_local_learner_steps_1_robot": ratio("ray-1", "local-1", "learner_steps_per_s"),
            "ray_vs_local_learner_steps_2_robots": ratio("ray-2", "local-2", "learner_steps_per_s"),
        },
    }
    write_result(args.json, out, show=out["ratios"])


if __name__ == "__main__":
    main()
