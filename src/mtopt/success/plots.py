"""Success-detector plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

from mtopt._plots import save_figure

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def _rate(k: int, of: int) -> float:
    """k of ``of``; NaN without examples of the class (shown "n/a")."""
    return k / of if of else float("nan")


def plot_confusion(metrics: dict[str, dict[str, Any]], out: Path) -> Path:
    """Per-task confusion rates (TPR, FNR, TNR, FPR) as a heat map; the rates of a class
    a task has no examples of are blank ("n/a")."""
    import numpy as np

    tasks = list(metrics)
    rows = []
    for t in tasks:
        c = metrics[t]["confusion"]
        pos, neg = c["tp"] + c["fn"], c["tn"] + c["fp"]
        rows.append(
            [_rate(c["tp"], pos), _rate(c["fn"], pos), _rate(c["tn"], neg), _rate(c["fp"], neg)]
        )
    fig, ax = plt.subplots(figsize=(6, 0.35 * len(tasks) + 1.5))
    im = ax.imshow(np.array(rows), vmin=0, vmax=1, cmap="viridis", aspect="auto")
    ax.set_xticks(range(4), ["TPR", "FNR", "TNR", "FPR"])
    ax.set_yticks(range(len(tasks)), tasks, fontsize=8)
    for i, r in enumerate(rows):
        for j, v in enumerate(r):
            ax.text(
                j,
                i,
                "n/a" if np.isnan(v) else f"{v:.2f}",
                ha="center",
                va="center",
                color="k" if np.isnan(v) or v >= 0.6 else "w",
                fontsize=7,
            )
    fig.colorbar(im, ax=ax)
    ax.set_title("success detector confusion rates per task")
    return save_figure(fig, out, dpi=100)


def plot_curve(curve: list[dict[str, Any]], out: Path) -> Path:
    """Balanced accuracy per task vs labels per task."""
    fig, ax = plt.subplots(figsize=(7, 4))
    tasks = sorted({t for r in curve for t in r["balanced_accuracy"]})
    xs = [r["labels_per_task"] for r in curve]
    for t in tasks:
        ax.plot(xs, [r["balanced_accuracy"].get(t) for r in curve], marker="o", ms=3, label=t)
    ax.set_xlabel("episode labels per task")
    ax.set_ylabel("balanced accuracy (held out)")
    ax.set_ylim(0.4, 1.01)
    ax.legend(fontsize=6, ncol=2)
    ax.grid(alpha=0.3)
    return save_figure(fig, out, dpi=100)
