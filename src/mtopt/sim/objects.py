"""Procedural object instances: 6 categories, varied in size, colour and mass.

Every instance is a pure function of (category, instance number): the same id always
gives the same object, on every machine. Numbers ``0 .. TRAIN_PER_CATEGORY-1`` are the
training instances; ``HELD_OUT_OFFSET ..`` are held out for evaluation and never appear
in a training scene.
"""

from __future__ import annotations

import colorsys
import math
import zlib
from dataclasses import dataclass
from typing import Literal

import numpy as np

from mtopt.tasks.scene import CATEGORIES

Split = Literal["train", "test"]
SPLITS: tuple[str, ...] = ("train", "test")
TRAIN_PER_CATEGORY = 40
TEST_PER_CATEGORY = 10
HELD_OUT_OFFSET = 1000

# Base hue per category (so categories stay visually distinct without randomization).
_BASE_HUE = {"box": 0.08, "can": 0.58, "ball": 0.0, "capsule": 0.95, "bottle": 0.33, "banana": 0.15}


@dataclass(frozen=True)
class Part:
    """One primitive of an object: 'box' (half extents), 'cylinder'/'capsule' (r, h), 'sphere' (r)."""

    shape: str
    dims: tuple[float, ...]
    offset: tuple[float, float, float] = (0.0, 0.0, 0.0)
    euler: tuple[float, float, float] = (0.0, 0.0, 0.0)


@dataclass(frozen=True)
class ObjectSpec:
    category: str
    number: int
    parts: tuple[Part, ...]
    rgba: tuple[float, float, float, float]
    mass: float
    size: float
    """Largest half-extent (m); a bottle's is about its reach from the body's centre to
    the neck's tip (half its length + 1 cm), not half its length. lift-large's 3.5 cm
    threshold takes every bottle either way."""
    half_height: float  # resting half height (for dropping it onto a floor)

    @property
    def instance(self) -> str:
        split = "test" if self.number >= HELD_OUT_OFFSET else "train"
        return f"{self.category}/{split}/{self.number:04d}"


def instance_numbers(split: Split) -> range:
    if split == "train":
        return range(TRAIN_PER_CATEGORY)
    if split == "test":
        return range(HELD_OUT_OFFSET, HELD_OUT_OFFSET + TEST_PER_CATEGORY)
    raise ValueError(f"unknown object split {split!r}; valid: {list(SPLITS)}")


def _rng(category: str, number: int) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(f"{category}:{number}".encode()))


def make_object(category: str, number: int) -> ObjectSpec:
    """The deterministic object instance ``number`` of ``category``."""
    if category not in CATEGORIES:
        raise ValueError(f"unknown category {category!r}; valid: {list(CATEGORIES)}")
    r = _rng(category, number)
    u = r.uniform
    parts: tuple[Part, ...]
    if category == "box":
        hx, hy, hz = u(0.018, 0.035), u(0.015, 0.03), u(0.015, 0.03)
        parts = (Part("box", (hx, hy, hz)),)
        size, hh = max(hx, hy, hz), hz
    elif category == "can":
        rad, h = u(0.016, 0.026), u(0.04, 0.07)
        parts = (Part("cylinder", (rad, h)),)
        size, hh = max(rad, h / 2), h / 2
    elif category == "ball":
        rad = u(0.016, 0.03)
        parts = (Part("sphere", (rad,)),)
        size, hh = rad, rad
    elif category == "capsule":  # sausage: lying capsule along x
        rad, h = u(0.011, 0.017), u(0.04, 0.07)
        parts = (Part("capsule", (rad, h), euler=(0.0, np.pi / 2, 0.0)),)
        size, hh = h / 2 + rad, rad
    elif category == "bottle":  # lying bottle: body + neck along x
        rad, h = u(0.015, 0.021), u(0.05, 0.07)
        nr, nh = rad * 0.5, h * 0.4
        parts = (
            Part("cylinder", (rad, h), euler=(0.0, np.pi / 2, 0.0)),
            Part(
                "cylinder", (nr, nh), offset=(h / 2 + nh / 2, 0.0, 0.0), euler=(0.0, np.pi / 2, 0.0)
            ),
        )
        size, hh = (h + nh) / 2 + 0.01, rad
    else:  # banana: three capsules on an arc
        rad, seg = u(0.011, 0.015), u(0.025, 0.035)
        bend = u(0.35, 0.6)
        parts = (
            Part("capsule", (rad, seg), offset=(0.0, 0.0, 0.0), euler=(0.0, np.pi / 2, 0.0)),
            Part(
                "capsule",
                (rad, seg),
                offset=(seg * 0.95, seg * 0.3, 0.0),
                euler=(0.0, np.pi / 2, bend),
            ),
            Part(
                "capsule",
                (rad, seg),
                offset=(-seg * 0.95, seg * 0.3, 0.0),
                euler=(0.0, np.pi / 2, -bend),
            ),
        )
        size, hh = 1.5 * seg + rad, rad
    hue = (_BASE_HUE[category] + u(-0.04, 0.04)) % 1.0
    rgb = colorsys.hsv_to_rgb(hue, u(0.55, 0.95), u(0.55, 0.95))
    mass = float(u(0.05, 0.25))
    return ObjectSpec(category, number, parts, (*rgb, 1.0), mass, float(size), float(hh))


