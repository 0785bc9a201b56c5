"""Labeled example sets for the success detector.

A ``LabeledSet`` holds final images with per-task labels and a mask (an image may be
labeled for some tasks only: a person labels one task at a time, the simulator's oracle
labels all). Sources: "staged" (positive/near-miss scenes staged in the sim), "oracle"
(collected episodes labeled by the ground truth), "human" (the labeling page).
"""

from __future__ import annotations

import hashlib
import io
import logging
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mtopt._io import atomic_write_bytes
from mtopt.tasks.registry import TaskRegistry

log = logging.getLogger(__name__)


@dataclass
class LabeledSet:
    tasks: tuple[str, ...]
    images: np.ndarray  # (N, H, W, 3) uint8
    labels: np.ndarray  # (N, T) float32 0/1
    mask: np.ndarray  # (N, T) bool: which labels are known
    ids: np.ndarray  # (N,) str: example or episode ids
    sources: np.ndarray  # (N,) str
    held_out: np.ndarray  # (N,) bool: held-out object instances
    outcome_fixtures_share: float | None = None
    """The outcome view the final images were taken in (``SimConfig.outcome_fixtures_share``)
    where known: staged examples record it; None for sets from before the record
    (2026-12-06) and for episodes' images (their store's view). A run refuses a set
    of another view (``examples_for``), and sets of two views do not join (``concat``;
    a set without the record joins as the other's view)."""

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @classmethod
    def empty(cls, tasks: Sequence[str], size: int = 64) -> LabeledSet:
        t = len(tasks)
        return cls(
            tuple(tasks),
            np.zeros((0, size, size, 3), np.uint8),
            np.zeros((0, t), np.float32),
            np.zeros((0, t), bool),
            np.zeros(0, str),
            np.zeros(0, str),
            np.zeros(0, bool),
        )

    def concat(self, other: LabeledSet) -> LabeledSet:
        if other.tasks != self.tasks:
            raise ValueError("cannot concatenate example sets with different task lists")
        views = {
            v for v in (self.outcome_fixtures_share, other.outcome_fixtures_share) if v is not None
        }
        if len(views) > 1:
            raise ValueError(
                "cannot concatenate example sets of two outcome views "
                f"(outcome_fixtures_share {sorted(views)}): a detector learns one view"
            )
        if len(self) and len(other) and self.images.shape[1:] != other.images.shape[1:]:
            (h1, w1), (h2, w2) = self.images.shape[1:3], other.images.shape[1:3]
            raise ValueError(
                f"cannot concatenate example sets of {h1}x{w1}- and {h2}x{w2}-pixel "
                "images: a detector judges one image size"
            )
        # an empty set takes the other's image size (an empty() of the default 64)
        mine = self.images if len(self) else self.images.reshape((0, *other.images.shape[1:]))
        theirs = other.images if len(other) else other.images.reshape((0, *mine.shape[1:]))
        return LabeledSet(
            self.tasks,
            np.concatenate([mine, theirs]),
            np.concatenate([self.labels, other.labels]),
            np.concatenate([self.mask, other.mask]),
            np.concatenate([self.ids, other.ids]),
            np.concatenate([self.sources, other.sources]),
            np.concatenate([self.held_out, other.held_out]),
            # rows without a record are taken to be of the other's view (episodes of a
            # run join its staged examples): a third set of another view is refused
            views.pop() if views else None,
        )

    def with_tasks(self, tasks: Sequence[str]) -> LabeledSet:
        """This set with the task list ``tasks``, which must start with this set's own
        tasks (tasks are appended, never inserted): the new tasks' labels are unknown
        (mask False), so examples staged before a task existed join sets made after."""
        tasks = tuple(tasks)
        if tasks == self.tasks:
            return self
        if tasks[: len(self.tasks)] != self.tasks:
            raise ValueError(
                f"these examples are for the tasks {list(self.tasks)}, which the task list "
                f"{list(tasks)} does not start with (the same tasks, then new ones)"
            )
        extra = len(tasks) - len(self.tasks)
        n = len(self)
        return LabeledSet(
            tasks,
            self.images,
            np.concatenate([self.labels, np.zeros((n, extra), np.float32)], axis=1),
            np.concatenate([self.mask, np.zeros((n, extra), bool)], axis=1),
            self.ids,
            self.sources,
            self.held_out,
            self.outcome_fixtures_share,
        )

    def subset(self, idx: np.ndarray) -> LabeledSet:
        return LabeledSet(
            self.tasks,
            self.images[idx],
            self.labels[idx],
            self.mask[idx],
            self.ids[idx],
            self.sources[idx],
            self.held_out[idx],
            self.outcome_fixtures_share,
        )

    def save(self, path: str | Path) -> Path:
        buf = io.BytesIO()
        arrays: dict[str, Any] = {
            "tasks": np.array(self.tasks),
            "images": self.images,
            "labels": self.labels,
            "mask": self.mask,
            "ids": self.ids.astype(str),
            "sources": self.sources.astype(str),
            "held_out": self.held_out,
        }
        if self.outcome_fixtures_share is not None:
            arrays["outcome_fixtures_share"] = np.float64(self.outcome_fixtures_share)
        np.savez_compressed(buf, **arrays)
        return atomic_write_bytes(path, buf.getvalue())

    @classmethod
    def load(cls, path: str | Path) -> LabeledSet:
        p = Path(path)
        if not p.exists():
            raise FileNotFoundError(f"no example set at {p}")
        if p.is_dir():
            raise ValueError(f"{p} is a directory, not an example set (.npz)")
        try:
            with np.load(p, allow_pickle=False) as z:
                if not isinstance(z, np.lib.npyio.NpzFile):
                    raise ValueError("a single array, not an .npz archive")
                return cls(
                    tuple(str(t) for t in z["tasks"]),
                    z["images"],
                    z["labels"],
                    z["mask"],
                    z["ids"],
                    z["sources"],
                    z["held_out"],
                    float(z["outcome_fixtures_share"])
                    if "outcome_fixtures_share" in z.files
                    else None,
                )
        except (OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile) as exc:
            # an empty or truncated file, another format, a missing array: say which file
            raise ValueError(f"{p} is not an example set from `mtopt sd examples`: {exc}") from None


