"""Task and skill registry.

A task is a name, a skill (the group used by skill impersonation), a description,
whether it starts with an object in the gripper, and a ground-truth predicate. The
order of a registry defines the one-hot task index: new tasks are appended, never
inserted, so trained networks keep their meaning.

Add a task in one place: append a ``TaskSpec`` to ``DEFAULT_TASKS`` or describe it in a
JSON/TOML file loaded with ``TaskRegistry.with_extra``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mtopt.tasks import predicates as P
from mtopt.tasks.scene import CATEGORIES, FIXTURE_KINDS, SceneState


class UnknownTaskError(KeyError):
    """A task name that is not in the registry."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


@dataclass(frozen=True)
class TaskSpec:
    name: str
    skill: str
    description: str
    starts_holding: bool
    predicate: P.Predicate

    def succeeded(self, scene: SceneState) -> bool:
        """Ground truth (sim only): did this task succeed in ``scene``?"""
        return bool(self.predicate(scene))

    def possible(self, scene: SceneState) -> bool:
        """Ground truth (sim only): does ``scene``, set up for this task, hold what it
        needs (a lift task: an object it may lift, ``Lifted.possible``)? True for a task
        whose predicate has no such check."""
        check = getattr(self.predicate, "possible", None)
        return bool(check(scene)) if callable(check) else True

    @property
    def held_category(self) -> str | None:
        """The category the held object must be for this task to be possible (a category
        placing task such as place-ball-in-bowl); None: any object, or none held."""
        if not self.starts_holding:
            return None
        category = getattr(self.predicate, "category", None)
        return None if category is None else str(category)


def _default_tasks() -> list[TaskSpec]:
    tasks = [
        TaskSpec("lift-any", "lift", "Lift any object out of the right bin.", False, P.lift()),
    ]
    for cat in CATEGORIES:
        tasks.append(
            TaskSpec(
                f"lift-{cat}", "lift", f"Lift a {cat} out of the right bin.", False, P.lift(cat)
            )
        )
    tasks += [
        TaskSpec(
            "place-any",
            "place",
            "Place the held object on any fixture (plate or bowl).",
            True,
            P.place(FIXTURE_KINDS),
        ),
        TaskSpec(
            "place-on-plate",
            "place",
            "Place the held object on the plate.",
            True,
            P.place(("plate",)),
        ),
        TaskSpec(
            "place-in-bowl", "place", "Place the held object in the bowl.", True, P.place(("bowl",))
        ),
        TaskSpec(
            "place-in-left-bin",
            "place",
            "Drop the held object anywhere in the left bin.",
            True,
            P.in_left_bin(),
        ),
        TaskSpec(
            "place-ball-in-bowl",
            "place",
            "Place a ball in the bowl (other objects do not count).",
            True,
            P.place(("bowl",), category="ball"),
        ),
        TaskSpec(
            "lift-large",
            "lift",
            "Lift a large object (largest half-extent >= 3.5 cm).",
            False,
            P.lift(min_size=0.035),
        ),
    ]
    return tasks


TASK_KEYS = {
    "lift": ("name", "kind", "category", "min_size", "skill", "description"),
    "place": ("name", "kind", "category", "fixtures", "skill", "description"),
}
"""The keys a task description of each kind may have."""
TASK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
"""What a task's name may be (every built-in one is, e.g. ``lift-any``)."""
SKILL_STARTS_HOLDING = {"lift": False, "place": True}
"""The built-in skills and whether their tasks start with an object in the gripper."""


def check_task_name(name: object) -> None:
    """A new task's name: letters, digits, ``-``, ``_`` and ``.``, as every built-in one
    (a comma or a space could never be named in a list such as ``--set eval.tasks=a,b``).
    Checked where tasks are made (a tasks file, a fresh run's ``extra_tasks``), not where
    a saved run's config is loaded: a run from before the rule still loads."""
    if not isinstance(name, str) or not TASK_NAME.fullmatch(name):
        raise ValueError(
            f"task name {name!r}: letters, digits, '-', '_' and '.' only, starting with a "
            "letter or digit"
        )


