"""Learning benchmark: per-task held-out success of the multi-task policy vs the scripted
policies, and vs single-task models trained on the same budget on the harder tasks.

Usage:
  python benchmarks/learning.py --json OUT [--minutes 170] [--single-task lift-ball,place-in-bowl]
        [--single-minutes 30] [--single-data own|multitask] [--skip-single] [--config bench]
        [--set KEY=VALUE ...] [--resume] [--eval-episodes 200] [--eval-seeds 5,6]

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
checkpoint for what is left of its budget (an arm that ran its budget is not rerun); it
must be given the same ``--config``, ``--set`` and ``--single-data`` as the start (kept in
``--dir``/bench_args.json), or one arm would mix two experiments.

Held-out result: after its training, each arm's acting weights are evaluated as
``evaluate_run.py`` does, on ``--eval-episodes`` scenes per seed of ``--eval-seeds``
(default 200 x seeds 5 and 6), each task on its own (so every arm meets the same scenes
of a task, whatever else it evaluates), with the scripted policies on the same scenes.
The JSON keeps every scene's outcome, each arm's learned/scripted ratio, and per
single-task arm the paired comparison with the multi-task arm (McNemar). The in-run
evaluations (20-30 scenes, also used by the parity switch) are only the curves.
``complete`` says whether an arm ran its whole budget. The JSON is written after each arm.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

from _results import write_result

# every argument that decides what an arm is: a resume must repeat them
ARM_ARGS = ("config", "set", "single_data", "single_task")


def arm_clocks(out: Path) -> tuple[float | None, float | None]:
    """(minutes its summary says the arm ran, minutes of its last evaluation), over all
    its invocations; None where there is no summary / no evaluation."""
    summary = evaluated = None
    if (out / "summary.json").exists():
        s = json.loads((out / "summary.json").read_text())
        summary = float(s.get("total_wall_minutes", s.get("wall_minutes", 0.0)))
    if (out / "history.json").exists():
        history = json.loads((out / "history.json").read_text())
        if history:
            evaluated = float(history[-1].get("wall_s", 0.0)) / 60
    return summary, evaluated


def arm_minutes(out: Path) -> float | None:
    """How many minutes the arm in ``out`` has run, over all its invocations (None: it
    never started). A killed invocation counts up to its last evaluation."""
    if not (out / "config.json").exists():
        return None
    return max((m for m in arm_clocks(out) if m is not None), default=0.0)


def summary_is_stale(out: Path) -> bool:
    """No summary, or one older than the arm's last evaluation (an invocation killed
    after it): the arm must run again, if only to write its summary."""
    summary, evaluated = arm_clocks(out)
    return summary is None or (evaluated is not None and evaluated > summary + 0.5)


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
    if done is None or left > 0.5 or summary_is_stale(out):
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


def held_out_outcomes(
    run: Path, tasks: list[str], episodes: int, seeds: list[int], workers: int
) -> dict[str, dict[str, list[bool]]]:
    """``{task: {"acting": [...], "scripted": [...]}}``: each scene's outcome, the seeds'
    scenes one after the other, each task evaluated on its own as ``evaluate_run.py``
    does, but with QT-Opt's default CEM search whatever an arm's ``cem_act`` (the arms
    are compared on one search; evaluate_run.py acts with a folder's own), on held-out
    objects in the run's own cell. Kept in
    ``run/held_out.json`` for the run's latest weights: a resumed benchmark whose later
    arm crashed does not evaluate the finished ones again."""
    import dataclasses
    from concurrent.futures import ProcessPoolExecutor

    from evaluate_run import in_run_seed, one, own_config
    from mtopt.eval.evaluate import (
        EVAL_SCENES_VERSION,
        SETUP_TRIES,
        decode_outcomes,
        encode_outcomes,
    )
    from mtopt.qtopt.cem import CEMConfig
    from mtopt.runtime.config import run_sim_config
    from mtopt.sim.cell import CELL_VERSION

    cfg = own_config(run)
    for seed in seeds:
        if (why := in_run_seed(run, cfg, seed)) is not None:
            raise SystemExit(f"--eval-seeds: {why}")

    search = {
        k: getattr(CEMConfig, k)
        for k in ("iterations", "samples", "elites", "pick", "gripper", "close_margin")
    }
    key = {
        "tasks": tasks,
        "episodes": episodes,
        "seeds": seeds,
        "q_version": arm_version(run),
        # what else makes the scenes and the search: a cell or CEM of other code
        "objects": "test",
        "cell_version": CELL_VERSION,
        "setup_tries": SETUP_TRIES,  # (3 until 2026-12-06: other category placing scenes)
        "eval_scenes": EVAL_SCENES_VERSION,  # (1 until 2026-12-07: other category lift scenes)
        # (the final image's layout changes no outcome: not part of the key)
        "sim": {
            k: v
            for k, v in dataclasses.asdict(run_sim_config(run, "test")).items()
            if k != "outcome_fixtures_share"
        },
        "cem": search,
    }
    key = json.loads(json.dumps(key))  # as kept (the sim's tuples read back as lists)
    kept = run / "held_out.json"
    if kept.exists():
        old = json.loads(kept.read_text())
        if old.get("key") == key:
            return {
                t: {w: decode_outcomes(v) for w, v in parts.items()}
                for t, parts in old["outcomes"].items()
            }

    jobs = [
        (str(run), t, which, episodes, seed, search, "test")
        for seed in seeds
        for t in tasks
        for which in ("acting", "scripted")
    ]
    out: dict[str, dict[str, list[bool]]] = {t: {"acting": [], "scripted": []} for t in tasks}
    with ProcessPoolExecutor(workers) as pool:
        for task, which, wins, _ in pool.map(one, jobs):  # in order: seed by seed
            out[task][which] += wins
    coded = {t: {w: encode_outcomes(v) for w, v in parts.items()} for t, parts in out.items()}
    write_result(kept, {"key": key, "outcomes": coded}, echo=False)
    return out


def arm_version(run: Path) -> int | None:
    """The version of the arm's latest published Q weights (what its held-out numbers
    are of), None before any."""
    from mtopt.qtopt.weights import read_latest

    latest = read_latest(run / "weights")
    return None if latest is None else int(latest["version"])


def held_out_summary(outcomes: dict[str, dict[str, list[bool]]]) -> dict[str, object]:
    """Per task: the learned and scripted success with Wilson intervals, learned over
    scripted, and every scene's outcome (for ``compare_evals.py``-style pairing)."""
    from mtopt.eval.evaluate import encode_outcomes, rate_with_ci, success_rate

    out: dict[str, object] = {}
    for task, parts in outcomes.items():
        learned, scripted = success_rate(parts["acting"]), success_rate(parts["scripted"])
        out[task] = {
            "learned": rate_with_ci(learned, len(parts["acting"])),
            "scripted": rate_with_ci(scripted, len(parts["scripted"])),
            "learned_over_scripted": round(learned / scripted, 3) if scripted else None,
            "episodes": len(parts["acting"]),
            "outcomes": {w: encode_outcomes(v) for w, v in parts.items()},
        }
    return out


