"""Exploration around a bootstrap policy, for collection only.

Scripted policies always TERMINATE at the end of their script, so without exploration
the data never shows what an early TERMINATE leads to: every terminal transition looks
like a typical ending and Q(s, terminate) learns the average success rate whatever the
state (an out-of-distribution action that CEM then picks from the first step). This
wrapper makes the data cover such actions: with probability ``early_terminate`` per
episode it ends the episode at a uniformly random step in ``[0, horizon)``, and with
probability ``epsilon`` per step it replaces the motion with a uniformly random one
(the gripper command flipped with probability ``gripper_flip``, never TERMINATE: a flip
while carrying drops the object, so flips are rarer than moves).

Evaluations and baselines use the bare policy; only collection explores.
"""

from __future__ import annotations

import numpy as np

from mtopt.policies.base import Policy
from mtopt.robots.action import ACTION_DIM, IDX_GRIPPER, IDX_TERMINATE
from mtopt.robots.base import Observation


class Exploring:
    def __init__(
        self,
        policy: Policy,
        epsilon: float = 0.0,
        early_terminate: float = 0.0,
        horizon: int = 8,
        gripper_flip: float = 0.25,
    ):
        if not 0.0 <= epsilon <= 1.0 or not 0.0 <= early_terminate <= 1.0:
            raise ValueError("epsilon and early_terminate are probabilities in [0, 1]")
        if horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon}")
        self.policy = policy
        self.name = policy.name
        self.epsilon = epsilon
        self.early_terminate = early_terminate
        self.horizon = horizon
        self.gripper_flip = gripper_flip
        self._rng = np.random.default_rng(0)
        self._stop_at = -1
        self._t = 0

    @property
    def version(self) -> int:
        return int(self.policy.version)

    def reset(self, task: str, rng: np.random.Generator) -> None:
        self.policy.reset(task, rng)
        self._rng = rng
        self._t = 0
        early = rng.random() < self.early_terminate
        self._stop_at = int(rng.integers(0, self.horizon)) if early else -1

    def act(self, obs: Observation) -> np.ndarray:
        action = np.array(self.policy.act(obs), dtype=np.float32)  # keeps the policy's state
        if self.epsilon > 0 and self._rng.random() < self.epsilon:
            action[:IDX_GRIPPER] = self._rng.uniform(-1.0, 1.0, IDX_GRIPPER)
            if self._rng.random() < self.gripper_flip:
                action[IDX_GRIPPER] = -action[IDX_GRIPPER] if action[IDX_GRIPPER] != 0 else 1.0
            action[IDX_TERMINATE] = -1.0
        if self._t == self._stop_at:
            action[IDX_TERMINATE] = 1.0
        self._t += 1
        assert action.shape == (ACTION_DIM,)
        return action
