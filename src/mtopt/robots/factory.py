"""Which robot a fleet drives: the simulated cell, or a user's own ``Robot``.

A run (``--set robot_factory=MODULE:NAME``), ``mtopt collect --robot-factory`` and the
Ray robot actors make each robot with ``make_robot``. ``NAME`` is a callable of
``MODULE`` (a dotted attribute path is allowed: ``arms:Arm.connect``), called as

    NAME(robot_id=..., seed=..., sim=SimConfig) -> Robot

once per robot process (and again when a process is restarted): ``robot_id`` is the
fleet's name for that robot (``robot-00``, ...; its episodes are stored under it), ``seed``
the robot's seed for its scenes and exploration, and ``sim`` the run's ``SimConfig``
(``image_size``, ``max_steps``, ``max_step_m``, ...), which a real robot reads for the
settings it must match. The module must be importable where the robots run (every Ray
node). An empty spec makes the simulated cell (``SimRobot``).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from typing import Any, cast

from mtopt.robots.base import Robot
from mtopt.sim.config import GRIPPER_STATUSES

_SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")

PROTOCOL_METHODS = (
    "reset_scene",
    "start_episode",
    "prepare_for_task",
    "observe",
    "act",
    "final_image",
    "scene_description",
    "close",
)


def missing_methods(robot: object) -> list[str]:
    """The ``Robot`` methods (``PROTOCOL_METHODS``) ``robot`` lacks."""
    return [m for m in PROTOCOL_METHODS if not callable(getattr(robot, m, None))]


def check_factory_spec(spec: str) -> str:
    """``spec`` if it has the form ``MODULE:NAME`` (or is empty: the simulated cell);
    a ValueError otherwise. Imports nothing."""
    if spec and not _SPEC.match(spec):
        raise ValueError(
            f"robot_factory must be MODULE:NAME (a callable that makes a Robot, e.g. "
            f"my_arms:make_arm), got {spec!r}"
        )
    return spec


def load_robot_factory(spec: str) -> Callable[..., Any]:
    """The callable named by ``MODULE:NAME``; a ValueError that says what is wrong when
    the module cannot be imported or has no such callable."""
    check_factory_spec(spec)
    if not spec:
        raise ValueError("robot_factory is empty: the simulated cell needs no factory")
    module_name, _, attr = spec.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(
            f"robot_factory {spec!r}: cannot import {module_name!r} ({exc}); it must be "
            f"importable where the robots run (an installed package, or on PYTHONPATH)"
        ) from None
    except Exception as exc:  # the module itself failed: a syntax error, a missing driver
        raise ValueError(
            f"robot_factory {spec!r}: importing {module_name!r} failed: {type(exc).__name__}: {exc}"
        ) from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"robot_factory {spec!r}: {module_name!r} has no {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(
            f"robot_factory {spec!r}: {attr!r} is a {type(obj).__name__}, not callable"
        )
    return obj


def gripper_status_mismatch(robot: object, sim: Any) -> str | None:
    """What is wrong when ``robot`` declares a ``gripper_status`` (what its state's first
    feature means, ``SimConfig.gripper_status``: "closure" or "command") other than the
    one ``sim`` (the run's cell) says, or an unknown one; None when it agrees or declares
    none. A value that is no string (a wrapper's current reading kept under that name)
    is no declaration."""
    declared = getattr(robot, "gripper_status", None)
    if not isinstance(declared, str) or declared == sim.gripper_status:
        return None
    if declared not in GRIPPER_STATUSES:
        return (
            f"whose gripper_status {declared!r} is none of {', '.join(GRIPPER_STATUSES)} "
            "(what the state's first feature means)"
        )
    return (
        f"whose gripper status is {declared!r}, where the run's networks and simulated "
        f"evaluations read {sim.gripper_status!r} (sim.gripper_status): set "
        "sim.gripper_status to what the robot reports"
    )


def make_robot(spec: str, sim: Any, robot_id: str, seed: int, check_gripper: bool = True) -> Robot:
    """The robot ``robot_id`` of a fleet: ``SimRobot(sim, ...)`` for an empty ``spec``,
    else what the factory makes, checked: every ``Robot`` method, the ``robot_id`` it was
    asked for (the fleet counts and seeds its robots by the ids in the store),
    ``sim.image_size`` (the size the run's networks take) and, when the robot declares
    one and ``check_gripper``, ``sim.gripper_status``. A ``RobotContractError`` naming
    the factory otherwise."""
    from mtopt.sim.runner import RobotContractError

    if not spec:
        from mtopt.robots.sim_robot import SimRobot

        return SimRobot(sim, robot_id=robot_id, seed=seed)
    robot = load_robot_factory(spec)(robot_id=robot_id, seed=seed, sim=sim)
    missing = missing_methods(robot)
    wrong = None
    if missing:
        wrong = (
            f"robot_factory {spec!r} made a {type(robot).__name__} without the Robot "
            f"method(s) {', '.join(missing)} (mtopt.robots.base.Robot)"
        )
    elif getattr(robot, "robot_id", None) != robot_id:
        wrong = (
            f"robot_factory {spec!r} was asked for robot {robot_id!r} and made one whose "
            f"robot_id is {getattr(robot, 'robot_id', None)!r}: use the id it is given"
        )
    elif getattr(robot, "image_size", None) != sim.image_size:
        wrong = (
            f"robot_factory {spec!r} made robot {robot_id!r} with image_size "
            f"{getattr(robot, 'image_size', None)!r}; the run's networks take "
            f"{sim.image_size} (the run's sim.image_size): resize its camera images"
        )
    elif check_gripper and (status := gripper_status_mismatch(robot, sim)) is not None:
        wrong = f"robot_factory {spec!r} made robot {robot_id!r} {status}"
    if wrong is not None:
        close = getattr(robot, "close", None)
        if callable(close):  # refused, but it may hold a connection to an arm
            close()
        raise RobotContractError(wrong)
    return cast(Robot, robot)
