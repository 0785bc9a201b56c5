"""Scripted bootstrap policies: success rates within a band (statistical, not timing)."""

import numpy as np
import pytest

from mtopt.policies.scripted import (
    ScriptedPick,
    ScriptedPlace,
    scripted_policy_for,
    straight_down_pick,
)
from mtopt.robots.sim_robot import SimRobot
from mtopt.sim.cell import BIN_HALF, LEFT_BIN_CENTER, SimConfig
from mtopt.sim.runner import run_episode
from mtopt.tasks import get_task


def rate(task: str, n: int, seed: int) -> float:
    spec = get_task(task)
    robot = SimRobot(SimConfig(), seed=seed)
    rng = np.random.default_rng(seed)
    wins = 0
    for ep in range(n):
        robot.reset_scene(seed * 10_000 + ep)
        run_episode(robot, scripted_policy_for(spec), spec, rng, robot.config.max_steps)
        wins += spec.succeeded(robot.scene_state())
    robot.close()
    return wins / n


def test_policy_choice() -> None:
    assert isinstance(scripted_policy_for(get_task("lift-ball")), ScriptedPick)
    assert isinstance(scripted_policy_for(get_task("place-in-bowl")), ScriptedPlace)


def test_scripted_rates_fast_band() -> None:
    # 60 episodes each: wide bands (binomial sd ~ 4-6 points)
    assert 0.0 < rate("lift-any", 60, 1) < 0.30
    assert 0.25 < rate("place-on-plate", 60, 2) < 0.70


@pytest.mark.slow
@pytest.mark.parametrize(
    ("task", "lo", "hi"), [("lift-any", 0.05, 0.17), ("place-any", 0.37, 0.62)]
)
def test_scripted_rates_match_paper(task: str, lo: float, hi: float) -> None:
    # the paper: pick ~10%, place on a (large) fixture ~47%. Measured on these 300
    # scenes with releases over the whole bin: place-any 0.517, place-on-plate 0.32
    assert lo < rate(task, 300, 3) < hi


def test_scripted_place_releases_over_the_whole_left_bin() -> None:
    """The release spots spread over the bin (the paper's "random location above the
    left bin"), not around its centre, and stay 2 cm inside its walls."""
    pol = ScriptedPlace()
    rng = np.random.default_rng(0)
    offsets = []
    for _ in range(400):
        pol.reset("place-any", rng)
        offsets.append(pol._target - np.asarray(LEFT_BIN_CENTER))
    off = np.abs(np.array(offsets))
    assert off.max() <= BIN_HALF - 0.02 + 1e-9
    # uniform over +-8 cm: 6 cm out on x for a quarter of the spots, on x or y for 44%
    # (the 3 cm spread of before: none)
    assert 0.15 < float(np.mean(off.max(axis=1) > 0.06)) < 0.6


def test_straight_down_pick_closes_once_at_the_bottom_then_terminates() -> None:
    """It closes only at the bottom and then ends the episode; landing on top of an
    object keeps it from reaching the bottom, and it descends until max_steps."""
    robot = SimRobot(SimConfig(), seed=0)
    ended = 0
    try:
        for ep in range(6):
            robot.reset_scene(ep)
            obs = robot.start_episode()
            pol = straight_down_pick()
            pol.reset("lift-any", np.random.default_rng(ep))
            closes: list[float] = []
            for _ in range(robot.config.max_steps):
                a = pol.act(obs)
                if a[4] > 0 and not closes:
                    closes.append(float(obs.state[1]))
                res = robot.act(a)
                obs = res.observation
                if res.terminated:
                    break
            assert len(closes) == int(res.terminated)
            assert all(h < 0.045 for h in closes), f"closed at {closes} m, not at the bottom"
            ended += res.terminated
    finally:
        robot.close()
    assert ended >= 3
