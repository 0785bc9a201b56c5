"""A success detector from a person's labels of collected episodes: how many a cell needs.

What a real cell does (README "Your cell's own success detector"): collect episodes, have
a person label them on the labeling page, `mtopt sd export` the labels, and start a run
with `sd.examples_file`. Here the person is simulated: for each task, K episodes drawn at
random from a collected pool are labeled for that task (one task at a time, as on the
labeling page) with the ground truth, written to a labels file (`LabelStore`, as the page
writes it) and read back the way `mtopt sd export` reads them (`human_examples`).

SDs trained on: those labels alone (a real cell's `sd.examples_file`), those labels plus
the staged examples, and the staged examples alone (a run's default). Each is measured on
held-out episodes (held-out objects, other scenes) against the ground truth, per task
(balanced accuracy; a task with few positives there is noisy), with the positives each
task got among the labels (random draws give rare tasks few). One draw of labels per K
(seeded by --seed and K) and one training seed: repeat with other --seed values for a
spread. Usage:

  python benchmarks/sd_from_labels.py --json OUT [--labels-per-task 50,200]
        [--with-staged 200] [--examples runs/r47/sd/examples.npz]
        [--pool-episodes 1500] [--heldout-episodes 1500] [--train-steps 2000]
        [--seed 0] [--workdir DIR]

--examples: staged examples to reuse (default: 80 per task staged here, a few minutes).
--workdir keeps the pool and held-out episodes for a later call with other settings.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from _results import write_result
from mtopt.store.reader import EpisodeReader
from mtopt.success.data import LabeledSet, label_counts, stage_examples
from mtopt.success.improve import human_examples
from mtopt.success.labels import LabelStore
from mtopt.success.network import SuccessDetector
from mtopt.success.train import SDTrainConfig, evaluate_sd, train_sd
from mtopt.tasks import DEFAULT_REGISTRY as REG
from sd_accuracy import _r, cached, collect, mark, work_dir


def simulated_labels(pool: list[Any], per_task: int, path: Path, rng: np.random.Generator) -> int:
    """A person's labels: ``per_task`` pool episodes per task, drawn at random, each
    labeled for that task by the ground truth; returns how many were written."""
    path.unlink(missing_ok=True)
    store = LabelStore(path)
    n = 0
    for task in REG.names:
        for i in rng.choice(len(pool), size=min(per_task, len(pool)), replace=False):
            e = pool[int(i)]
            store.add(e.episode_id, task, bool(e.gt_success_by_task[task]))
            n += 1
    return n


def scored(sd: SuccessDetector, heldout: LabeledSet) -> dict[str, Any]:
    res = evaluate_sd(sd, heldout)
    bal = {t: _r(m["balanced_accuracy"]) for t, m in res.items()}
    return {
        "mean_balanced_accuracy": _r(np.nanmean([m["balanced_accuracy"] for m in res.values()])),
        "balanced_accuracy": bal,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", required=True)
    ap.add_argument("--labels-per-task", default="50,200")
    ap.add_argument(
        "--with-staged", default="200", help="label counts also trained with the staged examples"
    )
    ap.add_argument("--examples", default="", help="staged examples (.npz) to reuse")
    ap.add_argument("--examples-per-task", type=int, default=80)
    ap.add_argument("--pool-episodes", type=int, default=1500)
    ap.add_argument("--heldout-episodes", type=int, default=1500)
    ap.add_argument("--train-steps", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default="")
    args = ap.parse_args()
    ks = [int(k) for k in args.labels_per_task.split(",") if k]
    with_staged = [int(k) for k in args.with_staged.split(",") if k]
    if not set(with_staged) <= set(ks):
        ap.error(f"--with-staged {args.with_staged}: each must be one of --labels-per-task")
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        d = work_dir(stack, args.workdir)
        key = {"episodes": args.heldout_episodes, "seed": 7}
        if not cached(d, "heldout", key):
            shutil.rmtree(d / "heldout", ignore_errors=True)  # a cut-off or other collection
            collect(d / "heldout", args.heldout_episodes, "test", seed=7).save(d / "heldout.npz")
            mark(d, "heldout", key)
        heldout = LabeledSet.load(d / "heldout.npz")
        key = {"episodes": args.pool_episodes, "seed": 3}
        if not cached(d, "pool", key):
            shutil.rmtree(d / "pool", ignore_errors=True)
            collect(d / "pool", args.pool_episodes, "train", seed=3)
            mark(d, "pool", key)
        pool = list(EpisodeReader(d / "pool").poll_final_views())
        if args.examples:
            staged = LabeledSet.load(args.examples).with_tasks(REG.names)
        else:
            staged = stage_examples(
                REG, REG.names, args.examples_per_task, "train", True, args.seed, progress=True
            )
        cfg = SDTrainConfig(steps=args.train_steps, seed=args.seed)

        def measured(name: str, data: LabeledSet, per_task: int | None) -> None:
            t = time.perf_counter()
            sd = SuccessDetector(train_sd(data, cfg, progress=True), REG.names)
            row = {"trained_on": name, "labels_per_task": per_task, "examples": len(data)}
            row.update(scored(sd, heldout))
            row["train_s"] = round(time.perf_counter() - t, 1)
            rows.append(row)
            print(f"{name} ({per_task}): mean balanced accuracy {row['mean_balanced_accuracy']}")

        measured("staged", staged, None)
        positives: dict[int, dict[str, int]] = {}
        for k in ks:  # each K's draw its own: the same labels whatever else runs
            simulated_labels(
                pool, k, d / f"labels-{k}.jsonl", np.random.default_rng([args.seed, k])
            )
            human = human_examples(d / "pool", d / f"labels-{k}.jsonl", REG)
            human = human.subset(np.flatnonzero(human.mask.any(1)))
            positives[k] = {t: pn[0] for t, pn in label_counts(human).items()}
            measured("labels", human, k)
            if k in with_staged:
                measured("labels+staged", staged.concat(human), k)
    out = {
        "pool_episodes": len(pool),
        "heldout_episodes": len(heldout),
        "heldout_positives": {t: pn[0] for t, pn in label_counts(heldout).items()},
        "staged_examples": len(staged),
        "label_positives": {str(k): v for k, v in positives.items()},
        "train_steps": args.train_steps,
        "seed": args.seed,
        "results": rows,
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    write_result(args.json, out, allow_nan=False)


if __name__ == "__main__":
    main()
