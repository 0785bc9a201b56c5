"""Ray replay workers splitting the store (``EpisodeReader(part=(i, n))``) against each
reading all of it (before 2026-12-04): the time one worker takes to ingest the store
(read, decode, score with the SD, impersonate into its buffers) and the memory it grows
by, for one worker of one (the whole store) and one worker of two (its half).

Each arm runs in a fresh process, so its peak RSS is its own. The store is a run's, or a
synthetic one of ``--episodes`` episodes (64x64, 10 frames, 16 per shard) written first.

The config is ``tuned`` for a run's store and ``local`` for the synthetic one (its
episodes have no gripper poses, which ``tuned``'s Q-network takes).

Usage: python benchmarks/replay_parts.py --json OUT [--store DIR | --episodes 3000]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import platform
import resource
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from _results import write_result
from label_server_memory import _synthetic


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _arm(root: str, config: str, part: tuple[int, int], out: Any) -> None:
    import torch

    from mtopt.config import override
    from mtopt.runtime.config import preset
    from mtopt.runtime.ray_runtime import ReplayService

    torch.set_num_threads(1)
    # buffers large enough to keep every episode: memory follows what a worker reads
    cfg = override(preset(config), ["replay.capacity_per_bucket=100000"])
    before = _rss_mb()
    t0 = time.perf_counter()
    svc = ReplayService(cfg, root, seed=0, part=part)
    while True:
        svc.step(0)
        if svc.reader.behind == 0 and not svc.reader.new_shards():
            break
    out.put(
        {
            "part": list(part),
            "episodes_held": len(svc.buffers),
            "ingest_s": round(time.perf_counter() - t0, 2),
            "rss_growth_mb": round(_rss_mb() - before, 1),
        }
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    ap.add_argument("--json", required=True)
    ap.add_argument("--store", default=None, help="a run's store (default: synthetic)")
    ap.add_argument("--episodes", type=int, default=3000)
    args = ap.parse_args()
    from mtopt.success.network import SDNetConfig, SuccessDetector, SuccessNet
    from mtopt.tasks import DEFAULT_REGISTRY

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "run"
        if args.store is None:
            _synthetic(root / "store", args.episodes)
        else:
            (root).mkdir()
            (root / "store").symlink_to(Path(args.store).resolve())
        sd = SuccessDetector(SuccessNet(SDNetConfig()), DEFAULT_REGISTRY.names)
        sd.publish(root / "sd", 1)  # an untrained detector scores as fast as a trained one
        ctx = mp.get_context("spawn")
        arms = []
        for part in ((0, 1), (0, 2)):
            q = ctx.Queue()
            config = "local" if args.store is None else "tuned"
            p = ctx.Process(target=_arm, args=(str(root), config, part, q))
            p.start()
            arms.append(q.get())
            p.join()
        shutil.rmtree(root / "sd")
    whole, half = arms
    write_result(
        args.json,
        {
            "benchmark": "replay_parts",
            "machine": platform.processor() or platform.machine(),
            "store": args.store or f"synthetic ({args.episodes} episodes, 64x64, 10 frames)",
            "arms": arms,
            "ingest_time_ratio_whole_over_half": round(
                whole["ingest_s"] / max(half["ingest_s"], 1e-9), 2
            ),
            "rss_growth_ratio_whole_over_half": round(
                whole["rss_growth_mb"] / max(half["rss_growth_mb"], 1e-9), 2
            ),
        },
    )


if __name__ == "__main__":
    main()
