"""Success rates of the scripted bootstrap policies, per task, on held-out scenes.

Ground truth on the "test" (held-out) object instances by default, with a Wilson 95%
interval per task. Tasks run in parallel worker processes (one per core by default).

Usage: python benchmarks/scripted_success.py --json OUT [--episodes 200] [--split test]
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ProcessPoolExecutor

from _results import write_result
from mtopt.eval.evaluate import evaluate_policy, rate_with_ci
from mtopt.policies.scripted import scripted_policy_for
from mtopt.sim.cell import SimConfig
from mtopt.tasks import DEFAULT_REGISTRY


def one_task(args: tuple[str, int, str, int]) -> tuple[str, float]:
    task, episodes, split, seed = args
    rate = evaluate_policy(
        scripted_policy_for, DEFAULT_REGISTRY, [task], episodes, SimConfig(object_split=split), seed
    )
    return task, rate[task]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", required=True)
    ap.add_argument("--episodes", type=int, default=200)
    ap.add_argument("--split", default="test", choices=["train", "test"])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    t0 = time.perf_counter()
    jobs = [(t, args.episodes, args.split, args.seed) for t in DEFAULT_REGISTRY.names]
    with ProcessPoolExecutor(args.workers) as pool:
        rates = dict(pool.map(one_task, jobs))
    per_task = {t: rate_with_ci(rates[t], args.episodes) for t in DEFAULT_REGISTRY.names}
    out = {
        "episodes_per_task": args.episodes,
        "object_split": args.split,
        "seed": args.seed,
        "per_task": per_task,
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    write_result(args.json, out)


if __name__ == "__main__":
    main()