def held_out_rows(ids: Sequence[str], share: float) -> np.ndarray:
    """Which rows of an example set to hold out for validation: those whose id hashes
    (SHA-1, read as a fraction in [0, 1)) below ``share``. The same id always falls on
    the same side, whatever its order or the set around it, so a row added later never
    moves an old one across (a small set may hold none out, or all: callers say so)."""
    if not 0.0 < share < 1.0:
        raise ValueError(f"the held-out share must be in (0, 1), got {share}")
    frac = np.array(
        [int(hashlib.sha1(str(i).encode()).hexdigest()[:13], 16) / 16**13 for i in ids],
        np.float64,
    )
    return frac < share


def split_held_out(data: LabeledSet, share: float, what: str) -> tuple[LabeledSet, LabeledSet]:
    """``data`` as (kept, held out) by ``held_out_rows``; a ValueError, naming ``what``
    the rows are, when either side would be empty."""
    held = held_out_rows(data.ids.tolist(), share)
    if held.all() or not held.any():
        raise ValueError(
            f"none of the {len(data)} {what} fell {'outside' if held.all() else 'in'} the "
            f"held-out share {share}"
        )
    return data.subset(np.flatnonzero(~held)), data.subset(np.flatnonzero(held))


def label_counts(data: LabeledSet) -> dict[str, tuple[int, int]]:
    """(positives, negatives) per task among the known labels."""
    pos = ((data.labels > 0.5) & data.mask).sum(0)
    neg = ((data.labels <= 0.5) & data.mask).sum(0)
    return {t: (int(p), int(n)) for t, p, n in zip(data.tasks, pos, neg, strict=True)}


def examples_for(
    path: str | Path,
    tasks: Sequence[str],
    image_size: int,
    outcome_fixtures_share: float | None = None,
) -> LabeledSet:
    """The example set in ``path`` made ready for a success detector of ``tasks`` (which
    must start with the set's own: tasks it lacks get unknown labels) at ``image_size``,
    its rows without any label left out: a ValueError that names the file for another
    image size, another recorded outcome view than ``outcome_fixtures_share`` (a set
    without the record is taken as it is), or a set without labels."""
    data = LabeledSet.load(path).with_tasks(tasks)
    view = data.outcome_fixtures_share
    if outcome_fixtures_share is not None and view is not None and view != outcome_fixtures_share:
        raise ValueError(
            f"{path} holds final images at outcome_fixtures_share {view}, the run's cell "
            f"renders {outcome_fixtures_share} (sim.outcome_fixtures_share): stage examples "
            "in the run's view (`mtopt sd examples --outcome-fixtures-share`)"
        )
    data = data.subset(np.flatnonzero(data.mask.any(1)))  # rows with a label only
    if len(data) == 0:
        raise ValueError(f"{path} holds no labeled examples")
    size = tuple(data.images.shape[1:])
    if size != (image_size, image_size, 3):
        raise ValueError(
            f"{path} holds {size[0]}x{size[1]} images, the run's camera gives "
            f"{image_size}x{image_size} (sim.image_size): label images of the run's size"
        )
    return data


