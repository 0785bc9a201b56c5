"""Ground-truth scene snapshot (simulator only).

The simulator fills a ``SceneState`` at the end of an episode; task predicates read it.
It is used to label success-detector examples and to evaluate policies, never as the
training reward. Units are metres, world frame, z up.
"""

from __future__ import annotations

from dataclasses import dataclass

CATEGORIES: tuple[str, ...] = ("box", "can", "ball", "capsule", "bottle", "banana")
FIXTURE_KINDS: tuple[str, ...] = ("plate", "bowl")


@dataclass(frozen=True)
class ObjectState:
    uid: int
    category: str
    instance: str  # e.g. "ball/train/007"
    size: float  # largest half-extent in metres
    position: tuple[float, float, float]
    in_gripper: bool  # touched by both fingers while the gripper is closed


@dataclass(frozen=True)
class FixtureState:
    kind: str  # "plate" | "bowl"
    position: tuple[float, float, float]  # centre of the surface an object rests on
    radius: float  # usable radius for "on"/"in"


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
