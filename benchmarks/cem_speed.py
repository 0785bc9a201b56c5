"""CEM speed: tower reuse versus the naive full network per candidate, in one run.

Variants (all CEM 2 iterations x 64 samples, 6 elites, on the default 64x64 Q-network):
  naive          full network (image tower included) on every (state, candidate)
  literal        tower once per state, Fig. 9 merge built per candidate (repeated 8x8
                 feature maps + tiled embedding), 9 post-merge convs per candidate
  folded         tower once; merge conv folded (conv(feats) once + a matmul per
                 candidate), 8 post-merge convs per candidate
  folded+dense   as folded, the 4x4 post-merge convs as cached dense matmuls, one per
                 output row of the map (default; networks.DenseConv)
  ... unblocked  the dense matmuls over the whole map (zero row blocks included)
  ... +bf16      the same under bf16 autocast (CEMConfig.precision="bf16")
  merge16 ...    the action merged at 16x16 instead of 8x8
  no-cl          default path with the image tower in NCHW instead of channels_last

act   : one state (a robot choosing an action), milliseconds per call (best of repeats)
batch : 64 states at once (the Bellman updater), states per second

Usage: python benchmarks/cem_speed.py --json OUT [--threads 1] [--min-time 0.5]
                                      [--qnet head_channels=8 ...]

``--qnet FIELD=VALUE`` (repeatable) measures another network than the default (the
merge16 variants change its merge_size to 16).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import platform
from collections.abc import Callable

import torch

from _results import write_result
from mtopt.config import override
from mtopt.qtopt.cem import (
    CEMConfig,
    cem_argmax,
    cem_maximize,
    has_fast_bf16,
    naive_cem_argmax,
    repeat_rows,
)
from mtopt.qtopt.networks import QNetConfig, QNetwork, count_parameters
from mtopt.qtopt.perf import count_flops, time_call, time_interleaved

Fn = Callable[[QNetwork, torch.Tensor, torch.Tensor, torch.Tensor, CEMConfig], object]


@torch.no_grad()
def literal_cem_argmax(
    net: QNetwork, images: torch.Tensor, states: torch.Tensor, task: torch.Tensor, cfg: CEMConfig
) -> object:
    """Tower once per state, then the literal Fig. 9 merge on repeated rows (the 'before')."""
    feats = net.tower(images)
    b, n = feats.shape[0], cfg.samples
    # state_input: with a gripper crop, its features too; with a post-move view
    # (action_crop_step_m, `tuned`), the repeated images it is read from
    f, s, t = (
        repeat_rows(feats, n),
        repeat_rows(net.state_input(images, states), n),
        repeat_rows(task, n),
    )
    im = repeat_rows(images, n) if net.cfg.action_crop_step_m > 0 else None
    return cem_maximize(
        lambda a: net.logits_from_features(f, s, a.reshape(b * n, -1), t, images=im).reshape(b, n),
        b,
        cfg,
    )


def fast(dense: bool, channels_last: bool = True, row_blocked: bool = True) -> Fn:
    def run(
        net: QNetwork,
        images: torch.Tensor,
        states: torch.Tensor,
        task: torch.Tensor,
        cfg: CEMConfig,
    ) -> object:
        net.dense_small_convs = dense
        net.tower.channels_last = channels_last
        net.row_blocked = row_blocked
        try:
            return cem_argmax(net, images, states, task, cfg)
        finally:
            net.dense_small_convs = True
            net.tower.channels_last = True
            net.row_blocked = True

    return run


def inputs(b: int, cfg: QNetConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(b)
    s = cfg.image_size
    return (
        torch.randint(0, 256, (b, s, s, 3), dtype=torch.uint8, generator=g),
        torch.rand(b, cfg.state_dim, generator=g),
        torch.randint(0, cfg.num_tasks, (b,), generator=g),
    )


def act_vs_sim_step(act: Callable[[], object], min_time: float) -> dict[str, float]:
    """Milliseconds of one CEM act and of one simulated step (SimRobot.act: physics and
    the camera image), timed round-robin in this run so the ratio holds on a busy box."""
    import numpy as np

    from mtopt.robots.action import make_action
    from mtopt.robots.sim_robot import SimRobot
    from mtopt.sim.config import SimConfig

    robot = SimRobot(SimConfig(), seed=0)
    robot.reset_scene(1)
    robot.start_episode()
    rng = np.random.default_rng(0)
    actions = [
        make_action(*rng.uniform(-1, 1, 4), close=bool(rng.random() < 0.5)) for _ in range(64)
    ]
    step = iter(range(10**9))

    def sim() -> None:
        i = next(step)
        if i % 15 == 0:  # a new episode every 15 steps, as in collection (reset not timed)
            robot.reset_scene(i)
            robot.start_episode()
        robot.act(actions[i % len(actions)])

    t = time_interleaved({"act": act, "sim": sim}, min_time)
    robot.close()
    return {k: round(1000 * v, 3) for k, v in t.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--min-time", type=float, default=0.5, help="seconds per measurement")
    ap.add_argument("--batch", type=int, default=64, help="states per batched CEM call")
    ap.add_argument(
        "--qnet",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="a QNetConfig field of the measured network (default: QNetConfig())",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    fp32, bf16 = CEMConfig(precision="fp32"), CEMConfig(precision="bf16")
    base = override(QNetConfig(), args.qnet).validate()
    nets = {
        8: QNetwork(base).eval(),
        16: QNetwork(dataclasses.replace(base, merge_size=16).validate()).eval(),
    }
    variants: list[tuple[str, int, Fn, CEMConfig]] = [
        ("naive", 8, naive_cem_argmax, fp32),
        ("literal", 8, literal_cem_argmax, fp32),
        ("folded", 8, fast(dense=False), fp32),
        ("folded+dense", 8, fast(dense=True), fp32),
        ("no-cl folded+dense", 8, fast(dense=True, channels_last=False), fp32),
        ("folded+dense unblocked", 8, fast(dense=True, row_blocked=False), fp32),
        ("folded+dense+bf16", 8, fast(dense=True), bf16),
        ("merge16 naive", 16, naive_cem_argmax, fp32),
        ("merge16 literal", 16, literal_cem_argmax, fp32),
        ("merge16 folded", 16, fast(dense=False), fp32),
        ("merge16 folded+bf16", 16, fast(dense=False), bf16),
    ]
    act_ms: dict[str, float] = {}
    batch_sps: dict[str, float] = {}
    flops: dict[str, int] = {}
    for name, merge, fn, cfg in variants:
        net = nets[merge]
        one = inputs(1, net.cfg)
        act = functools.partial(fn, net, *one, cfg)
        act_ms[name] = round(1000 * time_call(act, args.min_time), 3)
        b = 8 if "naive" in name else args.batch  # naive at 64 states takes seconds per call
        batched = functools.partial(fn, net, *inputs(b, net.cfg), cfg)
        batch_sps[name] = round(b / time_call(batched, args.min_time, warmup=1), 1)
        if cfg.precision == "fp32":
            flops[name] = count_flops(act)
        print(f"{name:24s} act {act_ms[name]:8.2f} ms   batch {batch_sps[name]:8.1f} states/s")

    best_act = min(v for k, v in act_ms.items() if not k.startswith("merge16"))
    best_batch = max(v for k, v in batch_sps.items() if not k.startswith("merge16"))
    default = "folded+dense+bf16" if has_fast_bf16() else "folded+dense"
    default_fn = next(v for v in variants if v[0] == default)
    timed = act_vs_sim_step(
        functools.partial(default_fn[2], nets[8], *inputs(1, base), default_fn[3]),
        args.min_time * 4,
    )
    out = {
        "machine": platform.machine(),
        "threads": args.threads,
        "amx_bf16": has_fast_bf16(),
        "qnet": base.to_dict(),
        "parameters": count_parameters(nets[8]),
        "cem": {"iterations": fp32.iterations, "samples": fp32.samples, "elites": fp32.elites},
        "act_ms": act_ms,
        "batch_states_per_s": batch_sps,
        "batch_size": args.batch,
        "act_flops_fp32": flops,
        "speedup_vs_naive_act": {
            k: round(act_ms["naive" if not k.startswith("merge16") else "merge16 naive"] / v, 2)
            for k, v in act_ms.items()
        },
        "speedup_vs_naive_batch": {
            k: round(v / batch_sps["naive" if not k.startswith("merge16") else "merge16 naive"], 2)
            for k, v in batch_sps.items()
        },
        "default_act_ms": act_ms[default],
        "best_act_ms": best_act,
        "best_batch_states_per_s": best_batch,
        # the default act and a simulated step, timed round-robin in this run
        "act_ms_beside_sim": timed["act"],
        "sim_step_ms": timed["sim"],
        "act_over_sim_step": round(timed["act"] / timed["sim"], 2),
    }
    write_result(
        args.json, out, show={k: out[k] for k in ("speedup_vs_naive_act", "act_over_sim_step")}
    )


if __name__ == "__main__":
    main()
