"""Evaluating a learned policy on any robot, a real one included: the success detector
judges each episode's final image, as it judges the run's rewards (a real cell has no
simulator ground truth). Where the robot has ground truth (the simulated cell), the
simulator's verdict is kept beside it, so the detector's judgement can be checked on the
policy's own episodes. ``mtopt evaluate`` is the command."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from mtopt.collect.loop import stored_episode
from mtopt.eval.evaluate import (
    SETUP_TRIES,
    encode_outcomes,
    eval_scene_seed,
    nothing_to_lift,
    rate_with_ci,
)
from mtopt.policies.base import Policy
from mtopt.robots.base import Robot
from mtopt.sim.runner import EpisodeRecord, run_episode
from mtopt.store.schema import Episode
from mtopt.tasks.registry import TaskRegistry, TaskSpec


class Judge(Protocol):
    """What judges an episode: a success detector (``mtopt.success.network``)."""

    @property
    def tasks(self) -> tuple[str, ...]: ...

    def score(self, images: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class JudgedEpisode:
    """One evaluation episode: the detector's probability and verdict for its task, the
    simulator's verdict (None without ground truth) and the stored episode's id."""

    task: str
    sd_prob: float
    sd_success: bool
    gt_success: bool | None
    steps: int
    episode_id: str


@dataclass
class RobotEvaluation:
    """What ``evaluate_on_robot`` has judged so far, per task: the judged episodes and
    the count of episodes never set up (filled as it goes: a Ctrl-C keeps what was
    measured)."""

    judged: dict[str, list[JudgedEpisode]] = field(default_factory=dict)
    unprepared: dict[str, int] = field(default_factory=dict)


def check_evaluation(judge: Judge, tasks: Sequence[str], episodes_per_task: int, seed: int) -> None:
    """A ValueError for a judge without a head for one of ``tasks`` or scenes that do
    not exist: checked before a robot moves."""
    missing = [t for t in tasks if t not in judge.tasks]
    if missing:
        raise ValueError(
            f"the success detector has no head for {missing}; it judges {list(judge.tasks)}"
        )
    if episodes_per_task > 0 and tasks:
        eval_scene_seed(seed, 0, episodes_per_task - 1, SETUP_TRIES - 1)


def evaluate_on_robot(
    robot: Robot,
    policy_for: Callable[[TaskSpec], Policy],
    registry: TaskRegistry,
    tasks: Sequence[str],
    episodes_per_task: int,
    max_steps: int,
    judge: Judge,
    seed: int = 0,
    threshold: float = 0.5,
    write: Callable[[Episode], None] | None = None,
    on_episode: Callable[[JudgedEpisode], None] | None = None,
    into: RobotEvaluation | None = None,
) -> RobotEvaluation:
    """Run ``episodes_per_task`` greedy episodes of each task on ``robot`` and judge each
    with ``judge`` (success: its probability for the task >= ``threshold``). Scenes are
    asked for with the held-out evaluation seeds of ``seed``, the same block for every
    task (``eval_scene_seed(seed, 0, k)``: the simulated cell sets up the scenes of
    ``evaluate_outcomes`` for one task at a time, which ``benchmarks/evaluate_run.py``
    reports; a real robot resets as it can). A scene where the robot cannot set up the
    task is replaced, up to ``SETUP_TRIES`` times; an episode never set up is counted
    apart, not judged (``benchmarks/evaluate_run.py`` counts those as failures).
    ``write``: store each episode (an ``EpisodeWriter.write``), to label it later.
    ``into``: the ``RobotEvaluation`` to fill as it goes (default: a new one); returned."""
    check_evaluation(judge, tasks, episodes_per_task, seed)
    out = into if into is not None else RobotEvaluation()
    judged, unprepared = out.judged, out.unprepared
    for name in tasks:  # every task listed from the start: one never reached shows as such
        judged.setdefault(name, [])
        unprepared.setdefault(name, 0)
    for name in tasks:
        spec = registry.get(name)
        head = list(judge.tasks).index(name)
        judged[name], unprepared[name] = [], 0
        for k in range(episodes_per_task):
            rec: EpisodeRecord | None = None
            for attempt in range(SETUP_TRIES):
                scene_seed = eval_scene_seed(seed, 0, k, attempt)
                robot.reset_scene(scene_seed)
                if nothing_to_lift(spec, robot, attempt):
                    continue
                started = time.time()
                policy = policy_for(spec)
                rec = run_episode(
                    robot,
                    policy,
                    spec,
                    np.random.default_rng(scene_seed),
                    max_steps,
                    skip_unprepared=True,
                )
                if rec.prepared:
                    break
            assert rec is not None
            if not rec.prepared:
                unprepared[name] += 1
                continue
            ep = stored_episode(
                robot, registry, spec, policy, rec, started_at=started, ended_at=time.time()
            )
            prob = float(np.asarray(judge.score(ep.final_image[None]))[0, head])
            one = JudgedEpisode(
                task=name,
                sd_prob=prob,
                sd_success=prob >= threshold,
                gt_success=ep.gt_success,
                steps=rec.num_steps,
                episode_id=ep.episode_id,
            )
            if write is not None:
                write(ep)
            judged[name].append(one)
            if on_episode is not None:
                on_episode(one)
    return out


def summarize(evaluation: RobotEvaluation) -> dict[str, dict[str, Any]]:
    """Per task: the detector's success rate with its 95% Wilson interval (None with no
    episode judged); where every
    episode has ground truth, the simulator's rate and the share of episodes on which the
    detector agrees with it; the episodes never set up; the outcomes as 0/1 strings."""
    out: dict[str, dict[str, Any]] = {}
    for task, eps in evaluation.judged.items():
        n = len(eps)
        sd = [e.sd_success for e in eps]
        row: dict[str, Any] = {
            "episodes": n,
            "not_set_up": evaluation.unprepared.get(task, 0),
            # None: no episode judged (an evaluation stopped before the task), not 0%
            "sd_success": rate_with_ci(sum(sd) / n, n) if n else None,
            "sd_outcomes": encode_outcomes(sd),
            "gt_success": None,
            "sd_agreement": None,
        }
        if n and all(e.gt_success is not None for e in eps):
            gt = [bool(e.gt_success) for e in eps]
            row["gt_success"] = rate_with_ci(sum(gt) / n, n)
            row["gt_outcomes"] = encode_outcomes(gt)
            row["sd_agreement"] = sum(a == b for a, b in zip(sd, gt, strict=True)) / n
        out[task] = row
    return out