def task_from_dict(d: Mapping[str, Any]) -> TaskSpec:
    """Build a task from a plain description, e.g. from a JSON/TOML config file.

    ``{"name": "lift-small-ball", "kind": "lift", "category": "ball", "min_size": 0.02}``
    ``{"name": "place-can-on-plate", "kind": "place", "fixtures": ["plate"], "category": "can"}``

    Optional: ``skill`` (default: the kind; a built-in skill must match the kind, as its
    tasks share episodes by impersonation) and ``description``. A key the kind does not
    have, or a value of the wrong type, is a ``ValueError``: a misspelt key would
    otherwise give a different task without a word."""
    if not isinstance(d, Mapping):
        raise ValueError(f"a task description is a mapping of keys to values, got {d!r}")
    kind = d.get("kind")
    name = d.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError(f"task description needs a non-empty 'name', got {dict(d)!r}")

    if not isinstance(kind, str) or kind not in TASK_KEYS:
        raise ValueError(f"task {name!r}: 'kind' must be 'lift' or 'place', got {kind!r}")
    unknown = sorted(set(d) - set(TASK_KEYS[kind]))
    if unknown:
        raise ValueError(
            f"task {name!r}: unknown key(s) {unknown} for a {kind} task; "
            f"valid: {list(TASK_KEYS[kind])}"
        )
    for key in ("skill", "description"):
        if key in d and (not isinstance(d[key], str) or not d[key]):
            raise ValueError(f"task {name!r}: {key!r} must be a non-empty string, got {d[key]!r}")
    category = d.get("category")
    if category is not None and (not isinstance(category, str) or category not in CATEGORIES):
        raise ValueError(f"task {name!r}: unknown category {category!r}; valid: {list(CATEGORIES)}")
    skill = str(d.get("skill", kind))
    holding = kind == "place"
    if SKILL_STARTS_HOLDING.get(skill, holding) != holding:
        raise ValueError(
            f"task {name!r}: a {kind} task cannot join the skill {skill!r}, whose tasks "
            f"{'start' if SKILL_STARTS_HOLDING[skill] else 'do not start'} holding an object"
        )
    if kind == "lift":
        min_size = d.get("min_size")
        if min_size is not None and (
            isinstance(min_size, bool)
            or not isinstance(min_size, (int, float))
            or not math.isfinite(min_size)
            or min_size <= 0
        ):
            raise ValueError(
                f"task {name!r}: 'min_size' must be a positive number (metres), got {min_size!r}"
            )
        pred = P.lift(category, None if min_size is None else float(min_size))
    else:
        fixtures = d.get("fixtures", FIXTURE_KINDS)
        if isinstance(fixtures, str) or not isinstance(fixtures, (list, tuple)) or not fixtures:
            raise ValueError(
                f"task {name!r}: 'fixtures' must be a non-empty list of {list(FIXTURE_KINDS)}, "
                f"got {fixtures!r}"
            )
        bad = [f for f in fixtures if f not in FIXTURE_KINDS]
        if bad:
            raise ValueError(f"task {name!r}: unknown fixtures {bad}; valid: {list(FIXTURE_KINDS)}")
        pred = P.place(tuple(fixtures), category)
    return TaskSpec(name, skill, str(d.get("description", name)), holding, pred)


def read_tasks_file(path: str | Path) -> list[dict[str, Any]]:
    """The task descriptions of a tasks file (a JSON list, as ``mtopt run --tasks-file``
    and ``mtopt sd ... --tasks-file`` take); a ``ValueError`` naming the file otherwise."""
    try:
        extra = json.loads(Path(path).read_text())
    except (OSError, ValueError, RecursionError) as exc:  # (bad UTF-8, JSON, huge ints)
        raise ValueError(f"cannot read the tasks file {path}: {exc}") from None
    if not isinstance(extra, list) or not all(isinstance(t, dict) for t in extra):
        raise ValueError(f"the tasks file {path} must hold a JSON list of task descriptions")
    for task in extra:
        try:
            check_task_name(task.get("name"))
        except ValueError as exc:
            raise ValueError(f"the tasks file {path}: {exc}") from None
    return extra


