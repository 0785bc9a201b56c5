"""The simulated robot cell: PyBullet (DIRECT, TinyRenderer), no GUI.

Layout (metres, z up, table top at z = 0)::

        y
        ^   right bin (objects)                centre (0, +0.13)
        |   left bin (fixtures: plate, bowl)   centre (0, -0.13)
        +--> x          camera in front (+x), looking down at both bins
                        (the right bin appears on the right of the image)

The gripper is a parallel-jaw gripper on a position-controlled wrist (an abstract arm:
the wrist is driven by a constraint, as the end effector of an arm under Cartesian
control would be). Its two fingers are prismatic joints driven with a force limit, so a
grasp holds only through contact and friction. The tool centre point (TCP) sits between
the fingertips; "gripper height" is the TCP height above the bin floor.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pybullet as pb

from mtopt.robots.action import IDX_DYAW, validate_action, wants_close
from mtopt.sim.config import SCENE_CAMERA, SimConfig
from mtopt.sim.objects import ObjectSpec, Part, lowest_point, sample_objects
from mtopt.tasks.scene import BinState, FixtureState, ObjectState, SceneState

BIN_HALF = 0.10  # inner half extent of both bins
BIN_WALL_H = 0.05
RIGHT_BIN_CENTER = (0.0, 0.13)
LEFT_BIN_CENTER = (0.0, -0.13)
FLOOR_Z = 0.0
TCP_BELOW_PALM = 0.055  # TCP offset below the palm centre
FINGER_OPEN = 0.045  # finger offset from the centre when open
FINGER_GAP_OPEN = 2 * FINGER_OPEN - 0.012  # finger_gap() when fully open (m)
PLATE_RADIUS = 0.055
BOWL_RADIUS = 0.04  # inner radius: the wall stands outside it
BOWL_WALL_T = 0.008  # wall thickness (m)
BOWL_OUTER_RADIUS = BOWL_RADIUS + BOWL_WALL_T
BOWL_RIM_Z = 0.036  # top of the wall above the bowl's base (the bin floor)
CELL_VERSION = 3
"""Stored in every episode's ``scene`` description. 2 (2026-12-05): the ground-truth
fixes (bowl rim, presentation turn, plate-bowl clearance, scene seed ranges); a scene
description without it is of version 1, whose seeds give other fixture layouts now and
whose ``gt_`` columns judged the bowl by its centre alone. 3 (2026-12-06): an object
lying across the bowl's rim (touching its wall, not its floor, its centre above the rim)
is not in the bowl; version 2 counted ~10% of drops over the bowl that way. And the
outcome is judged once the objects are still (``settle_objects``, at most 1 s): a
released object rolling off the plate counted as on it. The scenes are version 2's."""
TOUCH_DISTANCE_M = 1e-3  # contact points farther apart than this do not touch
BOWL_FLOOR_Z = 0.004  # top of the bowl's floor disc (reported as 0.008 until 2026-12-05)


FIXTURE_GAP = 0.01  # least clearance between the plate's and the bowl's rims (m)


def fixture_layout(
    rng: np.random.Generator, batch: int = 512
) -> tuple[tuple[float, float], tuple[float, float]]:
    """Plate and bowl centres (x, y) in the left bin, each wholly inside it and with
    ``FIXTURE_GAP`` between their rims, uniform over such layouts (rejection sampling).

    In a 20 cm bin only about one uniform draw in 300 keeps them apart (the two must sit
    in opposite corners), so candidates are drawn ``batch`` at a time. (Until
    2026-11-28 the cell tried 200 single draws and then fell back to one fixed diagonal
    layout, which half of all scenes got.)"""
    lim_p = BIN_HALF - PLATE_RADIUS - 0.002
    lim_b = BIN_HALF - BOWL_OUTER_RADIUS - 0.004
    centre = np.asarray(LEFT_BIN_CENTER)
    for _ in range(100):  # a batch fails with p ~ 0.73; all 100 with p ~ 1e-14
        pc = centre + rng.uniform(-lim_p, lim_p, (batch, 2))
        bc = centre + rng.uniform(-lim_b, lim_b, (batch, 2))
        ok = np.flatnonzero(np.hypot(*(pc - bc).T) > PLATE_RADIUS + BOWL_OUTER_RADIUS + FIXTURE_GAP)
        if ok.size:
            i = int(ok[0])
            return (float(pc[i, 0]), float(pc[i, 1])), (float(bc[i, 0]), float(bc[i, 1]))
    raise RuntimeError("no plate/bowl layout found in 100 batches")  # pragma: no cover


@dataclass(frozen=True)
class CameraView:
    """A pinhole camera: eye and target (m), vertical field of view relative to the
    (randomized) scene's, the world direction that is "up" in the image, and the ratio
    of the horizontal to the vertical field of view (None: the image's width / height;
    a wider ratio squeezes a wide scene into the image)."""

    eye: tuple[float, float, float]
    target: tuple[float, float, float]
    fov_scale: float = 1.0
    up: tuple[float, float, float] = (-1.0, 0.0, 0.0)
    aspect: float | None = None


