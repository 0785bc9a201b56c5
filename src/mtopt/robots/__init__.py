"""Robots: the ``Robot`` protocol, the action layout, and adapters (sim robot)."""

from mtopt.robots.action import ACTION_DIM, InvalidActionError, make_action, validate_action
from mtopt.robots.base import STATE_DIM, STATE_NAMES, Observation, Robot, StepResult

__all__ = [
    "ACTION_DIM",
    "STATE_DIM",
    "STATE_NAMES",
    "InvalidActionError",
    "Observation",
    "Robot",
    "StepResult",
    "make_action",
    "validate_action",
]
