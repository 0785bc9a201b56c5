"""CEM speed: tower reused across candidates vs the naive full network per candidate.

Usage: python benchmarks/cem_speed.py --json OUT [--threads 1]
Reports act latency (one state, 2 x 64) for both ways, the speedup, batched CEM over
states (Bellman updater use), and the ratio of act latency to one simulated step.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from mtopt.qtopt.bellman import cem_argmax
from mtopt.qtopt.cem import CEMConfig, cem_maximize, repeat_rows
from mtopt.qtopt.networks import QNetConfig, QNetwork, count_parameters


def timeit(fn, reps: int) -> float:  # type: ignore[no-untyped-def]
    fn()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t) / reps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = QNetConfig()
    net = QNetwork(cfg).eval()
    cem = CEMConfig()
    img = torch.randint(0, 255, (1, 64, 64, 3), dtype=torch.uint8)
    st, task = torch.rand(1, 2), torch.tensor([0])
    gen = torch.Generator().manual_seed(0)

    @torch.no_grad()
    def reuse() -> None:
        cem_argmax(net, img, st, task, cem, gen)

    @torch.no_grad()
    def naive() -> None:
        n = cem.samples
        imgs, s_rep, t_rep = repeat_rows(img, n), repeat_rows(st, n), repeat_rows(task, n)
        cem_maximize(
            lambda a: net.logits(imgs, s_rep, a.reshape(n, -1), t_rep).reshape(1, n), 1, cem, gen
        )

    t_reuse = timeit(reuse, args.reps)
    t_naive = timeit(naive, max(3, args.reps // 4))
    out: dict[str, object] = {
        "threads": args.threads,
        "params": count_parameters(net),
        "cem": [cem.iterations, cem.samples, cem.elites],
    }
    out["act_ms_tower_reuse"] = round(t_reuse * 1000, 2)
    out["act_ms_naive"] = round(t_naive * 1000, 2)
    out["speedup_reuse_over_naive"] = round(t_naive / t_reuse, 2)
    sim_step_ms = 1000 / 297.0  # benchmarks/results/sim_speed.json (env step incl. render)
    out["act_over_sim_step"] = round(t_reuse * 1000 / sim_step_ms, 2)
    for b in (16, 64):
        imgs = torch.randint(0, 255, (b, 64, 64, 3), dtype=torch.uint8)
        sb, tb = torch.rand(b, 2), torch.zeros(b, dtype=torch.long)
        for samples in (32, 64):
            c = CEMConfig(samples=samples, elites=max(4, samples // 10))
            t = timeit(
                lambda imgs=imgs, sb=sb, tb=tb, c=c: cem_argmax(net, imgs, sb, tb, c, gen), 3
            )
            out[f"batched_states{b}_samples{samples}_states_per_s"] = round(b / t, 1)
    with open(args.json, "w") as f:
        json.dump(out, f, indent=2)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
