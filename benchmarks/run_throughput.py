"""Learner steps/s and episodes/s of the whole `mtopt run` (local preset, 2 cores) with the
Bellman updater in the learner's loop (serial) and in a background thread (prefetch),
plus a prefetch arm that collects at half the rate.

Every arm is the CLI (`mtopt run --config local`, same code path as a user's run) for a
fixed budget, with the success detector cut to a few examples and no SD rounds or
periodic evaluations, so the arms time collection, Bellman targets and learning. Arms run
one after another in the order given (serial and prefetch interleaved, twice), and rates
are read from each arm's summary.json (steps and episodes over its whole run, start-up
included). Ratios are computed within this one run.

Usage:
  python benchmarks/run_throughput.py --json OUT [--minutes 5] [--dir runs]
        [--skip-existing]   reuse arms whose directory already holds a summary.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _results import write_result

COMMON = [
    "seed=1",
    "learner.seed=1",
    "sd.examples_per_task=3",
    "sd.train.steps=30",
    "sd.improve_every_episodes=0",
    "eval.every_steps=1000000",
    "eval.scripted_episodes=2",
]
ARMS = {
    "serial": ["bellman_prefetch=0"],
    "prefetch": ["bellman_prefetch=2"],
    "serial2": ["bellman_prefetch=0"],
    "prefetch2": ["bellman_prefetch=2"],
    "rate3": ["bellman_prefetch=2", "max_collect_rate=3"],
}


def run_arm(out: Path, minutes: float, overrides: list[str]) -> None:
    cmd = [sys.executable, "-m", "mtopt.cli", "run", "--config", "local", "--out", str(out)]
    cmd += ["--minutes", str(minutes)]
    for o in COMMON + overrides:
        cmd += ["--set", o]
    with open(out.with_suffix(".log"), "w") as log:
        subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", required=True)
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--dir", default="runs")
    ap.add_argument("--skip-existing", action="store_true")
    args = ap.parse_args()
    root = Path(args.dir)
    root.mkdir(parents=True, exist_ok=True)
    arms = {}
    for name, overrides in ARMS.items():
        out = root / f"ab_{name}"
        if not (args.skip_existing and (out / "summary.json").exists()):
            print(f"arm {name}: {args.minutes} min", flush=True)
            run_arm(out, args.minutes, overrides)
        s = json.loads((out / "summary.json").read_text())
        secs = 60 * s["wall_minutes"]
        arms[name] = {
            "overrides": overrides,
            "learner_steps": s["learner_steps"],
            "episodes": s["episodes"],
            "wall_s": round(secs, 1),
            "steps_per_s": round(s["learner_steps"] / secs, 2),
            "episodes_per_s": round(s["episodes"] / secs, 2),
        }
    serial = statistics.mean(arms[a]["steps_per_s"] for a in ("serial", "serial2"))
    prefetch = statistics.mean(arms[a]["steps_per_s"] for a in ("prefetch", "prefetch2"))
    result = {
        "config": "local",
        "common_overrides": COMMON,
        "minutes_per_arm": args.minutes,
        "arms": arms,
        "prefetch_over_serial_steps": round(prefetch / serial, 2),
        "rate3_over_prefetch_steps": round(arms["rate3"]["steps_per_s"] / prefetch, 2),
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    write_result(args.json, result)


if __name__ == "__main__":
    main()
