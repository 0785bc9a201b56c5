"""Per-task replay buffers split into success and failure, and transition sampling.

Each (task, outcome) bucket holds episode ids, bounded by ``capacity`` episodes with
first-in-first-out eviction (the oldest impersonated copy goes first; an episode that a
new success detector moves to the other outcome joins that bucket as its newest). Episode data
(images, states, actions) is stored once, however many tasks it is impersonated as,
and dropped when no bucket refers to it any more.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from mtopt.replay.impersonation import is_success
from mtopt.replay.rebalance import allocate, uniform_allocate

SUCCESS, FAILURE = 0, 1


@dataclass(frozen=True)
class ReplayEpisode:
    """The parts of a stored episode that Q-learning needs.

    images: (T+1, H, W, 3) uint8 — observation before each of the T actions, then the last.
    states: (T+1, 2) float32; actions: (T, 6) float32.
    """

    episode_id: str
    task: str
    images: np.ndarray
    states: np.ndarray
    actions: np.ndarray
    gt_success_by_task: Mapping[str, bool] | None = None
    """The simulator's verdict per task (the store's ``gt_success_by_task``), for the
    report's check of the success detector's rewards; a reward only in the oracle
    ablation ``replay.reward="truth"``. None: no ground truth (a real robot's
    episodes)."""

    def __post_init__(self) -> None:
        t = self.actions.shape[0]
        if t < 1 or self.images.shape[0] != t + 1 or self.states.shape[0] != t + 1:
            raise ValueError(
                f"episode {self.episode_id}: need T>=1 actions and T+1 images/states, got "
                f"{self.actions.shape[0]} actions, {self.images.shape[0]} images, {self.states.shape[0]} states"
            )

    @property
    def num_steps(self) -> int:
        return int(self.actions.shape[0])


@dataclass(frozen=True)
class Transitions:
    """A batch of transitions (s, a, task, r, s', done), numpy arrays, batch first."""

    images: np.ndarray  # (B, H, W, 3) uint8
    states: np.ndarray  # (B, 2)
    actions: np.ndarray  # (B, 6)
    task_idx: np.ndarray  # (B,) int64
    rewards: np.ndarray  # (B,) float32, sparse: reward only on the last step
    next_images: np.ndarray
    next_states: np.ndarray
    dones: np.ndarray  # (B,) float32
    final_rewards: np.ndarray  # (B,) float32, the episode's reward for the task
    steps_to_go: np.ndarray  # (B,) float32, actions after this one (0 on the last step)

    def __len__(self) -> int:
        return int(self.actions.shape[0])


class _Bucket:
    """FIFO-bounded set of episode ids with O(1) add, remove and uniform sampling."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._items: list[str] = []
        self._pos: dict[str, int] = {}
        # (id, the add it came with): an id removed and added again (its outcome flipped
        # back) is evicted by its latest add, not by a stale entry of an earlier one
        self._order: deque[tuple[str, int]] = deque()
        self._added: dict[str, int] = {}
        self._adds = 0

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, eid: object) -> bool:
        return eid in self._pos

    def add(self, eid: str) -> list[str]:
        """Add ``eid`` as the newest; return the ids evicted to make room (oldest first)."""
        if eid in self._pos:
            return []
        self._pos[eid] = len(self._items)
        self._items.append(eid)
        self._adds += 1
        self._added[eid] = self._adds
        self._order.append((eid, self._adds))
        evicted = []
        while len(self._items) > self.capacity:
            old, n = self._order.popleft()
            if self._added.get(old) == n:
                self.remove(old)
                evicted.append(old)
        return evicted

    def remove(self, eid: str) -> None:
        i = self._pos.pop(eid)
        del self._added[eid]
        last = self._items.pop()
        if i < len(self._items):
            self._items[i] = last
            self._pos[last] = i
        # stale entries left in _order are skipped at eviction time; compact occasionally
        if len(self._order) > 2 * self.capacity + 16:
            self._order = deque((e, n) for e, n in self._order if self._added.get(e) == n)

    def sample(self, n: int, rng: np.random.Generator) -> list[str]:
        idx = rng.integers(0, len(self._items), size=n)
        return [self._items[i] for i in idx]


class TaskBuffers:
    """Per-task success/failure buffers over a shared episode table."""

    def __init__(self, tasks: Iterable[str], capacity_per_bucket: int = 2000):
        if capacity_per_bucket < 1:
            raise ValueError(f"capacity_per_bucket must be >= 1, got {capacity_per_bucket}")
        self.tasks = tuple(tasks)
        self.task_index = {t: i for i, t in enumerate(self.tasks)}
        self._buckets = {
            t: (_Bucket(capacity_per_bucket), _Bucket(capacity_per_bucket)) for t in self.tasks
        }
        self._episodes: dict[str, ReplayEpisode] = {}
        self._labels: dict[str, dict[str, float]] = {}  # eid -> task -> reward

    def __len__(self) -> int:
        return len(self._episodes)

    def __contains__(self, eid: object) -> bool:
        return eid in self._episodes

    def labels(self, eid: str) -> dict[str, float]:
        return dict(self._labels.get(eid, {}))

    def add(self, episode: ReplayEpisode, labels: Iterable[tuple[str, float]]) -> None:
        """Insert ``episode`` into the buckets of its impersonated tasks. An episode held
        already (a rescore) is re-filed: it keeps its place in the buckets whose outcome
        did not change, moves to the other bucket of a task whose did, and does not come
        back to the buckets of tasks that evicted it (FIFO order is the order episodes
        joined a bucket: a moved episode joins the other bucket as its newest)."""
        eid = episode.episode_id
        labels = [(t, r) for t, r in labels if t in self._buckets]
        if eid in self._episodes:
            self._refile(eid, labels)
            return
        if not labels:
            return
        self._episodes[eid] = episode
        self._labels[eid] = {}
        for task, reward in labels:
            outcome = SUCCESS if is_success(reward) else FAILURE
            self._labels[eid][task] = float(reward)
            for old in self._buckets[task][outcome].add(eid):
                self._forget_label(old, task)

    def _refile(self, eid: str, labels: list[tuple[str, float]]) -> None:
        self.refile_many([(eid, labels)])

    def refile_many(self, items: Iterable[tuple[str, Iterable[tuple[str, float]]]]) -> None:
        """Re-file held episodes with new labels (a new success detector's), all at
        once: every moving episode leaves its old bucket before any joins its new one.
        One at a time, a move into a full bucket evicted that bucket's oldest, which
        could be an episode about to move out of it anyway (a failure the new detector
        calls a success), and it was lost though both would have fit. Episodes not held
        are skipped; a task that evicted an episode does not get it back."""
        moves: list[tuple[str, str, int]] = []
        for eid, labels in items:
            held = self._labels.get(eid)
            if held is None:
                continue
            new = {t: r for t, r in labels if t in self._buckets}
            for task in [t for t in held if t not in new]:
                for bucket in self._buckets[task]:
                    if eid in bucket:
                        bucket.remove(eid)
                del held[task]
            for task, reward in new.items():
                if task not in held:
                    continue  # evicted from this task's buffer: a rescore does not bring it back
                outcome = SUCCESS if is_success(reward) else FAILURE
                held[task] = float(reward)
                if eid not in self._buckets[task][outcome]:
                    self._buckets[task][1 - outcome].remove(eid)
                    moves.append((eid, task, outcome))
            if not held:
                self._labels.pop(eid, None)
                self._episodes.pop(eid, None)
        for eid, task, outcome in moves:
            if task not in self._labels.get(eid, {}):
                continue  # (cannot happen: only this loop evicts, and only other ids)
            for old in self._buckets[task][outcome].add(eid):
                self._forget_label(old, task)

    def remove(self, eid: str) -> None:
        for task in list(self._labels.get(eid, {})):
            for bucket in self._buckets[task]:
                if eid in bucket:
                    bucket.remove(eid)
        self._labels.pop(eid, None)
        self._episodes.pop(eid, None)

    def _forget_label(self, eid: str, task: str) -> None:
        labels = self._labels.get(eid)
        if labels is None:
            return
        labels.pop(task, None)
        if not labels:
            del self._labels[eid]
            del self._episodes[eid]

    def sizes(self) -> dict[str, tuple[int, int]]:
        """task -> (successes, failures) currently held."""
        return {t: (len(b[SUCCESS]), len(b[FAILURE])) for t, b in self._buckets.items()}

    def sample(
        self,
        batch_size: int,
        rng: np.random.Generator,
        success_ratio: float = 0.5,
        rebalance: bool = True,
        task_weights: Mapping[str, float] | None = None,
    ) -> Transitions:
        """Sample transitions; with ``rebalance`` every task gets an equal share of the batch
        (or its share by ``task_weights``, see ``allocate``)."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)):
            raise TypeError(f"batch_size must be an int, got {batch_size!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        sizes = self.sizes()
        if sum(s + f for s, f in sizes.values()) == 0:
            raise ValueError("cannot sample: the replay buffers are empty")
        alloc: Mapping[str, tuple[int, int]] = (
            allocate(sizes, batch_size, success_ratio, rng, task_weights)
            if rebalance
            else uniform_allocate(sizes, batch_size, rng)
        )
        picks: list[tuple[str, str]] = []  # (task, eid)
        for task, counts in alloc.items():
            for outcome, n in enumerate(counts):
                if n:
                    picks += [(task, e) for e in self._buckets[task][outcome].sample(n, rng)]
        return self._gather(picks, rng)

    def _gather(self, picks: list[tuple[str, str]], rng: np.random.Generator) -> Transitions:
        eps = [self._episodes[e] for _, e in picks]
        steps = [int(rng.integers(0, ep.num_steps)) for ep in eps]
        to_go = np.array([ep.num_steps - 1 - t for t, ep in zip(steps, eps, strict=True)])
        last = to_go == 0
        final = np.array([self._labels[e][task] for task, e in picks], dtype=np.float32)
        rewards = final * last.astype(np.float32)
        return Transitions(
            images=np.stack([ep.images[t] for t, ep in zip(steps, eps, strict=True)]),
            states=np.stack([ep.states[t] for t, ep in zip(steps, eps, strict=True)]).astype(
                np.float32
            ),
            actions=np.stack([ep.actions[t] for t, ep in zip(steps, eps, strict=True)]).astype(
                np.float32
            ),
            task_idx=np.array([self.task_index[t] for t, _ in picks], dtype=np.int64),
            rewards=rewards,
            next_images=np.stack([ep.images[t + 1] for t, ep in zip(steps, eps, strict=True)]),
            next_states=np.stack(
                [ep.states[t + 1] for t, ep in zip(steps, eps, strict=True)]
            ).astype(np.float32),
            dones=last.astype(np.float32),
            final_rewards=final,
            steps_to_go=to_go.astype(np.float32),
        )
