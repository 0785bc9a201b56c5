"""Learned policy: CEM over the latest published multi-task Q-network."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from mtopt.qtopt.cem import CEMConfig, cem_argmax
from mtopt.qtopt.learner import load_network
from mtopt.qtopt.networks import QNetwork, q_state
from mtopt.qtopt.weights import WeightsError, load_latest, read_latest
from mtopt.robots.action import ACTION_DIM
from mtopt.robots.base import Observation
from mtopt.sim.config import SimConfig
from mtopt.tasks.registry import TaskRegistry

log = logging.getLogger(__name__)


class CEMPolicy:
    """Greedy CEM action selection with optional exploration.

    epsilon: probability of a uniformly random action (binary commands as coin flips).
    noise_std: Gaussian noise added to the continuous part of the CEM action.
    part: which published network to act with: "acting" (the learner's moving average of
    the online weights; the online weights for older publications) or "online".
    cem: fp32 by default: for one state at a time bf16 autocast is no faster (measured
    in benchmarks/cem_speed.py); batched Bellman targets are where bf16 pays.
    """

    name = "cem"

    def __init__(
        self,
        task_names: Sequence[str],
        network: QNetwork | None = None,
        weights_dir: str | Path | None = None,
        cem: CEMConfig = CEMConfig(precision="fp32"),
        epsilon: float = 0.0,
        noise_std: float = 0.0,
        seed: int = 0,
        part: str = "acting",
    ):
        if part not in ("acting", "online"):
            raise ValueError(f"CEMPolicy part must be 'acting' or 'online', got {part!r}")
        if network is None and weights_dir is None:
            raise ValueError("CEMPolicy needs a network or a weights_dir")
        self.task_names = tuple(task_names)
        self._task_idx = {t: i for i, t in enumerate(self.task_names)}
        self.cem = cem.validate()
        self.epsilon = epsilon
        self.noise_std = noise_std
        self.weights_dir = Path(weights_dir) if weights_dir else None
        self.part = part
        self.net = network
        self._version = 0
        self._task: int | None = None  # set by reset(task, rng)
        self._rng = np.random.default_rng(seed)
        self._gen = torch.Generator().manual_seed(seed)
        if self.net is None:
            self.maybe_reload()
            if self.net is None:
                raise FileNotFoundError(f"no published Q weights in {self.weights_dir}")

    @property
    def version(self) -> int:
        return self._version

    def maybe_reload(self) -> bool:
        """Load newer published weights if there are any; True if it reloaded."""
        if self.weights_dir is None:
            return False
        latest = read_latest(self.weights_dir)
        if latest is None or int(latest["version"]) <= self._version:
            return False
        try:
            version, tensors, meta = load_latest(self.weights_dir)
            net = load_network(tensors, meta, self.part)
        except (WeightsError, OSError, KeyError) as exc:
            if self.net is None:
                raise
            # e.g. the file pruned between the two reads (publish keeps the newest few):
            # act on with the weights held, and try again at the next reload
            log.warning("could not reload Q weights from %s (%s)", self.weights_dir, exc)
            return False
        if net.cfg.num_tasks != len(self.task_names):
            raise ValueError(
                f"published Q weights know {net.cfg.num_tasks} tasks, this policy was given {len(self.task_names)}"
            )
        self.net, self._version = net, version
        return True

    def reset(self, task: str, rng: np.random.Generator) -> None:
        if task not in self._task_idx:
            raise ValueError(f"CEMPolicy has no task {task!r}; it knows {list(self.task_names)}")
        self._task = self._task_idx[task]
        self._rng = rng
        self._gen.manual_seed(int(rng.integers(0, 2**31 - 1)))

    @torch.no_grad()
    def act(self, obs: Observation) -> np.ndarray:
        """The action for ``obs`` (an ``Observation``: from the Gymnasium env, build it
        with ``mtopt.sim.env.env_observation(obs, info)``). Call ``reset(task, rng)``
        first; a state or pose that is not finite is an error (CEM would score every
        candidate NaN and return a do-nothing action)."""
        if self._task is None:
            raise RuntimeError("call reset(task, rng) before act(): the policy has no task yet")
        assert self.net is not None
        # what the network reads: the state, and the pose's x, y with gripper_xy
        read = {"state": obs.state}
        if self.net.cfg.gripper_xy and obs.pose is not None:
            read["pose"] = np.asarray(obs.pose)[:2]
        for name, value in read.items():
            if not np.isfinite(value).all():
                raise ValueError(f"CEMPolicy.act: observation {name} is not finite: {value}")
        if self.epsilon > 0 and self._rng.random() < self.epsilon:
            a = self._rng.uniform(-1, 1, ACTION_DIM).astype(np.float32)
            a[4:] = np.where(self._rng.random(2) < 0.5, 1.0, -1.0)
            a[5] = -1.0 if self._rng.random() < 0.95 else 1.0  # random actions rarely terminate
            return a
        assert self.net is not None
        img = torch.from_numpy(np.ascontiguousarray(obs.image))[None]
        state = torch.from_numpy(q_state(obs.state, obs.pose, self.net.cfg))[None]
        task = torch.tensor([self._task])
        best, _ = cem_argmax(self.net, img, state, task, self.cem, self._gen)
        action = best[0].numpy().astype(np.float32)
        if self.noise_std > 0:
            action[:4] = np.clip(action[:4] + self._rng.normal(0, self.noise_std, 4), -1, 1)
        return action


def load_policy(
    folder: str | Path, part: str = "acting", seed: int = 0, act: Sequence[str] = ()
) -> tuple[CEMPolicy, SimConfig, TaskRegistry]:
    """A trained policy from a run folder or a policy folder (``mtopt export``,
    ``policies/``): the greedy CEM policy on its latest published weights (its config's
    acting CEM in fp32, no exploration), the cell settings it was trained on and its
    tasks. Evaluate it on held-out objects with
    ``dataclasses.replace(sim, object_split="test")``. ``act``: changes to the acting
    search (``FIELD=VALUE``, ``mtopt.runtime.config.with_acting_search``).

    >>> policy, sim, registry = load_policy("policies/tuned-r34")
    >>> policy.reset("lift-any", np.random.default_rng(0))
    >>> action = policy.act(env_observation(obs, info))  # mtopt.sim.env
    """
    import dataclasses

    from mtopt.runtime.config import load_run_config, with_acting_search

    folder = Path(folder)
    if not (folder / "config.json").exists():
        hint = (
            f" (its parent {folder.parent} is one: give that)"
            if folder.name == "weights" and (folder.parent / "config.json").exists()
            else ""
        )
        raise FileNotFoundError(f"{folder} is not a run or policy folder (no config.json){hint}")
    cfg = load_run_config(folder / "config.json")  # a ConfigError is a ValueError
    if act:
        cfg = with_acting_search(cfg, tuple(act))
    cem = dataclasses.replace(cfg.cem_act, precision="fp32")
    registry = cfg.registry()
    shipped = _exported_parts(folder)
    if shipped is not None and part not in shipped:
        # (the loader's fallback from acting to online is for run folders published
        # before the acting network existed, not for an export that left it out)
        names = " and ".join(map(repr, shipped))
        ships = f"only the {names} network{'s' if len(shipped) > 1 else ''}"
        raise WeightsError(
            f"{folder} has no {part!r} network: it ships {ships if shipped else 'none'} "
            "(its exported.json); choose one it ships (part=..., --part)"
        )
    policy = CEMPolicy(
        registry.names, weights_dir=folder / "weights", cem=cem, seed=seed, part=part
    )
    return policy, cfg.sim, registry


def _exported_parts(folder: Path) -> list[str] | None:
    """The networks a policy folder (``mtopt export``) ships, from its ``exported.json``;
    None when there is no readable list (a run folder, a hand-made folder)."""
    import json

    try:
        parts = json.loads((folder / "exported.json").read_text()).get("parts")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(parts, list) or not all(isinstance(p, str) for p in parts):
        return None
    return parts
