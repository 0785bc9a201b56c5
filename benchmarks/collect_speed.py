"""Collection throughput: episodes/s with 1 and 2 robot processes, and the ratio.

Usage: python benchmarks/collect_speed.py --json OUT [--episodes 150]
"""

from __future__ import annotations

import argparse
import tempfile
import time

from _results import write_result
from mtopt.collect.fleet import FleetSpec, run_fleet
from mtopt.collect.loop import CollectConfig


def rate(robots: int, episodes: int) -> float:
    with tempfile.TemporaryDirectory() as d:
        spec = FleetSpec(
            store=d,
            robots=robots,
            episodes_per_robot=episodes,
            collect=CollectConfig(),
            sim={},
            seed=robots,
        )
        t = time.perf_counter()
        summary = run_fleet(spec)
        dt = time.perf_counter() - t
        return sum(summary["written"].values()) / dt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", required=True)
    ap.add_argument("--episodes", type=int, default=150)
    args = ap.parse_args()
    r1 = rate(1, args.episodes)
    r2 = rate(2, args.episodes)
    out = {
        "episodes_per_s_1_robot": round(r1, 2),
        "episodes_per_s_2_robots": round(r2, 2),
        "ratio_2_over_1": round(r2 / r1, 3),
        "note": "includes process start-up (spawn + imports) of each robot",
    }
    write_result(args.json, out)


if __name__ == "__main__":
    main()
