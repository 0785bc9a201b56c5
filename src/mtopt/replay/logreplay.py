"""LogReplay: stored episodes -> success-detector rewards -> impersonation -> buffers.

Stages talk through two small protocols:

- an *episode source* yields ``ReplayEpisode`` plus its final image (the store reader
  adapter lives in ``mtopt.replay.source``);
- a ``RewardModel`` scores final images for every task at once (the success detector).

Rewards are cached per (episode, reward-model version); when a newer success detector is
published every held episode is rescored in batches and re-filed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

import numpy as np

from mtopt.replay.buffers import ReplayEpisode, TaskBuffers
from mtopt.replay.impersonation import ImpersonationMode, impersonate, is_success
from mtopt.tasks.registry import TaskRegistry

RewardKind = Literal["binary", "probability", "truth"]
"""How an episode's reward is made (``ReplayConfig.reward``): from the success detector's
score, or ("truth") the simulator's verdict stored with it, an oracle for ablations."""
REWARD_KINDS: tuple[RewardKind, ...] = ("binary", "probability", "truth")

log = logging.getLogger(__name__)


def _tally(counts: dict[str, int], key: str) -> bool:
    """Count one more ``key`` in ``counts``; True the first time (to say it once)."""
    counts[key] = counts.get(key, 0) + 1
    return counts[key] == 1


