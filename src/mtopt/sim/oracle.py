"""Privileged oracle policies (simulator only): what the cell allows a policy to reach.

An oracle reads every object's pose from the simulator, which neither a real robot nor
a learned policy sees. It is a reference, not a bootstrap policy: ``benchmarks/
oracle_success.py`` measures it on the held-out scenes where the scripted and learned
policies are measured, so a learned success rate can be read against both.

- Lifting: among the objects whose lifting would satisfy the task (the task's own
  predicate, asked about a hypothetical scene where that object is held up), pick the
  object and gripper yaw that leave the most room around the two fingers (other objects
  and the bin walls), with the fingers across the long axis of an elongated object; move
  there while turning, descend, close, lift, terminate.
- Aim noise (``aim_noise_m``, ``yaw_noise_rad``; off by default): the same lift with the
  gripper aimed off the object's centre or turned off the chosen yaw by a random amount
  per episode, which measures how precise a grasp must be in this cell
  (``benchmarks/grasp_precision_probe.py``); ``aim_noise_m`` also moves where a place
  releases, off the target's centre (``benchmarks/place_precision_probe.py``).
- Placing: carry the held object over the first target (fixture or left bin) where
  releasing it would satisfy the task, descend to the release height, open, retract,
  terminate. When a descent over the target is blocked (the object rests on a bowl's
  rim) it opens there, above the release height, as a person would.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from mtopt.robots.action import make_action
from mtopt.robots.base import Observation
from mtopt.robots.sim_robot import SimRobot
from mtopt.sim.cell import BIN_HALF, FINGER_OPEN, RIGHT_BIN_CENTER
from mtopt.tasks.predicates import LIFT_HEIGHT_M
from mtopt.tasks.registry import TaskRegistry, TaskSpec
from mtopt.tasks.scene import ObjectState, SceneState

ROUND_CATEGORIES = frozenset({"ball", "can"})
"""Categories whose footprint is round: any gripper yaw grasps them."""


@dataclass(frozen=True)
class Grasp:
    body: int
    yaw: float
    clearance: float
    """Smallest distance (m) from a finger to another object's extent or a bin wall."""


def wrap_half_turn(angle: float) -> float:
    """Angle folded into [-pi/2, pi/2): a parallel gripper is symmetric under a half turn."""
    return float((angle + np.pi / 2) % np.pi - np.pi / 2)


def finger_points(xy: np.ndarray, yaw: float, offset: float = FINGER_OPEN) -> np.ndarray:
    """(2, 2) xy of the two open fingers when the gripper centre is at ``xy`` with ``yaw``
    (the fingers close along the gripper's y axis: (-sin yaw, cos yaw))."""
    axis = np.array([-np.sin(yaw), np.cos(yaw)])
    return np.stack([xy + offset * axis, xy - offset * axis])


def clearance(
    fingers: np.ndarray,
    others: list[tuple[np.ndarray, float]],
    bin_center: tuple[float, float],
    bin_half: float,
) -> float:
    """Room (m) left around the fingers: the smallest of each finger's distance to another
    object's centre minus that object's size, and its distance to the bin walls."""
    room = float("inf")
    for f in fingers:
        for xy, size in others:
            room = min(room, float(np.hypot(*(f - xy))) - size)
        room = min(room, bin_half - float(np.max(np.abs(f - np.asarray(bin_center)))))
    return room


def choose_grasp(
    candidates: list[tuple[int, np.ndarray, float, str, float]],
    targets: set[int],
    n_yaws: int = 12,
) -> Grasp | None:
    """The target object and yaw with the most room around the fingers.

    candidates: (body, xy, size, category, object yaw) of every object in the bin;
    targets: the bodies whose lifting satisfies the task. Elongated objects are grasped
    across their long (body x) axis, round ones at any of ``n_yaws`` yaws."""
    best: Grasp | None = None
    for body, xy, _size, category, obj_yaw in candidates:
        if body not in targets:
            continue
        others = [(oxy, osize) for b, oxy, osize, _, _ in candidates if b != body]
        yaws = (
            [k * np.pi / n_yaws for k in range(n_yaws)]
            if category in ROUND_CATEGORIES
            else [obj_yaw]
        )
        for yaw in yaws:
            room = clearance(finger_points(xy, yaw), others, RIGHT_BIN_CENTER, BIN_HALF)
            if best is None or room > best.clearance:
                best = Grasp(body, wrap_half_turn(yaw), room)
    return best


