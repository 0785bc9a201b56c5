"""The learned policies shipped under policies/ (made with `mtopt export` or `mtopt
average`) still load into today's network and act in the cell they were trained on."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from mtopt.policies.cem_policy import CEMPolicy, load_policy
from mtopt.robots.sim_robot import SimRobot
from mtopt.runtime.config import load_run_config
from mtopt.sim.runner import run_episode
from mtopt.tasks import DEFAULT_REGISTRY

ROOT = Path(__file__).resolve().parents[1] / "policies"
SHIPPED = sorted(p.parent for p in ROOT.glob("*/exported.json"))


def test_policies_are_shipped() -> None:
    assert SHIPPED, f"no exported policy under {ROOT}"


@pytest.mark.parametrize("folder", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_policy_loads_and_acts(folder: Path) -> None:
    cfg = load_run_config(folder / "config.json")
    exported = json.loads((folder / "exported.json").read_text())
    for part in exported["parts"]:
        pol, sim, _ = load_policy(folder, part, seed=0)  # as `mtopt sim demo --run` acts
        assert isinstance(pol, CEMPolicy) and sim == cfg.sim
        assert pol.version == exported["version"]
        assert pol.net is not None and pol.net.cfg == cfg.qnet
    robot = SimRobot(dataclasses.replace(cfg.sim, object_split="test"), seed=3)
    try:
        robot.reset_scene(3)
        spec = DEFAULT_REGISTRY.get("lift-any")
        rec = run_episode(robot, pol, spec, np.random.default_rng(3), cfg.sim.max_steps)
    finally:
        robot.close()
    acts = np.stack(rec.actions)
    assert 1 <= len(acts) <= cfg.sim.max_steps and np.all(np.abs(acts) <= 1.0)


def test_a_shipped_policy_from_python_in_the_gymnasium_env() -> None:
    """The documented Python path: load_policy (a str path too), the env's obs and info
    through env_observation, the same episode as the robot runner gives; misuse is an
    error, not a do-nothing action."""
    import gymnasium as gym

    import mtopt
    from mtopt.eval.evaluate import eval_scene_seed
    from mtopt.robots.base import Observation
    from mtopt.sim.env import env_observation

    folder = SHIPPED[0]
    policy, sim, registry = load_policy(str(folder))
    with pytest.raises(RuntimeError, match="call reset"):
        policy.act(
            Observation(np.zeros((sim.image_size,) * 2 + (3,), np.uint8), np.zeros(2, np.float32))
        )
    cell = dataclasses.replace(sim, object_split="test")
    env = gym.make(mtopt.ENV_ID, task="lift-any", sim=cell, registry=registry)
    assert env.unwrapped.config == cell
    with pytest.raises(ValueError, match="either as sim= or as keywords"):
        gym.make(mtopt.ENV_ID, sim=cell, image_size=32)
    scene = eval_scene_seed(5, 0, 0)
    obs, info = env.reset(options={"scene_seed": scene})
    policy.reset("lift-any", np.random.default_rng(scene))
    actions, done = [], False
    while not done:
        actions.append(policy.act(env_observation(obs, info)))
        obs, reward, term, trunc, info = env.step(actions[-1])
        done = term or trunc
    assert reward == float(info["success"]) and 1 <= len(actions) <= sim.max_steps
    # the runner on the same scene takes the same actions
    again, _, _ = load_policy(folder)
    robot = SimRobot(dataclasses.replace(sim, object_split="test"), seed=0)
    try:
        robot.reset_scene(scene)
        rec = run_episode(
            robot, again, registry.get("lift-any"), np.random.default_rng(scene), sim.max_steps
        )
    finally:
        robot.close()
    assert np.allclose(np.stack(rec.actions), np.stack(actions), atol=1e-5)
    bad = Observation(obs["image"], obs["state"], np.array([np.nan, 0.1, 0.1, 0.0], np.float32))
    with pytest.raises(ValueError, match="pose is not finite"):
        policy.act(bad)
    with pytest.raises(KeyError, match="no 'pose'"):
        env_observation(obs, {})
    with pytest.raises(FileNotFoundError, match="give that"):
        load_policy(folder / "weights")
    env.close()