@runtime_checkable
class RewardModel(Protocol):
    """Anything that turns final images into per-task success probabilities."""

    @property
    def tasks(self) -> Sequence[str]: ...

    @property
    def version(self) -> int: ...

    def score(self, images: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 -> (N, len(tasks)) probabilities in [0, 1]."""
        ...


@dataclass
class ReplayStats:
    """Data composition counters for reports (paper Figs. 3, 5 and 12)."""

    collected: dict[str, int] = field(default_factory=dict)  # per requested task
    collected_success: dict[str, int] = field(default_factory=dict)  # SD says success
    impersonated: dict[str, int] = field(default_factory=dict)  # per target task
    impersonated_success: dict[str, int] = field(default_factory=dict)
    gt_known: dict[str, int] = field(default_factory=dict)  # impersonated, with ground truth
    gt_successes: dict[str, int] = field(default_factory=dict)  # of those, successes in truth
    sd_successes_with_truth: dict[str, int] = field(default_factory=dict)  # SD, of gt_known
    sd_true_positives: dict[str, int] = field(default_factory=dict)  # SD and truth say success
    rescored: int = 0
    unknown_task: dict[str, int] = field(default_factory=dict)
    """Episodes skipped because the registry does not know their task (a store written
    with more tasks than this run's registry, or a task added later)."""
    no_verdict: dict[str, int] = field(default_factory=dict)
    """``replay.reward='truth'`` only: per task, episodes not impersonated as it because
    their stored verdicts lack it (stored before the task was added)."""

    def composition(self, tasks: Sequence[str]) -> dict[str, dict[str, int]]:
        """``{task: {"original": n, "original_successes": k, "impersonated": m,
        "successes": s, "gt_known": g, "gt_successes": t, "sd_successes_with_truth": d,
        "sd_true_positives": p, "no_verdict": v}}``: the report's data composition before and after
        impersonation (``mtopt.eval.report.plot_composition``; ``expansion_counts`` by
        hand), and how the success detector's rewards of the impersonated episodes compare
        with the simulator's ground truth where the episodes have it: ``g`` of the ``m``
        have it, ``t`` of those are successes in truth, ``d`` successes by the detector,
        ``p`` successes by both; ``v`` episodes were not impersonated as the task for
        want of a stored verdict (``replay.reward='truth'``)."""
        return {
            t: {
                "original": self.collected.get(t, 0),
                "original_successes": self.collected_success.get(t, 0),
                "impersonated": self.impersonated.get(t, 0),
                "successes": self.impersonated_success.get(t, 0),
                "gt_known": self.gt_known.get(t, 0),
                "gt_successes": self.gt_successes.get(t, 0),
                "sd_successes_with_truth": self.sd_successes_with_truth.get(t, 0),
                "sd_true_positives": self.sd_true_positives.get(t, 0),
                "no_verdict": self.no_verdict.get(t, 0),
            }
            for t in tasks
        }


class LogReplay:
    def __init__(
        self,
        registry: TaskRegistry,
        buffers: TaskBuffers,
        reward_model: RewardModel,
        mode: ImpersonationMode = "skill",
        threshold: float = 0.5,
        score_batch: int = 64,
        buffers_lock: AbstractContextManager[object] | None = None,
        reward: RewardKind = "binary",
    ):
        if reward not in REWARD_KINDS:
            raise ValueError(f"reward must be one of {list(REWARD_KINDS)}, got {reward!r}")
        self.registry = registry
        self.buffers = buffers
        self.mode: ImpersonationMode = mode
        self.threshold = threshold
        self.reward: RewardKind = reward
        self.score_batch = score_batch
        # held while filing into the buffers (not while scoring): a background Bellman
        # updater may be sampling from them
        self._lock = buffers_lock if buffers_lock is not None else nullcontext()
        self.stats = ReplayStats()
        self._reward_model = reward_model
        self._check_model(reward_model)
        # eid -> (episode, final image, sd version, per-task rewards)
        self._held: dict[str, tuple[ReplayEpisode, np.ndarray, int, dict[str, float]]] = {}

    @property
    def no_verdict(self) -> dict[str, int]:
        """ "truth" only: task -> episodes whose stored verdicts lack it (``_rewards``),
        this process's (a resume counts again); in the composition and the report."""
        return self.stats.no_verdict

    @property
    def reward_version(self) -> int:
        return int(self._reward_model.version)

    def _check_model(self, model: RewardModel) -> None:
        missing = [t for t in self.registry.names if t not in model.tasks]
        if missing:
            raise ValueError(
                f"success detector v{model.version} has no head for tasks {missing}; "
                f"it knows {list(model.tasks)}"
            )

    def _rewards(self, items: list[tuple[ReplayEpisode, np.ndarray]]) -> list[dict[str, float]]:
        """Each episode's reward per task: the detector's (batched), or with "truth" the
        simulator's verdict stored with it. A task its verdicts lack (an episode stored
        before the task was added) gets no reward, so it is not impersonated as it.

        With "truth" the detector scores the episodes all the same, its scores unused: an
        ablation against detector rewards then spends the same compute on everything
        else (2 cores share scoring with the learner and the robots)."""
        scored = self._score([fin for _, fin in items])
        if self.reward != "truth":
            return scored
        out, lacking = [], []
        for ep, _ in items:
            truth = ep.gt_success_by_task
            if not truth or ep.task not in truth:
                raise ValueError(
                    f"episode {ep.episode_id} ({ep.task}) has no ground truth for its task (a "
                    "robot other than the simulated cell, or another cell's tasks): "
                    "replay.reward='truth' needs the simulator's verdicts; use 'binary' or "
                    "'probability'"
                )
            out.append({t: float(bool(truth[t])) for t in self.registry.names if t in truth})
            lacking += [t for t in self.registry.names if t not in truth]
        for t in lacking:  # counted once the whole batch is known to be filed
            if _tally(self.no_verdict, t):
                log.warning(
                    "replay.reward='truth': episodes without a verdict for task %r (stored "
                    "before it was added) are not impersonated as it; only new episodes give "
                    "it data",
                    t,
                )
        return out

    def _score(self, finals: list[np.ndarray]) -> list[dict[str, float]]:
        out: list[dict[str, float]] = []
        names = list(self._reward_model.tasks)
        for i in range(0, len(finals), self.score_batch):
            probs = np.asarray(self._reward_model.score(np.stack(finals[i : i + self.score_batch])))
            for row in probs:
                out.append({t: self._reward(p) for t, p in zip(names, row, strict=True)})
        return out

    def _reward(self, p: float) -> float:
        """A task's reward from the detector's score ``p``: 1 at or above the threshold,
        else 0 ("binary"); or ``p`` itself ("probability", ``ReplayConfig.reward``)."""
        if self.reward == "probability":
            return min(1.0, max(0.0, float(p)))
        return float(p >= self.threshold)

    def _file(
        self, ep: ReplayEpisode, rewards: dict[str, float], before: dict[str, float] | None = None
    ) -> None:
        """File ``ep`` with these rewards: a new episode (counted in the stats), or with
        ``before``, the rewards it was filed with until now, a rescore (its successes in
        the stats move from the old rewards to the new)."""
        labels = impersonate(ep.task, rewards, self.registry, self.mode)
        # a rescore moves the counts of the tasks that still hold the episode only: the
        # ones that evicted it keep the verdict it had (it used to move them too)
        held = set(self.buffers.labels(ep.episode_id))
        self.buffers.add(ep, labels)
        s = self.stats
        if before is None:  # a new episode
            s.collected[ep.task] = s.collected.get(ep.task, 0) + 1
            truth = ep.gt_success_by_task or {}
            for task, _ in labels:
                s.impersonated[task] = s.impersonated.get(task, 0) + 1
                if task in truth:  # the truth does not change on a rescore: counted once
                    s.gt_known[task] = s.gt_known.get(task, 0) + 1
                    s.gt_successes[task] = s.gt_successes.get(task, 0) + int(bool(truth[task]))
            self._count_successes(ep, rewards, labels, +1, own=True)
            return
        self._recount(ep, rewards, before, held)

    def _recount(
        self, ep: ReplayEpisode, rewards: dict[str, float], before: dict[str, float], held: set[str]
    ) -> None:
        """A rescore's success counts: from the old rewards to the new, for the tasks
        that held the episode (``held``) when it was rescored."""
        labels = impersonate(ep.task, rewards, self.registry, self.mode)
        old = [
            (t, r) for t, r in impersonate(ep.task, before, self.registry, self.mode) if t in held
        ]
        new = [(t, r) for t, r in labels if t in held]
        self._count_successes(ep, before, old, -1, own=ep.task in held)
        self._count_successes(ep, rewards, new, +1, own=ep.task in held)

    def _count_successes(
        self,
        ep: ReplayEpisode,
        rewards: dict[str, float],
        labels: list[tuple[str, float]],
        sign: int,
        own: bool,
    ) -> None:
        s = self.stats
        task, truth = ep.task, ep.gt_success_by_task or {}
        s.collected_success[task] = s.collected_success.get(task, 0) + sign * int(
            own and is_success(rewards.get(task, 0.0))
        )
        for target, r in labels:
            s.impersonated_success[target] = s.impersonated_success.get(target, 0) + sign * int(
                is_success(r)
            )
            if target in truth:
                said = int(is_success(r))
                s.sd_successes_with_truth[target] = (
                    s.sd_successes_with_truth.get(target, 0) + sign * said
                )
                s.sd_true_positives[target] = s.sd_true_positives.get(target, 0) + sign * int(
                    said and bool(truth[target])
                )

    def ingest(self, items: Iterable[tuple[ReplayEpisode, np.ndarray]]) -> int:
        """Score new episodes (batched) and file them into the buffers; returns how many.
        An episode of a task the registry does not know is skipped and counted in
        ``stats.unknown_task`` (it used to stop ingestion, and with it the run)."""
        new = []
        batch: set[str] = set()
        for ep, fin in items:
            if ep.episode_id in self._held or ep.episode_id in batch:
                continue  # held already, or twice in this batch: filed (and counted) once
            batch.add(ep.episode_id)
            if ep.task not in self.registry.names:
                if _tally(self.stats.unknown_task, ep.task):
                    log.warning("skipping episodes of task %r: not in this run's registry", ep.task)
                continue
            new.append((ep, fin))
        if not new:
            return 0
        rewards = self._rewards(new)
        version = self.reward_version
        with self._lock:
            for (ep, fin), r in zip(new, rewards, strict=True):
                self._held[ep.episode_id] = (ep, fin, version, r)
                self._file(ep, r)
            self._prune()
        return len(new)

    def _prune(self) -> None:
        """Forget episodes the buffers evicted (bounded memory)."""
        gone = [eid for eid in self._held if eid not in self.buffers]
        for eid in gone:
            del self._held[eid]

    def set_reward_model(self, model: RewardModel) -> int:
        """Switch to a newer success detector: rescore every held episode, all moves at
        once (``TaskBuffers.refile_many``); returns how many were refiled.
        The model in use already (a relabel round that labeled nothing new hands it back)
        rescores nothing. The success counts in ``stats`` follow the new rewards of the
        held episodes (evicted ones keep the rewards they had). A rescore that fails
        (raises) leaves the model that was in use, so a later call rescores."""
        self._check_model(model)
        if model is self._reward_model:
            return 0
        previous, self._reward_model = self._reward_model, model
        eids = list(self._held)
        try:
            rewards = self._score([self._held[e][1] for e in eids])
        except BaseException:  # (out of memory, say) the old model stays: a retry rescores
            self._reward_model = previous
            raise
        if not eids:
            return 0
        if self.reward == "truth":  # scored for the same compute (_rewards); none changes
            return 0
        refiled = 0
        with self._lock:
            moving = []
            for eid, r in zip(eids, rewards, strict=True):
                if eid not in self.buffers:
                    continue  # (held entries of evicted episodes are pruned below)
                ep, fin, _, before = self._held[eid]
                self._held[eid] = (ep, fin, model.version, r)
                held = set(self.buffers.labels(eid))
                moving.append((ep, r, before, held))
            # every move at once: one at a time, a move into a full bucket could evict an
            # episode about to move out of it (TaskBuffers.refile_many)
            self.buffers.refile_many(
                (ep.episode_id, impersonate(ep.task, r, self.registry, self.mode))
                for ep, r, _, _ in moving
            )
            for ep, r, before, held in moving:
                self._recount(ep, r, before, held)
                refiled += 1
            self._prune()
        self.stats.rescored += refiled
        return refiled

    def rewards(self, episode_id: str) -> dict[str, float]:
        return dict(self._held[episode_id][3])
