"""Learner speed: train steps/s and samples/s at batch 32 and 64, Bellman targets/s,
and achieved FLOP/s as a fraction of a dense matmul peak measured in the same run.

Usage: python benchmarks/learner_speed.py --json OUT [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from mtopt.qtopt.bellman import TrainBatch, TransitionBatch, compute_targets
from mtopt.qtopt.cem import CEMConfig
from mtopt.qtopt.learner import Learner
from mtopt.qtopt.networks import QNetConfig


def matmul_peak(n: int = 1024, reps: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t)


def flops(fn) -> int:  # type: ignore[no-untyped-def]
    with FlopCounterMode(display=False) as fc:
        fn()
    return int(fc.get_total_flops())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=10)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = QNetConfig()
    learner = Learner(cfg)
    out: dict[str, object] = {"threads": args.threads}
    peak = matmul_peak()
    out["matmul_peak_gflops"] = round(peak / 1e9, 1)
    for b in (32, 64):
        batch = TrainBatch(
            torch.randint(0, 255, (b, 64, 64, 3), dtype=torch.uint8),
            torch.rand(b, 2),
            torch.rand(b, 6) * 2 - 1,
            torch.randint(0, cfg.num_tasks, (b,)),
            torch.rand(b),
        )
        f = flops(lambda batch=batch: learner.train_step(batch))
        t = time.perf_counter()
        for _ in range(args.steps):
            learner.train_step(batch)
        dt = (time.perf_counter() - t) / args.steps
        out[f"train_steps_per_s_b{b}"] = round(1 / dt, 2)
        out[f"train_samples_per_s_b{b}"] = round(b / dt, 1)
        out[f"train_flop_fraction_of_peak_b{b}"] = round(f / dt / peak, 3)
    b = 64
    tr = TransitionBatch(
        torch.randint(0, 255, (b, 64, 64, 3), dtype=torch.uint8),
        torch.rand(b, 2),
        torch.rand(b, 6),
        torch.randint(0, cfg.num_tasks, (b,)),
        torch.zeros(b),
        torch.randint(0, 255, (b, 64, 64, 3), dtype=torch.uint8),
        torch.rand(b, 2),
        torch.zeros(b),
    )
    for samples in (32, 64):
        cem = CEMConfig(samples=samples, elites=max(4, samples // 10))
        f = flops(lambda cem=cem: compute_targets(learner.targets, tr, 0.9, cem))
        t = time.perf_counter()
        for _ in range(3):
            compute_targets(learner.targets, tr, 0.9, cem)
        dt = (time.perf_counter() - t) / 3
        out[f"bellman_targets_per_s_cem{samples}"] = round(b / dt, 1)
        out[f"bellman_flop_fraction_of_peak_cem{samples}"] = round(f / dt / peak, 3)
    out["bellman32_over_train64_samples"] = round(
        out["bellman_targets_per_s_cem32"] / out["train_samples_per_s_b64"], 3
    )  # type: ignore[operator]
    with open(args.json, "w") as fh:
        json.dump(out, fh, indent=2)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
