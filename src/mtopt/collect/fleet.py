"""A local fleet: N robot processes collecting into one store, restarted if they die."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import multiprocessing as mp
import os
import time
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from mtopt.collect.loop import CollectConfig

log = logging.getLogger(__name__)


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
    extra_tasks: tuple[dict[str, Any], ...] = ()  # tasks after the built-in ones
    cem: Any = None  # CEMConfig of the learned policy's action search (None: CEMPolicy's)
    robot_factory: str = ""  # MODULE:NAME making each robot (mtopt.robots.factory; "": the sim)


def robot_id(i: int) -> str:
    return f"robot-{i:02d}"


def rate_wait(episodes_done: int, max_rate: float, elapsed_s: float) -> float:
    """Seconds a robot waits after ``episodes_done`` episodes in ``elapsed_s`` seconds to
    collect at most ``max_rate`` episodes per second (0: unlimited, no wait)."""
    if max_rate <= 0:
        return 0.0
    return max(0.0, episodes_done / max_rate - elapsed_s)


def robot_seed(base: int, written_before: int) -> int:
    """A robot's seed from the run's base seed for it and the episodes it wrote to the
    store before it (re)started: a restarted or resumed robot collects new scenes, and
    the same store history gives the same seeds (no wall clock)."""
    return base + 7919 * written_before


def _worker(
    i: int,
    spec: FleetSpec,
    episodes: int | None,
    seed: int,
    conn: Connection,
    stop: Any,
    parent: int,
) -> None:
    import torch

    torch.set_num_threads(1)
    from mtopt._signals import install_for_process
    from mtopt.collect.loop import CollectLoop, PolicyProvider
    from mtopt.robots.factory import make_robot
    from mtopt.sim.cell import SimConfig
    from mtopt.sim.runner import RobotContractError
    from mtopt.store.writer import EpisodeWriter
    from mtopt.tasks import DEFAULT_REGISTRY

    install_for_process()  # p.terminate() / kill: flush what is buffered, then exit
    # ``parent``: the fleet's process, passed in, so one killed during this slow set-up
    # is noticed too
    sim = SimConfig(**spec.sim)
    registry = DEFAULT_REGISTRY.with_extra(spec.extra_tasks)
    provider = PolicyProvider.for_collection(
        registry,
        spec.weights_dir,
        spec.switch_file,
        spec.collect,
        spec.epsilon,
        spec.noise_std,
        seed=seed,
        cem=spec.cem,
    )
    writer = EpisodeWriter(
        spec.store, robot_id(i), spec.collect.flush_every, spec.collect.flush_seconds
    )
    try:  # the robot last: a real arm connects here, and is closed on every way out
        robot = make_robot(spec.robot_factory, sim, robot_id(i), seed)
    except RobotContractError as exc:
        # a robot that does not fit the run (its image size, id, gripper status) fails
        # the same way every time: said once, not restarted (it connected and closed a
        # real arm six times, with six tracebacks)
        writer.close()
        with contextlib.suppress(BrokenPipeError, OSError):
            conn.send((REFUSED, str(exc)))
        conn.close()
        raise SystemExit(ROBOT_REFUSED_EXIT) from None
    except BaseException:
        writer.close()
        raise
    n = 0
    t0 = time.monotonic()
    try:
        loop = CollectLoop(robot, registry, writer, provider, spec.collect, seed=seed)
        # a parent killed outright (SIGKILL, the OOM killer) sets no stop: a robot whose
        # parent is gone (it was handed to another) stops after its episode, which is on
        # disk all the same; an orphan went on collecting beside the resumed run's robots
        while (episodes is None or n < episodes) and not stop.is_set():
            ep = loop.run_one()
            n += 1
            try:
                conn.send((i, ep.task, ep.policy, ep.gt_success))
            except (BrokenPipeError, OSError):
                break
            if os.getppid() != parent:
                break
            ahead = rate_wait(n, spec.max_rate, time.monotonic() - t0)
            if ahead > 0:
                stop.wait(ahead)
    except KeyboardInterrupt:
        pass
    finally:
        # each closed whatever the one before raised (a flush that fails on a full disk
        # used to leave a real arm connected)
        try:
            writer.close()
        finally:
            try:
                robot.close()
            finally:
                conn.close()


def written_per_robot(store: str | Path) -> dict[str, int]:
    from mtopt.store.reader import EpisodeReader

    counts: dict[str, int] = {}
    for r in EpisodeReader(store, must_exist=False).metadata():
        counts[r["robot_id"]] = counts.get(r["robot_id"], 0) + 1
    return counts


REFUSED = "refused"
"""The message a robot process sends when the factory's robot fails the run's checks."""
ROBOT_REFUSED_EXIT = 3
"""Its exit status then: the fleet gives that robot up instead of restarting it."""

EARLY_EXIT_GRACE_S = 3.0
"""How long a robot that exited cleanly before its quota waits to be restarted: a stop of
the whole fleet (the same signal sent to the group) arrives in it."""


def recent_deaths(times: list[float], now: float, window_s: float) -> list[float]:
    """A robot's deaths within ``window_s`` of ``now``, this one (at ``now``) included."""
    return [t for t in times if now - t < window_s] + [now]


