"""Run whole episodes of a policy on a robot (shared by the demo, collection and evaluation)."""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass, field

import numpy as np

from mtopt.policies.base import Policy
from mtopt.robots.action import validate_action, wants_terminate
from mtopt.robots.base import Observation, Robot, StepResult, implausible_values
from mtopt.tasks.registry import TaskSpec

log = logging.getLogger(__name__)


@dataclass
class EpisodeRecord:
    """Everything observed in one episode. images/states have T+1 entries, actions T."""

    task: str
    images: list[np.ndarray] = field(default_factory=list)
    states: list[np.ndarray] = field(default_factory=list)
    poses: list[np.ndarray | None] = field(default_factory=list)
    """Proprioception (``Observation.pose``) per observation; None where the robot gave none."""
    actions: list[np.ndarray] = field(default_factory=list)
    final_image: np.ndarray | None = None
    terminated: bool = False
    prepared: bool = True

    @property
    def num_steps(self) -> int:
        return len(self.actions)

    def pose_array(self) -> np.ndarray | None:
        """(T+1, 4) float32 poses, or None unless every observation had one."""
        if not self.poses or any(p is None for p in self.poses):
            return None
        return np.stack([np.asarray(p, np.float32) for p in self.poses])


def run_episode(
    robot: Robot,
    policy: Policy,
    task: TaskSpec,
    rng: np.random.Generator,
    max_steps: int,
    skip_unprepared: bool = False,
) -> EpisodeRecord:
    """Start an episode from the robot's current scene, run ``policy`` until TERMINATE or
    ``max_steps``, and return the record (the scene is not reset here). With
    ``skip_unprepared``, a robot that cannot set up the task's initial condition
    (``prepare_for_task`` returns False) runs nothing: the record has ``prepared=False``,
    no steps and no final image."""
    robot.start_episode()
    prepared = checked_prepare(robot, task.starts_holding, task.held_category)
    rec = EpisodeRecord(task=task.name, prepared=prepared)
    if skip_unprepared and not prepared:
        return rec
    obs = checked_observation(robot, robot.observe(), "observe()")
    policy.reset(task.name, rng)
    _record(rec, obs)
    for step in range(max_steps):
        action = validate_action(policy.act(obs))  # a clear error, never a wild command
        result = checked_act(robot, action, step + 1)
        obs = result.observation
        rec.actions.append(action)
        _record(rec, obs)
        if result.terminated:
            rec.terminated = True
            break
    rec.final_image = np.array(checked_final_image(robot), copy=True)  # (a refilled buffer)
    return rec


def _record(rec: EpisodeRecord, obs: Observation) -> None:
    """Keep copies of an observation's arrays: a camera or driver that refills one buffer
    (many do) stored every frame as the last one."""
    rec.images.append(np.array(obs.image, copy=True))
    rec.states.append(np.array(obs.state, copy=True))
    rec.poses.append(None if obs.pose is None else np.array(obs.pose, copy=True))


def checked_prepare(robot: Robot, starts_holding: bool, category: str | None = None) -> bool:
    """``robot.prepare_for_task(starts_holding)``, checked to be a bool; ``category`` goes
    along as a keyword only when set (a robot written before it existed still serves
    every task without one)."""
    if category is None or not _takes_category(robot):
        prepared = robot.prepare_for_task(starts_holding)
    else:
        prepared = robot.prepare_for_task(starts_holding, category=category)
    if not isinstance(prepared, (bool, np.bool_)):
        raise RobotContractError(
            f"robot {robot.robot_id}: prepare_for_task must return True or False, got "
            f"{prepared!r} (a missing return?)"
        )
    return bool(prepared)


_warned_no_category: set[type] = set()


def _takes_category(robot: Robot) -> bool:
    """Whether ``robot.prepare_for_task`` takes ``category`` (by name or ``**kwargs``); a
    robot written before the keyword existed is called without it (warned once per
    class: its category placing episodes hold whatever it stages)."""
    try:
        params = inspect.signature(robot.prepare_for_task).parameters.values()
    except (TypeError, ValueError):  # no signature to read (a C extension): try it
        return True
    if any(p.name == "category" or p.kind is p.VAR_KEYWORD for p in params):
        return True
    if type(robot) not in _warned_no_category:
        _warned_no_category.add(type(robot))
        log.warning(
            "%s.prepare_for_task takes no category: a category placing task's object is "
            "whatever the robot stages (add category: str | None = None to choose it)",
            type(robot).__name__,
        )
    return False


def checked_act(robot: Robot, action: np.ndarray, step: int) -> StepResult:
    """``robot.act(action)`` (a validated action) at the episode's ``step`` (from 1), its
    result checked: a ``StepResult`` with a checked observation, and the end of the
    episode on TERMINATE; a ``RobotContractError`` naming the robot otherwise."""
    result = robot.act(action)
    if not isinstance(result, StepResult):
        raise RobotContractError(
            f"robot {robot.robot_id}: act() must return a StepResult(observation, "
            f"terminated), got {type(result).__name__}"
        )
    checked_observation(robot, result.observation, f"act() at step {step}")
    if wants_terminate(action) and not result.terminated:
        # the episode would go on past its end: stored TERMINATEs mid-episode, and
        # value targets that bootstrap past them
        raise RobotContractError(
            f"robot {robot.robot_id}: act() was sent TERMINATE at step {step} and "
            "returned terminated=False (a robot ends the episode on TERMINATE)"
        )
    return result


def checked_final_image(robot: Robot) -> np.ndarray:
    """``robot.final_image()`` (the outcome presented), checked: uint8 of the robot's
    ``image_size``."""
    final = np.asarray(robot.final_image())
    side = robot.image_size
    if final.dtype != np.uint8 or final.shape != (side, side, 3):
        raise RobotContractError(
            f"robot {robot.robot_id}: final_image() must be uint8 ({side}, {side}, 3) "
            f"(image_size {side}), got {final.dtype} {final.shape}"
        )
    return final


class RobotContractError(RuntimeError):
    """A robot broke the ``Robot`` protocol (``mtopt.robots.base``): said at once, naming
    the robot, rather than stored and failing far away (in replay, in a policy)."""


def checked_observation(robot: Robot, obs: object, where: str) -> Observation:
    """``obs`` if it is an ``Observation`` of the robot's ``image_size`` with finite state
    and pose in plausible ranges (``mtopt.robots.base.implausible_values``: the units the
    Q-function learns in), else a ``RobotContractError`` naming the robot and ``where``."""
    if not isinstance(obs, Observation):
        raise RobotContractError(
            f"robot {robot.robot_id}: {where} must give an Observation, got {type(obs).__name__}"
        )
    side = robot.image_size
    if obs.image.shape != (side, side, 3):
        raise RobotContractError(
            f"robot {robot.robot_id}: {where} gave a {obs.image.shape} image; its image_size "
            f"{side} says ({side}, {side}, 3)"
        )
    for name in ("state", "pose"):
        value = getattr(obs, name)
        if value is not None and not np.isfinite(value).all():
            raise RobotContractError(
                f"robot {robot.robot_id}: {where} gave a {name} that is not finite: {value}"
            )
    wrong = implausible_values(obs.state, obs.pose)
    if wrong is not None:
        raise RobotContractError(f"robot {robot.robot_id}: {where} gave {wrong}")
    return obs
