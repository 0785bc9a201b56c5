"""Learner and Bellman-updater speed, with achieved FLOP/s against a dense matmul peak
measured in the same run (same thread count).

train   : Learner.train_step (Adam, BCE on Q logits, target-net bookkeeping) at batch 32/64
bellman : compute_targets on 64 live transitions: CEM (2 x 64, or 2 x 32) over target
          net 1 with the tower reused, then Q of target net 2 at a*, min of the two
FLOPs   : counted by torch.utils.flop_counter on one call (convs and matmuls, backward
          included); the dense post-merge path counts its real (larger) matmul FLOPs
peak    : 2048 x 2048 matmul, fp32 (and bf16 for bf16 variants); all timings best-of-repeats
variants: default QNetConfig (no norm), groupnorm (GroupNorm in the tower), merge16,
          head32 / tower64 (wider post-merge convs / wider everywhere); fp32 / bf16

variants also: s2d (space-to-depth first layer, QNetConfig.stem)

Usage: python benchmarks/learner_speed.py --json OUT [--threads 1] [--min-time 1.0]
       [--device cuda]   (GPU: every call is followed by a synchronize; peak on the GPU)
       [--variants s2d,merge16] [--precisions fp32]   (the default net is always measured)
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
from collections.abc import Callable
from pathlib import Path

import torch

from mtopt.qtopt.bellman import TrainBatch, TransitionBatch, compute_targets
from mtopt.qtopt.cem import CEMConfig, has_fast_bf16
from mtopt.qtopt.learner import Learner, LearnerConfig
from mtopt.qtopt.networks import QNetConfig, count_parameters
from mtopt.qtopt.perf import count_flops, matmul_peak, time_call

DEVICE = torch.device("cpu")


def train_batch(b: int, cfg: QNetConfig) -> TrainBatch:
    g = torch.Generator().manual_seed(b)
    s = cfg.image_size
    return TrainBatch(
        torch.randint(0, 256, (b, s, s, 3), dtype=torch.uint8, generator=g).to(DEVICE),
        torch.rand(b, 2, generator=g).to(DEVICE),
        (torch.rand(b, 6, generator=g) * 2 - 1).to(DEVICE),
        torch.randint(0, cfg.num_tasks, (b,), generator=g).to(DEVICE),
        torch.rand(b, generator=g).to(DEVICE),
    )


def transitions(b: int, cfg: QNetConfig) -> TransitionBatch:
    """b live (not done) transitions: every one needs CEM at s'."""
    t = train_batch(b, cfg)
    z = torch.zeros(b, device=DEVICE)
    return TransitionBatch(
        t.images, t.states, t.actions, t.task_idx, z, t.images.flip(1), t.states, z
    )


def make_learner(qcfg: QNetConfig, cfg: LearnerConfig = LearnerConfig()) -> Learner:
    learner = Learner(qcfg, cfg)
    for net in (learner.online, *learner.targets, learner.acting):
        net.to(DEVICE)  # in place: the optimizer keeps the same parameter objects
    return learner


def timed(fn: Callable[[], object], min_time: float) -> float:
    if DEVICE.type != "cuda":
        return time_call(fn, min_time)

    def synced() -> None:
        fn()
        torch.cuda.synchronize()

    return time_call(synced, min_time)


