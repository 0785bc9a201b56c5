"""Speed of the training loop `mtopt run` drives: re-balanced sampling + CEM Bellman
targets (BellmanUpdater.make_batch) and the Adam step (Learner.train_step), per step and
together, with a preset's network, CEM and batch size, on the CPU or a GPU; and the loop
with the targets made ahead in a background thread (``BackgroundUpdater``, what `mtopt
run` does unless ``bellman_prefetch=0``). Use ``--threads 1`` to measure that as the run
does on 2 cores (one intra-op thread per Python thread).

The buffers hold synthetic episodes (random images; content does not change the cost).
Needs no simulator, so it runs on a learner-only machine. Usage:

  python benchmarks/train_loop_speed.py --json OUT [--device cpu|cuda|auto]
        [--config local] [--set qnet.head_channels=8] [--batch 64 --batch 256] [--min-time 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import time

import numpy as np
import torch

from _results import write_result
from mtopt.config import override
from mtopt.qtopt.bellman import TrainBatch
from mtopt.qtopt.cem import use_bf16
from mtopt.qtopt.learner import Learner
from mtopt.qtopt.perf import time_call
from mtopt.qtopt.updater import BackgroundUpdater, BellmanUpdater
from mtopt.replay.buffers import ReplayEpisode, TaskBuffers
from mtopt.runtime.config import preset


def synthetic_buffers(
    tasks: tuple[str, ...],
    image: int,
    episodes: int,
    steps: int,
    seed: int = 0,
    state_dim: int = 2,
) -> TaskBuffers:
    """Episodes with random images and states of ``state_dim`` features (the network's:
    4 with ``gripper_xy``), half of them successes of their task."""
    rng = np.random.default_rng(seed)
    buf = TaskBuffers(tasks, capacity_per_bucket=episodes)
    for i in range(episodes):
        task = tasks[i % len(tasks)]
        ep = ReplayEpisode(
            f"e{i}",
            task,
            rng.integers(0, 256, (steps + 1, image, image, 3), dtype=np.uint8),
            rng.random((steps + 1, state_dim), dtype=np.float32),
            rng.uniform(-1, 1, (steps, 6)).astype(np.float32),
        )
        buf.add(ep, [(task, float(i % 2))])
    return buf


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", required=True)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--config", default="local")
    ap.add_argument(
        "--batch", type=int, action="append", help="batch sizes (default: the preset's)"
    )
    ap.add_argument("--min-time", type=float, default=3.0, help="seconds timed per measurement")
    ap.add_argument(
        "--precision",
        default="",
        help="fp32, bf16 or auto for learner and CEM (default: the preset's)",
    )
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave)")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="change the preset as `mtopt run --set` does (e.g. qnet.head_channels=8)",
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = override(preset(args.config), args.set)
    if args.precision:
        cfg = dataclasses.replace(
            cfg,
            learner=dataclasses.replace(cfg.learner, precision=args.precision),
            cem_bellman=dataclasses.replace(cfg.cem_bellman, precision=args.precision),
        )
    learner_cfg = dataclasses.replace(cfg.learner, device=args.device)
    tasks = tuple(f"task{i}" for i in range(cfg.qnet.num_tasks))
    buffers = synthetic_buffers(
        tasks, cfg.qnet.image_size, 4 * len(tasks), cfg.sim.max_steps, state_dim=cfg.qnet.state_dim
    )
    learner = Learner(cfg.qnet, learner_cfg)
    dev = learner.device
    rows = []
    for b in args.batch or [cfg.replay.batch_size]:
        up = BellmanUpdater(buffers, learner.targets, cfg.cem_bellman, cfg.learner.gamma, b, seed=0)
        batch = up.make_batch()

        def targets(up: BellmanUpdater = up) -> None:
            up.make_batch()
            sync(dev)

        def train(batch: TrainBatch = batch) -> None:
            learner.train_step(batch)
            sync(dev)

        def loop(up: BellmanUpdater = up) -> None:
            learner.train_step(up.make_batch())
            sync(dev)

        t = {
            k: time_call(f, args.min_time)
            for k, f in (("targets", targets), ("train", train), ("loop", loop))
        }
        # what `mtopt run` does by default: targets in a background thread, beside the step
        bg = BackgroundUpdater(up, depth=2)

        def prefetched(bg: BackgroundUpdater = bg) -> None:
            seen = learner.target_version
            learner.train_step(bg.get())
            if learner.target_version != seen:
                bg.set_targets(learner.targets)
            sync(dev)

        # throughput (wall clock / calls), not the best call: a call that finds its batch
        # ready is fast, one that waits for it is slow; the serial loop likewise
        t["loop_mean"] = time_call(loop, args.min_time, warmup=3, stat="mean")
        t["prefetch"] = time_call(prefetched, args.min_time, warmup=3, stat="mean")
        bg.close()
        rows.append(
            {
                "batch": b,
                "ms_targets": round(1e3 * t["targets"], 2),
                "ms_train": round(1e3 * t["train"], 2),
                "ms_loop": round(1e3 * t["loop"], 2),
                "loop_steps_per_s": round(1 / t["loop"], 2),
                "loop_samples_per_s": round(b / t["loop"], 1),
                "ms_loop_mean": round(1e3 * t["loop_mean"], 2),
                "ms_loop_prefetch_mean": round(1e3 * t["prefetch"], 2),
                "prefetch_steps_per_s": round(1 / t["prefetch"], 2),
                "prefetch_speedup": round(t["loop_mean"] / t["prefetch"], 2),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    out = {
        "config": args.config,
        "set": args.set,
        "device": torch.cuda.get_device_name(dev)
        if dev.type == "cuda"
        else platform.processor() or "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "precision": cfg.learner.precision,
        "bf16": use_bf16(cfg.learner.precision, dev),
        "cem_bellman": dataclasses.asdict(cfg.cem_bellman),
        "rows": rows,
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    write_result(args.json, out)


if __name__ == "__main__":
    main()
