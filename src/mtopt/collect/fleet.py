"""A local fleet: N robot processes collecting into one store, restarted if they die."""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import queue as queue_mod
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mtopt.collect.loop import CollectConfig


@dataclasses.dataclass(frozen=True)
class FleetSpec:
    store: str
    robots: int
    episodes_per_robot: int | None  # None: until stopped
    collect: CollectConfig
    sim: dict[str, Any]  # SimConfig fields
    seed: int = 0
    weights_dir: str | None = None
    switch_file: str | None = None
    epsilon: float = 0.1
    noise_std: float = 0.1
    max_rate: float = 0.0  # episodes per second per robot at most (0: unlimited)


def robot_id(i: int) -> str:
    return f"robot-{i:02d}"


def _worker(i: int, spec: FleetSpec, episodes: int | None, seed: int, q: Any, stop: Any) -> None:
    import torch

    torch.set_num_threads(1)
    from mtopt._signals import install_for_process
    from mtopt.collect.loop import CollectLoop, PolicyProvider
    from mtopt.robots.sim_robot import SimRobot
    from mtopt.sim.cell import SimConfig
    from mtopt.store.writer import EpisodeWriter
    from mtopt.tasks import DEFAULT_REGISTRY

    install_for_process()  # p.terminate() / kill: flush what is buffered, then exit
    sim = SimConfig(**spec.sim)
    robot = SimRobot(sim, robot_id=robot_id(i), seed=seed)
    writer = EpisodeWriter(
        spec.store, robot_id(i), spec.collect.flush_every, spec.collect.flush_seconds
    )
    provider = PolicyProvider(
        DEFAULT_REGISTRY,
        spec.weights_dir,
        spec.switch_file,
        spec.epsilon,
        spec.noise_std,
        seed=seed,
        scripted_epsilon=spec.collect.scripted_epsilon,
        scripted_early_terminate=spec.collect.scripted_early_terminate,
        learned_fraction=spec.collect.learned_fraction,
    )
    loop = CollectLoop(robot, DEFAULT_REGISTRY, writer, provider, spec.collect, seed=seed)
    n = 0
    t0 = time.monotonic()
    try:
        while (episodes is None or n < episodes) and not stop.is_set():
            ep = loop.run_one()
            n += 1
            q.put((i, ep.task, ep.policy, ep.gt_success))
            if spec.max_rate > 0:
                ahead = n / spec.max_rate - (time.monotonic() - t0)
                if ahead > 0:
                    stop.wait(ahead)
    except KeyboardInterrupt:
        pass
    finally:
        writer.close()
        robot.close()


def written_per_robot(store: str | Path) -> dict[str, int]:
    from mtopt.store.reader import EpisodeReader

    counts: dict[str, int] = {}
    for r in EpisodeReader(store, must_exist=False).metadata():
        counts[r["robot_id"]] = counts.get(r["robot_id"], 0) + 1
    return counts


def run_fleet(
    spec: FleetSpec,
    on_episode: Callable[[int, str, str, bool | None], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    max_restarts: int = 5,
) -> dict[str, Any]:
    """Run the fleet to completion (or until ``should_stop()``/Ctrl-C); returns a summary."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    stop = ctx.Event()
    Path(spec.store).mkdir(parents=True, exist_ok=True)
    done_before = written_per_robot(spec.store)
    procs: dict[int, Any] = {}
    restarts = dict.fromkeys(range(spec.robots), 0)

    def start(i: int) -> None:
        remaining = None
        if spec.episodes_per_robot is not None:
            already = written_per_robot(spec.store).get(robot_id(i), 0) - done_before.get(
                robot_id(i), 0
            )
            remaining = max(0, spec.episodes_per_robot - already)
            if remaining == 0:
                return
        seed = spec.seed * 1000 + i + 101 * restarts[i]
        p = ctx.Process(target=_worker, args=(i, spec, remaining, seed, q, stop), daemon=True)
        p.start()
        procs[i] = p

    for i in range(spec.robots):
        start(i)
    interrupted = False
    try:
        while procs:
            try:
                i, task, policy, gt = q.get(timeout=0.2)
                if on_episode:
                    on_episode(i, task, policy, gt)
            except queue_mod.Empty:
                pass
            if should_stop and should_stop():
                stop.set()
            for i, p in list(procs.items()):
                if p.is_alive():
                    continue
                p.join()
                del procs[i]
                if p.exitcode not in (0, None) and not stop.is_set() and restarts[i] < max_restarts:
                    restarts[i] += 1
                    start(i)
    except KeyboardInterrupt:
        interrupted = True
        stop.set()
        for p in procs.values():
            p.join(timeout=30)
    finally:
        for p in procs.values():
            if p.is_alive():
                p.terminate()
        while True:  # drain progress messages so the queue's feeder thread can exit
            try:
                msg = q.get_nowait()
                if on_episode:
                    on_episode(*msg)
            except (queue_mod.Empty, OSError, ValueError):
                break
    counts = written_per_robot(spec.store)
    return {
        "written": {k: counts.get(k, 0) - done_before.get(k, 0) for k in counts},
        "restarts": restarts,
        "interrupted": interrupted,
        "wall_time": time.time(),
    }
