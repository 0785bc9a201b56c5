"""Evaluate a run's latest published Q weights against the scripted policies, per task,
on the same held-out scenes (held-out objects, evaluation seeds), with Wilson 95% intervals.

The in-run evaluation uses 20 episodes per task, which cannot separate 20% from 35%; this
uses as many as you ask for. Tasks run in parallel worker processes.

The result keeps every episode's outcome (a string of 0 and 1 per task and policy, scene
by scene), so two evaluations on the same scenes compare paired
(``benchmarks/compare_evals.py``); with both parts, "online_minus_acting" is that paired
comparison within this run.

Usage: python benchmarks/evaluate_run.py --run runs/local --json OUT
           [--tasks lift-any,place-any,place-in-bowl] [--episodes 100] [--seed 5]
           [--parts acting,online] [--cem-iterations 2] [--cem-samples 64] [--cem-elites 6]
           [--cem-pick best|mean] [--cem-gripper joint|split] [--close-margin M]
           [--no-references] [--objects test|train]

--parts: which published networks to evaluate: the acting weights (the learner's moving
average, what robots use) and/or the online weights, each on the same scenes.
Pick tasks also get "straight_down": descend, close at the bottom, terminate, blind to the
image (`straight_down_pick`); a learned lift policy must beat it to show it grasps where
it sees an object.
--cem-*: the CEM search used for acting (default: the run's or policy folder's own
`cem_act`, as its robots use, or for a folder exported with `--act`, that search; QT-Opt's
2 x 64 with 6 elites in every preset but tiny; `--cem-gripper joint` drops the folder's
margins); a wider search shows how much of a policy's failure
is the search, not the Q.
--cem-pick: return CEM's best sample (QT-Opt, the default) or its final elite mean.
--cem-gripper split: search the open and the closed gripper separately; --close-margin:
close only where the best closing action's Q beats the best open one's by this much.
--objects train: scenes of the objects the run trained on (the evaluation seeds all the
same), a validation set for choosing among a run's snapshots without touching the
held-out objects that report its result.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from _results import write_result
from mtopt.config import ConfigError
from mtopt.eval.evaluate import (
    EVAL_SCENES_VERSION,
    SETUP_TRIES,
    encode_outcomes,
    evaluate_outcomes,
    paired_comparison,
    rate_with_ci,
    success_rate,
)
from mtopt.policies.base import Policy
from mtopt.policies.cem_policy import CEMPolicy
from mtopt.policies.scripted import is_pick_task, scripted_policy_for, straight_down_pick
from mtopt.qtopt.cem import CEMConfig
from mtopt.qtopt.weights import WeightsError, load_latest, split_prefixed
from mtopt.runtime.config import RunConfig, load_run_config, run_registry, run_sim_config
from mtopt.sim.cell import CELL_VERSION
from mtopt.tasks.registry import TaskSpec, UnknownTaskError


def one(
    job: tuple[str, str, str, int, int, dict[str, object], str],
) -> tuple[str, str, list[bool], int]:
    run, task, which, episodes, seed, search, objects = job
    import torch

    torch.set_num_threads(1)
    version = 0
    registry = run_registry(run)
    factory: Callable[[TaskSpec], Policy]
    if which == "scripted":
        factory = scripted_policy_for
    elif which == "straight_down":
        factory = lambda spec: straight_down_pick()  # noqa: E731
    else:
        cem = CEMConfig(**search, precision="fp32")  # type: ignore[arg-type]
        pol = CEMPolicy(
            registry.names, weights_dir=f"{run}/weights", cem=cem, seed=seed, part=which
        )
        version = pol.version
        factory = lambda spec: pol  # noqa: E731
    # the run's own cell (its sim settings), as its in-run evaluations use
    wins = evaluate_outcomes(
        factory, registry, [task], episodes, run_sim_config(run, objects), seed
    )
    return task, which, wins[task], version


def shown(per_task: dict[str, dict[str, dict[str, object]]]) -> dict[str, object]:
    """The per-task results without the episode outcome strings (kept in the file)."""
    return {
        t: {w: {k: v for k, v in r.items() if k != "outcomes"} for w, r in rows.items()}
        for t, rows in per_task.items()
    }


def own_config(run: str | Path) -> RunConfig | None:
    """The config of the run (or policy folder) ``run``, if it has one."""
    try:
        return load_run_config(Path(run) / "config.json")
    except (ConfigError, OSError):
        return None


def acting_search(cfg: RunConfig | None, args: argparse.Namespace) -> dict[str, object]:
    """The CEM search the policy acts with: each ``--cem-*`` flag given, else the run's
    own ``cem_act`` (what its robots and in-run evaluation used; a folder exported with
    ``--act`` keeps that search in its config), else ``CEMConfig``'s defaults."""
    own = dataclasses.asdict(cfg.cem_act if cfg is not None else CEMConfig())
    own.pop("precision")  # (a policy acts in fp32 here, as load_policy does)
    flags = {
        "iterations": args.cem_iterations,
        "samples": args.cem_samples,
        "elites": args.cem_elites,
        "pick": args.cem_pick,
        "gripper": args.cem_gripper,
        "close_margin": args.close_margin,
        "release_margin": args.release_margin,
    }
    search = {**own, **{k: v for k, v in flags.items() if v is not None}}
    if search["gripper"] == "joint":  # `--cem-gripper joint` on a folder with margins:
        for margin in ("close_margin", "release_margin"):  # none of its own, unless given
            search[margin] = flags[margin] if flags[margin] is not None else 0.0
    return search


