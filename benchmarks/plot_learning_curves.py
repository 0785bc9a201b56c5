"""Learning curves of several runs side by side: each task's in-run held-out success
(the trainer's periodic evaluation, ground truth, 20 episodes per point by default)
against wall-clock minutes, one panel per task, one line per run, the scripted rate
dotted.

Usage:
  python benchmarks/plot_learning_curves.py --runs runs/r21,runs/r22 \\
      [--labels "tuned s0,tuned s1"] [--tasks lift-any,place-any,place-in-bowl] \\
      [--smooth 5] [--saved OLD.json[:label,label]] --out docs/curves.png [--json OUT]

--saved overlays runs whose directories are gone (a fresh machine keeps only what is
committed) from an earlier ``--json`` output of this script: their smoothed points as
saved there (the smoothing must match ``--smooth``), and their window means.

Reads each run's ``history.json``. A run resumed by an older version restarted its
``wall_s`` at every invocation; such drops are stitched onto the previous invocation's
last evaluation (which undercounts the minutes between that evaluation and the stop).
The JSON holds the smoothed points and, per run, the mean over fixed windows of
minutes, for tables.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from _results import write_result
from mtopt._plots import save_figure
from mtopt.eval.report import trailing_mean


def stitched_minutes(history: Sequence[Mapping[str, Any]]) -> list[float]:
    """Minutes since the run started for each evaluation point, made monotone where a
    resumed invocation restarted its clock (pure)."""
    out: list[float] = []
    offset, last = 0.0, 0.0
    for point in history:
        wall = float(point.get("wall_s", 0.0))
        if out and wall + offset < last:
            offset = last
        last = wall + offset
        out.append(last / 60.0)
    return out


def window_means(
    minutes: Sequence[float], values: Sequence[float], width: float
) -> dict[str, float]:
    """Mean of ``values`` over consecutive ``width``-minute windows, keyed "a-b" (pure)."""
    acc: dict[int, list[float]] = {}
    for m, v in zip(minutes, values, strict=True):
        acc.setdefault(int(m // width), []).append(v)
    return {
        f"{int(k * width)}-{int((k + 1) * width)}": round(sum(vs) / len(vs), 3)
        for k, vs in sorted(acc.items())
    }


def saved_runs(spec: str, smooth: int) -> dict[str, dict[str, Any]]:
    """Runs from an earlier ``--json`` output, "FILE" or "FILE:label,label" to pick some.
    Refuses a file smoothed differently or a label it does not hold."""
    path, _, picks = spec.partition(":")
    data = json.loads(Path(path).read_text())
    if data.get("smooth") != smooth:
        raise SystemExit(f"{path} was smoothed over {data.get('smooth')} points, not {smooth}")
    runs: dict[str, dict[str, Any]] = data["runs"]
    wanted = [p for p in picks.split(",") if p] or list(runs)
    missing = [w for w in wanted if w not in runs]
    if missing:
        raise SystemExit(f"{path} holds no run labelled {missing}; it has {list(runs)}")
    return {w: runs[w] for w in wanted}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", default="", help="comma-separated run directories")
    ap.add_argument("--labels", default=None, help="comma-separated labels (default: names)")
    ap.add_argument("--tasks", default="lift-any,place-any,place-in-bowl")
    ap.add_argument("--smooth", type=int, default=5, help="trailing mean over this many points")
    ap.add_argument("--window", type=float, default=30.0, help="minutes per JSON window")
    ap.add_argument(
        "--saved", action="append", default=[], help="earlier --json output[:label,...]"
    )
    ap.add_argument("--out", required=True, help="PNG path")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    runs = [Path(r) for r in args.runs.split(",") if r]
    labels = args.labels.split(",") if args.labels else [r.name for r in runs]
    if len(labels) != len(runs):
        raise SystemExit(f"{len(labels)} labels for {len(runs)} runs")
    tasks = [t for t in args.tasks.split(",") if t]
    saved: dict[str, dict[str, Any]] = {}
    for spec in args.saved:
        saved.update(saved_runs(spec, args.smooth))
    if not runs and not saved:
        raise SystemExit("nothing to plot: give --runs and/or --saved")
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.6), squeeze=False)
    result: dict[str, Any] = {"smooth": args.smooth, "window_minutes": args.window, "runs": {}}
    for run, label in zip(runs, labels, strict=True):
        path = run / "history.json"
        if not path.exists():
            raise SystemExit(f"{path} not found: is {run} a run directory?")
        history = json.loads(path.read_text())
        minutes = stitched_minutes(history)
        entry: dict[str, Any] = {"run": str(run), "points": len(history), "tasks": {}}
        for ax, task in zip(axes[0], tasks, strict=True):
            pts = [
                (m, h["success"][task])
                for m, h in zip(minutes, history, strict=True)
                if task in h.get("success", {})
            ]
            if not pts:
                continue
            xs, ys = zip(*pts, strict=True)
            smooth = trailing_mean(ys, args.smooth)
            (line,) = ax.plot(xs, smooth, lw=1.6, label=label)
            scripted = [h["scripted"][task] for h in history if task in h.get("scripted", {})]
            if scripted:
                ax.axhline(scripted[-1], color=line.get_color(), ls=":", lw=0.9)
            entry["tasks"][task] = {
                "minutes": [round(x, 1) for x in xs],
                "smoothed": [round(y, 3) for y in smooth],
                "window_means": window_means(xs, ys, args.window),
                "scripted": scripted[-1] if scripted else None,
            }
        result["runs"][label] = entry
    for label, entry in saved.items():
        for ax, task in zip(axes[0], tasks, strict=True):
            curve = entry["tasks"].get(task)
            if curve is None:
                continue
            (line,) = ax.plot(curve["minutes"], curve["smoothed"], lw=1.6, label=f"{label} (saved)")
            if curve.get("scripted") is not None:
                ax.axhline(curve["scripted"], color=line.get_color(), ls=":", lw=0.9)
        result["runs"][label] = entry
    for ax, task in zip(axes[0], tasks, strict=True):
        ax.set_title(task, fontsize=10)
        ax.set_xlabel("wall-clock minutes (2 cores)")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"held-out success (mean of {args.smooth} evaluations)")
    axes[0][0].legend(fontsize=7, loc="upper left")
    fig.suptitle("In-run held-out success (dotted: scripted policy)", fontsize=10)
    save_figure(fig, Path(args.out), dpi=110)
    print(f"wrote {args.out}")
    if args.json:
        show = {
            label: {t: v["window_means"] for t, v in e["tasks"].items()}
            for label, e in result["runs"].items()
        }
        write_result(args.json, result, show=show)


if __name__ == "__main__":
    main()