class TaskRegistry(Sequence[TaskSpec]):
    """An ordered, immutable collection of tasks; index = one-hot position."""

    def __init__(self, tasks: Iterable[TaskSpec]):
        self._tasks: tuple[TaskSpec, ...] = tuple(tasks)
        names = [t.name for t in self._tasks]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate task names: {dupes}")
        # a skill's tasks share episodes by impersonation: a lift's episode relabeled for
        # a task that starts holding an object (or the reverse) would teach nonsense
        starts: dict[str, set[bool]] = {}
        for t in self._tasks:
            starts.setdefault(t.skill, set()).add(t.starts_holding)
        mixed = sorted(k for k, v in starts.items() if len(v) > 1)
        if mixed:
            raise ValueError(
                f"skill(s) {mixed} mix tasks that start holding an object with tasks that do "
                "not: a skill's tasks share episodes by impersonation; give them separate skills"
            )
        self._index = {t.name: i for i, t in enumerate(self._tasks)}

    def __len__(self) -> int:
        return len(self._tasks)

    def __getitem__(self, key: int | str) -> TaskSpec:  # type: ignore[override]
        """``registry[0]`` by one-hot position, ``registry["lift-any"]`` by name."""
        if isinstance(key, str):
            return self.get(key)
        return self._tasks[key]

    def __contains__(self, item: object) -> bool:
        """A task name or a TaskSpec (``"lift-any" in registry`` was False: the
        Sequence default compared the name with each TaskSpec)."""
        if isinstance(item, str):
            return item in self._index
        if isinstance(item, TaskSpec):
            i = self._index.get(item.name)
            return i is not None and self._tasks[i] == item
        return False

    def __iter__(self) -> Iterator[TaskSpec]:
        return iter(self._tasks)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self._tasks)

    @property
    def skills(self) -> dict[str, tuple[str, ...]]:
        out: dict[str, list[str]] = {}
        for t in self._tasks:
            out.setdefault(t.skill, []).append(t.name)
        return {k: tuple(v) for k, v in out.items()}

    def get(self, name: str) -> TaskSpec:
        try:
            return self._tasks[self._index[name]]
        except KeyError:
            raise UnknownTaskError(
                f"unknown task {name!r}; valid tasks: {', '.join(self.names)}"
            ) from None

    def index(self, name: str | TaskSpec) -> int:  # type: ignore[override]
        """The one-hot position of a task, by name or TaskSpec."""
        if isinstance(name, TaskSpec):
            if name not in self:
                raise UnknownTaskError(f"task {name.name!r} (this TaskSpec) is not registered")
            return self._index[name.name]
        self.get(name)
        return self._index[name]

    def subset(self, names: Iterable[str]) -> TaskRegistry:
        """A registry with only ``names`` (in the given order)."""
        return TaskRegistry(self.get(n) for n in names)

    def with_extra(self, extra: Iterable[TaskSpec | Mapping[str, Any]]) -> TaskRegistry:
        """A registry with new tasks appended (indices of existing tasks are unchanged)."""
        new = [t if isinstance(t, TaskSpec) else task_from_dict(t) for t in extra]
        return TaskRegistry([*self._tasks, *new])


DEFAULT_REGISTRY = TaskRegistry(_default_tasks())


def registry_with_tasks_file(path: str | Path) -> TaskRegistry:
    """The built-in tasks, then those of the tasks file ``path`` (``--tasks-file`` of the
    ``sd`` and ``store`` commands); a ``ValueError`` naming the file otherwise."""
    extra = read_tasks_file(path)
    try:
        return DEFAULT_REGISTRY.with_extra(extra)
    except ValueError as exc:
        raise ValueError(f"the tasks file {path}: {exc}") from None


def get_task(name: str) -> TaskSpec:
    return DEFAULT_REGISTRY.get(name)
