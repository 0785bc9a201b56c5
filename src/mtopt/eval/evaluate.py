"""Evaluation on held-out seeds and held-out object instances (simulator ground truth)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from mtopt.policies.base import Policy
from mtopt.robots.sim_robot import SimRobot
from mtopt.sim.cell import SimConfig
from mtopt.sim.runner import run_episode
from mtopt.tasks.registry import TaskRegistry, TaskSpec

EVAL_SEED_OFFSET = 7_000_000  # evaluation scene seeds never used for collection seeds of the fleet


def evaluate_policy(
    policy_for: Callable[[TaskSpec], Policy],
    registry: TaskRegistry,
    tasks: Sequence[str],
    episodes_per_task: int,
    sim: SimConfig,
    seed: int = 0,
) -> dict[str, float]:
    """Ground-truth success rate per task on fixed held-out scenes (same scenes every call)."""
    robot = SimRobot(sim, robot_id="eval", seed=seed)
    out: dict[str, float] = {}
    for ti, name in enumerate(tasks):
        spec = registry.get(name)
        wins = 0
        for k in range(episodes_per_task):
            scene_seed = EVAL_SEED_OFFSET + seed * 100_000 + ti * 1000 + k
            robot.reset_scene(scene_seed)
            rng = np.random.default_rng(scene_seed)
            run_episode(robot, policy_for(spec), spec, rng, sim.max_steps)
            wins += spec.succeeded(robot.scene_state())
        out[name] = wins / max(1, episodes_per_task)
    robot.close()
    return out