def in_run_seed(run: str | Path, cfg: RunConfig | None, seed: int) -> str | None:
    """Why ``seed`` must not be the scenes ``run`` (whose config is ``cfg``) is reported
    on, or None: it is the run's own in-run evaluation block, where its collection
    switched to learned policies (the parity switch). A run judged on its robots'
    episodes (eval.on='fleet') never evaluated on simulated scenes, so none is refused."""
    if cfg is None or cfg.eval_seed != seed or cfg.eval_on != "sim":
        return None
    return (
        f"evaluation seed {seed} is the in-run evaluation block of {run} (seed {cfg.seed}, "
        f"eval_seed {cfg.eval_seed}): its collection switched to learned policies on those "
        "scenes; pick another seed"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", required=True)
    ap.add_argument("--json", required=True)
    ap.add_argument("--tasks", default="lift-any,place-any,place-in-bowl,lift-ball")
    ap.add_argument("--episodes", type=int, default=100)
    ap.add_argument("--seed", type=int, default=5, help="evaluation scene seeds (same for both)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--parts", default="acting", help="acting, online or acting,online")
    ap.add_argument("--cem-iterations", type=int, default=None)
    ap.add_argument("--cem-samples", type=int, default=None)
    ap.add_argument("--cem-elites", type=int, default=None)
    ap.add_argument("--cem-pick", default=None, choices=("best", "mean"))
    ap.add_argument("--cem-gripper", default=None, choices=("joint", "split"))
    ap.add_argument("--close-margin", type=float, default=None)
    ap.add_argument(
        "--release-margin",
        type=float,
        default=None,
        help="with --cem-gripper split: a closed gripper opens only where that beats "
        "staying closed by this much (Q)",
    )
    ap.add_argument(
        "--no-references", action="store_true", help="skip the scripted/straight-down rows"
    )
    ap.add_argument(
        "--objects",
        default="test",
        choices=("test", "train"),
        help="held-out objects (test, the default) or the training objects (validation)",
    )
    args = ap.parse_args()
    t0 = time.perf_counter()
    if args.episodes < 1:
        ap.error(f"--episodes must be at least 1, got {args.episodes}")
    if not Path(args.run).is_dir():
        ap.error(f"--run {args.run}: no such run or policy folder")
    tasks = list(dict.fromkeys(t.strip() for t in args.tasks.split(",") if t.strip()))
    if not tasks:  # (a task named twice ran twice, the first pass thrown away)
        ap.error(f"--tasks {args.tasks!r} names no task")
    try:
        registry = run_registry(args.run)
    except ConfigError as exc:
        ap.error(str(exc))
    run_cfg = own_config(args.run)
    if (why := in_run_seed(args.run, run_cfg, args.seed)) is not None:
        ap.error(why)
    for t in tasks:  # unknown task: clear error before any work
        try:
            registry.get(t)
        except UnknownTaskError as exc:
            ap.error(str(exc))
    parts = args.parts.split(",")
    if not parts or not set(parts) <= {"acting", "online"}:
        ap.error(f"--parts takes acting and/or online, got {args.parts!r}")
    try:  # the weights the workers would load: missing or lacking a part, before any work
        _, tensors, _ = load_latest(Path(args.run) / "weights")
    except (WeightsError, OSError) as exc:
        ap.error(f"--run {args.run}: {exc}")
    if missing := [p for p in parts if not split_prefixed(tensors, p)]:
        ap.error(f"the latest weights of {args.run} have no {' or '.join(missing)} network")
    del tensors
    search = acting_search(run_cfg, args)
    try:
        CEMConfig(**search).validate()  # type: ignore[arg-type]
    except ValueError as exc:
        ap.error(str(exc))

    def references(task: str) -> tuple[str, ...]:
        if args.no_references:
            return ()
        picks = is_pick_task(registry.get(task))
        return ("scripted", "straight_down") if picks else ("scripted",)

    jobs = [
        (args.run, t, w, args.episodes, args.seed, search, args.objects)
        for t in tasks
        for w in (*parts, *references(t))
    ]
    with ProcessPoolExecutor(args.workers) as pool:
        results = list(pool.map(one, jobs))
    per_task: dict[str, dict[str, dict[str, object]]] = {t: {} for t in tasks}
    outcomes: dict[tuple[str, str], list[bool]] = {}
    version = 0
    learned_versions: set[int] = set()
    for task, which, wins, v in results:
        per_task[task][which] = {
            **rate_with_ci(success_rate(wins), args.episodes),
            "outcomes": encode_outcomes(wins),
        }
        outcomes[task, which] = wins
        version = max(version, v)
        if which in parts:
            per_task[task][which]["q_weights_version"] = v
            learned_versions.add(v)
    if len(learned_versions) > 1:  # a run still training published between the jobs
        print(
            f"warning: the rows come from Q weights versions {sorted(learned_versions)}: the "
            "run published while it was evaluated (evaluate a stopped run or a copy)"
        )
    paired = {
        t: paired_comparison(outcomes[t, "acting"], outcomes[t, "online"]).as_dict()
        for t in tasks
        if {"acting", "online"} <= set(parts) and args.episodes > 0
    }
    out = {
        "run": args.run,
        "q_weights_version": version,
        "q_weights_versions": sorted(learned_versions),
        "run_seed": run_cfg.seed if run_cfg is not None else None,
        "run_config": run_cfg.name if run_cfg is not None else None,
        "episodes_per_task": args.episodes,
        "seed": args.seed,
        "objects": args.objects,
        "cell_version": CELL_VERSION,
        "eval_scenes": EVAL_SCENES_VERSION,
        "setup_tries": SETUP_TRIES,  # (category placing tasks' scenes; since 2026-12-07)
        "sim": dataclasses.asdict(run_sim_config(args.run, args.objects)),
        "cem": search,
        "per_task": per_task,
        "online_minus_acting": paired,
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    write_result(args.json, out, show={**out, "per_task": shown(per_task)})


if __name__ == "__main__":
    main()