def run_fleet(
    spec: FleetSpec,
    on_episode: Callable[[int, str, str, bool | None], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    max_restarts: int = 5,
    restart_window_s: float = 600.0,
) -> dict[str, Any]:
    """Run the fleet to completion (or until ``should_stop()``/Ctrl-C); returns a summary.
    A ``spec.robot_factory`` that cannot be imported is a ValueError here, before any
    robot process starts. A robot process that dies is restarted; one that has died
    more than ``max_restarts`` times within ``restart_window_s`` is given up, with a log
    line (occasional faults over a long run used to use up its restarts for good)."""
    if spec.robot_factory:
        from mtopt.robots.factory import load_robot_factory

        load_robot_factory(spec.robot_factory)
    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    Path(spec.store).mkdir(parents=True, exist_ok=True)
    done_before = written_per_robot(spec.store)
    procs: dict[int, Any] = {}
    # One pipe per robot process (not a shared Queue): a shared queue has a lock that a
    # SIGKILLed writer can die holding, which would hang every later writer.
    conns: dict[int, Connection] = {}
    restarts = dict.fromkeys(range(spec.robots), 0)
    deaths: dict[int, list[float]] = {i: [] for i in range(spec.robots)}  # monotonic times
    failed: list[int] = []  # robots that failed after their last restart
    refused: dict[str, str] = {}  # robots the run's checks refused: why

    def left_to_write(i: int) -> int | None:
        """Robot i's episodes still to write (None: no quota, it runs until stopped)."""
        if spec.episodes_per_robot is None:
            return None
        already = written_per_robot(spec.store).get(robot_id(i), 0) - done_before.get(
            robot_id(i), 0
        )
        return max(0, spec.episodes_per_robot - already)

    def start(i: int, remaining: int | None) -> None:
        """Robot i's process, to write ``remaining`` episodes (``left_to_write``)."""
        if remaining == 0:
            return
        # on a store that already holds this robot's episodes (a resumed run, or a new run
        # on an old run's store), it goes on to new scenes (robot_seed)
        base = spec.seed * 1000 + i + 101 * restarts[i]
        seed = robot_seed(base, done_before.get(robot_id(i), 0))
        reader, writer = ctx.Pipe(duplex=False)
        p = ctx.Process(
            target=_worker, args=(i, spec, remaining, seed, writer, stop, os.getpid()), daemon=True
        )
        p.start()
        writer.close()  # the child holds the only write end: EOF when it dies
        procs[i], conns[i] = p, reader

    def drain(timeout: float) -> None:
        for conn in wait(list(conns.values()), timeout=timeout):
            assert isinstance(conn, Connection)
            i = next(k for k, c in conns.items() if c is conn)
            try:
                msg = conn.recv()
            except (EOFError, OSError, ValueError, TypeError, AttributeError, ImportError):
                # the robot exited (or died mid-message): its episodes are on disk
                del conns[i]
                conn.close()
                continue
            if msg[0] == REFUSED:
                refused[robot_id(i)] = str(msg[1])
            elif on_episode:
                on_episode(*msg)

    for i in range(spec.robots):
        start(i, left_to_write(i))
    interrupted = False
    try:
        while procs:
            if conns:
                drain(0.2)
            else:
                time.sleep(0.05)
            if should_stop and should_stop():
                stop.set()
            for i, p in list(procs.items()):
                if p.is_alive():
                    continue
                p.join()
                del procs[i]
                deadline = time.monotonic() + 5.0
                while i in conns and time.monotonic() < deadline:
                    drain(0.2)  # read what it sent before exiting, up to EOF
                if i in conns:
                    conns.pop(i).close()
                if p.exitcode == ROBOT_REFUSED_EXIT and robot_id(i) in refused:
                    failed.append(i)
                    log.error(
                        "robot %s refused, not restarted: %s", robot_id(i), refused[robot_id(i)]
                    )
                    continue
                # a robot that exited 0 before its quota was stopped on its own (a SIGTERM
                # sent to it, which it takes as a stop): it is restarted like one that
                # died, where it used to leave the fleet a robot short without a word
                left = left_to_write(i)
                if stop.is_set() or left == 0:
                    continue
                if p.exitcode in (0, None):
                    # the signal may have gone to the whole group (Ctrl-C, `timeout`, a
                    # scheduler's kill), whose stop reaches this loop a moment later
                    grace = time.monotonic() + EARLY_EXIT_GRACE_S
                    while time.monotonic() < grace and not stop.is_set():
                        if should_stop and should_stop():
                            stop.set()
                        else:
                            time.sleep(0.1)
                    if stop.is_set():
                        continue
                    log.warning(
                        "robot %s stopped before the fleet did (a signal sent to it?)", robot_id(i)
                    )  # fmt: skip
                deaths[i] = recent_deaths(deaths[i], time.monotonic(), restart_window_s)
                if len(deaths[i]) <= max_restarts:
                    restarts[i] += 1
                    start(i, left)
                else:  # gave up: it failed max_restarts + 1 times within the window
                    failed.append(i)
                    log.error(
                        "robot %s died %d times within %.0f s: given up (its errors are "
                        "in the log above); the other robots go on",
                        robot_id(i), len(deaths[i]), restart_window_s,
                    )  # fmt: skip
    except KeyboardInterrupt:
        interrupted = True
        stop.set()
        for p in procs.values():
            p.join(timeout=30)
    finally:
        for p in procs.values():
            if p.is_alive():
                p.terminate()
        for p in procs.values():
            p.join(timeout=10)
        try:
            while conns and wait(list(conns.values()), timeout=0.0):
                drain(0.0)  # progress messages still in the pipes
        except KeyboardInterrupt:
            pass
        for c in conns.values():
            c.close()
    counts = written_per_robot(spec.store)
    return {
        "written": {k: counts.get(k, 0) - done_before.get(k, 0) for k in counts},
        "restarts": restarts,
        "failed": sorted(failed),
        "refused": refused,
        "interrupted": interrupted,
        "wall_time": time.time(),
    }
