"""Is the signal that ranks actions in the data, and does TD learning find it? A diagnostic.

A run's Q-function came out nearly flat in the action (benchmarks/q_landscape_probe.py:
over 512 random actions Q varies by ~0.06, and opening the gripper while carrying an
object changes Q by 0.003 although it drops the object). Either the data and the
network cannot tell actions apart, or the bootstrapped (TD) targets are too flat to
teach it. This trains a fresh Q-network of the run's architecture offline on the run's
own stored episodes, of the run's tasks (its ``extra_tasks`` included; the run's
success detector gives the rewards, the run's replay settings sample the batches), with
one of three targets:

  td        the run's Bellman targets: r + gamma * min of two lagged target networks at
            CEM's argmax (what the run trains on)
  mc        the episode's discounted return, R_final * gamma ** steps_to_go (regression
            on what the behaviour policies achieved: no bootstrapping)
  mc_bound  max(td, mc) (``LearnerConfig.mc_bound``)

and publishes its weights to OUT/weights, with the run's config.json (its cell and
tasks), so q_landscape_probe.py and evaluate_run.py can read them. Same data, same
steps, same seed for every mode.

Usage: python benchmarks/offline_fit_probe.py --run runs/r20 --out runs/fit_mc --mode mc
           [--steps 2500] [--shards 0] [--json OUT]
  --shards N  read only the newest N shards of the store (0: all; the buffers keep the
              newest capacity_per_bucket episodes per task and outcome either way)
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from _results import write_result
from mtopt.qtopt.bellman import TrainBatch, TransitionBatch, compute_targets, per_sample
from mtopt.qtopt.learner import Learner
from mtopt.replay.buffers import TaskBuffers
from mtopt.replay.logreplay import LogReplay
from mtopt.replay.source import replay_items
from mtopt.runtime.config import load_run_config, run_registry
from mtopt.store.reader import EpisodeReader, shard_paths
from mtopt.success.network import SuccessDetector


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--mode", choices=("td", "mc", "mc_bound"), required=True)
    ap.add_argument("--steps", type=int, default=2500)
    ap.add_argument("--shards", type=int, default=0)
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    t0 = time.time()
    run, out = Path(args.run), Path(args.out)
    cfg = load_run_config(run / "config.json")
    registry = run_registry(run)  # the run's tasks (its extra_tasks too), as it stored them
    sd = SuccessDetector.load(run / "sd", registry.names)
    buffers = TaskBuffers(registry.names, cfg.replay.capacity_per_bucket)
    replay = LogReplay(registry, buffers, sd, cfg.replay.impersonation, reward=cfg.replay.reward)
    reader = EpisodeReader(run / "store")
    shards = shard_paths(run / "store")
    if args.shards:
        reader.skip(shards[: -args.shards])
    n_eps = 0
    with tqdm(total=len(reader.new_shards()), desc="store -> replay", unit="shard") as bar:
        while True:
            left = len(reader.new_shards())
            if not left:
                break
            eps = reader.poll(max_shards=20)
            n_eps += replay.ingest(replay_items(eps, cfg.qnet))
            bar.update(min(20, left))
    print(f"ingested {n_eps} episodes; buffers hold {len(buffers)}")

    torch.manual_seed(cfg.learner.seed)
    learner = Learner(cfg.qnet, dataclasses.replace(cfg.learner, mc_bound=False), logdir=None)
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    gamma = cfg.discounts(registry)  # the run's own: one, or one per task
    losses: list[float] = []
    for _ in tqdm(range(args.steps), desc=f"offline {args.mode}", unit="step", mininterval=5):
        tr = buffers.sample(
            cfg.replay.batch_size, rng, cfg.replay.success_ratio, cfg.replay.rebalance
        )
        tb = TransitionBatch.from_numpy(tr)
        if args.mode == "mc":
            assert tb.final_rewards is not None and tb.steps_to_go is not None
            batch = TrainBatch(
                tb.images,
                tb.states,
                tb.actions,
                tb.task_idx,
                tb.final_rewards.float() * per_sample(gamma, tb.task_idx) ** tb.steps_to_go.float(),
            )
        else:
            batch = compute_targets(
                learner.targets, tb, gamma, cfg.cem_bellman, gen, args.mode == "mc_bound"
            )
        losses.append(learner.train_step(batch, registry.names)["loss"])
    version = learner.publish(out / "weights")
    shutil.copyfile(run / "config.json", out / "config.json")
    result = {
        "run": str(run),
        "mode": args.mode,
        "steps": args.steps,
        "episodes_ingested": n_eps,
        "buffer_episodes": len(buffers),
        "loss_first_100": round(float(np.mean(losses[:100])), 4),
        "loss_last_100": round(float(np.mean(losses[-100:])), 4),
        "weights_version": version,
        "seconds": round(time.time() - t0, 1),
    }
    write_result(args.json or out / "fit.json", result)


if __name__ == "__main__":
    main()
