"""How far the cell lets a policy go: a privileged oracle (it reads every object's pose
from the simulator) against the scripted policies, per task, on the same held-out scenes.

The oracle is a reference, not something a robot could run (``mtopt.sim.oracle``). Its
success is a practical ceiling for a policy that sees only the camera and the gripper
state; the learned policy's numbers from ``benchmarks/evaluate_run.py`` with the same
``--seed`` and ``--episodes`` are measured on the very same scenes. ``feasible`` is the share of those scenes that offer
the task a target at all (no capsule in the bin: lift-capsule cannot succeed).

Usage: python benchmarks/oracle_success.py --json OUT [--episodes 100] [--seed 5]
           [--tasks lift-any,place-any] [--split test] [--workers 2]
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ProcessPoolExecutor

from _results import write_result
from mtopt.eval.evaluate import evaluate_policy, rate_with_ci
from mtopt.policies.scripted import scripted_policy_for
from mtopt.robots.sim_robot import SimRobot
from mtopt.sim.config import SimConfig
from mtopt.sim.oracle import OraclePolicy
from mtopt.tasks import DEFAULT_REGISTRY


def one(job: tuple[str, str, int, str, int]) -> tuple[str, str, float, float | None]:
    task, which, episodes, split, seed = job
    sim = SimConfig(object_split=split)
    if which == "scripted":
        rate = evaluate_policy(scripted_policy_for, DEFAULT_REGISTRY, [task], episodes, sim, seed)
        return task, which, rate[task], None
    robot = SimRobot(sim, robot_id="eval", seed=seed)
    oracle = OraclePolicy(robot, DEFAULT_REGISTRY, sim.max_steps)
    try:
        rate = evaluate_policy(
            lambda spec: oracle, DEFAULT_REGISTRY, [task], episodes, sim, seed, robot=robot
        )
    finally:
        robot.close()
    feasible = sum(oracle.feasible) / max(1, len(oracle.feasible))
    return task, which, rate[task], feasible


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", required=True)
    ap.add_argument("--episodes", type=int, default=100)
    ap.add_argument("--seed", type=int, default=5, help="5: the scenes of evaluate_run.py")
    ap.add_argument("--tasks", default=",".join(DEFAULT_REGISTRY.names))
    ap.add_argument("--split", default="test", choices=["train", "test"])
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    tasks = [t for t in args.tasks.split(",") if t]
    for t in tasks:
        DEFAULT_REGISTRY.get(t)  # unknown task: a clear error before any work
    t0 = time.perf_counter()
    jobs = [
        (t, w, args.episodes, args.split, args.seed) for t in tasks for w in ("oracle", "scripted")
    ]
    with ProcessPoolExecutor(args.workers) as pool:
        results = list(pool.map(one, jobs))
    per_task: dict[str, dict[str, object]] = {t: {} for t in tasks}
    for task, which, rate, feasible in results:
        per_task[task][which] = rate_with_ci(rate, args.episodes)
        if feasible is not None:
            per_task[task]["feasible"] = round(feasible, 4)
    out = {
        "episodes_per_task": args.episodes,
        "object_split": args.split,
        "seed": args.seed,
        "per_task": per_task,
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    write_result(args.json, out, echo=False)  # the table below shows it
    for t in tasks:
        o, s = per_task[t]["oracle"], per_task[t]["scripted"]
        f = per_task[t]["feasible"]
        print(f"{t:20s} oracle {o['success']:.2f}  scripted {s['success']:.2f}  feasible {f:.2f}")  # type: ignore[index]


if __name__ == "__main__":
    main()
