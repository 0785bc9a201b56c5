"""How does a run's Q-function rank actions along its own lift episodes? A diagnostic.

The learned lift policy's commands jump from step to step and 30% of its episodes never
terminate (docs/learning-history.md, "What the learned lift policy has learned"). One
explanation: Q is nearly flat over much of the action space, so CEM's 2 x 64 samples
pick from noise. This measures it.

It rolls the CEM policy (acting weights, no exploration) out on held-out lift scenes, in
the cell the run learned in (its ``config.json``'s sim settings) with its tasks, and, at
every step, also scores the state with privileged simulator knowledge:

  q_cem          Q of the action CEM chose
  q_spread       the 90th minus the 10th percentile of Q over 512 uniform random actions
                 (gripper open or closed at random, never terminate)
  close_gap      mean Q of those random actions with the gripper closed minus with it
                 open (what Q thinks the gripper command is worth here)
  cem_repeat_sd  the standard deviation of CEM's (dx, dy) over 5 runs with other seeds,
                 in action units (1 = max_step_m): how reproducible the choice is
  cem_q_gap      max minus min of Q(s, a*) over those 5 runs
  approach_rho   Spearman correlation, over the random open-gripper actions, between
                 Q and how much the move brings the gripper horizontally closer to the
                 nearest object (1: Q prefers approaching; 0: blind to where objects are)
  cem_toward     cosine between CEM's (dx, dy) and the direction to the nearest object
                 (only where the object is more than 2 cm away horizontally)

Summaries are split by height (above / below 8 cm) and by whether the episode lifted
an object. Writes JSON, with the cell (``cell_version``, ``sim``). The scenes are those
of ``evaluate_run.py --seed S``; a run's own in-run evaluation seed is refused.

Usage: python benchmarks/q_landscape_probe.py --run runs/r20 --json OUT
           [--task lift-any] [--episodes 30] [--seed 5] [--part acting|online]
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from typing import Any

import numpy as np
import torch

from _results import write_result
from evaluate_run import in_run_seed, own_config
from grasp_outcome_probe import nearest_offset
from mtopt.eval.evaluate import eval_scene_seed
from mtopt.policies.cem_policy import CEMPolicy
from mtopt.qtopt.cem import cem_argmax
from mtopt.qtopt.networks import q_state
from mtopt.robots.base import Observation
from mtopt.robots.sim_robot import SimRobot
from mtopt.runtime.config import run_registry, run_sim_config
from mtopt.sim.cell import CELL_VERSION, SimConfig
from mtopt.sim.runner import run_episode

N_RANDOM = 512
N_REPEAT = 5


def average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 0..n-1, ties sharing the mean of their ranks."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x), float)
    ranks[order] = np.arange(len(x), dtype=float)
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return (sums / counts)[inverse]


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation (ties get average ranks; NaN when one side is constant)."""
    rx, ry = average_ranks(np.asarray(x)), average_ranks(np.asarray(y))
    rx = rx - rx.mean()
    ry = ry - ry.mean()
    den = float(np.sqrt((rx * rx).sum() * (ry * ry).sum()))
    return float((rx * ry).sum() / den) if den > 0 else float("nan")


class ProbingPolicy:
    """The CEM policy, plus measurements of Q around every state it acts in."""

    name = "probe"

    def __init__(self, inner: CEMPolicy, robot: SimRobot, sim: SimConfig, seed: int):
        self.inner, self.robot, self.sim = inner, robot, sim
        self.rows: list[dict[str, float]] = []
        self._gen = torch.Generator().manual_seed(seed + 1)
        self._rng = np.random.default_rng(seed + 2)

    def reset(self, task: str, rng: np.random.Generator) -> None:
        self.inner.reset(task, rng)

    @torch.no_grad()
    def act(self, obs: Observation) -> np.ndarray:
        net = self.inner.net
        assert net is not None
        action = self.inner.act(obs)
        img = torch.from_numpy(np.ascontiguousarray(obs.image))[None]
        state = torch.from_numpy(q_state(obs.state, obs.pose, net.cfg))[None]
        task = torch.tensor([self.inner._task])
        feats = net.tower(img)
        ctx = net.candidate_context(feats, net.state_input(img, state), task, img)
        rand = self._rng.uniform(-1, 1, (N_RANDOM, 6)).astype(np.float32)
        rand[:, 4] = np.where(self._rng.random(N_RANDOM) < 0.5, 1.0, -1.0)
        rand[:, 5] = -1.0
        q_rand = torch.sigmoid(net.candidate_logits(ctx, torch.from_numpy(rand)[None]))[0].numpy()
        q_cem = float(
            torch.sigmoid(net.candidate_logits(ctx, torch.from_numpy(action[None, None])))[0, 0]
        )
        reps, q_reps = [], []
        for _ in range(N_REPEAT):
            best, q = cem_argmax(net, img, state, task, self.inner.cem, self._gen, feats=feats)
            reps.append(best[0, :2].numpy())
            q_reps.append(float(q[0]))
        near = nearest_offset(self.robot)  # m, object minus gripper
        row: dict[str, float] = {
            "height": float(obs.state[1]) if len(obs.state) > 1 else float("nan"),
            "q_cem": q_cem,
            "q_spread": float(np.percentile(q_rand, 90) - np.percentile(q_rand, 10)),
            "q_rand_max": float(q_rand.max()),
            "close_gap": float(q_rand[rand[:, 4] > 0].mean() - q_rand[rand[:, 4] < 0].mean()),
            "cem_repeat_sd": float(np.stack(reps).std(0).mean()),
            "cem_q_gap": float(max(q_reps) - min(q_reps)),
            "near_cm": float(np.hypot(*near) * 100) if np.all(np.isfinite(near)) else float("nan"),
            "approach_rho": float("nan"),
            "cem_toward": float("nan"),
            "close": float(action[4] > 0),
            "terminate": float(action[5] > 0),
        }
        if np.all(np.isfinite(near)):
            opened = rand[:, 4] < 0
            moved = rand[opened, :2] * self.sim.max_step_m
            gain = np.hypot(*near) - np.hypot(near[0] - moved[:, 0], near[1] - moved[:, 1])
            row["approach_rho"] = spearman(q_rand[opened], gain)
            if np.hypot(*near) > 0.02 and np.hypot(*action[:2]) > 1e-3:
                row["cem_toward"] = float(
                    action[:2] @ near / (np.hypot(*action[:2]) * np.hypot(*near))
                )
        self.rows.append(row)
        return action


