"""Speed of the simulated cell versus its floor, in one run.

env step      : SimRobot.act (validation, interpolated wrist motion, 20 substeps, the
                wrist settle and the gripper's blocking close/open, state, one 64x64
                TinyRenderer image)
no-settle step: the same with SimConfig.wrist_settle_substeps=0 (the cell before the
                wrist settle), to show what the settle costs
floor step    : SimConfig.substeps (20) bare pybullet.stepSimulation calls + one bare
                getCameraImage on the same world; an env step runs more substeps than
                that (the settles; mean_substeps_per_env_step says how many)
episodes/s    : scripted episodes including scene resets
Usage: python benchmarks/sim_speed.py --json OUT [--steps N]
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import pybullet as pb

from _results import write_result
from mtopt.policies.scripted import scripted_policy_for
from mtopt.robots.action import make_action
from mtopt.robots.sim_robot import SimRobot
from mtopt.sim.cell import SimConfig
from mtopt.sim.runner import run_episode
from mtopt.tasks import get_task


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", required=True)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--episodes", type=int, default=100)
    args = ap.parse_args()
    cfg = SimConfig()
    robot = SimRobot(cfg, seed=0)
    robot.reset_scene(0)
    rng = np.random.default_rng(0)
    actions = [
        make_action(*rng.uniform(-1, 1, 4), close=bool(rng.random() < 0.5)) for _ in range(64)
    ]

    loose = SimRobot(SimConfig(wrist_settle_substeps=0), seed=0)

    def env_steps(n: int, r: SimRobot = robot) -> float:
        r.reset_scene(1)
        r.start_episode()
        t = time.perf_counter()
        for i in range(n):
            r.act(actions[i % len(actions)])
        return n / (time.perf_counter() - t)

    cell = robot.cell
    view = pb.computeViewMatrix([0.3, 0, 0.6], [-0.04, 0, 0.07], [-1, 0, 0])
    proj = pb.computeProjectionMatrixFOV(44, 1.0, 0.05, 2.0)

    def floor_steps(n: int) -> float:
        robot.reset_scene(1)
        t = time.perf_counter()
        for _ in range(n):
            for _ in range(cfg.substeps):
                pb.stepSimulation(physicsClientId=cell.client)
            pb.getCameraImage(
                cfg.image_size,
                cfg.image_size,
                view,
                proj,
                renderer=pb.ER_TINY_RENDERER,
                shadow=0,
                flags=pb.ER_NO_SEGMENTATION_MASK,
                physicsClientId=cell.client,
            )
        return n / (time.perf_counter() - t)

    # interleave to share the machine's noise between the two
    env_rates, loose_rates, floor_rates = [], [], []
    sub0 = robot.cell.substeps_run
    for _ in range(3):
        env_rates.append(env_steps(args.steps // 3))
        loose_rates.append(env_steps(args.steps // 3, loose))
        floor_rates.append(floor_steps(args.steps // 3))
    substeps_per_step = (robot.cell.substeps_run - sub0) / (3 * (args.steps // 3))
    env_sps, floor_sps = float(np.median(env_rates)), float(np.median(floor_rates))
    loose_sps = float(np.median(loose_rates))
    loose.close()

    resets = []
    for s in range(50):
        t = time.perf_counter()
        robot.reset_scene(100 + s)
        resets.append(time.perf_counter() - t)
    reset_ms = float(np.median(resets) * 1000)

    spec = get_task("lift-any")
    t = time.perf_counter()
    steps = 0
    for ep in range(args.episodes):
        robot.reset_scene(1000 + ep)
        steps += run_episode(robot, scripted_policy_for(spec), spec, rng, cfg.max_steps).num_steps
    eps = args.episodes / (time.perf_counter() - t)

    out = {
        "machine": platform.processor() or platform.machine(),
        "image_size": cfg.image_size,
        "substeps": cfg.substeps,
        "env_steps_per_s": round(env_sps, 1),
        "mean_substeps_per_env_step": round(substeps_per_step, 1),
        "no_settle_env_steps_per_s": round(loose_sps, 1),
        "settle_cost_ratio": round(loose_sps / env_sps, 3),
        "floor_steps_per_s": round(floor_sps, 1),
        "overhead_ratio_env_over_floor": round(floor_sps / env_sps, 3),
        "reset_ms": round(reset_ms, 2),
        "reset_in_steps": round(reset_ms / (1000 / env_sps), 2),
        "scripted_episodes_per_s_with_resets": round(eps, 2),
        "mean_steps_per_episode": round(steps / args.episodes, 2),
    }
    write_result(args.json, out)


if __name__ == "__main__":
    main()
