"""The fleet's own episodes as a run's evaluation (``eval.on='fleet'``).

A run whose robots are not the simulated cell (a real arm, another simulator) cannot be
judged on simulated held-out scenes: its policy sees other images. Here the run judges
what its own robots collect instead: for each task, the latest ``window`` episodes
collected by the learned policy and the latest ``window`` collected by the scripted one,
each judged by the run's current success detector on its final image. The learned
policy's rate is the evaluation point; the scripted policies' rate over their latest
episodes is the bar of the parity switch (the same stretch of time while both collect
the task; a policy that collects less of it is judged on older episodes).

Both rates are of collection episodes, with their exploration (the learned policy's
epsilon and noise, the scripted policies' random actions and early stops), not of greedy
ones: a like-for-like comparison of the two, lower than either's greedy success.
Episodes a task collected with its skill's generic learned policy (a proxy, stored as
``cem@lift-any``) are not its own policy's, and count for neither side.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mtopt.replay.logreplay import RewardModel
from mtopt.store.reader import SHARDS, EpisodeReader, _rows

log = logging.getLogger(__name__)

LEARNED_POLICY = "cem"
"""The store's ``policy`` name of the learned policy acting as its own task."""
SCRIPTED_PREFIX = "scripted"
"""The scripted policies' names start with it (``scripted-pick``, ``scripted-place``)."""

COLUMNS = [
    "schema_version",
    "episode_id",
    "task",
    "policy",
    "final_image",
    "image_height",
    "image_width",
]


@dataclass(frozen=True)
class FleetRates:
    """One evaluation of the fleet's episodes: per task, the learned and the scripted
    policy's success, and how many episodes each is of. A task is in ``learned`` and
    ``scripted`` only when both policies have at least the minimum of episodes."""

    learned: dict[str, float]
    scripted: dict[str, float]
    episodes: dict[str, dict[str, int]]


def fleet_rates(
    learned: dict[str, list[bool]], scripted: dict[str, list[bool]], min_episodes: int
) -> FleetRates:
    """Success rates of the outcome lists (pure). A task with fewer than ``min_episodes``
    outcomes of either policy is counted (``episodes``) but not judged."""
    tasks = sorted(set(learned) | set(scripted))
    counts = {
        t: {"learned": len(learned.get(t, [])), "scripted": len(scripted.get(t, []))} for t in tasks
    }
    judged = [t for t in tasks if min(counts[t].values()) >= max(1, min_episodes)]
    return FleetRates(
        learned={t: sum(learned[t]) / len(learned[t]) for t in judged},
        scripted={t: sum(scripted[t]) / len(scripted[t]) for t in judged},
        episodes=counts,
    )


class FleetJudge:
    """The latest ``window`` episodes per task and policy kind of a store, judged by a
    success detector. ``poll`` reads the shards written since the last call (the final
    images only); ``outcomes`` scores what is kept, again after a new detector."""

    def __init__(
        self, store_dir: str | Path, tasks: Sequence[str], window: int, threshold: float = 0.5
    ):
        if window < 1:
            raise ValueError(f"window must be >= 1 episodes, got {window}")
        self.tasks = tuple(tasks)
        self.window = window
        self.threshold = threshold
        # a few shards at a time: a resumed run's first poll reads its whole store
        self.reader = EpisodeReader(store_dir, must_exist=False, shards_per_poll=16)
        self._kept: dict[tuple[str, bool], deque[tuple[str, np.ndarray]]] = {
            (t, learned): deque(maxlen=window) for t in self.tasks for learned in (True, False)
        }
        self._scores: dict[str, bool] = {}
        self._scored_with: int | None = None

    def poll(self) -> int:
        """Read the new shards; the number of episodes of the judged tasks in them."""
        if not (self.reader.store_dir / SHARDS).is_dir():
            return 0
        added = 0
        held = {eid for kept in self._kept.values() for eid, _ in kept}
        for path, rows in self.reader.drain_decoded(_rows, COLUMNS):
            for r in rows:
                policy = str(r["policy"])
                if policy == LEARNED_POLICY:
                    learned = True
                elif policy.startswith(SCRIPTED_PREFIX):
                    learned = False
                else:  # a proxy's, or a policy of the user's own
                    continue
                kept = self._kept.get((r["task"], learned))
                if kept is None or r["episode_id"] in held:  # (a copied store's twice)
                    continue
                try:
                    h, w = int(r["image_height"]), int(r["image_width"])
                    image = np.frombuffer(r["final_image"], dtype=np.uint8).reshape(h, w, 3)
                except (TypeError, ValueError) as exc:
                    log.warning("episode %s of %s not judged: %s", r["episode_id"], path, exc)
                    continue
                kept.append((r["episode_id"], image))
                held.add(r["episode_id"])
                added += 1
        held = {eid for kept in self._kept.values() for eid, _ in kept}
        self._scores = {e: s for e, s in self._scores.items() if e in held}
        return added

    def outcomes(
        self, sd: RewardModel, batch: int = 256
    ) -> tuple[dict[str, list[bool]], dict[str, list[bool]]]:
        """(learned, scripted): per task, the kept episodes' success by ``sd`` (oldest
        first); episodes scored by an older detector are scored again."""
        if self._scored_with != sd.version:
            self._scores.clear()
            self._scored_with = sd.version
        missing = [
            (eid, image, t)
            for (t, _), kept in self._kept.items()
            for eid, image in kept
            if eid not in self._scores
        ]
        column = {t: i for i, t in enumerate(sd.tasks)}
        for i in range(0, len(missing), batch):
            part = missing[i : i + batch]
            probs = np.asarray(sd.score(np.stack([image for _, image, _ in part])))
            for (eid, _, t), row in zip(part, probs, strict=True):
                self._scores[eid] = bool(row[column[t]] >= self.threshold)
        learned: dict[str, list[bool]] = {}
        scripted: dict[str, list[bool]] = {}
        for (t, is_learned), kept in self._kept.items():
            if kept:
                side = learned if is_learned else scripted
                side[t] = [self._scores[eid] for eid, _ in kept]
        return learned, scripted