def lift_targets(spec: TaskSpec, scene: SceneState) -> set[int]:
    """Bodies whose lifting would satisfy ``spec`` (its predicate on a hypothetical scene)."""
    out = set()
    for i, o in enumerate(scene.objects):
        x, y, _ = o.position
        held = replace(
            o, in_gripper=True, position=(x, y, scene.right_bin.floor_z + LIFT_HEIGHT_M + 0.05)
        )
        objs = tuple(
            held if j == i else replace(p, in_gripper=False) for j, p in enumerate(scene.objects)
        )
        if spec.succeeded(replace(scene, objects=objs)):
            out.add(o.uid)
    return out


def released_at(
    scene: SceneState, held: ObjectState, spot: tuple[float, float, float]
) -> SceneState:
    """``scene`` with ``held`` released and resting on the surface at ``spot`` (a
    hypothetical scene for asking a task's predicate where a release would succeed): its
    own lowest point and contacts, from the gripper, are replaced by the spot's."""
    resting = replace(
        held,
        in_gripper=False,
        position=(spot[0], spot[1], spot[2] + 0.02),
        bottom_z=spot[2],
        touching=None,
    )
    return replace(scene, objects=tuple(resting if o.uid == held.uid else o for o in scene.objects))


def place_target(
    spec: TaskSpec, scene: SceneState, held: ObjectState
) -> tuple[float, float, float] | None:
    """Where to release ``held`` so that ``spec`` succeeds: the first fixture (then the
    left bin's centre) for which the predicate holds on a hypothetical scene."""
    spots = [f.position for f in scene.fixtures]
    spots.append((*scene.left_bin.center, scene.left_bin.floor_z))
    for spot in spots:
        if spec.succeeded(released_at(scene, held, spot)):
            return spot
    return None


