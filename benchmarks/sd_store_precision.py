"""Precision and recall of success detectors against a store's ground truth.

Scores one fixed set of stored episodes (the last ``--episodes`` of the given tasks'
episodes in ``--store``, judged by the simulator's ground truth kept with them) with
every published version of each ``--sd`` folder, so detectors of different runs and
rounds are compared on the same images. Precision is what the Q-function's rewards
depend on most: a false success teaches it that a failed placement paid. Each row also
has the scores' spread (``score_spread``): what ``replay.reward=probability`` pays the
true and the false successes. Usage:

  python benchmarks/sd_store_precision.py --store runs/r50/store \\
      --sd runs/r50/sd,runs/r51/sd --json OUT [--tasks place-any,place-in-bowl] \\
      [--episodes 3000]

Pick episodes none of the detectors was trained on (after a run's last relabel round:
r50's last round labeled episodes up to 30k of 58k).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from _results import write_result
from mtopt.store.reader import EpisodeReader
from mtopt.success.network import SuccessDetector

PLACING = ("place-any", "place-in-bowl", "place-on-plate", "place-ball-in-bowl")


def precision_recall(pred: np.ndarray, truth: np.ndarray) -> dict[str, float | None]:
    """Precision and recall of boolean verdicts (None where undefined)."""
    tp = int((pred & truth).sum())
    fp = int((pred & ~truth).sum())
    fn = int((~pred & truth).sum())
    return {
        "precision": round(tp / (tp + fp), 4) if tp + fp else None,
        "recall": round(tp / (tp + fn), 4) if tp + fn else None,
        "false_successes": fp,
    }


def score_spread(probs: np.ndarray, truth: np.ndarray) -> dict[str, object]:
    """What ``replay.reward=probability`` would pay: the mean score of the true
    successes, of the false ones (a score of at least 0.5 where the truth says failure)
    and of all failures; the false successes' score quartiles, and the share of them and
    of the true successes scored under 0.85."""
    false = probs[(probs >= 0.5) & ~truth]
    r = lambda v: round(float(v), 4)  # noqa: E731
    return {
        "mean_true_success": r(probs[truth].mean()) if truth.any() else None,
        "mean_false_success": r(false.mean()) if len(false) else None,
        "mean_failure": r(probs[~truth].mean()) if (~truth).any() else None,
        "false_success_quartiles": [r(q) for q in np.quantile(false, [0.25, 0.5, 0.75])]
        if len(false)
        else None,
        "false_successes_under_0.85": r((false < 0.85).mean()) if len(false) else None,
        "true_successes_under_0.85": r((probs[truth] < 0.85).mean()) if truth.any() else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--store", required=True)
    ap.add_argument("--sd", required=True, help="comma-separated SD folders")
    ap.add_argument("--tasks", default=",".join(PLACING[:3]), help="tasks to judge")
    ap.add_argument("--episodes", type=int, default=3000)
    ap.add_argument("--json", required=True)
    args = ap.parse_args()
    tasks = [t for t in args.tasks.split(",") if t]
    views = list(EpisodeReader(args.store).final_views(tasks=PLACING))[-args.episodes :]
    views = [v for v in views if v.gt_success_by_task]
    if not views:
        raise SystemExit(f"{args.store}: no episodes with ground truth of {PLACING}")
    images = np.stack([v.final_image for v in views])
    truth = {t: np.array([bool(v.gt_success_by_task.get(t)) for v in views]) for t in tasks}
    rows = []
    for folder in [s for s in args.sd.split(",") if s]:
        for version in range(1, SuccessDetector.latest_version(folder) + 1):
            sd = SuccessDetector.load(folder, version=version)
            probs = sd.score(images)
            row: dict[str, object] = {"sd": folder, "version": version}
            for t in tasks:
                k = list(sd.tasks).index(t)
                row[t] = {
                    **precision_recall(probs[:, k] >= 0.5, truth[t]),
                    "scores": score_spread(probs[:, k], truth[t]),
                }
            rows.append(row)
            print(row, flush=True)
    out = {
        "store": str(Path(args.store)),
        "episodes": len(views),
        "first_episode": views[0].episode_id,
        "positives": {t: int(truth[t].sum()) for t in tasks},
        "rows": rows,
    }
    write_result(args.json, out, show={"episodes": len(views), "rows": len(rows)})


if __name__ == "__main__":
    main()
