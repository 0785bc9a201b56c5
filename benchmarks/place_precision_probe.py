"""How precise must a release be in this cell, and where do the learned policy's go?

The placing counterpart of ``grasp_precision_probe.py``, on the held-out scenes of
``evaluate_run.py`` (same ``--seed``, held-out objects, ground truth), per placing task
in ``--tasks``:

1. The privileged oracle (``mtopt.sim.oracle``) releasing off the target's centre by an
   xy offset drawn per episode from N(0, sigma^2) per axis, for each sigma in
   ``--aim-cm``: the success a policy with that release error can reach here; and
   aiming exactly, opening the gripper at each height in ``--release-cm`` (the tool
   point above the target's surface; 7 cm is the oracle's own): what a drop costs.
2. With ``--run``: the run's acting weights (CEM, as robots use) on the same scenes,
   instrumented. Per episode: whether and when it opens the gripper while holding the
   object (the release), where the object is then (xy distance from the centre of the
   nearest fixture that satisfies the task, as a fraction of its usable radius too, and
   its height above that fixture's surface), whether it lets go over a wrong fixture or
   the bare bin, and where the object ends up.

With ``--run`` both parts play in the cell the run learned in (its ``config.json``'s sim
settings) with its tasks, and ``--tasks`` may name its placing tasks (``extra_tasks``
too); without it, the default cell and the built-in tasks. The result records the cell
(``cell_version``, ``sim``). A run's own in-run evaluation seed is refused.

Read together: the release offsets against the oracle's curve say how much of the
placing failure is aiming; "never released" and "released over nothing" name the rest.

Usage: python benchmarks/place_precision_probe.py --json OUT [--run runs/r22]
           [--tasks place-any,place-in-bowl] [--episodes 100] [--seed 5]
           [--aim-cm 0,2,4,6] [--release-cm 4,7,14,20,27] [--workers 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np

from _results import write_result
from grasp_precision_probe import (
    acting_policy,
    checked_cell,
    held_out_episodes,
    oracle_task_rate,
    probe_cell,
)
from mtopt.eval.evaluate import rate_with_ci
from mtopt.robots.base import Observation
from mtopt.robots.sim_robot import SimRobot
from mtopt.sim.cell import CELL_VERSION
from mtopt.sim.oracle import released_at
from mtopt.tasks import DEFAULT_REGISTRY
from mtopt.tasks.registry import TaskRegistry
from mtopt.tasks.scene import FixtureState, ObjectState, SceneState


def oracle_rate(
    job: tuple[str, float, float, int, int, str | None],
) -> tuple[str, float, float, float]:
    task, aim_m, release_m, episodes, seed, run = job
    return (
        task,
        aim_m,
        release_m,
        oracle_task_rate(task, aim_m, 0.0, episodes, seed, run, release_m),
    )


def target_fixtures(
    task: str, scene: SceneState, registry: TaskRegistry = DEFAULT_REGISTRY
) -> list[FixtureState]:
    """The fixtures a resting object would satisfy ``task`` (of ``registry``) on (the
    task's predicate asked about each fixture with the held object moved onto it)."""
    spec = registry.get(task)
    held = next((o for o in scene.objects if o.in_gripper), None)
    if held is None:
        return []
    out = []
    for f in scene.fixtures:
        if spec.succeeded(released_at(scene, held, f.position)):
            out.append(f)
    return out


def where(
    obj: ObjectState, fixtures: list[FixtureState], all_fixtures: tuple[FixtureState, ...]
) -> dict[str, Any]:
    """An object's xy offset from the nearest target fixture, in cm and in that fixture's
    usable radii, its height above that surface, and the nearest fixture of any kind."""
    x, y, z = obj.position
    out: dict[str, Any] = {}
    if fixtures:
        f = min(fixtures, key=lambda f: np.hypot(x - f.position[0], y - f.position[1]))
        d = float(np.hypot(x - f.position[0], y - f.position[1]))
        out.update(
            target=f.kind,
            offset_cm=round(100 * d, 2),
            offset_radii=round(d / f.radius, 2),
            height_cm=round(100 * (z - f.position[2]), 1),
        )
    if all_fixtures:
        g = min(all_fixtures, key=lambda f: np.hypot(x - f.position[0], y - f.position[1]))
        gd = float(np.hypot(x - g.position[0], y - g.position[1]))
        out["over"] = g.kind if gd <= g.radius else "nothing"
    return out


class WatchRelease:
    """Wraps a policy; records the first step at which it opens the gripper while the
    scene shows an object between the fingers (the release) and where that object is."""

    def __init__(
        self, policy: Any, robot: SimRobot, task: str, registry: TaskRegistry = DEFAULT_REGISTRY
    ):
        self.policy, self.robot, self.task, self.registry = policy, robot, task, registry
        self.release: dict[str, Any] | None = None
        self.step = 0

    @property
    def version(self) -> int:
        return int(self.policy.version)

    def reset(self, task: str, rng: np.random.Generator) -> None:
        self.release, self.step = None, 0
        self.policy.reset(task, rng)

    def act(self, obs: Observation) -> np.ndarray:
        action = np.asarray(self.policy.act(obs), dtype=np.float32)
        if self.release is None and action[4] <= 0:
            scene = self.robot.scene_state()
            held = next((o for o in scene.objects if o.in_gripper), None)
            if held is not None:
                fixtures = target_fixtures(self.task, scene, self.registry)
                self.release = {"step": self.step, **where(held, fixtures, scene.fixtures)}
        self.step += 1
        return action


def learned_episodes(job: tuple[str, str, int, int, int]) -> list[dict[str, Any]]:
    """Episodes k0..k0+n-1 of ``task``'s held-out scenes with the run's acting weights, in
    the run's cell."""
    run, task, k0, n, seed = job
    sim, registry = probe_cell(run)
    robot = SimRobot(sim, robot_id="eval", seed=seed)
    watch = WatchRelease(acting_policy(run, seed), robot, task, registry)
    spec = registry.get(task)
    rows = []
    try:
        for k, rec in held_out_episodes(robot, watch, spec, k0, n, seed):
            scene = robot.scene_state()
            rows.append(
                {
                    "scene": k,
                    "success": bool(spec.succeeded(scene)),
                    "prepared": rec.prepared,
                    "steps": len(rec.actions),
                    "terminated": rec.terminated,
                    "release": watch.release,
                    "still_held": any(o.in_gripper for o in scene.objects),
                    "final": [
                        where(o, [], scene.fixtures).get("over", "nothing")
                        for o in scene.objects
                        if scene.left_bin.contains_xy(o.position[0], o.position[1])
                    ],
                }
            )
    finally:
        robot.close()
    return rows


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The learned policy's releases in numbers (pure; ``rows`` from ``learned_episodes``)."""
    rows = [r for r in rows if r["prepared"]]
    n = len(rows)
    released = [r for r in rows if r["release"]]
    wins = [r for r in rows if r["success"]]

    def median(xs: list[float]) -> float | None:
        return round(statistics.median(xs), 2) if xs else None

    def offsets(rs: list[dict[str, Any]], key: str = "offset_cm") -> list[float]:
        return [r["release"][key] for r in rs if r["release"] and key in r["release"]]

    bins = [(0.0, 0.5), (0.5, 1.0), (1.0, 1.5), (1.5, 100.0)]
    by_offset = {}
    for lo, hi in bins:
        rs = [r for r in released if lo <= r["release"].get("offset_radii", -1.0) < hi]
        by_offset[f"{lo:g}-{hi:g} radii"] = {
            "episodes": len(rs),
            "success": round(sum(r["success"] for r in rs) / len(rs), 3) if rs else None,
        }
    over: dict[str, int] = {}
    for r in released:
        k = r["release"].get("over", "nothing")
        over[k] = over.get(k, 0) + 1
    return {
        "episodes": n,
        "success": rate_with_ci(len(wins) / max(1, n), n),
        "never_released": sum(r["release"] is None for r in rows),
        "released_at_step_median": median([float(r["release"]["step"]) for r in released]),
        "release_over": over,
        "release_offset_cm_median": {
            "all": median(offsets(released)),
            "successes": median(offsets(wins)),
            "failures": median(offsets([r for r in released if not r["success"]])),
        },
        "release_height_cm_median": {
            "successes": median(offsets(wins, "height_cm")),
            "failures": median(offsets([r for r in released if not r["success"]], "height_cm")),
        },
        "released_within_target_radius": round(
            sum(o < 1.0 for o in offsets(released, "offset_radii")) / max(1, len(released)), 3
        ),
        "success_by_release_offset": by_offset,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", required=True)
    ap.add_argument(
        "--run", default=None, help="also instrument this run's acting weights (in its cell)"
    )
    ap.add_argument("--tasks", default="place-any,place-in-bowl")
    ap.add_argument("--episodes", type=int, default=100)
    ap.add_argument("--seed", type=int, default=5, help="5: the scenes of evaluate_run.py")
    ap.add_argument("--aim-cm", default="0,2,4,6")
    ap.add_argument(
        "--release-cm",
        default="",
        help="oracle release heights (cm above the target's surface), aiming exactly",
    )
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    tasks = [t for t in args.tasks.split(",") if t]
    try:  # the run's cell and tasks (the default ones without --run)
        sim, registry = checked_cell(args.run, args.seed, [])
    except ValueError as exc:  # a ConfigError is a ValueError
        ap.error(str(exc))
    for t in tasks:
        if t not in registry.names or not registry.get(t).starts_holding:
            whose = "the run's" if args.run else "the built-in"
            ap.error(f"{t!r} is not one of {whose} placing tasks")
    try:
        aims = [float(v) for v in args.aim_cm.split(",") if v]
    except ValueError:
        ap.error("--aim-cm takes comma-separated numbers")
    if any(v < 0 for v in aims):
        ap.error("--aim-cm must be >= 0")
    try:
        heights = [float(v) for v in args.release_cm.split(",") if v]
    except ValueError:
        ap.error("--release-cm takes comma-separated numbers")
    if any(not 0 < v <= 25 for v in heights):
        ap.error("--release-cm must be in (0, 25]")
    if args.episodes < 1 or args.workers < 1:
        ap.error("--episodes and --workers must be >= 1")
    t0 = time.perf_counter()
    aim_jobs = [(t, a / 100, 0.07, args.episodes, args.seed, args.run) for t in tasks for a in aims]
    drop_jobs = [
        (t, 0.0, h / 100, args.episodes, args.seed, args.run) for t in tasks for h in heights
    ]
    per = -(-args.episodes // args.workers)
    learn_jobs = [
        (args.run, t, k, min(per, args.episodes - k), args.seed)
        for t in tasks
        for k in range(0, args.episodes, per)
    ]
    with ProcessPoolExecutor(args.workers) as pool:
        by_aim = list(pool.map(oracle_rate, aim_jobs))
        by_height = list(pool.map(oracle_rate, drop_jobs))
        parts = list(pool.map(learned_episodes, learn_jobs)) if args.run else []
    out: dict[str, Any] = {
        "episodes": args.episodes,
        "seed": args.seed,
        "cell_version": CELL_VERSION,
        "sim": dataclasses.asdict(sim),
        "tasks": {},
    }
    for t in tasks:
        entry: dict[str, Any] = {
            "oracle_aim_noise": {
                f"{100 * a:g} cm": rate_with_ci(r, args.episodes)
                for task, a, _, r in by_aim
                if task == t
            }
        }
        if heights:
            entry["oracle_release_height"] = {
                f"{100 * h:g} cm": rate_with_ci(r, args.episodes)
                for task, _, h, r in by_height
                if task == t
            }
        if args.run:
            rows = [
                r for job, part in zip(learn_jobs, parts, strict=True) if job[1] == t for r in part
            ]
            entry["learned"] = summarize(rows)
            entry["learned_episodes"] = rows
        out["tasks"][t] = entry
    if args.run:
        out["run"] = args.run
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    show = {
        t: {k: v for k, v in e.items() if k != "learned_episodes"} for t, e in out["tasks"].items()
    }
    write_result(args.json, out, show=show)


if __name__ == "__main__":
    main()
