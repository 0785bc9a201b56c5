"""Tasks and skills: registry, specs and ground-truth predicates (sim only)."""

from mtopt.tasks.registry import (
    DEFAULT_REGISTRY,
    TaskRegistry,
    TaskSpec,
    UnknownTaskError,
    get_task,
    task_from_dict,
)
from mtopt.tasks.scene import (
    CATEGORIES,
    FIXTURE_KINDS,
    STATIC_PARTS,
    BinState,
    FixtureState,
    ObjectState,
    SceneState,
)

__all__ = [
    "CATEGORIES",
    "DEFAULT_REGISTRY",
    "FIXTURE_KINDS",
    "STATIC_PARTS",
    "BinState",
    "FixtureState",
    "ObjectState",
    "SceneState",
    "TaskRegistry",
    "TaskSpec",
    "UnknownTaskError",
    "get_task",
    "task_from_dict",
]
