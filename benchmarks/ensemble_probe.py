"""Checkpoint ensembles: act with the mean Q of several networks, or with one network
whose weights are their mean, on the held-out scenes of ``evaluate_run.py``.

Question: the acting and online weights of a run, and its checkpoints a few minutes
apart, swing 5-15 points on the same scenes. Does combining them beat any one of them,
and must the combination cost acting time?

- ``--mode pred``: a prediction ensemble. CEM maximises the mean over members of
  Q = sigmoid(logit); every member runs its tower and its post-merge layers, so acting
  costs about k times one network.
- ``--mode wavg``: one network whose parameters are the members' mean (checkpoint
  averaging, as ``mtopt average`` writes it; free at acting time). Use ``mtopt
  average`` and ``evaluate_run.py`` for the product path; this mode is the same mean,
  for a side-by-side run.

Usage: python benchmarks/ensemble_probe.py --members DIR:part,DIR:part[,...]
           [--mode pred|wavg] [--tasks lift-any,place-any] [--episodes 400] [--seed 5]
           --json OUT [--label TEXT]

DIR is a run, weights or exported folder (its latest weights); part acting or online.
Scenes: the same as ``evaluate_run.py --seed S`` (one task per worker process); the
episode outcomes are kept, for paired comparisons (``compare_evals.py``).
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch

from _results import write_result
from mtopt.eval.evaluate import encode_outcomes, evaluate_outcomes, rate_with_ci, success_rates
from mtopt.qtopt.cem import CEMConfig, candidate_scorer, cem_maximize
from mtopt.qtopt.learner import load_network
from mtopt.qtopt.networks import QNetwork, q_state
from mtopt.qtopt.weights import average_state_dicts, load_source
from mtopt.robots.base import Observation
from mtopt.sim.cell import SimConfig
from mtopt.tasks import DEFAULT_REGISTRY


def members(specs: list[str], mode: str) -> list[QNetwork]:
    nets = []
    for spec in specs:
        folder, _, part = spec.rpartition(":")
        _, tensors, meta = load_source(folder)
        nets.append(load_network(tensors, meta, part))
    if mode == "wavg" and len(nets) > 1:
        nets[0].load_state_dict(average_state_dicts([n.state_dict() for n in nets]))
        nets = nets[:1]
    return nets


class EnsemblePolicy:
    """Greedy CEM (QT-Opt's 2 x 64, fp32) over the members' mean Q."""

    name = "cem-ensemble"
    version = 0

    def __init__(self, nets: list[QNetwork], seed: int = 0):
        self.nets, self.cem = nets, CEMConfig(precision="fp32")
        self._gen = torch.Generator().manual_seed(seed)
        self._task = 0

    def reset(self, task: str, rng: np.random.Generator) -> None:
        self._task = DEFAULT_REGISTRY.names.index(task)
        self._gen.manual_seed(int(rng.integers(0, 2**31 - 1)))

    @torch.no_grad()
    def act(self, obs: Observation) -> np.ndarray:
        img = torch.from_numpy(np.ascontiguousarray(obs.image))[None]
        task = torch.tensor([self._task])
        scorers = [
            candidate_scorer(
                net, img, torch.from_numpy(q_state(obs.state, obs.pose, net.cfg))[None], task
            )
            for net in self.nets
        ]

        def score(a: torch.Tensor) -> torch.Tensor:
            q = torch.stack([torch.sigmoid(member(a)) for member in scorers])
            return torch.logit(q.mean(0), eps=1e-6)

        best, _ = cem_maximize(score, 1, self.cem, self._gen)
        return best[0].numpy().astype(np.float32)


def one(job: tuple[list[str], str, str, int, int]) -> tuple[str, list[bool]]:
    specs, mode, task, episodes, seed = job
    torch.set_num_threads(1)
    pol = EnsemblePolicy(members(specs, mode), seed)
    wins = evaluate_outcomes(
        lambda spec: pol, DEFAULT_REGISTRY, [task], episodes, SimConfig(object_split="test"), seed
    )
    return task, wins[task]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--members", required=True, help="DIR:part,DIR:part,...")
    ap.add_argument("--mode", default="pred", choices=("pred", "wavg"))
    ap.add_argument("--tasks", default="lift-any,place-any")
    ap.add_argument("--episodes", type=int, default=400)
    ap.add_argument("--seed", type=int, default=5, help="evaluation scenes (as evaluate_run)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json", required=True)
    ap.add_argument("--label", default="")
    args = ap.parse_args()
    specs = args.members.split(",")
    for spec in specs:
        if spec.rpartition(":")[2] not in ("acting", "online"):
            ap.error(f"a member is DIR:acting or DIR:online, got {spec!r}")
    tasks = args.tasks.split(",")
    t0 = time.perf_counter()
    jobs = [(specs, args.mode, t, args.episodes, args.seed) for t in tasks]
    with ProcessPoolExecutor(args.workers) as pool:
        outcomes = dict(pool.map(one, jobs))
    write_result(
        args.json,
        {
            "label": args.label,
            "mode": args.mode,
            "members": specs,
            "episodes_per_task": args.episodes,
            "seed": args.seed,
            "per_task": {
                t: {**rate_with_ci(rate, args.episodes), "outcomes": encode_outcomes(outcomes[t])}
                for t, rate in success_rates(outcomes).items()
            },
            "wall_s": round(time.perf_counter() - t0, 1),
        },
    )


if __name__ == "__main__":
    main()
