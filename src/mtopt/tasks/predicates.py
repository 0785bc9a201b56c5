"""Ground-truth success predicates built from a small vocabulary (lift, place).

Each factory returns a pure callable ``SceneState -> bool``: a small frozen dataclass, so a
task (and the env holding it) can be pickled, compared and printed, as a vector env's
worker processes and Ray need. Thresholds are named constants so the staged-scene tests
and the simulator agree on them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from mtopt.tasks.scene import FixtureState, ObjectState, SceneState

Predicate = Callable[[SceneState], bool]
FLOORS = frozenset({"table", "right_bin_floor", "left_bin_floor"})

LIFT_HEIGHT_M = 0.10  # object centre this far above its bin floor, held by the gripper
ON_FIXTURE_MAX_HEIGHT_M = 0.08  # object centre at most this far above the fixture surface
RIM_CLEARANCE_M = 0.005
"""An object is in a walled fixture (the bowl) only when its lowest point is at least this
far below the rim's top: one lying across the rim is not in it."""


def _horizontal_distance(a: tuple[float, float, float], b: tuple[float, float, float]) -> float:
    return math.hypot(a[0] - b[0], a[1] - b[1])


def _matches(obj: ObjectState, category: str | None, min_size: float | None) -> bool:
    if category is not None and obj.category != category:
        return False
    return not (min_size is not None and obj.size < min_size)


def is_lifted(obj: ObjectState, scene: SceneState) -> bool:
    return obj.in_gripper and obj.position[2] >= scene.right_bin.floor_z + LIFT_HEIGHT_M


def is_on_fixture(obj: ObjectState, fixture: FixtureState) -> bool:
    """Released, its centre within the fixture's radius and at most
    ``ON_FIXTURE_MAX_HEIGHT_M`` above its surface; for a walled fixture (the bowl, with
    ``rim_z``) its lowest point is also below the rim and it touches no bin or table
    (where known: ``ObjectState.bottom_z``, ``touching``): a long object partly in the
    bowl counts, one across the rim or leaning on it from outside does not (until
    2026-12-05 the rim was not judged). Across the rim is a lowest point above the
    clearance, or (with the simulator's ``<kind>_wall`` / ``<kind>_floor`` contacts,
    ``CELL_VERSION`` 3) resting on the wall but not the floor with the centre above
    the rim: a long object across the opening sags below the clearance."""
    if obj.in_gripper:
        return False
    if _horizontal_distance(obj.position, fixture.position) > fixture.radius:
        return False
    dz = obj.position[2] - fixture.position[2]
    if not -0.02 <= dz <= ON_FIXTURE_MAX_HEIGHT_M:
        return False
    if fixture.rim_z is None:
        return True
    if obj.bottom_z is not None and obj.bottom_z > fixture.rim_z - RIM_CLEARANCE_M:
        return False  # across the rim
    walls, floor = f"{fixture.kind}_wall", f"{fixture.kind}_floor"
    if (
        obj.touching is not None
        and walls in obj.touching
        and floor not in obj.touching
        and obj.position[2] > fixture.rim_z
    ):
        # lying across the rim, sagging into the opening: its lowest point passes the
        # clearance, but it rests on the wall alone, its centre above the rim
        return False
    # leaning on the rim from outside, one end on the bin's floor
    return obj.touching is None or not obj.touching & FLOORS


@dataclass(frozen=True)
class Lifted:
    """An object (of ``category`` / at least ``min_size``) is held up high."""

    category: str | None = None
    min_size: float | None = None

    def __call__(self, scene: SceneState) -> bool:
        return any(
            _matches(o, self.category, self.min_size) and is_lifted(o, scene) for o in scene.objects
        )

    def possible(self, scene: SceneState) -> bool:
        """Whether ``scene`` (at the start of an episode) holds an object this task may
        lift: one of its category and size, released, in the right bin. About half the
        scenes of four objects have no ball, where lift-ball fails whatever the policy."""
        return any(
            _matches(o, self.category, self.min_size)
            and not o.in_gripper
            and scene.right_bin.contains_xy(o.position[0], o.position[1])
            for o in scene.objects
        )


@dataclass(frozen=True)
class Placed:
    """An object (of ``category``) rests, released, on one of ``fixtures``."""

    fixtures: tuple[str, ...]
    category: str | None = None

    def __call__(self, scene: SceneState) -> bool:
        targets = [f for f in scene.fixtures if f.kind in self.fixtures]
        return any(
            _matches(o, self.category, None) and is_on_fixture(o, f)
            for o in scene.objects
            for f in targets
        )


@dataclass(frozen=True)
class InLeftBin:
    """An object rests released inside the left bin (on a fixture or not)."""

    def __call__(self, scene: SceneState) -> bool:
        return any(
            not o.in_gripper
            and scene.left_bin.contains_xy(o.position[0], o.position[1])
            and o.position[2] <= scene.left_bin.floor_z + ON_FIXTURE_MAX_HEIGHT_M + 0.04
            for o in scene.objects
        )


def lift(category: str | None = None, min_size: float | None = None) -> Predicate:
    """Success iff an object (of ``category`` / at least ``min_size``) is held up high."""
    return Lifted(category, min_size)


def place(fixtures: tuple[str, ...], category: str | None = None) -> Predicate:
    """Success iff an object (of ``category``) rests, released, on one of ``fixtures``."""
    return Placed(tuple(fixtures), category)


def in_left_bin() -> Predicate:
    """Success iff an object rests released inside the left bin (on a fixture or not)."""
    return InLeftBin()