def peak_flops(dtype: torch.dtype, min_time: float) -> float:
    if DEVICE.type != "cuda":
        return matmul_peak(2048, dtype)
    n = 8192
    a = torch.randn(n, n, device=DEVICE).to(dtype)
    b = torch.randn(n, n, device=DEVICE).to(dtype)
    return 2.0 * n**3 / timed(lambda: torch.mm(a, b), min_time)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--min-time", type=float, default=1.0, help="seconds per measurement")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--variants", default="", help="comma list (default: all)")
    ap.add_argument(
        "--precisions",
        default="fp32,bf16",
        help="comma list; the precision the run picks ('auto') is always measured",
    )
    args = ap.parse_args()
    global DEVICE
    DEVICE = torch.device(args.device)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    gpu = DEVICE.type == "cuda"
    if gpu:
        torch.backends.cudnn.benchmark = True

    peak = {
        p: peak_flops(d, args.min_time)
        for p, d in (("fp32", torch.float32), ("bf16", torch.bfloat16))
    }
    print(f"matmul peak: fp32 {peak['fp32'] / 1e9:.1f} GFLOP/s, bf16 {peak['bf16'] / 1e9:.1f}")
    base = QNetConfig()
    qvariants = {
        "default": base,
        "groupnorm": QNetConfig(norm=True),
        "merge16": QNetConfig(merge_size=16),
        "head32": QNetConfig(head_channels=32),
        "tower64": QNetConfig(tower_channels=64, head_channels=32),
        "s2d": QNetConfig(stem="s2d"),
    }
    if args.variants:
        keep = {"default", *args.variants.split(",")}
        qvariants = {k: v for k, v in qvariants.items() if k in keep}
    auto = "bf16" if gpu or has_fast_bf16() else "fp32"
    precisions = [p for p in ("fp32", "bf16") if p in args.precisions.split(",") or p == auto]
    train: dict[str, dict[str, float]] = {}
    for qname, qcfg in qvariants.items():
        for prec in precisions:
            if qname in ("merge16", "head32", "tower64") and prec == "bf16":
                continue
            learner = make_learner(qcfg, LearnerConfig(precision=prec))
            for b in (32, 64, 256) if gpu else (32, 64):
                step = functools.partial(learner.train_step, train_batch(b, qcfg))
                dt = timed(step, args.min_time)
                flops = count_flops(step)
                name = f"{qname} {prec} b{b}"
                train[name] = {
                    "steps_per_s": round(1 / dt, 2),
                    "samples_per_s": round(b / dt, 1),
                    "ms_per_step": round(1000 * dt, 2),
                    "flops_per_step": flops,
                    "gflop_per_s": round(flops / dt / 1e9, 2),
                    "fraction_of_peak": round(flops / dt / peak[prec], 3),
                }
                print(f"train   {name:22s} {train[name]}")

    bellman: dict[str, dict[str, float]] = {}
    for qname in ("default", "groupnorm", "s2d"):
        if qname not in qvariants:
            continue
        qcfg = qvariants[qname]
        nets = make_learner(qcfg).targets
        for nb in (64, 1024) if gpu else (64,):
            tb = transitions(nb, qcfg)
            for prec in precisions:
                for samples in (64, 32):
                    cem = CEMConfig(
                        samples=samples, elites=6 if samples == 64 else 4, precision=prec
                    )
                    call = functools.partial(compute_targets, nets, tb, 0.9, cem)
                    dt = timed(call, args.min_time)
                    flops = count_flops(call)
                    name = f"{qname} {prec} cem{samples}" + (f" n{nb}" if nb != 64 else "")
                    bellman[name] = {
                        "targets_per_s": round(nb / dt, 1),
                        "ms_per_batch": round(1000 * dt, 2),
                        "batch": nb,
                        "flops_per_batch": flops,
                        "gflop_per_s": round(flops / dt / 1e9, 2),
                        "fraction_of_peak": round(flops / dt / peak[prec], 3),
                    }
                    print(f"bellman {name:22s} {bellman[name]}")

    learner64 = train["default fp32 b64"]["samples_per_s"]
    learner_auto = train[f"default {auto} b64"]["samples_per_s"]
    bell = bellman[f"default {auto} cem64"]["targets_per_s"]
    bell32 = bellman[f"default {auto} cem32"]["targets_per_s"]
    out = {
        "machine": platform.machine(),
        "device": torch.cuda.get_device_name(DEVICE) if gpu else "cpu",
        "threads": args.threads,
        "amx_bf16": has_fast_bf16(),
        "qnet": base.to_dict(),
        "parameters": count_parameters(Learner(base).online),
        "matmul_peak_gflop_per_s": {k: round(v / 1e9, 1) for k, v in peak.items()},
        "train": train,
        "bellman": bellman,
        "summary": {
            "learner_samples_per_s_b64": learner64,
            "learner_fraction_of_peak_b64": train["default fp32 b64"]["fraction_of_peak"],
            "precision_auto": auto,
            "learner_samples_per_s_b64_auto": learner_auto,
            "bellman_targets_per_s": bell,
            "bellman_over_learner": round(bell / learner64, 2),
            "bellman_cem32_targets_per_s": bell32,
            "bellman_cem32_over_learner_auto": round(bell32 / learner_auto, 2),
        },
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out["summary"], indent=1))


if __name__ == "__main__":
    main()