def stage_examples(
    registry: TaskRegistry,
    tasks: Sequence[str],
    n_per_task: int,
    split: str = "train",
    randomize: bool = True,
    seed: int = 0,
    image_size: int = 64,
    progress: bool = False,
    outcome_fixtures_share: float = 0.5,
) -> LabeledSet:
    """Stage ``n_per_task`` positive and as many near-miss negative final scenes per task.

    Every staged image is labeled for every registered task by the ground truth, so one
    staged scene teaches the detector about all tasks at once. ``image_size`` and
    ``outcome_fixtures_share`` must be the cell's whose episodes the detector judges.
    """
    from mtopt.robots.sim_robot import SimRobot
    from mtopt.sim.cell import SimConfig

    robot = SimRobot(
        SimConfig(
            image_size=image_size,
            object_split=split,  # type: ignore[arg-type]
            randomize=randomize,
            outcome_fixtures_share=outcome_fixtures_share,
        ).validate(),
        robot_id="stager",
        seed=seed,
    )
    rng = np.random.default_rng(seed)
    images, labels, ids = [], [], []
    jobs = [(t, pos) for t in tasks for pos in (True, False) for _ in range(n_per_task)]
    it = jobs
    if progress:
        from tqdm import tqdm

        it = tqdm(jobs, desc="staging SD examples", unit="img")
    missed: dict[str, int] = {}
    for k, (task, positive) in enumerate(it):
        img, label, state = robot.stage_outcome(registry.get(task), positive, rng)
        if positive and not label:  # labeled by the ground truth all the same
            missed[task] = missed.get(task, 0) + 1
        images.append(img)
        labels.append([float(t.succeeded(state)) for t in registry])
        ids.append(f"staged-{split}-{seed}-{k}")
    robot.close()
    for task, m in missed.items():
        log.warning(
            "%s: %d of %d positives could not be staged (kept as negatives, by ground truth)",
            task,
            m,
            n_per_task,
        )
    n = len(images)
    return LabeledSet(
        registry.names,
        np.stack(images) if images else np.zeros((0, image_size, image_size, 3), np.uint8),
        np.asarray(labels, np.float32).reshape(n, len(registry)),
        np.ones((n, len(registry)), bool),
        np.array(ids),
        np.array(["staged"] * n),
        np.full(n, split == "test"),
        float(outcome_fixtures_share),
    )


def episode_examples(
    episodes: Sequence[object],
    registry: TaskRegistry,
    source: str = "oracle",
    only_with_ground_truth: bool = True,
) -> LabeledSet:
    """Final images of stored episodes labeled by their ground-truth columns (oracle).
    ``only_with_ground_truth=False`` keeps every episode (a real robot's have none; their
    rows are unmasked until a person labels them)."""
    rows = [
        e for e in episodes if getattr(e, "gt_success_by_task", None) or not only_with_ground_truth
    ]
    if not rows:
        return LabeledSet.empty(registry.names)
    n, t = len(rows), len(registry)
    labels = np.zeros((n, t), np.float32)
    mask = np.zeros((n, t), bool)
    for i, e in enumerate(rows):
        gt = e.gt_success_by_task or {}  # type: ignore[attr-defined]
        for j, name in enumerate(registry.names):
            if name in gt:
                labels[i, j], mask[i, j] = float(gt[name]), True
    held = np.array([(e.scene or {}).get("object_split") == "test" for e in rows])  # type: ignore[attr-defined]
    return LabeledSet(
        registry.names,
        np.stack([e.final_image for e in rows]),  # type: ignore[attr-defined]
        labels,
        mask,
        np.array([e.episode_id for e in rows]),  # type: ignore[attr-defined]
        np.array([source] * n),
        held,
    )
