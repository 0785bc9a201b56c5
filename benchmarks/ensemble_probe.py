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
Scenes: the same as ``evaluate_run.py --seed S`` (one task per worker process), in the
cell and with the tasks of the run the members belong to (the ``config.json`` of DIR or
the folders above it; the default cell and built-in tasks without one). Members of runs
with different cells or tasks are refused, and so is a run's own in-run evaluation seed.
The episode outcomes are kept, for paired comparisons (``compare_evals.py``).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

from _results import write_result
from evaluate_run import in_run_seed, own_config
from mtopt.eval.evaluate import (
    EVAL_SCENES_VERSION,
    encode_outcomes,
    evaluate_outcomes,
    rate_with_ci,
    success_rates,
)
from mtopt.qtopt.cem import CEMConfig, candidate_scorer, cem_maximize
from mtopt.qtopt.learner import load_network
from mtopt.qtopt.networks import QNetwork, q_state
from mtopt.qtopt.weights import average_state_dicts, load_source
from mtopt.robots.base import Observation
from mtopt.runtime.config import run_registry, run_sim_config
from mtopt.runtime.local import source_run
from mtopt.sim.cell import CELL_VERSION, SimConfig
from mtopt.tasks.registry import TaskRegistry


def member_run(spec: str) -> Path | None:
    """The run or policy folder a member ``DIR:part`` belongs to: the nearest of DIR and
    the folders above it with a ``config.json``; None without one."""
    return source_run(spec.rpartition(":")[0])


def common_cell(specs: list[str], split: str = "test") -> tuple[SimConfig, TaskRegistry]:
    """The cell (with ``split``'s objects) and tasks every member was trained with;
    ValueError when two members' runs differ in either."""
    cells = []
    for spec in specs:
        run = member_run(spec)
        cells.append((spec, run_sim_config(run, split), run_registry(run)))
    first, sim, registry = cells[0]
    for spec, other_sim, other_registry in cells[1:]:
        if other_sim != sim:
            raise ValueError(f"{spec} was trained in another cell than {first}: {other_sim}")
        if other_registry.names != registry.names:
            raise ValueError(
                f"{spec} was trained on other tasks than {first}: "
                f"{other_registry.names} against {registry.names}"
            )
    return sim, registry


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

    def __init__(self, nets: list[QNetwork], names: tuple[str, ...], seed: int = 0):
        self.nets, self.names, self.cem = nets, names, CEMConfig(precision="fp32")
        self._gen = torch.Generator().manual_seed(seed)
        self._task = 0

    def reset(self, task: str, rng: np.random.Generator) -> None:
        self._task = self.names.index(task)
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
    sim, registry = common_cell(specs)
    pol = EnsemblePolicy(members(specs, mode), tuple(registry.names), seed)
    wins = evaluate_outcomes(lambda spec: pol, registry, [task], episodes, sim, seed)
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
    try:
        sim, registry = common_cell(specs)
        for t in tasks:
            registry.get(t)  # unknown task: a clear error before any work
    except (ValueError, KeyError) as exc:
        ap.error(str(exc))
    runs = sorted({str(r) for r in map(member_run, specs) if r is not None})
    for run in runs:
        if (why := in_run_seed(run, own_config(run), args.seed)) is not None:
            ap.error(why)
    t0 = time.perf_counter()

    def versions() -> dict[str, int]:
        return {spec: load_source(spec.rpartition(":")[0])[0] for spec in specs}

    before = versions()  # the workers load the latest weights when they start
    jobs = [(specs, args.mode, t, args.episodes, args.seed) for t in tasks]
    with ProcessPoolExecutor(args.workers) as pool:
        outcomes = dict(pool.map(one, jobs))
    if versions() != before:
        print("warning: a member published new weights during the probe (probe a stopped run)")
    write_result(
        args.json,
        {
            "label": args.label,
            "mode": args.mode,
            "members": specs,
            "member_versions": before,
            "runs": runs,
            "episodes_per_task": args.episodes,
            "seed": args.seed,
            "objects": "test",
            "cell_version": CELL_VERSION,
            "eval_scenes": EVAL_SCENES_VERSION,
            "sim": dataclasses.asdict(sim),
            "cem": dataclasses.asdict(CEMConfig(precision="fp32")),
            "per_task": {
                t: {**rate_with_ci(rate, args.episodes), "outcomes": encode_outcomes(outcomes[t])}
                for t, rate in success_rates(outcomes).items()
            },
            "wall_s": round(time.perf_counter() - t0, 1),
        },
    )


if __name__ == "__main__":
    main()
