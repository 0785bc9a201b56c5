"""Run reports: plots (PNG) and a Markdown summary from plain dicts.

Inputs are simple records so any runtime (local or Ray) can produce them:

- ``history``: list of ``{"step": int, "episodes": int, "wall_s": float (seconds since
  the run started, earlier invocations of a resumed run included),
  "success": {task: rate}, "scripted": {task: rate}}`` evaluation points;
- ``composition``: ``{task: {"original": n, "original_successes": k, "impersonated": m,
  "successes": s}}``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

from mtopt._plots import save_figure

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def trailing_mean(values: Sequence[float], window: int) -> list[float]:
    """Mean of each value with up to ``window - 1`` values before it (pure, for plots)."""
    out = []
    for i in range(len(values)):
        chunk = values[max(0, i - window + 1) : i + 1]
        out.append(sum(chunk) / len(chunk))
    return out


def time_axis(history: Sequence[Mapping[str, Any]], x: str = "episodes") -> str:
    """``x``, or "step" when ``x`` is "episodes" and the count is missing, goes back, or
    never grows (a run without robots): the points would stand on one x or out of order.
    A count that stops growing part way (``max_episodes``) keeps the episodes axis."""
    if x != "episodes" or len(history) < 2:
        return x
    if any(h.get(x) is None for h in history):
        return "step"
    counts = [float(h[x]) for h in history]
    if any(b < a for a, b in itertools.pairwise(counts)):
        return "step"
    return "step" if counts[-1] == counts[0] else x


def plot_training_progress(
    history: Sequence[Mapping[str, Any]], out: Path, smooth: int = 5
) -> Path:
    """The learner's loss and the episodes collected against learner steps, at each
    evaluation (what the progress bar showed; a loss point is one batch's, so the line is
    the trailing mean of ``smooth``), with the Q weights version on a second axis: where
    training stalled, or collection ran ahead of it."""
    pts = [h for h in history if "step" in h]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
    lossy = [(h["step"] / 1000, h["loss"]) for h in pts if h.get("loss") is not None]
    if lossy:
        xs, ys = zip(*lossy, strict=True)
        a1.plot(xs, ys, "o", ms=2.0, alpha=0.35, color="tab:blue")
        a1.plot(xs, trailing_mean(ys, smooth), lw=1.6, color="tab:blue")
    a1.set_xlabel("learner steps (thousands)")
    a1.set_ylabel("loss (one batch; line: mean of 5)")
    a1.grid(alpha=0.3)
    steps = [h["step"] / 1000 for h in pts]
    a2.plot(steps, [h.get("episodes", 0) for h in pts], color="tab:green", lw=1.4)
    a2.set_xlabel("learner steps (thousands)")
    a2.set_ylabel("episodes collected", color="tab:green")
    a2.grid(alpha=0.3)
    q = a2.twinx()
    q.plot(steps, [h.get("q_version", 0) for h in pts], color="tab:purple", lw=1.0, ls="--")
    q.set_ylabel("Q weights version (dashed)", color="tab:purple")
    fig.suptitle("Training progress at each evaluation", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, out, dpi=110)


def plot_success_over_time(
    history: Sequence[Mapping[str, Any]],
    out: Path,
    x: str = "episodes",
    smooth: int = 5,
    ylabel: str = "held-out success (ground truth)",
) -> Path:
    """Per-task ground-truth success of the learned policy vs collected episodes: each
    evaluation as a faint dot, and the trailing mean of ``smooth`` evaluations as a line
    (one evaluation of 20 episodes has a standard error of about 0.1). Where the episode
    count does not grow from one evaluation to the next (a run that learns from a store
    without robots, ``robots=0``), the x axis is the learner step instead."""
    x = time_axis(history, x)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    # where a new success detector took over (its rewards relabel the replay)
    for at, version in sd_changes(history, x):
        ax.axvline(at, color="0.6", ls="--", lw=0.8)
        ax.text(at, 1.0, f" SD v{version}", fontsize=6, color="0.4", va="top", rotation=90)
    tasks = sorted({t for h in history for t in h.get("success", {})})
    for task in tasks:
        pts = [(h[x], h["success"][task]) for h in history if task in h.get("success", {})]
        if pts:
            xs, ys = zip(*pts, strict=True)
            (line,) = ax.plot(xs, trailing_mean(ys, smooth), lw=1.8, label=task)
            ax.plot(xs, ys, "o", ms=2.5, alpha=0.35, color=line.get_color())
            scripted = [h.get("scripted", {}).get(task) for h in history]
            scripted = [s for s in scripted if s is not None]
            if scripted:
                ax.axhline(scripted[-1], color=line.get_color(), ls=":", lw=1)
    ax.set_xlabel(x.replace("_", " "))
    ax.set_ylabel(ylabel)
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(
        f"Per-task success of the multi-task policy (line: mean of {smooth} evaluations; "
        "dotted: scripted)",
        fontsize=9,
    )
    if tasks:
        from matplotlib.lines import Line2D

        handles, _ = ax.get_legend_handles_labels()
        handles.append(Line2D([], [], color="0.3", ls=":", lw=1, label="scripted (same colour)"))
        ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(alpha=0.3)
    return save_figure(fig, out, dpi=110)


def sd_changes(history: Sequence[Mapping[str, Any]], x: str) -> list[tuple[float, int]]:
    """(x, new version) at each evaluation point whose success-detector version differs
    from the point before (pure, for the success plot); points without a version are
    skipped."""
    out: list[tuple[float, int]] = []
    last = None
    for h in history:
        v = h.get("sd_version")
        if v is None or h.get(x) is None:
            continue
        if last is not None and v != last:
            out.append((float(h[x]), int(v)))
        last = v
    return out


def plot_composition(
    composition: Mapping[str, Mapping[str, int]],
    out: Path,
    title: str = "Data per task before and after impersonation",
) -> Path:
    """Bars per task: episodes collected for it and their successes, then after
    impersonation and their successes (Figs. 3, 5, 12); a composition without
    ``original_successes`` (from before it was counted) draws three bars."""
    tasks = list(composition)
    bars = [
        ("original", "collected for task"),
        ("original_successes", "their successes (SD)"),
        ("impersonated", "after impersonation"),
        ("successes", "successes (SD) after impersonation"),
    ]
    if not any("original_successes" in composition[t] for t in tasks):
        bars.pop(1)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.8 * len(tasks) + 2), 4.5))
    w = 0.8 / len(bars)
    for b, (key, name) in enumerate(bars):
        at = [i + (b - (len(bars) - 1) / 2) * w for i in range(len(tasks))]
        ax.bar(at, [composition[t].get(key, 0) for t in tasks], w, label=name)
    ax.set_xticks(list(range(len(tasks))), tasks, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("episodes")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # off the bars
    return save_figure(fig, out, dpi=110)


def buffer_shares(
    buffer_sizes: Mapping[str, Sequence[int]],
) -> dict[str, dict[str, float]]:
    """Each task's share of every transition-holding episode in the buffers, split into
    success and failure: ``{task: (successes, failures)}`` counts over their total (pure;
    what a batch would be without re-balancing, counting episodes)."""
    total = sum(int(s) + int(f) for s, f in buffer_sizes.values())
    if total == 0:
        return {t: {"success": 0.0, "failure": 0.0} for t in buffer_sizes}
    return {
        t: {"success": int(s) / total, "failure": int(f) / total}
        for t, (s, f) in buffer_sizes.items()
    }


def plot_batch_composition(
    batch_share: Mapping[str, Mapping[str, float]],
    out: Path,
    rebalanced: bool = True,
    buffer_sizes: Mapping[str, Sequence[int]] | None = None,
) -> Path:
    """Stacked bars: share of a training batch per task, split into success/failure;
    ``rebalanced``: whether the batches were re-balanced (the title says which). With
    ``buffer_sizes`` (``{task: (successes, failures)}`` episodes held), each task's bar
    has the buffers' own shares beside it, hatched: the imbalance re-balancing undoes
    (the paper's Fig. 5)."""
    tasks = list(batch_share)
    s = [batch_share[t].get("success", 0.0) for t in tasks]
    f = [batch_share[t].get("failure", 0.0) for t in tasks]
    fig, ax = plt.subplots(figsize=(max(7.0, 0.7 * len(tasks) + 3), 4))
    at: list[float] = [float(i) for i in range(len(tasks))]
    w = 0.8
    if buffer_sizes:
        held = buffer_shares({t: buffer_sizes.get(t, (0, 0)) for t in tasks})
        w = 0.4
        left = [i - w / 2 for i in at]
        hs = [held[t]["success"] for t in tasks]
        hf = [held[t]["failure"] for t in tasks]
        _success_failure_bars(ax, left, hs, hf, w, "in the buffers", alpha=0.45, hatch="//")
        at = [i + w / 2 for i in at]
    _success_failure_bars(ax, at, s, f, w, "in the batches")
    ax.set_xticks(list(range(len(tasks))), tasks, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("share")
    ax.set_title(
        "Training batch composition "
        + ("after re-balancing" if rebalanced else "(no re-balancing: as the buffers hold it)")
        + (
            "\n(hatched: episodes in the buffers; solid: transitions in the batches)"
            if buffer_sizes
            else ""
        ),
        fontsize=9,
    )
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return save_figure(fig, out, dpi=110)


def _success_failure_bars(
    ax: Any,
    at: Sequence[float],
    success: Sequence[float],
    failure: Sequence[float],
    width: float,
    where: str,
    **style: Any,
) -> None:
    """One stacked bar per task: successes below, failures on top."""
    ax.bar(at, success, width, color="C0", label=f"success, {where}", **style)
    ax.bar(at, failure, width, bottom=success, color="C1", label=f"failure, {where}", **style)


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return "" if math.isnan(v) else f"{v:.2f}"
        return "" if v is None else str(v)

    head = "| " + " | ".join(columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join([head, sep, *body])