def summarize(rows: list[dict[str, float]]) -> dict[str, Any]:
    if not rows:
        return {"steps": 0}
    out: dict[str, Any] = {"steps": len(rows)}
    for key in (
        "q_cem",
        "q_spread",
        "close_gap",
        "cem_repeat_sd",
        "cem_q_gap",
        "approach_rho",
        "cem_toward",
    ):
        vals = np.array([r[key] for r in rows], float)
        vals = vals[np.isfinite(vals)]
        if len(vals):
            out[key] = {
                "median": round(float(np.median(vals)), 4),
                "mean": round(float(vals.mean()), 4),
                "n": len(vals),
            }
    out["close_rate"] = round(float(np.mean([r["close"] for r in rows])), 3)
    out["terminate_rate"] = round(float(np.mean([r["terminate"] for r in rows])), 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", required=True)
    ap.add_argument("--json", required=True)
    ap.add_argument("--task", default="lift-any")
    ap.add_argument("--episodes", type=int, default=30)
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--part", default="acting", choices=("acting", "online"))
    args = ap.parse_args()
    try:  # the run's cell and tasks
        sim = run_sim_config(args.run, "test")
        registry = run_registry(args.run)
        spec = registry.get(args.task)
    except (ValueError, KeyError) as exc:  # a ConfigError is a ValueError
        ap.error(str(exc))
    if (why := in_run_seed(args.run, own_config(args.run), args.seed)) is not None:
        ap.error(why)
    torch.set_num_threads(1)
    t0 = time.time()
    robot = SimRobot(sim, robot_id="probe", seed=args.seed)
    inner = CEMPolicy(
        registry.names, weights_dir=f"{args.run}/weights", seed=args.seed, part=args.part
    )
    probe = ProbingPolicy(inner, robot, sim, args.seed)
    episodes = []
    try:
        for k in range(args.episodes):
            scene_seed = eval_scene_seed(args.seed, 0, k)
            robot.reset_scene(scene_seed)
            start = len(probe.rows)
            rec = run_episode(robot, probe, spec, np.random.default_rng(scene_seed), sim.max_steps)
            won = bool(spec.succeeded(robot.scene_state()))
            for r in probe.rows[start:]:
                r["success"] = float(won)
            episodes.append({"success": won, "steps": rec.num_steps, "terminated": rec.terminated})
    finally:
        robot.close()
    rows = probe.rows
    out = {
        "run": args.run,
        "weights_version": inner.version,
        "part": args.part,
        "task": args.task,
        "seed": args.seed,
        "cell_version": CELL_VERSION,
        "sim": dataclasses.asdict(sim),
        "episodes": len(episodes),
        "success_rate": round(float(np.mean([e["success"] for e in episodes])), 3),
        "terminated_rate": round(float(np.mean([e["terminated"] for e in episodes])), 3),
        "all": summarize(rows),
        "high (>= 8 cm)": summarize([r for r in rows if r["height"] >= 0.08]),
        "low (< 8 cm)": summarize([r for r in rows if r["height"] < 0.08]),
        "successful episodes": summarize([r for r in rows if r["success"] > 0]),
        "failed episodes": summarize([r for r in rows if r["success"] == 0]),
        "seconds": round(time.time() - t0, 1),
    }
    write_result(args.json, out)


if __name__ == "__main__":
    main()