CAMERA_VIEWS: dict[str, CameraView] = {
    # what the policy sees: both bins from above and in front of the cell
    "scene": CameraView(SCENE_CAMERA.eye, SCENE_CAMERA.target, up=SCENE_CAMERA.up),
    # an alternative framing (not used by the policy): both bins from higher up, filling
    # 1.8x more of the image's height (benchmarks/grasp_offset_probe.py compares them)
    "bins": CameraView((0.30, 0.0, 0.80), (-0.03, 0.0, 0.0), 22.0 / 44.0, aspect=1.8),
    # the fixture (left) bin from above, filling a half-height pane
    "fixtures": CameraView((0.25, -0.13, 0.55), (0.0, -0.13, 0.04), 16.0 / 44.0),
    # a close-up of whatever the gripper holds at the presentation pose, from the front
    # left and nearly level: a held capsule shows its length, a ball is round
    "held": CameraView((0.33, -0.23, 0.28), (0.10, 0.0, 0.23), 14.0 / 44.0, (0.0, 0.0, 1.0)),
}
# views made of panes stacked top to bottom, each the full width and an equal share of
# the height (the outcome view's: SimConfig.outcome_fixtures_share): one image of
# several cameras, so every consumer still gets (S, S, 3)
COMPOSITE_VIEWS: dict[str, tuple[str, ...]] = {"outcome": ("fixtures", "held")}


@dataclass
class _Obj:
    body: int
    spec: ObjectSpec


@dataclass
class _Scene:
    seed: int
    objects: list[_Obj] = field(default_factory=list)
    fixtures: list[tuple[str, int, tuple[float, float, float], float]] = field(default_factory=list)
    light_dir: tuple[float, float, float] = (0.4, -0.3, 1.0)
    camera_jitter: tuple[float, float, float] = (0.0, 0.0, 0.0)
    fov: float = SCENE_CAMERA.fov_deg
    table_rgba: tuple[float, float, float, float] = (0.55, 0.5, 0.45, 1.0)


NOT_COPYABLE = (
    "a SimCell (and the env or robot holding it) owns a PyBullet connection and "
    "cannot be copied or pickled: make a new one with the same arguments instead "
    "(e.g. gym.make again, or gym.make_vec for several)"
)


