"""Memory and latency of the labeling page's view of a store: every episode decoded into
memory (what `mtopt sd label` did before 2026-12-04) against the StoreIndex it uses now
(an id, a task and the detector's scores per episode; frames read from their shard when
an episode is shown).

Each arm runs in a fresh process, so its peak RSS is its own. The store is a run's, or a
synthetic one of ``--episodes`` episodes (64x64, 10 frames, 16 per shard) written first.

Usage: python benchmarks/label_server_memory.py --json OUT [--store DIR | --episodes 3000]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import platform
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from _results import write_result


def _synthetic(root: Path, n: int) -> None:
    from mtopt.store import EpisodeWriter
    from mtopt.store.schema import Episode

    rng = np.random.default_rng(0)
    # smooth images compress like camera frames do, not like noise
    base = rng.integers(0, 255, (64, 8, 8, 3), dtype=np.uint8)
    with EpisodeWriter(root, "r0", flush_every=16) as w:
        for i in range(n):
            frames = np.repeat(np.repeat(base[(i + np.arange(11)) % 64], 8, 1), 8, 2)
            w.write(
                Episode(
                    episode_id=f"ep{i:06d}",
                    robot_id="r0",
                    task="lift-any",
                    policy="scripted-pick",
                    policy_version=0,
                    seed=i,
                    images=frames,
                    states=np.zeros((11, 2), np.float32),
                    actions=np.zeros((10, 6), np.float32),
                    final_image=frames[-1],
                    scene={},
                    chain_index=0,
                    prev_episode_id=None,
                    started_at=float(i),
                    ended_at=float(i) + 1,
                    terminated=True,
                    gt_success=None,
                    gt_success_by_task=None,
                )
            )


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _arm(store: str, arm: str, out: Any) -> None:
    from mtopt.store.reader import EpisodeReader
    from mtopt.success.server import StoreIndex

    before = _rss_mb()
    t0 = time.perf_counter()
    if arm == "decode_all":
        episodes = {e.episode_id: e for e in EpisodeReader(store).episodes()}
        ids = list(episodes)
        load_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        for eid in ids[:: max(1, len(ids) // 50)]:
            _ = episodes[eid].images
    else:
        index = StoreIndex(store)
        ids = index.ids()
        load_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        for eid in ids[:: max(1, len(ids) // 50)]:
            ep = index.episode(eid)
            assert ep is not None
    shown = len(ids[:: max(1, len(ids) // 50)])
    out.put(
        {
            "arm": arm,
            "episodes": len(ids),
            "load_s": round(load_s, 3),
            "show_ms_per_episode": round(1000 * (time.perf_counter() - t1) / shown, 3),
            "peak_rss_mb": round(_rss_mb(), 1),
            "rss_growth_mb": round(_rss_mb() - before, 1),
        }
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    ap.add_argument("--json", required=True)
    ap.add_argument("--store", default=None)
    ap.add_argument("--episodes", type=int, default=3000)
    args = ap.parse_args()
    tmp = None
    store = args.store
    if store is None:
        tmp = tempfile.TemporaryDirectory()
        store = str(Path(tmp.name) / "store")
        _synthetic(Path(store), args.episodes)
    ctx = mp.get_context("spawn")
    arms = []
    for arm in ("decode_all", "index"):
        q = ctx.Queue()
        p = ctx.Process(target=_arm, args=(store, arm, q))
        p.start()
        arms.append(q.get())
        p.join()
    a, b = arms
    out = {
        "benchmark": "label_server_memory",
        "machine": platform.processor() or platform.machine(),
        "store": args.store or f"synthetic ({args.episodes} episodes, 64x64, 10 frames)",
        "arms": arms,
        "rss_growth_ratio_decode_all_over_index": round(
            a["rss_growth_mb"] / max(b["rss_growth_mb"], 1e-9), 1
        ),
    }
    write_result(args.json, out)
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
