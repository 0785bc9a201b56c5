"""How precise must a grasp be in this cell, and how precise are the learned policy's?

Two measurements of lift-any on the held-out scenes of ``evaluate_run.py`` (same
``--seed``, held-out objects, ground truth):

1. The privileged oracle (``mtopt.sim.oracle``) aimed off the object's centre by an xy
   offset drawn per episode from N(0, sigma^2) per axis, for each sigma in ``--aim-cm``,
   and turned off its chosen yaw by U(-d, d) for each d in ``--yaw-rad``: the success a
   policy with that aiming error can reach here.
2. With ``--run``: the run's acting weights (CEM, as robots use) on the same scenes,
   instrumented. Per episode: where it first closes the gripper (xy distance from the
   gripper's centre to the nearest object's centre, and, for elongated objects, how far
   its yaw is from the oracle's grasp yaw), where it last closes it (the grasp the
   episode ends with: the offset that counts, since policies re-grasp), whether an object
   is between both fingers when the episode ends (before the robot presents the outcome)
   and whether it is still held after the presentation lift (the success).

With ``--run`` both parts play in the cell the run learned in (its ``config.json``'s sim
settings: image size, ``move_from``, ...) with its tasks, so the oracle's curve and the
learned policy's episodes come from the same scenes; without it, in the default cell.
The result records the cell (``cell_version``, ``sim``). A run's own in-run evaluation
seed is refused (``evaluate_run.in_run_seed``).

Read together: the learned policy's last-close offsets against the oracle's curve say how
much of its lift failure is aiming, and "held at the end but lost on the lift" says how
many of its grasps close on an object but hold it badly (off-centre).

Usage: python benchmarks/grasp_precision_probe.py --json OUT [--run runs/r22]
           [--episodes 100] [--seed 5] [--aim-cm 0,0.5,1,2,3] [--yaw-rad 0.8,1.57]
           [--workers 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np

from _results import write_result
from evaluate_run import in_run_seed, own_config
from mtopt.eval.evaluate import eval_scene_seed, evaluate_policy, rate_with_ci
from mtopt.robots.base import Observation
from mtopt.robots.sim_robot import SimRobot
from mtopt.runtime.config import run_registry, run_sim_config
from mtopt.sim.cell import CELL_VERSION
from mtopt.sim.config import SimConfig
from mtopt.sim.objects import Split
from mtopt.sim.oracle import ROUND_CATEGORIES, OraclePolicy, wrap_half_turn
from mtopt.sim.runner import EpisodeRecord, run_episode
from mtopt.tasks.registry import TaskRegistry, TaskSpec

TASK = "lift-any"


def probe_cell(run: str | None, split: Split = "test") -> tuple[SimConfig, TaskRegistry]:
    """The cell (with ``split``'s objects) and the tasks to probe in: those the run (or
    policy folder) ``run`` was trained with (``run_sim_config``, ``run_registry``), the
    default cell and the built-in tasks without a run."""
    return run_sim_config(run, split), run_registry(run)


def checked_cell(run: str | None, seed: int, tasks: list[str]) -> tuple[SimConfig, TaskRegistry]:
    """``probe_cell(run)``, after checking that each of ``tasks`` is one of its tasks
    (else a KeyError) and that the evaluation seed ``seed`` is not the run's own in-run
    evaluation block (``evaluate_run.in_run_seed``; else a ValueError)."""
    sim, registry = probe_cell(run)
    for t in tasks:
        registry.get(t)  # unknown task: a clear error before any work
    if run is not None and (why := in_run_seed(run, own_config(run), seed)) is not None:
        raise ValueError(why)
    return sim, registry


def oracle_task_rate(
    task: str,
    aim_m: float,
    yaw_rad: float,
    episodes: int,
    seed: int,
    run: str | None = None,
    release_m: float = 0.07,
) -> float:
    """The oracle's success on ``task``'s held-out scenes with that aim and yaw noise (and
    placing, that release height), in ``run``'s cell with its tasks (the default cell
    without a run)."""
    sim, registry = probe_cell(run)
    robot = SimRobot(sim, robot_id="eval", seed=seed)
    oracle = OraclePolicy(robot, registry, sim.max_steps, aim_m, yaw_rad, release_m)
    try:
        rate = evaluate_policy(
            lambda spec: oracle, registry, [task], episodes, sim, seed, robot=robot
        )
    finally:
        robot.close()
    return rate[task]


def oracle_rate(job: tuple[float, float, int, int, str | None]) -> tuple[float, float, float]:
    aim_m, yaw_rad, episodes, seed, run = job
    return aim_m, yaw_rad, oracle_task_rate(TASK, aim_m, yaw_rad, episodes, seed, run)


class WatchedRobot(SimRobot):
    """A SimRobot that notes what the gripper holds just before it presents the outcome."""

    held_before_present: bool = False

    def final_image(self) -> np.ndarray:
        self.held_before_present = any(o.in_gripper for o in self.scene_state().objects)
        return super().final_image()


class WatchCloses:
    """Wraps a policy; records where the gripper is when the policy first closes it and
    when it last closes it (the grasp the episode ends with, if it ends closed)."""

    def __init__(self, policy: Any, robot: SimRobot):
        self.policy, self.robot = policy, robot
        self.first: dict[str, Any] | None = None
        self.last: dict[str, Any] | None = None
        self.closes = 0
        self._closed = False

    @property
    def version(self) -> int:
        return int(self.policy.version)

    def reset(self, task: str, rng: np.random.Generator) -> None:
        self.first, self.last, self.closes, self._closed = None, None, 0, False
        self.policy.reset(task, rng)

    def act(self, obs: Observation) -> np.ndarray:
        action = np.asarray(self.policy.act(obs), dtype=np.float32)
        closing = bool(action[4] > 0)
        if closing and not self._closed:
            self.closes += 1
            if obs.pose is not None:
                self.last = self._where(obs.pose)
                self.first = self.first or self.last
        self._closed = closing
        return action

    def _where(self, pose: np.ndarray) -> dict[str, Any]:
        """Gripper height, and offset (cm) and yaw error to the nearest object in the bin."""
        x, y, z, yaw = (float(v) for v in pose)
        cell = self.robot.cell
        out: dict[str, Any] = {"height_m": round(z, 3)}
        nearest = float("inf")
        for body, spec in cell.object_bodies():
            if not self.robot.in_right_bin(body):
                continue
            ox, oy = (float(v) for v in cell.object_position(body)[:2])
            d = float(np.hypot(x - ox, y - oy))
            if d < nearest:
                nearest = d
                yaw_err = None
                if spec.category not in ROUND_CATEGORIES:
                    yaw_err = round(abs(wrap_half_turn(yaw - float(cell.object_yaw(body)))), 3)
                out.update(
                    offset_cm=round(100 * d, 2),
                    offset_xy_cm=[round(100 * (x - ox), 2), round(100 * (y - oy), 2)],
                    category=spec.category,
                    yaw_error_rad=yaw_err,
                )
        return out


def acting_policy(run: str, seed: int, pick: str = "best") -> Any:
    """The run's acting weights as robots use them: CEM, fp32, one thread, with the run's
    tasks (``pick``: CEM's best sample or its final elite mean, ``CEMConfig.pick``)."""
    import torch

    from mtopt.policies.cem_policy import CEMPolicy
    from mtopt.qtopt.cem import CEMConfig

    torch.set_num_threads(1)
    cem = CEMConfig(pick=pick, precision="fp32")  # type: ignore[arg-type]
    return CEMPolicy(run_registry(run).names, weights_dir=f"{run}/weights", cem=cem, seed=seed)


def held_out_episodes(
    robot: SimRobot, policy: Any, spec: TaskSpec, k0: int, n: int, seed: int
) -> Iterator[tuple[int, EpisodeRecord]]:
    """Episodes k0..k0+n-1 of ``evaluate_policy``'s held-out scenes for the task ``spec``
    (the same scene seeds), each run with ``policy``; the robot is left at the episode's
    end."""
    for k in range(k0, k0 + n):
        scene_seed = eval_scene_seed(seed, 0, k)
        robot.reset_scene(scene_seed)
        rng = np.random.default_rng(scene_seed)
        yield k, run_episode(robot, policy, spec, rng, robot.config.max_steps)


def learned_episodes(job: tuple[str, int, int, int, str]) -> list[dict[str, Any]]:
    """Episodes k0..k0+n-1 of the held-out scenes with the run's acting weights, in the
    run's cell."""
    run, k0, n, seed, pick = job
    sim, registry = probe_cell(run)
    robot = WatchedRobot(sim, robot_id="eval", seed=seed)
    watch = WatchCloses(acting_policy(run, seed, pick), robot)
    spec = registry.get(TASK)
    rows = []
    try:
        for k, rec in held_out_episodes(robot, watch, spec, k0, n, seed):
            rows.append(
                {
                    "scene": k,
                    "success": bool(spec.succeeded(robot.scene_state())),
                    "held_before_present": robot.held_before_present,
                    "closes": watch.closes,
                    "steps": len(rec.actions),
                    "first_close": watch.first,
                    "last_close": watch.last,
                }
            )
    finally:
        robot.close()
    return rows


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The learned policy's grasps in numbers (pure; ``rows`` from ``learned_episodes``)."""
    n = len(rows)
    wins = [r for r in rows if r["success"]]
    held = [r for r in rows if r["held_before_present"]]

    def offsets(rs: list[dict[str, Any]], key: str = "last_close") -> list[float]:
        return [r[key]["offset_cm"] for r in rs if r.get(key) and "offset_cm" in r[key]]

    def yaw_errors(rs: list[dict[str, Any]]) -> list[float]:
        """Elongated objects only (a round one grasps at any yaw)."""
        return [
            r["last_close"]["yaw_error_rad"]
            for r in rs
            if r.get("last_close") and r["last_close"].get("yaw_error_rad") is not None
        ]

    def median(xs: list[float]) -> float | None:
        return round(statistics.median(xs), 2) if xs else None

    all_off = offsets(rows)
    first_off = offsets(rows, "first_close")
    bins = [(0, 1), (1, 2), (2, 3), (3, 5), (5, 100)]
    by_offset = {}
    for lo, hi in bins:
        rs = [
            r for r in rows if r["last_close"] and lo <= r["last_close"].get("offset_cm", -1) < hi
        ]
        by_offset[f"{lo}-{hi} cm"] = {
            "episodes": len(rs),
            "success": round(sum(r["success"] for r in rs) / len(rs), 3) if rs else None,
        }
    return {
        "episodes": n,
        "success": rate_with_ci(len(wins) / max(1, n), n),
        "never_closed": sum(r["first_close"] is None for r in rows),
        "held_before_present": round(len(held) / max(1, n), 3),
        "held_but_lost_on_lift": round(sum(not r["success"] for r in held) / max(1, len(held)), 3),
        "closes_per_episode": round(sum(r["closes"] for r in rows) / max(1, n), 2),
        "first_close_offset_cm_median": median(first_off),
        "last_close_offset_cm_median": {
            "all": median(all_off),
            "successes": median(offsets(wins)),
            "failures": median(offsets([r for r in rows if not r["success"]])),
        },
        "last_close_yaw_error_rad_median": {
            "successes": median(yaw_errors(wins)),
            "failures": median(yaw_errors([r for r in rows if not r["success"]])),
        },
        "last_close_within_1cm": round(sum(o < 1 for o in all_off) / max(1, len(all_off)), 3),
        "success_by_last_close_offset": by_offset,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", required=True)
    ap.add_argument(
        "--run", default=None, help="also instrument this run's acting weights (in its cell)"
    )
    ap.add_argument("--episodes", type=int, default=100)
    ap.add_argument("--seed", type=int, default=5, help="5: the scenes of evaluate_run.py")
    ap.add_argument("--aim-cm", default="0,0.5,1,2,3")
    ap.add_argument("--yaw-rad", default="0.8,1.57")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--cem-pick", default="best", choices=("best", "mean"))
    args = ap.parse_args()
    try:
        aims = [float(v) for v in args.aim_cm.split(",") if v]
        yaws = [float(v) for v in args.yaw_rad.split(",") if v]
    except ValueError:
        ap.error("--aim-cm and --yaw-rad take comma-separated numbers")
    if any(v < 0 for v in aims + yaws):
        ap.error("--aim-cm and --yaw-rad must be >= 0")
    if args.episodes < 1 or args.workers < 1:
        ap.error("--episodes and --workers must be >= 1")
    try:
        sim = checked_cell(args.run, args.seed, [TASK])[0]
    except (ValueError, KeyError) as exc:  # a ConfigError is a ValueError
        ap.error(str(exc))
    t0 = time.perf_counter()
    jobs = [(a / 100, 0.0, args.episodes, args.seed, args.run) for a in aims]
    jobs += [(0.0, y, args.episodes, args.seed, args.run) for y in yaws]
    per = -(-args.episodes // args.workers)
    learn_jobs = [
        (args.run, k, min(per, args.episodes - k), args.seed, args.cem_pick)
        for k in range(0, args.episodes, per)
    ]
    with ProcessPoolExecutor(args.workers) as pool:
        oracle = list(pool.map(oracle_rate, jobs))
        rows = (
            [r for part in pool.map(learned_episodes, learn_jobs) for r in part] if args.run else []
        )
    out: dict[str, Any] = {
        "task": TASK,
        "episodes": args.episodes,
        "seed": args.seed,
        "cell_version": CELL_VERSION,
        "sim": dataclasses.asdict(sim),
        "oracle_aim_noise": {
            f"{100 * a:g} cm": rate_with_ci(r, args.episodes) for a, y, r in oracle if y == 0.0
        },
        "oracle_yaw_noise": {
            f"{y:g} rad": rate_with_ci(r, args.episodes) for a, y, r in oracle if y > 0.0
        },
    }
    if args.run:
        out["run"] = args.run
        out["cem_pick"] = args.cem_pick
        out["learned"] = summarize(rows)
        out["learned_episodes"] = rows
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    write_result(args.json, out, show={k: v for k, v in out.items() if k != "learned_episodes"})


if __name__ == "__main__":
    main()
