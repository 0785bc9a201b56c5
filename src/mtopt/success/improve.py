"""Incremental relabel + retrain (the paper's loop), with an oracle or human labeler."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mtopt.store.reader import EpisodeReader
from mtopt.success.data import LabeledSet, episode_examples
from mtopt.success.labels import LabelStore
from mtopt.success.network import SuccessDetector
from mtopt.success.plots import plot_curve
from mtopt.success.train import SDTrainConfig, evaluate_sd, train_sd
from mtopt.tasks.registry import DEFAULT_REGISTRY, TaskRegistry


def select_uncertain(probs: np.ndarray, already: np.ndarray, budget: int) -> dict[int, np.ndarray]:
    """Per task column: indices of the ``budget`` least certain unlabeled rows (|p - 0.5| smallest)."""
    out = {}
    for j in range(probs.shape[1]):
        order = np.argsort(np.abs(probs[:, j] - 0.5))
        out[j] = np.array([i for i in order if not already[i, j]][:budget], dtype=np.int64)
    return out


def improve_loop(
    store: str | Path,
    weights: str | Path,
    examples: str | Path,
    labeler: str = "oracle",
    budget: int = 100,
    rounds: int = 3,
    validation: str | Path | None = None,
    steps: int = 600,
    registry: TaskRegistry = DEFAULT_REGISTRY,
) -> list[dict[str, Any]]:
    sd = SuccessDetector.load(weights, registry.names)
    base = LabeledSet.load(examples)
    val = LabeledSet.load(validation) if validation else None
    eps = list(EpisodeReader(store).episodes())
    pool = episode_examples(eps, registry, source=labeler)
    if labeler == "human":  # only what a person labeled counts
        human = LabelStore(Path(store) / "labels.jsonl").latest()
        pool.mask[:] = False
        for i, eid in enumerate(pool.ids):
            for j, t in enumerate(registry.names):
                lab = human.get((str(eid), t))
                if lab is not None:
                    pool.mask[i, j], pool.labels[i, j] = True, float(lab.success)
    if len(pool) == 0:
        raise ValueError(f"no episodes with labels available in {store}")
    known = pool.mask.copy()
    chosen = np.zeros_like(known)
    curve: list[dict[str, Any]] = []

    def record(n: int) -> None:
        if val is not None:
            m = evaluate_sd(sd, val)
            bal = {t: v["balanced_accuracy"] for t, v in m.items()}
            curve.append(
                {
                    "version": sd.version,
                    "labels_per_task": n,
                    "balanced_accuracy": bal,
                    "mean_balanced_accuracy": float(np.nanmean(list(bal.values()))),
                }
            )

    record(0)
    for r in range(rounds):
        probs = sd.score(pool.images)
        picks = select_uncertain(probs, chosen | ~known, budget)
        for j, idx in picks.items():
            chosen[idx, j] = True
        labeled = LabeledSet(
            pool.tasks,
            pool.images,
            pool.labels,
            chosen & known,
            pool.ids,
            pool.sources,
            pool.held_out,
        )
        keep = labeled.mask.any(1)
        data = base.concat(labeled.subset(np.flatnonzero(keep)))
        net = train_sd(data, SDTrainConfig(steps=steps, seed=r + 1), init=sd.net)
        sd = SuccessDetector(net, registry.names)
        sd.publish(weights, SuccessDetector.latest_version(weights) + 1)
        record((r + 1) * budget)
    if curve:
        plot_curve(curve, Path(weights) / "accuracy_vs_labels.png")
    return curve
