"""Evaluation on held-out seeds and held-out object instances (simulator ground truth)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from mtopt.policies.base import Policy
from mtopt.robots.sim_robot import SimRobot
from mtopt.sim.cell import SimConfig
from mtopt.sim.runner import run_episode
from mtopt.tasks.registry import TaskRegistry, TaskSpec

EVAL_SEED_OFFSET = 7_000_000  # evaluation scene seeds never used for collection seeds of the fleet


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for k successes in n trials (95% for z = 1.96)."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (max(0.0, c - h), min(1.0, c + h))


def rate_with_ci(rate: float, n: int) -> dict[str, object]:
    """{"success": rate, "ci95": [lo, hi]} for a success rate measured over n episodes."""
    lo, hi = wilson_interval(round(rate * n), n)
    return {"success": round(rate, 4), "ci95": [round(lo, 4), round(hi, 4)]}


def evaluate_policy(
    policy_for: Callable[[TaskSpec], Policy],
    registry: TaskRegistry,
    tasks: Sequence[str],
    episodes_per_task: int,
    sim: SimConfig,
    seed: int = 0,
    robot: SimRobot | None = None,
) -> dict[str, float]:
    """Ground-truth success rate per task on fixed held-out scenes (same scenes every call).

    robot: evaluate on this robot (built from ``sim`` by the caller, who closes it), for
    policies that need it, such as the privileged ``mtopt.sim.oracle.OraclePolicy``."""
    own = robot is None
    if robot is None:
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
    if own:
        robot.close()
    return out
