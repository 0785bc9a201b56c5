"""Peak memory and time of a resumed run's store re-read: in one poll, or in parts.

A resumed `mtopt run` re-reads its whole episode store into LogReplay (SD rewards,
impersonation, the bounded per-task buffers) before its learner goes on. Read in one
poll, every decoded episode is held at once before the buffers keep their part; read
``replay.read_shards_per_poll`` shards at a time, the peak is the buffers plus one part.

Each arm runs in a fresh process (its peak RSS is its own), in the same way `mtopt run`
reads: ``EpisodeReader(shards_per_poll=...)`` -> ``replay_items`` -> ``LogReplay.ingest``
with the run's own success detector and buffer capacity. Usage (a run's folder):

  python benchmarks/resume_memory.py --run runs/r39 --json OUT [--shards 1000] [--parts 0,64]

``--parts 0`` is the one-poll arm. ``--shards`` reads only the store's oldest N shards.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import platform
import resource
import time
from pathlib import Path
from typing import Any

from _results import write_result


def _arm(run: str, shards: int | None, per_poll: int, out: Any) -> None:
    from mtopt.replay.buffers import TaskBuffers
    from mtopt.replay.logreplay import LogReplay
    from mtopt.replay.source import replay_items
    from mtopt.runtime.config import load_run_config
    from mtopt.store.reader import EpisodeReader, shard_paths
    from mtopt.success.network import SuccessDetector

    root = Path(run)
    cfg = load_run_config(root / "config.json")
    registry = cfg.registry()  # the run's tasks (its extra_tasks too)
    sd = SuccessDetector.load(root / "sd", registry.names)
    buffers = TaskBuffers(registry.names, cfg.replay.capacity_per_bucket)
    replay = LogReplay(registry, buffers, sd, cfg.replay.impersonation, reward=cfg.replay.reward)
    reader = EpisodeReader(root / "store", shards_per_poll=per_poll or None)
    paths = shard_paths(root / "store")
    if shards is not None:
        reader.skip(paths[shards:])  # only the oldest ``shards``
    t0 = time.perf_counter()
    read = polls = 0
    while eps := reader.poll():
        polls += 1
        read += len(eps)
        replay.ingest(replay_items(eps, cfg.qnet))
        del eps
    out.put(
        {
            "shards_per_poll": per_poll or None,
            "polls": polls,
            "episodes_read": read,
            "episodes_held": len(buffers),
            "seconds": round(time.perf_counter() - t0, 1),
            # ru_maxrss is in KiB on Linux
            "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        }
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", required=True, help="a run's folder (config.json, sd/, store/)")
    ap.add_argument("--json", required=True)
    ap.add_argument("--shards", type=int, default=None, help="read only the oldest N shards")
    ap.add_argument("--parts", default="0,64", help="shards per poll per arm; 0: one poll")
    args = ap.parse_args()
    ctx = mp.get_context("spawn")
    arms = []
    for per_poll in (int(x) for x in args.parts.split(",")):
        q = ctx.Queue()
        p = ctx.Process(target=_arm, args=(args.run, args.shards, per_poll, q))
        p.start()
        arms.append(q.get())
        p.join()
        print(arms[-1], flush=True)
    out = {
        "run": args.run,
        "shards": args.shards,
        "arms": arms,
        "peak_ratio_one_poll_over_parts": (
            round(arms[0]["peak_rss_gib"] / arms[-1]["peak_rss_gib"], 2) if len(arms) > 1 else None
        ),
        "machine": platform.processor() or platform.machine(),
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    write_result(args.json, out)


if __name__ == "__main__":
    main()
