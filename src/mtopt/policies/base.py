"""The ``Policy`` protocol shared by scripted and learned (CEM) policies."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from mtopt.robots.base import Observation


@runtime_checkable
class Policy(Protocol):
    """Chooses actions for one episode of one task.

    ``name`` and ``version`` are recorded with every episode (scripted policies have
    version 0; learned policies report the Q-weights version they act with).
    """

    name: str

    @property
    def version(self) -> int: ...

    def reset(self, task: str, rng: np.random.Generator) -> None:
        """Start a new episode of ``task``."""
        ...

    def act(self, obs: Observation) -> np.ndarray:
        """Return an action (layout: ``mtopt.robots.action``), values in [-1, 1]."""
        ...
