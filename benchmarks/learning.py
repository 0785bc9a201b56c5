"""Learning benchmark: per-task held-out success of the multi-task policy vs the scripted
policies, and vs single-task models trained on the same budget on the harder tasks.

Usage:
  python benchmarks/learning.py --json OUT [--minutes 170] [--single-task lift-ball,place-in-bowl]
        [--single-minutes 30] [--single-data own|multitask] [--skip-single] [--config bench]
        [--set KEY=VALUE ...] [--resume]

Each arm is a separate `mtopt run` (same code path as the CLI) in OUT_DIR/<arm>; results
are read from each run's summary.json. All success rates are simulator ground truth on
held-out scene seeds with held-out object instances. ``--set`` applies to every arm (for
example ``--set learner.mc_mix=0.5``), so the multi-task and single-task arms differ
only in their tasks; the JSON records the configuration and, per single-task arm, the
multi-task model's success on the same task beside the single-task model's.
``--single-data own`` (default): each single-task arm collects its own episodes of its
task for its budget (the same compute; it gets about as many episodes of its task as the
multi-task arm gets of all tasks). ``--single-data multitask``: each single-task arm is
trained, without robots, on the multi-task arm's episodes of its task only (copied with
`mtopt store subset`, and the multi-task arm's success detector): the same data, the
paper's f_orig data-efficiency baseline. The arms take hours: after a stop, ``--resume`` continues each arm in ``--dir`` from its
checkpoint for what is left of its budget (an arm that ran its budget is not rerun).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

from _results import write_result


def arm_minutes(out: Path) -> float | None:
    """How many minutes the arm in ``out`` has run, over all its invocations (None: it
    never started). A killed invocation counts up to its last evaluation."""
    if not (out / "config.json").exists():
        return None
    minutes = 0.0
    if (out / "summary.json").exists():
        s = json.loads((out / "summary.json").read_text())
        minutes = float(s.get("total_wall_minutes", s.get("wall_minutes", 0.0)))
    if (out / "history.json").exists():
        history = json.loads((out / "history.json").read_text())
        if history:
            minutes = max(minutes, float(history[-1].get("wall_s", 0.0)) / 60)
    return minutes


def run_arm(
    out: Path, minutes: float, sets: list[str], config: str = "bench", resume: bool = False
) -> dict:
    """Run one arm for ``minutes`` (``resume``: only what an earlier run of it left)."""
    done = arm_minutes(out)
    if done is not None and not resume:
        sys.exit(f"{out} already holds an arm: pass --resume to continue it, or another --dir")
    cmd = [sys.executable, "-m", "mtopt.cli", "run", "--config", config, "--out", str(out)]
    left = minutes - (done or 0.0)
    if done is not None:
        cmd.append("--resume")
        print(f"{out}: {done:.1f} of {minutes} minutes run before", flush=True)
    if done is None or left > 0.5 or not (out / "summary.json").exists():
        cmd += ["--minutes", str(max(left, 0.5))]
        for s in sets:
            cmd += ["--set", s]
        subprocess.run(cmd, check=True)
    summary = json.loads((out / "summary.json").read_text())
    summary["bench_wall_minutes"] = round(
        summary.get("total_wall_minutes", summary["wall_minutes"]), 1
    )
    return summary


def multitask_data(multi: Path, arm: Path, task: str) -> int:
    """Give ``arm`` the multi-task run's episodes of ``task`` and its success detector
    (once: a resumed arm keeps what it has); returns how many episodes that is."""
    from mtopt.store.reader import EpisodeReader
    from mtopt.store.subset import subset_store

    if not (arm / "store").exists():
        tmp = arm / "store.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        subset_store(multi / "store", tmp, [task])
        if not (arm / "sd").exists():
            shutil.rmtree(arm / "sd.partial", ignore_errors=True)
            shutil.copytree(multi / "sd", arm / "sd.partial")
            (arm / "sd.partial").rename(arm / "sd")
        tmp.rename(arm / "store")
    return sum(1 for r in EpisodeReader(arm / "store").metadata() if r["task"] == task)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", required=True)
    ap.add_argument("--minutes", type=float, default=170.0)
    ap.add_argument("--single-task", default="lift-ball,place-in-bowl")
    ap.add_argument(
        "--single-minutes",
        type=float,
        default=None,
        help="budget per single-task arm (default: same as multi-task)",
    )
    ap.add_argument("--skip-single", action="store_true")
    ap.add_argument(
        "--single-data",
        choices=("own", "multitask"),
        default="own",
        help="single-task arms collect their own episodes, or train on the multi-task "
        "arm's episodes of their task",
    )
    ap.add_argument("--dir", default="runs/bench")
    ap.add_argument("--config", default="bench", help="the preset every arm starts from")
    ap.add_argument(
        "--resume",
        action="store_true",
        help="continue the arms in --dir up to their budgets (after a stop or a crash)",
    )
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a config override for every arm (repeatable), as for `mtopt run --set`",
    )
    args = ap.parse_args()
    root = Path(args.dir)
    results: dict[str, object] = {"config": args.config, "sets": list(args.set)}
    multi = run_arm(root / "multitask", args.minutes, list(args.set), args.config, args.resume)
    multi_success = multi["final"].get("success", {})
    results["multitask"] = {
        "learned": multi_success,
        "scripted": multi["scripted"],
        "episodes": multi["episodes"],
        "learner_steps": multi["learner_steps"],
        "minutes": multi["bench_wall_minutes"],
        "history": json.loads((root / "multitask" / "history.json").read_text()),
    }
    if not args.skip_single:
        single: dict[str, object] = {}
        for task in [t for t in args.single_task.split(",") if t]:
            sets = [*args.set, f"collect.tasks={task}", "replay.impersonation=orig"]
            sets.append(f"eval.tasks={task}")
            arm = root / f"single-{task}"
            data = None
            if args.single_data == "multitask":
                arm = root / f"single-{task}-mtdata"
                data = multitask_data(root / "multitask", arm, task)
                sets.append("robots=0")
            s = run_arm(arm, args.single_minutes or args.minutes, sets, args.config, args.resume)
            single[task] = {
                "learned": s["final"].get("success", {}).get(task),
                "multitask_learned": multi_success.get(task),
                "episodes": s["episodes"],
                "learner_steps": s["learner_steps"],
                "minutes": s["bench_wall_minutes"],
                "data": args.single_data,
                "multitask_episodes_of_task": data,
            }
        results["single_task"] = single
    write_result(args.json, results, show={k: v for k, v in results.items() if k != "history"})


if __name__ == "__main__":
    main()
