"""Learner and Bellman-updater speed, with achieved FLOP/s against a dense matmul peak
measured in the same run (same thread count).

train   : Learner.train_step (Adam, BCE on Q logits, target-net bookkeeping) at batch 32/64
bellman : compute_targets on 64 live transitions: CEM (2 x 64, or 2 x 32) over target
          net 1 with the tower reused, then Q of target net 2 at a*, min of the two
FLOPs   : counted by torch.utils.flop_counter on one call (convs and matmuls, backward
          included); the dense post-merge path counts its real (larger) matmul FLOPs
peak    : 2048 x 2048 matmul, fp32 (and bf16 for bf16 variants)
timing  : all calls (peaks included) round-robin, best of repeats, so a slow phase of a
          shared machine hits every variant alike and the ratios in one run hold
variants: default QNetConfig (no norm), groupnorm (GroupNorm in the tower), merge16,
          head32 / tower64 (wider post-merge convs / wider everywhere); fp32 / bf16

variants also: s2d / s2d4 (space-to-depth first layer by 2 / by 4, QNetConfig.stem);
          tuned (the `tuned` preset's network: gripper x, y and CoordConv channels) and
          tuned-literal (the same, building the 5-channel input: ImageTower.fold_coords off);
          tuned-crop (tuned with a 16-pixel gripper crop, QNetConfig.gripper_crop)

Usage: python benchmarks/learner_speed.py --json OUT [--threads 1] [--min-time 1.0]
       [--device cuda]   (GPU: every call is followed by a synchronize; peak on the GPU)
       [--variants s2d,merge16] [--precisions fp32]   (the default net is always measured)
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import platform
from collections.abc import Callable

import torch

from _results import write_result
from mtopt.qtopt.bellman import TrainBatch, TransitionBatch, compute_targets
from mtopt.qtopt.cem import CEMConfig, has_fast_bf16, use_bf16
from mtopt.qtopt.learner import Learner, LearnerConfig
from mtopt.qtopt.networks import QNetConfig, count_parameters
from mtopt.qtopt.perf import count_flops, time_interleaved
from mtopt.runtime.config import RunConfig

DEVICE = torch.device("cpu")


def train_batch(b: int, cfg: QNetConfig) -> TrainBatch:
    g = torch.Generator().manual_seed(b)
    s = cfg.image_size
    return TrainBatch(
        torch.randint(0, 256, (b, s, s, 3), dtype=torch.uint8, generator=g).to(DEVICE),
        torch.rand(b, cfg.state_dim, generator=g).to(DEVICE),
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


def make_learner(
    qcfg: QNetConfig, cfg: LearnerConfig = LearnerConfig(), fold_coords: bool = True
) -> Learner:
    # the learner on DEVICE: it moves each batch there (a CPU learner whose networks were
    # moved afterwards sent CPU batches to GPU weights)
    learner = Learner(qcfg, dataclasses.replace(cfg, device=str(DEVICE)))
    for net in (learner.online, *learner.targets, learner.acting):
        net.tower.fold_coords = fold_coords
    return learner


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def synced(fn: Callable[[], object]) -> Callable[[], object]:
    """On a GPU a call is timed to its end: follow it by a synchronize."""
    if DEVICE.type != "cuda":
        return fn

    def call() -> None:
        fn()
        torch.cuda.synchronize()

    return call


def matmul_call(dtype: torch.dtype) -> Callable[[], object]:
    """The peak reference: a dense square matmul (2048 on a CPU, 8192 on a GPU)."""
    n = 8192 if DEVICE.type == "cuda" else 2048
    a = torch.randn(n, n, device=DEVICE).to(dtype)
    b = torch.randn(n, n, device=DEVICE).to(dtype)
    return functools.partial(torch.mm, a, b)


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

    base = QNetConfig()
    qvariants = {
        "default": base,
        "groupnorm": QNetConfig(norm=True),
        "merge16": QNetConfig(merge_size=16),
        "head32": QNetConfig(head_channels=32),
        "tower64": QNetConfig(tower_channels=64, head_channels=32),
        "s2d": QNetConfig(stem="s2d"),
        "s2d4": QNetConfig(stem="s2d4"),
        "tuned": QNetConfig(gripper_xy=True, coord_channels=True),
        "tuned-literal": QNetConfig(gripper_xy=True, coord_channels=True),
        "tuned-crop": QNetConfig(gripper_xy=True, coord_channels=True, gripper_crop=16),
        "tuned-view": QNetConfig(
            gripper_xy=True, coord_channels=True, gripper_crop=16, action_crop_step_m=0.05
        ),
    }
    if args.variants:
        keep = {"default", *args.variants.split(",")}
        qvariants = {k: v for k, v in qvariants.items() if k in keep}
    auto = "bf16" if gpu or has_fast_bf16() else "fp32"
    # what `mtopt run` uses here by default: learner and Bellman updater may differ
    run = RunConfig()
    run_learner = "bf16" if use_bf16(run.learner.precision, DEVICE) else "fp32"
    run_bellman = "bf16" if use_bf16(run.cem_bellman.precision, DEVICE) else "fp32"
    wanted = {auto, run_learner, run_bellman, *args.precisions.split(",")}
    precisions = [p for p in ("fp32", "bf16") if p in wanted]

    # every call to time: name -> (call, work items per call, precision)
    calls: dict[str, tuple[Callable[[], object], int, str]] = {}
    for prec in precisions:
        calls[f"peak {prec}"] = (matmul_call(DTYPES[prec]), 1, prec)
    for qname, qcfg in qvariants.items():
        for prec in precisions:
            if qname in ("merge16", "head32", "tower64") and prec == "bf16":
                continue
            learner = make_learner(
                qcfg, LearnerConfig(precision=prec), fold_coords=qname != "tuned-literal"
            )
            for b in (32, 64, 256) if gpu else (32, 64):
                step = functools.partial(learner.train_step, train_batch(b, qcfg))
                calls[f"train {qname} {prec} b{b}"] = (step, b, prec)
    for qname in (
        "default",
        "groupnorm",
        "s2d",
        "s2d4",
        "tuned",
        "tuned-literal",
        "tuned-crop",
        "tuned-view",
    ):
        if qname not in qvariants:
            continue
        qcfg = qvariants[qname]
        nets = make_learner(qcfg, fold_coords=qname != "tuned-literal").targets
        for nb in (64, 1024) if gpu else (64,):
            tb = transitions(nb, qcfg)
            for prec in precisions:
                for samples in (64, 32):
                    cem = CEMConfig(
                        samples=samples, elites=6 if samples == 64 else 4, precision=prec
                    )
                    call = functools.partial(compute_targets, nets, tb, 0.9, cem)
                    name = f"bellman {qname} {prec} cem{samples}" + (f" n{nb}" if nb != 64 else "")
                    calls[name] = (call, nb, prec)

    flops = {name: count_flops(fn) for name, (fn, _, _) in calls.items()}
    print(f"timing {len(calls)} calls round-robin ...")
    seconds = time_interleaved({k: synced(fn) for k, (fn, _, _) in calls.items()}, args.min_time)
    peak = {p: flops[f"peak {p}"] / seconds[f"peak {p}"] for p in precisions}
    print("matmul peak: " + ", ".join(f"{p} {v / 1e9:.1f} GFLOP/s" for p, v in peak.items()))
    train: dict[str, dict[str, float]] = {}
    bellman: dict[str, dict[str, float]] = {}
    for name, (_, n, prec) in calls.items():
        kind, _, short = name.partition(" ")
        dt, fl = seconds[name], flops[name]
        common = {
            "gflop_per_s": round(fl / dt / 1e9, 2),
            "fraction_of_peak": round(fl / dt / peak[prec], 3),
        }
        if kind == "train":
            train[short] = {
                "steps_per_s": round(1 / dt, 2),
                "samples_per_s": round(n / dt, 1),
                "ms_per_step": round(1000 * dt, 2),
                "flops_per_step": fl,
                **common,
            }
            print(f"train   {short:22s} {train[short]}")
        elif kind == "bellman":
            bellman[short] = {
                "targets_per_s": round(n / dt, 1),
                "ms_per_batch": round(1000 * dt, 2),
                "batch": n,
                "flops_per_batch": fl,
                **common,
            }
            print(f"bellman {short:22s} {bellman[short]}")

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
            # the run's defaults: LearnerConfig(precision="auto") beside the updater's
            # CEMConfig(2 x 32, precision=RunConfig().cem_bellman.precision)
            "run_default_precision": {"learner": run_learner, "bellman": run_bellman},
            "bellman_cem32_over_learner_run_default": round(
                bellman[f"default {run_bellman} cem32"]["targets_per_s"]
                / train[f"default {run_learner} b64"]["samples_per_s"],
                2,
            ),
        },
    }
    write_result(args.json, out, show=out["summary"])


if __name__ == "__main__":
    main()
