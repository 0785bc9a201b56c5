"""Task impersonation (MT-Opt, Sec. "Task Impersonation and Data Rebalancing").

An episode collected for task T_i is reused for a set of tasks {k_i}; for every task in
that set it is relabeled with *that* task's success-detector reward, so the episode
contributes both successes and failures. Three strategies:

- ``orig``:  f(e) = {T_i}                      (no sharing)
- ``all``:   f(e) = all tasks                  (maximal sharing)
- ``skill``: f(e) = tasks with T_i's skill     (MT-Opt's default)

These are pure functions of (original task, per-task SD rewards, registry).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from mtopt.tasks.registry import TaskRegistry, UnknownTaskError

SUCCESS_AT = 0.5
"""An episode's reward for a task at or above this counts as a success for it: where it
is filed (the task's success or failure buffer) and what the composition counts. Binary
and ground-truth rewards are 0 or 1; a "probability" reward of exactly 0.5 is a success,
as the binary reward of the same score (before 2026-12-07 it was filed as a failure)."""


def is_success(reward: float) -> bool:
    """Whether ``reward`` counts as a success (``SUCCESS_AT``)."""
    return reward >= SUCCESS_AT


ImpersonationMode = Literal["orig", "all", "skill"]
MODES: tuple[str, ...] = ("orig", "all", "skill")


def impersonation_targets(
    orig_task: str, registry: TaskRegistry, mode: ImpersonationMode
) -> tuple[str, ...]:
    """The tasks an episode collected for ``orig_task`` trains, in registry order."""
    spec = registry.get(orig_task)  # clear error for unknown tasks
    if mode == "orig":
        return (spec.name,)
    if mode == "all":
        return registry.names
    if mode == "skill":
        return registry.skills[spec.skill]
    raise ValueError(f"unknown impersonation mode {mode!r}; valid: {list(MODES)}")


def skill_tasks(task: str, registry: TaskRegistry) -> tuple[str, ...]:
    """Every task of ``task``'s skill (f_skill's targets); just ``(task,)`` for a task the
    registry does not know (e.g. one added to a store later)."""
    try:
        return impersonation_targets(task, registry, "skill")
    except UnknownTaskError:
        return (task,)


def impersonate(
    orig_task: str,
    rewards: Mapping[str, float],
    registry: TaskRegistry,
    mode: ImpersonationMode,
) -> list[tuple[str, float]]:
    """Relabel one episode: ``[(task, reward)]`` for every task it is impersonated as.

    ``rewards`` maps task name -> SD reward (0/1) for the episode's final image. A target
    task without a reward (no SD score yet) is skipped rather than guessed.
    """
    return [
        (task, float(rewards[task]))
        for task in impersonation_targets(orig_task, registry, mode)
        if task in rewards
    ]


def expansion_counts(
    episodes: list[tuple[str, Mapping[str, float]]],
    registry: TaskRegistry,
    mode: ImpersonationMode,
) -> dict[str, dict[str, int]]:
    """Per task: episodes before/after impersonation and successes before and after
    (paper Figs. 5 and 12).

    Returns ``{task: {"original": n, "original_successes": k, "impersonated": m,
    "successes": s}}``: ``k`` of the ``n`` episodes collected for the task succeeded at
    it, ``s`` of the ``m`` it gets after impersonation.
    """
    keys = ("original", "original_successes", "impersonated", "successes")
    out = {t: dict.fromkeys(keys, 0) for t in registry.names}
    for orig, rewards in episodes:
        if orig not in out:
            registry.get(orig)  # an UnknownTaskError naming the registry's tasks
        out[orig]["original"] += 1
        out[orig]["original_successes"] += int(is_success(rewards.get(orig, 0.0)))
        for task, r in impersonate(orig, rewards, registry, mode):
            out[task]["impersonated"] += 1
            out[task]["successes"] += int(is_success(r))
    return out