def sample_objects(
    rng: np.random.Generator, n: int, split: Split, categories: tuple[str, ...] = CATEGORIES
) -> list[ObjectSpec]:
    """Draw ``n`` object instances of the given split (categories drawn uniformly)."""
    numbers = instance_numbers(split)
    return [make_object(str(rng.choice(categories)), int(rng.choice(numbers))) for _ in range(n)]


def euler_matrix(roll: float, pitch: float, yaw: float) -> np.ndarray:
    """Rotation matrix of PyBullet's Euler angles (``getQuaternionFromEuler``):
    Rz(yaw) @ Ry(pitch) @ Rx(roll)."""
    cr, sr, cp, sp, cy, sy = (
        math.cos(roll),
        math.sin(roll),
        math.cos(pitch),
        math.sin(pitch),
        math.cos(yaw),
        math.sin(yaw),
    )
    rx = np.array([[1, 0, 0], [0, cr, -sr], [0, sr, cr]])
    ry = np.array([[cp, 0, sp], [0, 1, 0], [-sp, 0, cp]])
    rz = np.array([[cy, -sy, 0], [sy, cy, 0], [0, 0, 1]])
    return rz @ ry @ rx


def part_lowest_point(part: Part, centre: np.ndarray, rotation: np.ndarray) -> float:
    """Lowest world z of one primitive with its centre and world rotation (exact, unlike
    PyBullet's bounding boxes, which reach up to a centimetre lower for tilted capsules).
    Cylinders and capsules run along their local z axis, as in PyBullet."""
    up = np.abs(rotation[2])  # |z component| of each local axis
    if part.shape == "box":
        return float(centre[2] - up @ np.asarray(part.dims))
    r = part.dims[0]
    if part.shape == "sphere":
        return float(centre[2] - r)
    half = part.dims[1] / 2
    if part.shape == "capsule":
        return float(centre[2] - up[2] * half - r)
    if part.shape == "cylinder":
        return float(centre[2] - up[2] * half - r * math.sqrt(max(0.0, 1.0 - up[2] ** 2)))
    raise ValueError(f"unknown part shape {part.shape!r}")


def lowest_point(spec: ObjectSpec, position: np.ndarray, rotation: np.ndarray) -> float:
    """Lowest world z of an object whose body is at ``position`` with world ``rotation``
    (3x3). A single part is the body itself (its Euler angles are in the body's
    orientation); several parts sit at their offsets and angles in the body's frame, as
    ``SimCell`` builds them."""
    position = np.asarray(position, dtype=np.float64)
    rotation = np.asarray(rotation, dtype=np.float64)
    if len(spec.parts) == 1:
        return part_lowest_point(spec.parts[0], position, rotation)
    return min(
        part_lowest_point(
            q, position + rotation @ np.asarray(q.offset), rotation @ euler_matrix(*q.euler)
        )
        for q in spec.parts
    )
