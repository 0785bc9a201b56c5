"""Ground-truth scene snapshot (simulator only).

The simulator fills a ``SceneState`` at the end of an episode; task predicates read it.
It is used to label success-detector examples and to evaluate policies, never as the
training reward. Units are metres, world frame, z up.
"""

from __future__ import annotations

from dataclasses import dataclass

CATEGORIES: tuple[str, ...] = ("box", "can", "ball", "capsule", "bottle", "banana")
FIXTURE_KINDS: tuple[str, ...] = ("plate", "bowl")
STATIC_PARTS: tuple[str, ...] = (
    "table",
    "right_bin_floor",
    "right_bin_wall",
    "left_bin_floor",
    "left_bin_wall",
    *FIXTURE_KINDS,
    "bowl_floor",  # with "bowl": which of its parts (CELL_VERSION 3)
    "bowl_wall",
)


@dataclass(frozen=True)
class ObjectState:
    uid: int
    category: str
    instance: str  # e.g. "ball/train/007"
    size: float  # largest half-extent in metres
    position: tuple[float, float, float]
    in_gripper: bool  # touched by both fingers while the gripper is closed
    bottom_z: float | None = None
    """Lowest point (m, world z); None when unknown: then a fixture's rim is not judged."""
    touching: frozenset[str] | None = None
    """The cell's static parts it touches: of ``STATIC_PARTS``; None when unknown. Any
    collection of names is kept as a frozenset (``sorted()`` it for JSON)."""

    def __post_init__(self) -> None:
        if self.touching is not None and not isinstance(self.touching, frozenset):
            if isinstance(self.touching, str):
                raise TypeError("ObjectState.touching takes a collection of names, not one")
            object.__setattr__(self, "touching", frozenset(self.touching))


@dataclass(frozen=True)
class FixtureState:
    kind: str  # "plate" | "bowl"
    position: tuple[float, float, float]  # centre of the surface an object rests on
    radius: float  # usable radius for "on"/"in"
    rim_z: float | None = None
    """Top of the fixture's wall (m, world z); None for a flat fixture (the plate). An
    object is in a walled fixture only when its lowest point is below the rim."""


@dataclass(frozen=True)
class BinState:
    center: tuple[float, float]
    half_extent: tuple[float, float]
    floor_z: float

    def contains_xy(self, x: float, y: float, margin: float = 0.0) -> bool:
        return (
            abs(x - self.center[0]) <= self.half_extent[0] + margin
            and abs(y - self.center[1]) <= self.half_extent[1] + margin
        )


@dataclass(frozen=True)
class SceneState:
    objects: tuple[ObjectState, ...]
    fixtures: tuple[FixtureState, ...]
    right_bin: BinState  # objects start here
    left_bin: BinState  # fixtures live here
    gripper_position: tuple[float, float, float]
    gripper_closed: bool

    def held_objects(self) -> tuple[ObjectState, ...]:
        return tuple(o for o in self.objects if o.in_gripper)
