"""The ``Robot`` protocol: what collection and policies need from any robot, sim or real."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

# State features of the paper, in this order.
STATE_DIM = 2
STATE_NAMES = ("gripper_status", "gripper_height")
STATE_RANGES = ((-0.05, 1.05), (-0.1, 2.0))
"""Plausible values of the state features: a gripper status in [0, 1] (0 open, 1
closed), a gripper height in metres above the bin floor. Wider than the simulated cell
reaches; outside them a robot most likely reports another unit (a status of 0-255,
millimetres), which would teach the Q-function nonsense."""
POSE_RANGES = ((-2.0, 2.0), (-2.0, 2.0), (-0.1, 2.0), (-2 * np.pi - 1e-3, 2 * np.pi + 1e-3))
"""Plausible x, y, z (metres, the cell's frame) and yaw (radians) of ``Observation.pose``."""


def implausible_values(state: np.ndarray, pose: np.ndarray | None) -> str | None:
    """What is out of ``STATE_RANGES`` / ``POSE_RANGES`` in an observation's state and
    pose, with the likely cause, or None."""
    hints = (
        "a status in [0, 1]: 0 open, 1 closed",
        "metres above the bin floor, not millimetres",
    )
    for name, value, (lo, hi), hint in zip(STATE_NAMES, state, STATE_RANGES, hints, strict=True):
        if not lo <= float(value) <= hi:
            return f"{name} {float(value):g} is outside [{lo:g}, {hi:g}] ({hint})"
    if pose is not None:
        names = ("x", "y", "z", "yaw")
        for name, value, (lo, hi) in zip(names, pose, POSE_RANGES, strict=True):
            if not lo <= float(value) <= hi:
                unit = "radians, not degrees" if name == "yaw" else "metres, not millimetres"
                return f"pose {name} {float(value):g} is outside [{lo:.3g}, {hi:.3g}] ({unit})"
    return None


@dataclass(frozen=True)
class Observation:
    """One observation: an RGB image and the paper's state features.

    image: uint8 array (H, W, 3), H = W = the robot's ``image_size``, which must be the
    run's ``sim.image_size`` / ``qnet.image_size`` (64 by default) for its episodes to be
    learned from: replay drops episodes of another size with a warning, and the success
    detector's relabel rounds leave them out.
    state: float32 array (2,) = [gripper status in [0, 1] (0 open, 1 closed: the measured
    finger closure, or the binary command for a robot that reports only that), gripper
    height above bin floor (m)].
    """

    image: np.ndarray
    state: np.ndarray
    pose: np.ndarray | None = None
    """Proprioception (gripper x, y, z (m), yaw (rad, in [-pi, pi]) in the robot frame).
    Optional for the paper's network and the success detector, which never see it, but
    required by the scripted placing policy (it raises without it: the robot's
    collection process fails, and a fleet restarts it until it gives up) and by a
    Q-network with ``QNetConfig.gripper_xy`` (the ``tuned`` preset), which takes x, y."""

    def __post_init__(self) -> None:
        # lists and other array-likes from a robot's driver become arrays (frozen: via
        # object.__setattr__); a dtype or shape that does not fit is a clear error below
        for name in ("image", "state", "pose"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, np.ndarray):
                try:
                    value = np.asarray(value)
                except (TypeError, ValueError) as exc:
                    raise ValueError(f"Observation.{name} is not array-like: {exc}") from None
                if name == "image" and value.dtype.kind in "iu":
                    if value.size and (value.min() < 0 or value.max() > 255):
                        raise ValueError("Observation.image values must lie in 0..255")
                    value = value.astype(np.uint8)
                object.__setattr__(self, name, value)
        if self.image.dtype != np.uint8 or self.image.ndim != 3 or self.image.shape[2] != 3:
            raise ValueError(
                f"Observation.image must be uint8 (H, W, 3), got {self.image.dtype} {self.image.shape}"
            )
        if self.state.shape != (STATE_DIM,) or not np.issubdtype(self.state.dtype, np.floating):
            raise ValueError(
                f"Observation.state must be a float array of shape ({STATE_DIM},) "
                f"{STATE_NAMES}, got {self.state.dtype} {self.state.shape}"
            )
        if self.pose is not None and np.shape(self.pose) != (4,):
            raise ValueError(
                f"Observation.pose must be (x, y, z, yaw) or None, got shape {np.shape(self.pose)}"
            )
        if self.pose is not None and not np.issubdtype(self.pose.dtype, np.number):
            raise ValueError(f"Observation.pose must be numeric, got {self.pose.dtype}")


@dataclass(frozen=True)
class StepResult:
    """What ``Robot.act`` returns: the next observation and whether the episode ended."""

    observation: Observation
    terminated: bool  # the policy sent TERMINATE
    info: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Robot(Protocol):
    """A robot cell that can run episodes. A real robot implements the same methods.

    A robot knows nothing about tasks or rewards: it resets its scene, observes and acts.
    ``prepare_for_task`` lets a robot set up the initial condition a task needs (for the
    sim: an object already in the gripper for placing tasks); a real robot may chain from
    a previous successful lift instead and return False when it cannot comply (collection
    then stores nothing for that task and draws another on the same scene, resetting it
    once no enabled task can be set up there: a False should leave a scene the next task
    can start from, as the simulated cell's does).

    Optional methods, read with ``getattr`` by collection (``mtopt.collect.loop``):

    - ``holding() -> bool``: an object is in the gripper (a real gripper's closure sensor
      tells it). Without it, placing is not preferred after a successful lift (it is
      still drawn at random, and ``prepare_for_task`` decides). Methods, not properties:
      a property is not called and reads as missing.
    - ``objects_left() -> int``: objects left to pick (without it: assumed 1, so a chain
      never resets for lack of objects).
    - ``gripper_status``: an attribute, "closure" (the state's first feature is the
      measured finger closure, 0 open, 1 fingers met) or "command" (1 when commanded
      closed: a binary gripper). A robot made by a factory (``mtopt.robots.factory``)
      that declares one other than the run's ``sim.gripper_status`` is refused: the
      networks and the simulated evaluations read the status one way (the scripted
      policies read only the height). Without it, or with a value that is no string,
      nothing is checked.
    - ``scene_state()``: simulator ground truth for the store's ``gt_`` columns (sim only;
      a real robot leaves it out and those columns are null).

    ``scene_description()["seed"]`` is stored as the episode's ``seed`` when it is an int
    (-1 otherwise: none, or a real cell's text id, which stays in the stored ``scene``).
    A real robot must not define ``scene_state``: any method of that name is taken for the
    simulator's ground truth.
    Report none unless the scene can be set up again from it.

    Episodes check the contract as they run (``mtopt.sim.runner.RobotContractError``,
    naming the robot): observations and the final image of ``image_size``, finite state
    and pose, a ``StepResult`` from ``act``, TERMINATE obeyed, a bool from
    ``prepare_for_task``, a dict from ``scene_description``.

    What an implementation must match (the simulated cell, ``mtopt.robots.sim_robot``, is
    the reference):

    - ``act`` executes the action layout of ``mtopt.robots.action``: dx, dy, dz times a
      step of 5 cm (``SimConfig.max_step_m``) and dyaw times 0.4 rad (``max_yaw_rad``),
      in the robot frame, from the last commanded pose (``SimConfig.move_from``: or the
      measured one); a change of the gripper command is carried out before the arm
      moves; moves are clipped to the workspace.
      The robot itself reports the end: ``StepResult.terminated`` is True when the
      action's TERMINATE component is > 0 (``mtopt.robots.action.wants_terminate``).
    - The frame: the scripted bootstrap policies aim at the simulated cell's layout
      (``mtopt.sim.cell``: x, y, z in metres, z up, the origin on the bin floor between
      the two bins; objects in the bin centred at (x, y) = (0, +0.13), fixtures in the one
      at (0, -0.13), each 0.2 m across inside with 5 cm walls; the bin floor at z = 0, so
      heights, the state's gripper height included, are above the bin floor). A real cell
      expresses its poses in such a frame, or brings scripted policies of its own. The
      scripted pick reads no x, y at all: it relies on ``start_episode`` putting the open
      gripper over the object bin (the sim: a random point over it, 14-24 cm above its
      floor, a random yaw).
    - The ``tuned`` preset's gripper crop projects the gripper's position through a
      calibrated camera named by ``QNetConfig.crop_camera``: give the real camera's
      calibration as ``--set qnet.crop_camera=pinhole:ex,ey,ez,tx,ty,tz,ux,uy,uz,fov_deg``
      (``mtopt.qtopt.crop.camera_named``; the default is the simulated cell's camera).
    - ``image_size``: the side (pixels) of the square observation and final images.
    """

    robot_id: str
    image_size: int

    def reset_scene(self, seed: int | None = None) -> Observation:
        """Reset the whole scene (new objects / arrangement) and return the first observation."""
        ...

    def start_episode(self) -> Observation:
        """Move the arm to a start pose without disturbing the scene (for chaining tasks)."""
        ...

    def prepare_for_task(self, starts_holding: bool, category: str | None = None) -> bool:
        """Make sure the initial condition holds (object in gripper or not); False if impossible.

        ``category`` is passed (as a keyword, and only when set) for a task that needs an
        object of that category in the gripper (place-ball-in-bowl): a robot that stages
        the object should stage one of it; one that cannot choose may ignore it."""
        ...

    def observe(self) -> Observation: ...

    def act(self, action: np.ndarray) -> StepResult:
        """Execute one validated action (see ``mtopt.robots.action``)."""
        ...

    def final_image(self) -> np.ndarray:
        """The image the success detector judges, the same size as the observations: the
        outcome presented (a held object shown at a fixed pose), seen by a camera or view
        that frames where the tasks' outcomes are decided (the simulated cell zooms on the
        fixture bin and the presentation pose)."""
        ...

    def scene_description(self) -> dict[str, Any]:
        """JSON-serialisable description of the scene (seed, objects, fixtures)."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class PinholeCamera:
    """A calibrated pinhole camera (the robot's image source): it looks from ``eye`` at
    ``target`` (m, robot frame), ``up`` is the world direction up in the image, and
    ``fov_deg`` the vertical field of view (mtopt.qtopt.crop projects through it)."""

    eye: tuple[float, float, float]
    target: tuple[float, float, float]
    up: tuple[float, float, float]
    fov_deg: float
    """Vertical field of view (degrees)."""
    aspect: float = 1.0
    """Width / height of the image."""
