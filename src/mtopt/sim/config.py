"""Configuration of the simulated cell, importable without the simulator (PyBullet):
run configs and learner-only machines (a GPU learner in a Ray cluster) read it too."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from mtopt.robots.base import PinholeCamera
from mtopt.sim.objects import Split
from mtopt.tasks.scene import CATEGORIES

SCENE_CAMERA = PinholeCamera(
    eye=(0.30, 0.0, 0.60), target=(-0.04, 0.0, 0.07), up=(-1.0, 0.0, 0.0), fov_deg=44.0
)
"""Calibration of the policy's fixed camera ("scene" view) before domain randomization.
Here, not in the simulator, so that a Q-network can project the gripper's position into
the image (mtopt.qtopt.crop) without PyBullet."""


GRIPPER_STATUSES = ("closure", "command")
"""What the state's gripper status may be (``SimConfig.gripper_status``, and a Robot's
optional ``gripper_status`` declaration)."""
SPAWNS = ("sampled", "clear")
"""How a scene's objects may be put into the bin (``SimConfig.spawn``)."""


@dataclass(frozen=True)
class SimConfig:
    """Configuration of the simulated cell."""

    image_size: int = 64
    """Side of the square RGB camera image in pixels."""
    max_steps: int = 15
    """Maximum actions per episode (TERMINATE ends it earlier)."""
    max_step_m: float = 0.05
    """Gripper displacement per unit of action along x, y, z (metres)."""
    max_yaw_rad: float = 0.4
    """Rotation about the vertical axis per unit of action (radians)."""
    num_objects: int = 4
    """Objects placed in the right bin at each scene reset."""
    object_split: Split = "train"
    """'train' or 'test' (held-out object instances, for evaluation)."""
    randomize: bool = False
    """Domain randomization: camera jitter, lighting, object and bin colours."""
    substeps: int = 20
    """Physics substeps at 240 Hz per action."""
    finger_force: float = 40.0
    """Grip force limit per finger (N)."""
    friction: float = 1.0
    """Lateral friction of fingers and objects."""
    categories: tuple[str, ...] = ("box", "can", "ball", "capsule", "bottle", "banana")
    """Object categories that may appear in a scene."""
    gripper_status: Literal["closure", "command"] = "closure"
    """State feature 0. 'closure': the measured finger closure, 0 open and 1 fingers met,
    in between when they are closed on something (what a real parallel gripper's
    position sensor reports). 'command': 1 if the gripper was commanded closed, else 0
    (QT-Opt's binary status), which cannot tell a gripper closed on nothing from one
    holding an object."""
    gripper_settle_substeps: int = 48
    """A changed gripper command runs before the arm moves, for up to this many physics
    substeps, until the fingers stop (a real gripper's blocking open/close). The fingers
    need ~20 substeps to close and ~45 to open fully, so without it (0: the behaviour
    before) they move during the arm motion: a close with a lift in the same action
    drags the fingers up past the object (a 'descend, close while lifting' pick lifts
    12% of the time against 24% with it)."""

    move_from: Literal["command", "measured"] = "command"
    """What a relative move (an action's dx, dy, dz) starts from. 'command': the previous
    commanded position, so a move that contact blocked (a finger on a box top) leaves a
    gap between command and pose that the next moves inherit, a state the policy cannot
    see. 'measured': the measured position, as a real arm's relative Cartesian move.
    'command' stays the default because every measured policy was trained with it; with
    'measured' the scripted lift-any reached 4.3% against 7.3% on the same 300 scenes
    (2026-12-05): it needs a fresh baseline run before it can be the default."""

    spawn: Literal["sampled", "clear"] = "sampled"
    """How a scene's objects are put into the bin. 'sampled' (every measured run): each
    centre drawn at least 6 cm from the others when one of 20 draws finds such a spot,
    else the 20th draw, which may be inside another object (a fifth of 4-object scenes)
    or, for a long object, inside a wall; the physics then pushes them apart, some far
    (100 scenes of 8 objects: 238 objects slid more than 2 cm while the scene settled;
    60 scenes of 12: 9 objects left the bin). 'clear': each object at a pose where it
    touches no object and no wall (asked of the physics engine); when 50 draws find
    none, it is dropped, inside the walls, where the pile is lowest among its first 20
    draws (8 objects: 42 slid; 12 objects: none left the bin). 10 or 12 objects make a
    pile up to the walls' height in either mode. 'sampled' stays the default because
    every measured policy and baseline used it; use 'clear' for more than 4 objects."""

    wrist_settle_substeps: int = 24
    """After each move the wrist gets up to this many more physics substeps, until it is
    within 1 mm of its goal or stops (pushing on something): a real arm's blocking
    move, so the image and pose are taken where the arm was sent. Without it (0: the
    behaviour before 2026-11-29) the wrist is observed 12% of the step short of its goal
    (6 mm after a full 5 cm step) and keeps moving there during the next action: a
    hidden aim error that depends on the previous action."""

    outcome_fixtures_share: float = 0.5
    """Share of the final (outcome) image's height given to the fixture bin seen from
    above; the rest shows the presentation pose (``SimCell.render(view="outcome")``).
    At 0.5 (every measured run) the bowl is about 16 pixels across in a 64-pixel image.
    A larger share gives the fixtures more pixels, in both directions, and the held
    close-up fewer; at 0.75 a detector is no more precise on a learned policy's
    placements (benchmarks/sd_view.py, docs/learning-history.md: its false successes
    are objects beside a fixture, which the top view cannot tell from one on it). The panes keep their cameras:
    a pane's aspect ratio follows its shape, so the fixtures pane's camera sees less to
    the sides at a larger share (the bin still fits up to 0.75)."""

    def outcome_rows(self, size: int) -> tuple[int, int]:
        """Rows of a ``size``-pixel outcome image for the fixture bin and the held close-up
        (the default halves: ``size // 2`` on top, as before the share existed)."""
        if self.outcome_fixtures_share == 0.5:
            return size // 2, size - size // 2
        top = round(size * self.outcome_fixtures_share)
        return top, size - top

    def validate(self) -> SimConfig:
        for name in (
            "image_size",
            "max_steps",
            "num_objects",
            "substeps",
            "gripper_settle_substeps",
            "wrist_settle_substeps",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer):
                raise ValueError(f"{name} must be an integer, got {value!r}")
        if not 16 <= self.image_size <= 512:
            raise ValueError(f"image_size must be in [16, 512] pixels, got {self.image_size}")
        if self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")
        if not 1 <= self.num_objects <= 12:
            raise ValueError(f"num_objects must be in [1, 12], got {self.num_objects}")
        if self.object_split not in ("train", "test"):
            raise ValueError(f"object_split must be 'train' or 'test', got {self.object_split!r}")
        if self.substeps < 1:
            raise ValueError(f"substeps must be >= 1, got {self.substeps}")
        if self.gripper_settle_substeps < 0:
            raise ValueError(
                f"gripper_settle_substeps must be >= 0, got {self.gripper_settle_substeps}"
            )
        if self.wrist_settle_substeps < 0:
            raise ValueError(
                f"wrist_settle_substeps must be >= 0, got {self.wrist_settle_substeps}"
            )
        if self.move_from not in ("command", "measured"):
            raise ValueError(f"move_from must be 'command' or 'measured', got {self.move_from!r}")
        if self.spawn not in SPAWNS:
            raise ValueError(f"spawn must be one of {list(SPAWNS)}, got {self.spawn!r}")
        if self.gripper_status not in GRIPPER_STATUSES:
            raise ValueError(
                f"gripper_status must be 'closure' or 'command', got {self.gripper_status!r}"
            )
        for name in ("max_step_m", "max_yaw_rad", "finger_force", "friction"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float | np.integer | np.floating)
                or not (np.isfinite(value) and value > 0)
            ):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        if not isinstance(self.randomize, bool | np.bool_):
            raise ValueError(f"randomize must be True or False, got {self.randomize!r}")
        if (
            not isinstance(self.categories, tuple | list)
            or not self.categories
            or any(c not in CATEGORIES for c in self.categories)
        ):
            raise ValueError(
                f"categories must be a non-empty tuple of {list(CATEGORIES)}, "
                f"got {self.categories!r}"
            )
        share = self.outcome_fixtures_share
        if (
            isinstance(share, bool)
            or not isinstance(share, int | float | np.integer | np.floating)
            or not 0.25 <= share <= 0.75
        ):
            raise ValueError(f"outcome_fixtures_share must be in [0.25, 0.75], got {share!r}")
        if min(self.outcome_rows(self.image_size)) < 8:
            raise ValueError(
                f"outcome_fixtures_share {share} leaves a pane of fewer than 8 rows at "
                f"image_size {self.image_size}"
            )
        return self
