"""The learner's Adam step beside a replay that was filled by the learner's own thread
or by another thread (why `mtopt run` ingests in a thread of its own:
``mtopt.replay.ingest``).

Reads every episode of a store, as a resumed run does, keeps every ``--keep``-th (the
bounded buffers keep a part and free the rest), and times the `tuned` learner's Adam step
in the main thread, in three arms of one process, in this order:

  fresh          before any episode was read;
  other_thread   the store read and thinned in another thread, the episodes still held;
  same_thread    the store read and thinned in the main (the learner's) thread.

``same_thread`` goes last: what it leaves in the main thread's malloc arena stays there.
Usage (a real store; a run's is in runs/NAME/store):

  python benchmarks/ingest_arena.py --store runs/r38/store --json OUT [--keep 4]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import resource
import threading
import time
from pathlib import Path
from typing import Any

import torch

from _results import write_result
from mtopt.qtopt.learner import Learner
from mtopt.qtopt.updater import BellmanUpdater
from mtopt.runtime.config import preset
from mtopt.store.reader import EpisodeReader
from train_loop_speed import synthetic_buffers


def rss_gib() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", required=True)
    ap.add_argument("--store", required=True, help="an episode store to read")
    ap.add_argument("--keep", type=int, default=4, help="keep every k-th episode read")
    ap.add_argument("--steps", type=int, default=15, help="Adam steps timed per arm")
    ap.add_argument("--config", default="tuned")
    ap.add_argument("--precision", default="native")
    args = ap.parse_args()
    torch.set_num_threads(1)  # as in a 2-core run: one intra-op thread per Python thread
    cfg = preset(args.config)
    cfg = dataclasses.replace(
        cfg,
        learner=dataclasses.replace(cfg.learner, precision=args.precision),
        cem_bellman=dataclasses.replace(cfg.cem_bellman, precision=args.precision),
    )
    tasks = tuple(f"task{i}" for i in range(cfg.qnet.num_tasks))
    buffers = synthetic_buffers(
        tasks, cfg.qnet.image_size, 4 * len(tasks), cfg.sim.max_steps, state_dim=cfg.qnet.state_dim
    )
    learner = Learner(cfg.qnet, cfg.learner)
    batch = BellmanUpdater(
        buffers, learner.targets, cfg.cem_bellman, cfg.learner.gamma, cfg.replay.batch_size
    ).make_batch()

    def time_steps() -> dict[str, float]:
        for _ in range(3):
            learner.train_step(batch)
        r0, w0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        for _ in range(args.steps):
            learner.train_step(batch)
        r1, w1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        n = args.steps
        return {
            "ms_step": round(1e3 * (w1 - w0) / n, 1),
            "ms_user": round(1e3 * (r1.ru_utime - r0.ru_utime) / n, 1),
            "ms_sys": round(1e3 * (r1.ru_stime - r0.ru_stime) / n, 1),
            "rss_gib": round(rss_gib(), 2),
        }

    def read_and_thin() -> list[Any]:
        eps = EpisodeReader(args.store).poll()
        kept = eps[:: args.keep]
        del eps
        return kept

    arms: dict[str, dict[str, float]] = {"fresh": time_steps()}
    print("fresh", arms["fresh"], flush=True)
    held: dict[str, list[Any]] = {}
    reader = threading.Thread(target=lambda: held.update(kept=read_and_thin()))
    reader.start()
    reader.join()
    n_kept = len(held["kept"])
    arms["other_thread"] = time_steps()
    print("other_thread", arms["other_thread"], flush=True)
    held.clear()
    held["kept"] = read_and_thin()
    arms["same_thread"] = time_steps()
    print("same_thread", arms["same_thread"], flush=True)
    out = {
        "store": args.store,
        "episodes_kept": n_kept,
        "keep_every": args.keep,
        "config": args.config,
        "precision": args.precision,
        "arms": arms,
        "same_over_other": round(
            arms["same_thread"]["ms_step"] / arms["other_thread"]["ms_step"], 2
        ),
        "other_over_fresh": round(arms["other_thread"]["ms_step"] / arms["fresh"]["ms_step"], 2),
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    write_result(args.json, out)


if __name__ == "__main__":
    main()