class SimCell:
    """One PyBullet world holding the cell. Not thread-safe; one per process or robot."""

    def __init__(self, config: SimConfig | None = None):
        self.config = (config or SimConfig()).validate()
        self.client = pb.connect(pb.DIRECT)
        self._shape_cache: dict[tuple[str, int], tuple[int, int]] = {}
        self._scene: _Scene | None = None
        self.gripper = -1
        self._constraint = -1
        self._closed = False
        self._tcp = np.zeros(3)
        self._yaw = 0.0
        self.substeps_run = 0
        """Physics substeps stepped since the cell was made (for benchmarks)."""
        self._build_static()

    # ------------------------------------------------------------------ world
    def _p(self, fn: Any, *args: Any, **kw: Any) -> Any:
        return fn(*args, physicsClientId=self.client, **kw)

    def _build_static(self) -> None:
        p = self._p
        p(pb.resetSimulation)
        p(pb.setGravity, 0, 0, -9.81)
        p(pb.setPhysicsEngineParameter, fixedTimeStep=1 / 240, numSolverIterations=30)
        self._shape_cache.clear()
        table = p(pb.createCollisionShape, pb.GEOM_BOX, halfExtents=[0.35, 0.4, 0.02])
        table_vis = p(
            pb.createVisualShape,
            pb.GEOM_BOX,
            halfExtents=[0.35, 0.4, 0.02],
            rgbaColor=[0.55, 0.5, 0.45, 1],
        )
        self.table = p(pb.createMultiBody, 0, table, table_vis, [0, 0, -0.023])
        self.bins = [
            self._make_bin(RIGHT_BIN_CENTER, (0.35, 0.35, 0.4, 1)),
            self._make_bin(LEFT_BIN_CENTER, (0.3, 0.4, 0.35, 1)),
        ]
        # fixtures: plate (flat disc) and bowl (floor disc + ring wall)
        plate_c = p(pb.createCollisionShape, pb.GEOM_CYLINDER, radius=PLATE_RADIUS, height=0.012)
        plate_v = p(
            pb.createVisualShape,
            pb.GEOM_CYLINDER,
            radius=PLATE_RADIUS,
            length=0.012,
            rgbaColor=[0.95, 0.95, 0.92, 1],
        )
        self.plate = p(pb.createMultiBody, 0, plate_c, plate_v, [0, 0.2, 0.006])
        n_seg = 12
        shapes, vis, pos, orn = [], [], [], []
        shapes.append(
            p(pb.createCollisionShape, pb.GEOM_CYLINDER, radius=BOWL_OUTER_RADIUS, height=0.008)
        )
        vis.append(
            p(
                pb.createVisualShape,
                pb.GEOM_CYLINDER,
                radius=BOWL_OUTER_RADIUS,
                length=0.008,
                rgbaColor=[0.2, 0.35, 0.8, 1],
            )
        )
        pos.append([0, 0, 0.004])
        orn.append([0, 0, 0, 1])
        seg_half = math.pi * BOWL_OUTER_RADIUS / n_seg
        wall_half = (BOWL_WALL_T / 2, seg_half, BOWL_RIM_Z / 2)
        for k in range(n_seg):
            a = 2 * math.pi * k / n_seg
            shapes.append(p(pb.createCollisionShape, pb.GEOM_BOX, halfExtents=list(wall_half)))
            vis.append(
                p(
                    pb.createVisualShape,
                    pb.GEOM_BOX,
                    halfExtents=list(wall_half),
                    rgbaColor=[0.2, 0.35, 0.8, 1],
                )
            )
            pos.append(
                [
                    (BOWL_RADIUS + BOWL_WALL_T / 2) * math.cos(a),
                    (BOWL_RADIUS + BOWL_WALL_T / 2) * math.sin(a),
                    BOWL_RIM_Z / 2,
                ]
            )
            orn.append(pb.getQuaternionFromEuler([0, 0, a]))
        bowl = self._multi(shapes, vis, pos, orn, mass=0.0, base=[0, 0.3, 0])
        self.bowl = bowl
        self._build_gripper()

    def _multi(
        self,
        shapes: list[int],
        vis: list[int],
        pos: list[Any],
        orn: list[Any],
        mass: float,
        base: list[float],
    ) -> int:
        """A single rigid body from several primitives (link-free compound)."""
        p = self._p
        n = len(shapes)
        return int(
            p(
                pb.createMultiBody,
                baseMass=mass,
                baseCollisionShapeIndex=shapes[0],
                baseVisualShapeIndex=vis[0],
                basePosition=base,
                linkMasses=[0.0] * (n - 1),
                linkCollisionShapeIndices=shapes[1:],
                linkVisualShapeIndices=vis[1:],
                linkPositions=pos[1:],
                linkOrientations=orn[1:],
                linkInertialFramePositions=[[0, 0, 0]] * (n - 1),
                linkInertialFrameOrientations=[[0, 0, 0, 1]] * (n - 1),
                linkParentIndices=[0] * (n - 1),
                linkJointTypes=[pb.JOINT_FIXED] * (n - 1),
                linkJointAxis=[[0, 0, 1]] * (n - 1),
            )
        )

    def _make_bin(self, center: tuple[float, float], rgba: tuple[float, ...]) -> int:
        p = self._p
        h, t = BIN_WALL_H / 2, 0.005
        walls = [
            ([BIN_HALF + 2 * t, t, h], [0, BIN_HALF + t, h]),
            ([BIN_HALF + 2 * t, t, h], [0, -BIN_HALF - t, h]),
            ([t, BIN_HALF, h], [BIN_HALF + t, 0, h]),
            ([t, BIN_HALF, h], [-BIN_HALF - t, 0, h]),
        ]
        floor_c = p(pb.createCollisionShape, pb.GEOM_BOX, halfExtents=[BIN_HALF, BIN_HALF, 0.001])
        floor_v = p(
            pb.createVisualShape,
            pb.GEOM_BOX,
            halfExtents=[BIN_HALF, BIN_HALF, 0.001],
            rgbaColor=list(rgba),
        )
        shapes, vis = [floor_c], [floor_v]
        pos: list[list[float]] = [[0, 0, 0]]
        orn: list[list[float]] = [[0, 0, 0, 1]]
        for he, ps in walls:
            shapes.append(p(pb.createCollisionShape, pb.GEOM_BOX, halfExtents=he))
            vis.append(
                p(
                    pb.createVisualShape,
                    pb.GEOM_BOX,
                    halfExtents=he,
                    rgbaColor=[0.25, 0.25, 0.28, 1],
                )
            )
            pos.append(ps)
            orn.append([0, 0, 0, 1])
        return self._multi(shapes, vis, pos, orn, 0.0, [center[0], center[1], -0.001])

    def _build_gripper(self) -> None:
        p = self._p
        palm_c = p(pb.createCollisionShape, pb.GEOM_BOX, halfExtents=[0.015, 0.058, 0.01])
        palm_v = p(
            pb.createVisualShape,
            pb.GEOM_BOX,
            halfExtents=[0.015, 0.058, 0.01],
            rgbaColor=[0.15, 0.15, 0.15, 1],
        )
        fing_c = p(pb.createCollisionShape, pb.GEOM_BOX, halfExtents=[0.012, 0.006, 0.03])
        fing_v = p(
            pb.createVisualShape,
            pb.GEOM_BOX,
            halfExtents=[0.012, 0.006, 0.03],
            rgbaColor=[0.9, 0.9, 0.9, 1],
        )
        # a visual-only forearm rising from the wrist, so the arm is visible in the image
        arm_v = p(
            pb.createVisualShape,
            pb.GEOM_BOX,
            halfExtents=[0.012, 0.012, 0.15],
            rgbaColor=[0.95, 0.55, 0.1, 1],
        )
        self.gripper = int(
            p(
                pb.createMultiBody,
                baseMass=0.5,
                baseCollisionShapeIndex=palm_c,
                baseVisualShapeIndex=palm_v,
                basePosition=[0, 0.13, 0.3],
                linkMasses=[0.05, 0.05, 0.0],
                linkCollisionShapeIndices=[fing_c, fing_c, -1],
                linkVisualShapeIndices=[fing_v, fing_v, arm_v],
                linkPositions=[[0, FINGER_OPEN, -0.035], [0, -FINGER_OPEN, -0.035], [0, 0, 0.16]],
                linkOrientations=[[0, 0, 0, 1]] * 3,
                linkInertialFramePositions=[[0, 0, 0]] * 3,
                linkInertialFrameOrientations=[[0, 0, 0, 1]] * 3,
                linkParentIndices=[0, 0, 0],
                linkJointTypes=[pb.JOINT_PRISMATIC, pb.JOINT_PRISMATIC, pb.JOINT_FIXED],
                linkJointAxis=[[0, 1, 0], [0, 1, 0], [0, 0, 1]],
            )
        )
        for link in (0, 1):
            p(
                pb.changeDynamics,
                self.gripper,
                link,
                lateralFriction=self.config.friction,
                spinningFriction=0.002,
            )
        self._constraint = p(
            pb.createConstraint,
            self.gripper,
            -1,
            -1,
            -1,
            pb.JOINT_FIXED,
            [0, 0, 0],
            [0, 0, 0],
            [0, 0.13, 0.3],
        )
        self._set_fingers(closed=False, instant=True)

    # ------------------------------------------------------------------ scene
    def reset_scene(self, seed: int) -> None:
        """Rebuild the scene from ``seed`` (objects, fixture placement, randomization)."""
        p = self._p
        rng = np.random.default_rng(seed)
        cfg = self.config
        # A full rebuild (no URDF files: a few ms) makes a scene a pure function of its seed;
        # removing and re-adding bodies would leave solver state behind and break determinism.
        self._build_static()
        scene = _Scene(seed=seed)
        pc, bc = fixture_layout(rng)
        p(pb.resetBasePositionAndOrientation, self.plate, [pc[0], pc[1], 0.006], [0, 0, 0, 1])
        p(pb.resetBasePositionAndOrientation, self.bowl, [bc[0], bc[1], 0.0], [0, 0, 0, 1])
        scene.fixtures = [
            ("plate", self.plate, (pc[0], pc[1], 0.012), PLATE_RADIUS),
            ("bowl", self.bowl, (bc[0], bc[1], BOWL_FLOOR_Z), BOWL_RADIUS),
        ]
        if cfg.randomize:
            scene.light_dir = (
                float(rng.uniform(-1, 1)),
                float(rng.uniform(-1, 1)),
                float(rng.uniform(0.6, 1.5)),
            )
            scene.camera_jitter = tuple(float(v) for v in rng.uniform(-0.03, 0.03, 3))  # type: ignore[assignment]
            scene.fov = float(rng.uniform(42, 46))
            tint = rng.uniform(0.35, 0.75, 3)
            scene.table_rgba = (float(tint[0]), float(tint[1]), float(tint[2]), 1.0)
        p(pb.changeVisualShape, self.table, -1, rgbaColor=list(scene.table_rgba))
        specs = sample_objects(rng, cfg.num_objects, cfg.object_split, cfg.categories)
        if cfg.spawn == "clear":
            self._scene = scene
            self._spawn_clear(specs, rng, scene)
            return
        placed: list[tuple[float, float]] = []
        for spec in specs:
            for _ in range(20):
                xy = (
                    RIGHT_BIN_CENTER[0] + rng.uniform(-BIN_HALF + 0.035, BIN_HALF - 0.035),
                    RIGHT_BIN_CENTER[1] + rng.uniform(-BIN_HALF + 0.035, BIN_HALF - 0.035),
                )
                if all(math.dist(xy, q) > 0.06 for q in placed):
                    break
            placed.append(xy)
            body = self._spawn(
                spec,
                (xy[0], xy[1], spec.half_height + 0.003),
                float(rng.uniform(0, 2 * math.pi)),
                rng,
            )
            scene.objects.append(_Obj(body, spec))
        self._scene = scene
        self.move_gripper_to((RIGHT_BIN_CENTER[0], RIGHT_BIN_CENTER[1], 0.25), 0.0, closed=False)
        self._settle(40)

    def _spawn_clear(
        self, specs: list[ObjectSpec], rng: np.random.Generator, scene: _Scene
    ) -> None:
        """``SimConfig.spawn='clear'``: each object at a drawn pose where it touches no
        object and no wall of the right bin. When 50 draws find none, it goes where the
        least lift (in steps of 1 cm) clears it of everything among the first 20 draws
        (the lowest point of the pile they found), to fall onto the pile."""
        reach = BIN_HALF - 0.01
        dropped = False
        for spec in specs:
            body = -1
            tried: list[tuple[float, float, float]] = []
            for _ in range(50):
                x = RIGHT_BIN_CENTER[0] + rng.uniform(-reach, reach)
                y = RIGHT_BIN_CENTER[1] + rng.uniform(-reach, reach)
                yaw = float(rng.uniform(0, 2 * math.pi))
                tried.append((x, y, yaw))
                pos = (x, y, spec.half_height + 0.003)
                if body < 0:
                    body = self._spawn(spec, pos, yaw, rng)
                else:
                    self._pose_object(body, spec, pos, yaw)
                if self._clear_of_others(body, scene):
                    break
            else:
                dropped = True
                best: tuple[float, tuple[float, float, float]] | None = None
                for x, y, yaw in tried[:20]:
                    z = spec.half_height + 0.003
                    top = 0.3 if best is None else best[0]
                    while z < top - 1e-9:
                        z += 0.01
                        self._pose_object(body, spec, (x, y, z), yaw)
                        if self._clear_of_others(body, scene):
                            best = (z, (x, y, yaw))
                            break
                z, (x, y, yaw) = best if best is not None else (0.3, tried[-1])
                self._pose_object(body, spec, (x, y, z), yaw)
            scene.objects.append(_Obj(body, spec))
        self.move_gripper_to((RIGHT_BIN_CENTER[0], RIGHT_BIN_CENTER[1], 0.25), 0.0, closed=False)
        self._settle(40)
        for _ in range(12 if dropped else 0):  # a dropped object falls, then comes to rest
            if all(
                np.linalg.norm(self._p(pb.getBaseVelocity, o.body)[0]) < 0.01 for o in scene.objects
            ):
                break
            self._settle(10)

    def _pose_object(
        self, body: int, spec: ObjectSpec, pos: tuple[float, float, float], yaw: float
    ) -> None:
        self._p(pb.resetBasePositionAndOrientation, body, list(pos), _spawn_orientation(spec, yaw))

    def _clear_of_others(self, body: int, scene: _Scene) -> bool:
        """Whether ``body`` stays at least 1 mm from the right bin and the scene's objects,
        and within the bin's inner walls (seen from above: a raised object must not
        overhang a wall, or it comes to rest on the rim)."""
        lo, hi = self._p(pb.getAABB, body)
        cx, cy = RIGHT_BIN_CENTER
        if not (
            cx - BIN_HALF <= lo[0]
            and hi[0] <= cx + BIN_HALF
            and cy - BIN_HALF <= lo[1]
            and hi[1] <= cy + BIN_HALF
        ):
            return False
        others = [self.bins[0], *(o.body for o in scene.objects)]
        return not any(self._p(pb.getClosestPoints, body, other, 0.001) for other in others)

    def _spawn(
        self,
        spec: ObjectSpec,
        pos: tuple[float, float, float],
        yaw: float,
        rng: np.random.Generator,
    ) -> int:
        p = self._p
        key = (spec.category, spec.number)
        if key not in self._shape_cache:
            shapes, vis, poss, orns = [], [], [], []
            for part in spec.parts:
                c, v = self._part_shapes(part, spec.rgba)
                shapes.append(c)
                vis.append(v)
                poss.append(list(part.offset))
                orns.append(pb.getQuaternionFromEuler(part.euler))
            if len(shapes) == 1:
                col = shapes[0]
                vi = vis[0]
                self._shape_cache[key] = (col, vi)
            else:
                geometry = {
                    "shapeTypes": [self._ptype(q) for q in spec.parts],
                    "radii": [q.dims[0] for q in spec.parts],
                    "halfExtents": [
                        list(q.dims) if q.shape == "box" else [0, 0, 0] for q in spec.parts
                    ],
                    "lengths": [q.dims[1] if len(q.dims) > 1 else 0 for q in spec.parts],
                }
                col = p(
                    pb.createCollisionShapeArray,
                    **geometry,
                    collisionFramePositions=poss,
                    collisionFrameOrientations=orns,
                )
                vi = p(
                    pb.createVisualShapeArray,
                    **geometry,
                    visualFramePositions=poss,
                    visualFrameOrientations=orns,
                    rgbaColors=[list(spec.rgba)] * len(spec.parts),
                )
                self._shape_cache[key] = (col, vi)
        col, vi = self._shape_cache[key]
        orn = _spawn_orientation(spec, yaw)
        body = int(p(pb.createMultiBody, spec.mass, col, vi, list(pos), orn))
        p(
            pb.changeDynamics,
            body,
            -1,
            lateralFriction=self.config.friction,
            spinningFriction=0.002,
            rollingFriction=0.0005,
        )
        if self.config.randomize:
            hsv_shift = rng.uniform(0.6, 1.2, 3)
            rgba = [min(1.0, c * s) for c, s in zip(spec.rgba[:3], hsv_shift, strict=True)] + [1.0]
            p(pb.changeVisualShape, body, -1, rgbaColor=rgba)
        return body

    @staticmethod
    def _ptype(part: Part) -> int:
        return {
            "box": pb.GEOM_BOX,
            "cylinder": pb.GEOM_CYLINDER,
            "capsule": pb.GEOM_CAPSULE,
            "sphere": pb.GEOM_SPHERE,
        }[part.shape]

    def _part_shapes(self, part: Part, rgba: tuple[float, ...]) -> tuple[int, int]:
        p = self._p
        t = self._ptype(part)
        if part.shape == "box":
            c = p(pb.createCollisionShape, t, halfExtents=list(part.dims))
            v = p(pb.createVisualShape, t, halfExtents=list(part.dims), rgbaColor=list(rgba))
        elif part.shape == "sphere":
            c = p(pb.createCollisionShape, t, radius=part.dims[0])
            v = p(pb.createVisualShape, t, radius=part.dims[0], rgbaColor=list(rgba))
        else:
            c = p(pb.createCollisionShape, t, radius=part.dims[0], height=part.dims[1])
            v = p(
                pb.createVisualShape,
                t,
                radius=part.dims[0],
                length=part.dims[1],
                rgbaColor=list(rgba),
            )
        return int(c), int(v)

    # ------------------------------------------------------------------ gripper
    def _palm_pose(self, tcp: np.ndarray, yaw: float) -> tuple[list[float], Any]:
        return [
            float(tcp[0]),
            float(tcp[1]),
            float(tcp[2] + TCP_BELOW_PALM),
        ], pb.getQuaternionFromEuler([0, 0, yaw])

    def _set_fingers(self, closed: bool, instant: bool = False) -> None:
        p = self._p
        self._closed = closed
        target = FINGER_OPEN - 0.002 if closed else 0.0
        for link, sign in ((0, -1.0), (1, 1.0)):
            if instant:
                p(pb.resetJointState, self.gripper, link, sign * target)
            p(
                pb.setJointMotorControl2,
                self.gripper,
                link,
                pb.POSITION_CONTROL,
                targetPosition=sign * target,
                force=self.config.finger_force,
                maxVelocity=0.6,
            )

    def move_gripper_to(self, tcp: tuple[float, float, float], yaw: float, closed: bool) -> None:
        """Teleport the gripper (scene setup only; episodes move it with ``apply_action``)."""
        self._tcp = np.array(tcp, dtype=np.float64)
        self._yaw = yaw
        pos, orn = self._palm_pose(self._tcp, yaw)
        self._p(pb.resetBasePositionAndOrientation, self.gripper, pos, orn)
        self._p(pb.changeConstraint, self._constraint, pos, orn, maxForce=400)
        self._set_fingers(closed, instant=True)

    def move_gripper_along(
        self,
        waypoints: list[tuple[float, float, float]],
        substeps_per_waypoint: int = 24,
        yaw: float | None = None,
    ) -> None:
        """Move the gripper physically (a held object comes along) through ``waypoints``,
        keeping its finger command; not an episode action (no limits on step size). The
        yaw turns evenly to ``yaw`` over the waypoints (None: keep it)."""
        yaw0 = self._yaw
        yaw1 = yaw0 if yaw is None else float(yaw)
        for i, wp in enumerate(waypoints):
            start, goal = self._tcp.copy(), np.asarray(wp, dtype=np.float64)
            ya = yaw0 + (yaw1 - yaw0) * i / len(waypoints)
            yb = yaw0 + (yaw1 - yaw0) * (i + 1) / len(waypoints)
            chunks = 6
            for k in range(1, chunks + 1):
                f = k / chunks
                tcp = start + (goal - start) * f
                pos, orn = self._palm_pose(tcp, ya + (yb - ya) * f)
                self._p(pb.changeConstraint, self._constraint, pos, orn, maxForce=400)
                self._settle(max(1, substeps_per_waypoint // chunks))
            self._tcp = goal
        self._yaw = yaw1

    @property
    def commanded_yaw(self) -> float:
        """The wrist's commanded yaw (rad), unwrapped: it keeps the turns the episode made
        (``pose`` reports it wrapped)."""
        return self._yaw

    def _settle_fingers(self, max_substeps: int, chunk: int = 4) -> None:
        """Step the world (the wrist holding its pose) until the fingers stop moving or
        ``max_substeps`` have run."""
        done = 0
        gap = self.finger_gap()
        while done < max_substeps:
            n = min(chunk, max_substeps - done)
            self._settle(n)
            done += n
            now = self.finger_gap()
            if abs(now - gap) < 2e-4:  # under 0.2 mm in a chunk: stopped
                break
            gap = now

    def _settle_wrist(self, goal: np.ndarray, max_substeps: int, chunk: int = 2) -> None:
        """Step the world (the wrist held at ``goal``) until the measured TCP is within
        1 mm of it, stops moving (blocked by contact) or ``max_substeps`` have run."""
        done = 0
        pos = self.tcp_position()
        while done < max_substeps and float(np.linalg.norm(pos - goal)) > 1e-3:
            n = min(chunk, max_substeps - done)
            self._settle(n)
            done += n
            now = self.tcp_position()
            if float(np.linalg.norm(now - pos)) < 1e-4:  # under 0.1 mm in a chunk: blocked
                break
            pos = now

    def _settle(self, n: int) -> None:
        for _ in range(n):
            self._p(pb.stepSimulation)
        self.substeps_run += n

    @staticmethod
    def _clip_tcp(tcp: np.ndarray) -> np.ndarray:
        lo = np.array([-0.13, -0.25, 0.012])
        hi = np.array([0.13, 0.25, 0.28])
        return np.clip(tcp, lo, hi)

    def apply_action(self, action: np.ndarray) -> None:
        """Execute one validated action: move (interpolated), rotate, open/close the gripper.

        The move starts from the previous command or the measured position
        (``SimConfig.move_from``)."""
        a = validate_action(action)
        cfg = self.config
        start = (
            self._tcp.copy() if cfg.move_from == "command" else self._clip_tcp(self.tcp_position())
        )
        goal = self._clip_tcp(start + a[:3].astype(np.float64) * cfg.max_step_m)
        yaw0 = self._yaw
        yaw1 = yaw0 + float(a[IDX_DYAW]) * cfg.max_yaw_rad
        close = wants_close(a)
        if close != self._closed:
            self._set_fingers(close)
            self._settle_fingers(cfg.gripper_settle_substeps)
        chunks = min(4, cfg.substeps)  # (1-3 substeps: one a chunk, none run twice)
        per = cfg.substeps // chunks
        done = 0
        for k in range(1, chunks + 1):
            f = k / chunks
            tcp = start + (goal - start) * f
            pos, orn = self._palm_pose(tcp, yaw0 + (yaw1 - yaw0) * f)
            self._p(pb.changeConstraint, self._constraint, pos, orn, maxForce=400)
            n = per if k < chunks else cfg.substeps - done
            self._settle(n)
            done += n
        self._settle_wrist(goal, cfg.wrist_settle_substeps)
        self._tcp = goal
        self._yaw = yaw1

    # ------------------------------------------------------------------ sensing
    @property
    def gripper_closed(self) -> bool:
        return self._closed

    def tcp_position(self) -> np.ndarray:
        """Measured TCP position (the wrist may lag its target when it pushes on something)."""
        pos, _ = self._p(pb.getBasePositionAndOrientation, self.gripper)
        return np.array([pos[0], pos[1], pos[2] - TCP_BELOW_PALM])

    def state_features(self) -> np.ndarray:
        """[gripper status, gripper height above the bin floor (m)]; see
        ``SimConfig.gripper_status``."""
        tcp = self.tcp_position()
        if self.config.gripper_status == "closure":
            status = self.gripper_closure()
        else:
            status = 1.0 if self._closed else 0.0
        return np.array([status, tcp[2] - FLOOR_Z], dtype=np.float32)

    def gripper_closure(self) -> float:
        """Measured closure of the fingers: 0 fully open, 1 met (closed on nothing), in
        between when something keeps them apart."""
        return float(np.clip(1.0 - self.finger_gap() / FINGER_GAP_OPEN, 0.0, 1.0))

    def pose(self) -> np.ndarray:
        """Gripper x, y, z (m) and yaw (rad, wrapped to [-pi, pi] as an orientation
        read back from a real arm is; the commanded yaw keeps turning)."""
        tcp = self.tcp_position()
        yaw = math.remainder(self._yaw, 2 * math.pi)
        return np.array([tcp[0], tcp[1], tcp[2], yaw], dtype=np.float32)

    def finger_gap(self) -> float:
        """Distance between the fingers' inner faces (m); near zero when closed on nothing."""
        q0 = self._p(pb.getJointState, self.gripper, 0)[0]
        q1 = self._p(pb.getJointState, self.gripper, 1)[0]
        return float(FINGER_GAP_OPEN + q0 - q1)

    def render(
        self,
        size: int | None = None,
        view: str = "scene",
        outcome_fixtures_share: float | None = None,
    ) -> np.ndarray:
        """RGB image (size, size, 3) uint8.

        view="scene": both bins from the fixed camera in front of the cell (what the
        policy sees). view="outcome", the robot's final image: two panes stacked, the
        fixture (left) bin from above (top, ``SimConfig.outcome_fixtures_share`` of
        the height) and a close-up of the gripper at the presentation pose from the front
        left (bottom), the places where every task's outcome is decided. Any name in
        CAMERA_VIEWS renders that one camera.

        outcome_fixtures_share: the outcome view at this share instead of the cell's
        (the same moment seen the way a cell of that setting would: to compare views on
        the same episodes, ``benchmarks/sd_view.py``).
        """
        size = size or self.config.image_size
        config = self.config
        if outcome_fixtures_share is not None:
            if view != "outcome":
                raise ValueError(f"outcome_fixtures_share is for view='outcome', not {view!r}")
            config = replace(config, outcome_fixtures_share=outcome_fixtures_share).validate()
        if view in COMPOSITE_VIEWS:
            panes = COMPOSITE_VIEWS[view]
            heights = [size // len(panes)] * len(panes)
            if view == "outcome":
                heights = list(config.outcome_rows(size))
            heights[-1] += size - sum(heights)
            return np.concatenate(
                [
                    self._render_view(CAMERA_VIEWS[p], size, h)
                    for p, h in zip(panes, heights, strict=True)
                ]
            )
        if view not in CAMERA_VIEWS:
            valid = sorted([*CAMERA_VIEWS, *COMPOSITE_VIEWS])
            raise ValueError(f"unknown camera view {view!r}; valid: {valid}")
        return self._render_view(CAMERA_VIEWS[view], size, size)

    def _render_view(self, cam: CameraView, width: int, height: int) -> np.ndarray:
        scene = self._scene
        jit = scene.camera_jitter if scene else (0.0, 0.0, 0.0)
        fov = (scene.fov if scene else SCENE_CAMERA.fov_deg) * cam.fov_scale
        light = scene.light_dir if scene else (0.4, -0.3, 1.0)
        eye = [cam.eye[0] + jit[0], cam.eye[1] + jit[1], cam.eye[2] + jit[2]]
        view_m = pb.computeViewMatrix(eye, list(cam.target), list(cam.up))
        aspect = cam.aspect if cam.aspect is not None else width / height
        proj = pb.computeProjectionMatrixFOV(fov, aspect, 0.05, 2.0)
        _, _, rgba, _, _ = self._p(
            pb.getCameraImage,
            width,
            height,
            view_m,
            proj,
            renderer=pb.ER_TINY_RENDERER,
            lightDirection=list(light),
            shadow=0,
            flags=pb.ER_NO_SEGMENTATION_MASK,
        )
        return np.asarray(rgba, dtype=np.uint8).reshape(height, width, 4)[:, :, :3].copy()

    def _touching(self, body: int, link: int) -> bool:
        return bool(self._p(pb.getContactPoints, bodyA=self.gripper, bodyB=body, linkIndexA=link))

    def _static_contacts(self, body: int, static: dict[str, int]) -> list[str]:
        """Names (``STATIC_PARTS``) of the static parts ``body`` touches: contact points
        at most ``TOUCH_DISTANCE_M`` apart (Bullet also lists nearby points that do not
        touch); a bin's base is its floor, its links are its walls."""
        out = []
        for name, other in static.items():
            links = {
                pt[4]  # link of the static body: -1 its base
                for pt in self._p(pb.getContactPoints, body, other)
                if pt[8] <= TOUCH_DISTANCE_M
            }
            if not links:
                continue
            # a bin's or the bowl's base is its floor, its links its walls
            parts = [f"{name}_floor"] * (-1 in links) + [f"{name}_wall"] * bool(links - {-1})
            if name.endswith("_bin"):
                out += parts
            elif name == "bowl":  # (and "bowl" itself, as before version 3)
                out += [name, *parts]
            else:
                out.append(name)
        return out

    def scene_state(self) -> SceneState:
        """Ground truth (simulator only): used to label SD examples and to evaluate."""
        if self._scene is None:
            raise RuntimeError("scene_state() before reset_scene()")
        objs = []
        static = {
            "table": self.table,
            "right_bin": self.bins[0],
            "left_bin": self.bins[1],
            "plate": self.plate,
            "bowl": self.bowl,
        }
        for o in self._scene.objects:
            pos, orn = self._p(pb.getBasePositionAndOrientation, o.body)
            rot = np.asarray(pb.getMatrixFromQuaternion(orn)).reshape(3, 3)
            bottom = lowest_point(o.spec, np.asarray(pos), rot)
            held = self._closed and self._touching(o.body, 0) and self._touching(o.body, 1)
            touching = frozenset(self._static_contacts(o.body, static))
            objs.append(
                ObjectState(
                    o.body,
                    o.spec.category,
                    o.spec.instance,
                    o.spec.size,
                    (float(pos[0]), float(pos[1]), float(pos[2])),
                    held,
                    float(bottom),
                    touching,
                )
            )
        fixtures = tuple(
            FixtureState(kind, pos, r, FLOOR_Z + BOWL_RIM_Z if kind == "bowl" else None)
            for kind, _, pos, r in self._scene.fixtures
        )
        tcp = self.tcp_position()
        return SceneState(
            objects=tuple(objs),
            fixtures=fixtures,
            right_bin=BinState(RIGHT_BIN_CENTER, (BIN_HALF, BIN_HALF), FLOOR_Z),
            left_bin=BinState(LEFT_BIN_CENTER, (BIN_HALF, BIN_HALF), FLOOR_Z),
            gripper_position=(float(tcp[0]), float(tcp[1]), float(tcp[2])),
            gripper_closed=self._closed,
        )

    def scene_description(self) -> dict[str, Any]:
        if self._scene is None:
            return {}
        return {
            "seed": self._scene.seed,
            "cell_version": CELL_VERSION,
            **({"spawn": self.config.spawn} if self.config.spawn != "sampled" else {}),
            "object_split": self.config.object_split,
            "randomize": bool(self.config.randomize),
            "objects": [
                {
                    "instance": o.spec.instance,
                    "category": o.spec.category,
                    "size": round(o.spec.size, 4),
                    "mass": round(o.spec.mass, 4),
                    "rgba": [round(c, 3) for c in o.spec.rgba],
                }
                for o in self._scene.objects
            ],
            "fixtures": [
                {"kind": k, "position": [round(v, 4) for v in pos], "radius": r}
                for k, _, pos, r in self._scene.fixtures
            ],
        }

    # ------------------------------------------------------------------ staging (sim only)
    def object_bodies(self) -> list[tuple[int, ObjectSpec]]:
        return [(o.body, o.spec) for o in (self._scene.objects if self._scene else [])]

    def object_position(self, body: int) -> np.ndarray:
        pos, _ = self._p(pb.getBasePositionAndOrientation, body)
        return np.array(pos)

    def object_yaw(self, body: int) -> float:
        """Heading (rad) of the object's long axis projected on the horizontal plane: the
        body x axis of multi-part objects (bottle, banana) and boxes; the body z axis of a
        single part laid down by its pitch (a capsule: its x axis points down, so its
        heading was noise, and the oracle grasped capsules along their length)."""
        _, orn = self._p(pb.getBasePositionAndOrientation, body)
        r = pb.getMatrixFromQuaternion(orn)  # row-major 3x3; column c is body axis c
        parts = self.object_spec(body).parts
        c = 2 if len(parts) == 1 and abs(parts[0].euler[1]) > 1.0 else 0
        return float(np.arctan2(r[3 + c], r[c]))

    def object_spec(self, body: int) -> ObjectSpec:
        return next(s for b, s in self.object_bodies() if b == body)

    def place_object(self, body: int, pos: tuple[float, float, float], yaw: float = 0.0) -> None:
        spec = self.object_spec(body)
        euler = spec.parts[0].euler if len(spec.parts) == 1 else (0.0, 0.0, 0.0)
        self._p(
            pb.resetBasePositionAndOrientation,
            body,
            list(pos),
            pb.getQuaternionFromEuler([euler[0], euler[1], yaw]),
        )
        self._p(pb.resetBaseVelocity, body, [0, 0, 0], [0, 0, 0])

    def put_in_gripper(
        self,
        body: int,
        tcp: tuple[float, float, float] | None = None,
        along: float = 0.0,
        yaw_offset: float = 0.0,
    ) -> bool:
        """Stage ``body`` between the fingers and close them; True if the grasp holds.

        ``along`` (m) moves the object's centre along the gripper's x axis, so the grasp
        is off-centre (a long object then tilts and sticks out to one side, as after a
        real grasp near one end); ``yaw_offset`` (rad) turns it against the fingers
        before they close."""
        tcp = tcp or tuple(self._tcp)  # type: ignore[assignment]
        assert tcp is not None
        # long axis of every object is its local x: align it with the gripper's x (fingers close along y)
        self.move_gripper_to(tcp, self._yaw, closed=False)
        cx = tcp[0] + along * math.cos(self._yaw)
        cy = tcp[1] + along * math.sin(self._yaw)
        self.place_object(body, (cx, cy, tcp[2]), yaw=self._yaw + yaw_offset)
        self._set_fingers(True)
        self._settle(30)
        self._tcp = self.tcp_position()
        pos, orn = self._palm_pose(self._tcp, self._yaw)
        self._p(pb.changeConstraint, self._constraint, pos, orn, maxForce=400)
        self._settle(10)
        return self._touching(body, 0) and self._touching(body, 1)

    def settle(self, n: int = 30) -> None:
        self._settle(n)

    def settle_objects(
        self, max_substeps: int = 240, chunk: int = 8, speed_m_s: float = 0.02
    ) -> int:
        """Step the world until no object moves faster than ``speed_m_s`` (a released one
        still rolling off the plate), at most ``max_substeps`` (1 s); returns the
        substeps run. Ground truth read earlier judged where a rolling object happened to
        be (``CELL_VERSION`` 3)."""
        done = 0
        while done < max_substeps:
            moving = any(
                float(np.linalg.norm(self._p(pb.getBaseVelocity, body)[0])) > speed_m_s
                for body, _ in self.object_bodies()
            )
            if not moving:
                break
            n = min(chunk, max_substeps - done)
            self._settle(n)
            done += n
        return done

    def close(self) -> None:
        if self.client >= 0:
            with contextlib.suppress(pb.error):
                pb.disconnect(physicsClientId=self.client)
            self.client = -1

    def __getstate__(self) -> None:
        raise TypeError(NOT_COPYABLE)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


def _spawn_orientation(spec: ObjectSpec, yaw: float) -> Any:
    """The quaternion an object is put down with: its resting tilt, turned by ``yaw``."""
    euler = spec.parts[0].euler if len(spec.parts) == 1 else (0.0, 0.0, 0.0)
    return pb.getQuaternionFromEuler([euler[0], euler[1], yaw])


def nearest_equivalent_yaw(current: float, target: float, period: float = math.pi) -> float:
    """The yaw equivalent to ``target`` (modulo ``period``; a parallel gripper looks and
    grasps the same turned by pi) that is nearest to the unwrapped ``current``: turning
    there takes at most ``period / 2``."""
    return current + math.remainder(target - current, period)