class OraclePolicy:
    """Privileged policy for one SimRobot (reads object poses from its simulator)."""

    name = "oracle"

    def __init__(
        self,
        robot: SimRobot,
        registry: TaskRegistry,
        max_steps: int = 15,
        aim_noise_m: float = 0.0,
        yaw_noise_rad: float = 0.0,
        release_height_m: float = 0.07,
    ):
        if aim_noise_m < 0 or yaw_noise_rad < 0:
            raise ValueError(
                f"aim_noise_m and yaw_noise_rad must be >= 0, got {aim_noise_m}, {yaw_noise_rad}"
            )
        if not 0.0 < release_height_m <= 0.25:
            raise ValueError(f"release_height_m must be in (0, 0.25], got {release_height_m}")
        self.robot = robot
        self.release_height_m = release_height_m
        """Placing: the gripper (its tool point) opens this high above the release spot's
        surface (how much a drop costs: ``benchmarks/place_precision_probe.py``)."""
        self.aim_noise_m = aim_noise_m
        """Aim at the object's centre (lifting) or the release spot's (placing) plus an
        xy offset drawn once per episode from N(0, aim_noise_m^2) per axis (how precise a
        grasp or a release must be; 0: exact)."""
        self.yaw_noise_rad = yaw_noise_rad
        """Lifting: turn to the chosen yaw plus U(-yaw_noise_rad, yaw_noise_rad), drawn
        once per episode (pi / 2: any yaw)."""
        self.aim_offset = np.zeros(2)
        """This episode's xy aim offset (m)."""
        self.registry = registry
        self.max_steps = max_steps
        self._spec: TaskSpec | None = None
        self._grasp: Grasp | None = None
        self._spot: tuple[float, float, float] | None = None
        self._phase = "approach"
        self._t = 0
        self._after = 0
        self._last_z = float("inf")
        self._last_dz_m = 0.0
        """Placing: the vertical move (m) the previous action commanded."""
        self.feasible: list[bool] = []
        """Per episode: whether the scene offered the task a target (an object to lift,
        a place to release the held one). Category tasks often have none: with 4 objects
        of 6 categories, 48% of scenes hold no capsule."""

    @property
    def version(self) -> int:
        return 0

    def reset(self, task: str, rng: np.random.Generator) -> None:
        self._spec = self.registry.get(task)
        self._phase, self._t, self._after, self._last_z = "approach", 0, 0, float("inf")
        self._last_dz_m = 0.0
        self._grasp, self._spot = None, None
        self.aim_offset = np.zeros(2)
        cell = self.robot.cell
        scene = cell.scene_state()
        if self._spec.starts_holding:
            held = next((o for o in scene.objects if o.in_gripper), None)
            if held is not None:
                self._spot = place_target(self._spec, scene, held)
            self.feasible.append(self._spot is not None)
            if self.aim_noise_m > 0:
                self.aim_offset = rng.normal(0.0, self.aim_noise_m, 2)
            return
        candidates = [
            (b, cell.object_position(b)[:2], spec.size, spec.category, cell.object_yaw(b))
            for b, spec in cell.object_bodies()
            if self.robot.in_right_bin(b)
        ]
        self._grasp = choose_grasp(candidates, lift_targets(self._spec, scene))
        self.feasible.append(self._grasp is not None)
        if self.aim_noise_m > 0:
            self.aim_offset = rng.normal(0.0, self.aim_noise_m, 2)
        if self._grasp is not None and self.yaw_noise_rad > 0:
            turn = float(rng.uniform(-self.yaw_noise_rad, self.yaw_noise_rad))
            self._grasp = replace(self._grasp, yaw=wrap_half_turn(self._grasp.yaw + turn))

    def act(self, obs: Observation) -> np.ndarray:
        if obs.pose is None:
            raise ValueError("OraclePolicy needs proprioception (Observation.pose)")
        self._t += 1
        if self._spec is not None and self._spec.starts_holding:
            return self._place(obs.pose)
        return self._lift(obs.pose)

    def _lift(self, pose: np.ndarray) -> np.ndarray:
        if self._grasp is None:
            return make_action(terminate=True)
        step = self.robot.config.max_step_m
        max_yaw = self.robot.config.max_yaw_rad
        x, y, z, yaw = (float(v) for v in pose)
        if self._phase == "approach":
            goal = self.robot.cell.object_position(self._grasp.body)[:2] + self.aim_offset
            d = (goal - np.array([x, y])) / step
            e = wrap_half_turn(self._grasp.yaw - yaw)
            aligned = float(np.max(np.abs(d))) < 0.2 and abs(e) < 0.1
            stuck = z > self._last_z - 0.004  # pressing on something: descend no further
            self._last_z = z
            if z > 0.025 and not (aligned and stuck) and self._t < self.max_steps - 4:
                near = float(np.max(np.abs(d))) < 1.0 and abs(e) < 0.5
                dz = -min(1.0, (z - 0.02) / step) if near else 0.0
                return make_action(d[0], d[1], dz, float(np.clip(e / max_yaw, -1, 1)))
            self._phase = "lift"
            return make_action(close=True)
        self._after += 1
        return make_action(dz=1.0, close=True, terminate=self._after >= 2)

    def _place(self, pose: np.ndarray) -> np.ndarray:
        if self._spot is None:
            return make_action(close=True, terminate=True)
        step = self.robot.config.max_step_m
        x, y, z, _ = (float(v) for v in pose)
        if self._phase == "approach":
            d = (np.array(self._spot[:2]) + self.aim_offset - np.array([x, y])) / step
            release = self._spot[2] + self.release_height_m
            high = z > release + 0.01
            low = z < release - 0.01
            off = float(np.max(np.abs(d)))  # in steps
            aligned = off <= 0.2
            # the last action lowered the held object by 1 cm or more and it came down
            # less than 4 mm: it rests on something (a bowl's rim), let go here
            blocked = self._last_dz_m <= -0.01 and z > self._last_z - 0.004
            self._last_z = z
            if (not aligned or high or low) and not (aligned and high and blocked):
                dz = (
                    (1.0 if z < 0.13 else 0.0)
                    if off > 1.0
                    else -float(np.clip((z - release) / step, -1, 1))
                )
                self._last_dz_m = dz * step
                return make_action(d[0], d[1], dz, close=True)
            self._phase = "release"
            return make_action()
        self._after += 1
        return make_action(dz=1.0, terminate=self._after >= 2)