def single_minus_multi(
    multi: dict[str, list[bool]], single: dict[str, list[bool]]
) -> dict[str, object]:
    """The single-task arm against the multi-task arm on the same held-out scenes of
    its task, paired scene by scene (b - a: single - multi)."""
    from mtopt.eval.evaluate import paired_comparison

    return paired_comparison(multi["acting"], single["acting"]).as_dict()


def check_same_arms(root: Path, args: argparse.Namespace, resume: bool) -> None:
    """Keep what the arms are in ``root/bench_args.json`` at the start; a resume with
    other arm arguments is an error (its arms would mix two experiments)."""
    path = root / "bench_args.json"
    mine = {k: getattr(args, k) for k in ARM_ARGS}
    if path.exists():
        if not resume:  # before it is overwritten: the arms are someone's
            sys.exit(f"{root} already holds arms: pass --resume to continue them, or another --dir")
        kept = json.loads(path.read_text())
        changed = [k for k in ARM_ARGS if k in kept and kept[k] != mine[k]]
        if changed:
            sys.exit(
                f"--resume: {root} was started with "
                + ", ".join(f"--{k.replace('_', '-')} {kept[k]!r}" for k in changed)
                + "; continue it with the same arguments, or use another --dir"
            )
        return
    write_result(path, mine, echo=False)


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
    ap.add_argument(
        "--eval-episodes",
        type=int,
        default=200,
        help="held-out scenes per task and seed for each arm's final evaluation (0: none)",
    )
    ap.add_argument("--eval-seeds", default="5,6", help="evaluation seeds of those scenes")
    ap.add_argument("--workers", type=int, default=2, help="processes for that evaluation")
    args = ap.parse_args()
    root = Path(args.dir)
    singles = [t for t in args.single_task.split(",") if t] if not args.skip_single else []
    try:
        seeds = [int(x) for x in args.eval_seeds.split(",") if x]
    except ValueError:
        ap.error(f"--eval-seeds: whole numbers, comma-separated, got {args.eval_seeds!r}")
    from mtopt.eval.evaluate import EVAL_SCENES_VERSION, eval_scene_seed
    from mtopt.runtime.config import preset
    from mtopt.sim.cell import CELL_VERSION

    # checked before hours of training, not after (the arms' in-run seeds are checked
    # when each is evaluated)
    if len(set(seeds)) != len(seeds):
        ap.error(f"--eval-seeds {args.eval_seeds}: a seed twice counts its scenes twice")
    if args.eval_episodes < 0:
        ap.error(f"--eval-episodes must be >= 0, got {args.eval_episodes}")
    for seed in seeds if args.eval_episodes > 0 else []:
        try:
            eval_scene_seed(seed, 0, args.eval_episodes - 1)
        except ValueError as exc:
            ap.error(f"--eval-seeds / --eval-episodes: {exc}")
    if args.workers < 1:
        ap.error(f"--workers must be >= 1, got {args.workers}")

    # the arms' own evaluation block is refused as a report's scenes: say so now, not
    # after hours of training (each arm's is checked again when it is evaluated)
    from evaluate_run import in_run_seed
    from mtopt.config import ConfigError, override

    try:
        arm_cfg = override(preset(args.config), list(args.set))
    except (ConfigError, ValueError) as exc:
        ap.error(f"--set: {exc}")
    for seed in seeds if args.eval_episodes > 0 else []:
        if (why := in_run_seed(root / "multitask", arm_cfg, seed)) is not None:
            ap.error(f"--eval-seeds: {why}")
    registry = arm_cfg.registry()
    for task in singles:
        if task not in registry.names:
            ap.error(f"--single-task: unknown task {task!r}")
    root.mkdir(parents=True, exist_ok=True)
    check_same_arms(root, args, args.resume)
    results: dict[str, object] = {
        "config": args.config,
        "sets": list(args.set),
        "held_out_scenes": {
            "episodes_per_seed": args.eval_episodes,
            "seeds": seeds,
            "objects": "test",
            "cell_version": CELL_VERSION,
            "eval_scenes": EVAL_SCENES_VERSION,
        },
    }

    def save() -> None:  # after each arm: a later arm's crash keeps the finished ones
        shown = {k: v for k, v in results.items() if k != "multitask"}
        write_result(args.json, results, show=shown)

    multi = run_arm(root / "multitask", args.minutes, list(args.set), args.config, args.resume)
    multi_success = multi["final"].get("success", {})
    evaluated = list(dict.fromkeys([*multi["scripted"], *singles]))
    multi_out = (
        held_out_outcomes(root / "multitask", evaluated, args.eval_episodes, seeds, args.workers)
        if args.eval_episodes > 0
        else {}
    )
    results["multitask"] = {
        "in_run_last": multi_success,
        "in_run_scripted": multi["scripted"],
        "held_out": held_out_summary(multi_out),
        "q_version": arm_version(root / "multitask"),
        "episodes": multi["episodes"],
        "learner_steps": multi["learner_steps"],
        "minutes": multi["bench_wall_minutes"],
        "complete": multi["bench_wall_minutes"] >= args.minutes - 1.0,
        # an arm stopped before its first step has no evaluation, so no history
        "history": json.loads(h.read_text())
        if (h := root / "multitask" / "history.json").exists()
        else [],
    }
    save()
    if singles:
        single: dict[str, object] = {}
        results["single_task"] = single
        for task in singles:
            sets = [*args.set, f"collect.tasks={task}", "replay.impersonation=orig"]
            sets.append(f"eval.tasks={task}")
            arm = root / f"single-{task}"
            data = None
            if args.single_data == "multitask":
                arm = root / f"single-{task}-mtdata"
                data = multitask_data(root / "multitask", arm, task)
                sets.append("robots=0")
            budget = args.single_minutes or args.minutes
            s = run_arm(arm, budget, sets, args.config, args.resume)
            mine = (
                held_out_outcomes(arm, [task], args.eval_episodes, seeds, args.workers)
                if args.eval_episodes > 0
                else {}
            )
            single[task] = {
                # the in-run numbers are on different scenes from the multi-task arm's
                # (another task list): compare the held-out ones
                "in_run_last": s["final"].get("success", {}).get(task),
                "held_out": held_out_summary(mine),
                "q_version": arm_version(arm),
                "single_minus_multi": single_minus_multi(multi_out[task], mine[task])
                if mine
                else None,
                "episodes": s["episodes"],
                "learner_steps": s["learner_steps"],
                "minutes": s["bench_wall_minutes"],
                "complete": s["bench_wall_minutes"] >= budget - 1.0,
                "data": args.single_data,
                "multitask_episodes_of_task": data,
            }
            save()
    save()


if __name__ == "__main__":
    main()
