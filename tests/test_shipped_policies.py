"""The learned policies shipped under policies/ (made with `mtopt export` or `mtopt
average`) still load into today's network and act in the cell they were trained on."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from mtopt.policies.cem_policy import CEMPolicy
from mtopt.robots.sim_robot import SimRobot
from mtopt.runtime.config import load_run_config
from mtopt.sim.cli import learned_policy
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
        pol, sim, _ = learned_policy(folder, part, seed=0)  # as `mtopt sim demo --run` acts
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
