"""Ray runtime: the same components as the local runtime, as Ray actors.

  RobotActor  x N   (collect.CollectLoop + store.EpisodeWriter)   --> shared store dir
  ReplayActor x M   (ReplayService: store reader -> LogReplay -> BellmanUpdater) --> batches
  driver            (qtopt.Learner: SGD, publish weights, checkpoints, evaluation, report)

Weights travel through the shared run directory (published atomically, reloaded by
version). Actors are created with ``max_restarts=-1``: a killed robot comes back and goes
on writing to the store (flushed episodes are never lost, episode ids are unique); a
killed replay actor rebuilds its buffers from the store. A dead learner (driver) resumes
from its last checkpoint with ``--resume``. No algorithm code lives here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import secrets
import signal
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from mtopt.runtime.config import ConfigError, RunConfig

log = logging.getLogger(__name__)
MAX_ROBOT_FAILURES = 5
"""Errors in a row after which a robot actor is dropped (the local fleet restarts a
robot process as often). A robot actor's death counts as one (its call is not retried)."""
REPLAY_STEP_TIMEOUT_S = 600.0
"""How long the driver waits for the replay actors' batches before it stops the run
(checkpoint and report follow): an actor that cannot be placed or keeps dying would
otherwise hold the run forever."""


def _seed_after_restart(seed: int) -> int:
    """``seed`` in a new actor; with fresh entropy in one Ray restarted after a crash, so
    it does not repeat the scenes or the sampling stream it started with."""
    import ray

    if ray.get_runtime_context().was_current_actor_reconstructed:
        return seed ^ secrets.randbits(30)
    return seed


def newest_shards(shards: Sequence[Path], episodes: int) -> int:
    """How many of the newest ``shards`` (listed oldest first) hold ``episodes`` episodes
    (all of them where they hold fewer), read from the shards' footers; one whose footer
    cannot be read counts as holding none."""
    import pyarrow.parquet as pq

    taken = held = 0
    for path in reversed(shards):
        if held >= episodes:
            break
        taken += 1
        try:
            held += pq.ParquetFile(path).metadata.num_rows
        except Exception:  # (a shard being written, a corrupt one: the reader's concern)
            continue
    return taken


def check_ray_address(address: str | None, timeout_s: float = 5.0) -> None:
    """A ``host:port`` of a Ray cluster's head must answer a TCP connection within
    ``timeout_s``, else a ``ConfigError``: ``ray.init`` waits minutes on an address where
    nothing listens (6.5 minutes here), and the run used to stage its success detector
    first. 'auto', 'local' and ``ray://`` client addresses are left to Ray."""
    import socket

    if not address or address in ("auto", "local") or "://" in address:
        return
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"--address {address!r}: expected HOST:PORT of a Ray head, or 'auto'")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            pass
    except OSError as exc:
        raise ConfigError(
            f"--address {address}: no Ray cluster there ({exc}); start one with "
            "`ray start --head`, or leave --address out for a local Ray"
        ) from None


def driver_threads(cpus: int, robots: int, replay_workers: int) -> int:
    """Torch threads of the driver (learner, SD rounds) beside a local Ray whose robot and
    replay actors run one thread each: the cores they leave, at least one. Unset, the
    learner's OpenMP threads took every core and spun against the actors (the local
    runtime leaves the learner the cores its robots leave, measured ~20x faster)."""
    return max(1, cpus - robots - replay_workers)


class RobotWorker:
    """One robot of a Ray run: its ``CollectLoop`` and store writer, ``run(n)`` episodes
    at a time (the Ray actor is this class, ``_robot_actor_cls``).

    An error in an episode goes to the driver, which counts it, as a robot process's
    death does in the local fleet; and as a restarted process would, the robot is built
    again by its factory first (a real arm reconnected, a simulator the error left in an
    unknown state started anew), on new scenes. A robot whose factory fails (when the
    actor starts too) is built again at its next call (the driver drops it after
    ``MAX_ROBOT_FAILURES`` failed calls in a row).
    """

    def __init__(self, index: int, cfg: RunConfig, root: str, seed: int):
        import torch

        torch.set_num_threads(1)
        from mtopt.collect.fleet import robot_id, robot_seed, written_per_robot
        from mtopt.collect.loop import PolicyProvider
        from mtopt.store.writer import EpisodeWriter

        self.index, self.cfg, self.registry = index, cfg, cfg.registry()
        # a restarted (or resumed) actor goes on from the episodes it already wrote, so
        # its scenes are new and the same store history gives the same seeds
        try:
            written = written_per_robot(Path(root) / "store").get(robot_id(index), 0)
        except Exception as exc:  # an unreadable store must not keep the robot from starting
            log.warning("robot %d: could not count its stored episodes (%s)", index, exc)
            written = 0
        self.seed = robot_seed(seed, written)
        self.rebuilt = 0  # robots built again after an error
        self.max_rate, self.done, self.t0 = cfg.max_collect_rate, 0, time.monotonic()
        self.writer = EpisodeWriter(
            Path(root) / "store",
            robot_id(index),
            cfg.collect.flush_every,
            cfg.collect.flush_seconds,
        )
        self.provider = PolicyProvider.for_collection(
            self.registry,
            Path(root) / "weights",
            Path(root) / "switch.json",
            cfg.collect,
            cfg.epsilon,
            cfg.noise_std,
            seed=self.seed,
            cem=cfg.collection_cem(),
        )
        self._collect = dataclasses.replace(cfg.collect, max_steps=cfg.sim.max_steps)
        self.robot: Any = None
        self.loop: Any = None
        try:
            self._build(self.seed)
        except Exception as exc:
            # an arm not answering yet: built again at the first call, as after an error.
            # Raised here, it killed the actor for good (Ray restarts no actor whose
            # constructor raised): the driver dropped the robot after five failed calls
            log.warning("robot %d: its factory failed (%r): again at its first call", index, exc)
        except BaseException:
            self.writer.close()
            raise

    def _build(self, seed: int) -> None:
        from mtopt.collect.fleet import robot_id
        from mtopt.collect.loop import CollectLoop
        from mtopt.robots.factory import make_robot

        robot = make_robot(self.cfg.robot_factory, self.cfg.sim, robot_id(self.index), seed)
        try:
            loop = CollectLoop(
                robot, self.registry, self.writer, self.provider, self._collect, seed=seed
            )
        except BaseException:  # a robot made and refused: closed (a real arm disconnected)
            with contextlib.suppress(Exception):
                robot.close()
            raise
        self.robot, self.loop = robot, loop

    def _rebuild(self) -> None:
        """Close the robot (best effort: it just failed) and build it again on new scenes."""
        if self.robot is not None:
            with contextlib.suppress(Exception):
                self.robot.close()
        self.robot = self.loop = None
        self.rebuilt += 1
        self._build(self.seed + 104729 * self.rebuilt)

    def pid(self) -> int:
        return os.getpid()

    def run(self, episodes: int) -> dict[str, int]:
        from mtopt.collect.fleet import rate_wait

        counts: dict[str, int] = {}
        try:
            if self.loop is None:  # its factory failed after the last error: again
                self._rebuild()
            for _ in range(episodes):
                try:
                    ep = self.loop.run_one()
                except Exception as exc:
                    log.warning("robot %d: %r in an episode: building it again", self.index, exc)
                    try:
                        self._rebuild()
                    except Exception as again:  # tried again at the next call
                        log.warning("robot %d: its factory failed too: %r", self.index, again)
                    raise
                counts[ep.task] = counts.get(ep.task, 0) + 1
                self.done += 1
                # at most cfg.max_collect_rate episodes per second, as the local fleet
                time.sleep(rate_wait(self.done, self.max_rate, time.monotonic() - self.t0))
        except Exception:
            with contextlib.suppress(Exception):  # the episode's error is the one to see
                self.writer.flush()  # the episodes before it are kept too
            raise
        # no flush here: the writer's own policy (collect.flush_every, flush_seconds), as
        # in the local fleet; a flush per call made shards of 4 episodes (4x the files)
        return counts

    def flush(self) -> None:
        """Write the buffered episodes now (the driver's end of a run, before it counts)."""
        self.writer.flush()

    def close(self) -> None:
        """The run's end: the writer's last episodes flushed, the robot closed (a real
        arm parked and disconnected), as the local fleet's robot processes do."""
        try:
            self.writer.close()
        finally:
            if self.robot is not None:
                self.robot.close()


def _robot_actor_cls() -> Any:
    import ray

    class RobotActor(RobotWorker):
        def __init__(self, index: int, cfg: RunConfig, root: str, seed: int):
            # after a crash: not the scenes it may have crashed on (its count of stored
            # episodes need not have moved since)
            super().__init__(index, cfg, root, _seed_after_restart(seed))

    # a dead actor restarts, but its call under way fails (no retry): the driver counts
    # it, so a robot that crashes again and again is dropped, as the local fleet does
    return ray.remote(max_restarts=-1, max_task_retries=0, num_cpus=0.5)(RobotActor)


class ReplayService:
    """One replay worker's loop, without Ray: the store's new shards -> LogReplay (SD
    rewards, impersonation, the bounded per-task buffers) -> Bellman targets with the
    newest published target networks. ``step(n)`` returns up to ``n`` batches as numpy
    arrays; none while the buffers hold fewer than their share of ``replay.min_episodes``
    episodes or the store is still being read in parts (``replay.read_shards_per_poll``; a
    resumed run's, or a killed actor's restart). The Ray runtime runs it as
    ``ReplayActor``.

    part=(i, n): worker i of n reads only its part of the store's shards
    (``EpisodeReader(part=...)``), so n workers hold n disjoint buffers (n times the
    data for one worker's memory) and each shard is decoded once; every worker
    re-balances its own batches over what it holds, so where a task's data (its
    successes above all) sits unevenly across the parts, the learner's batches together
    give it less than its share (README, Ray)."""

    def __init__(
        self,
        cfg: RunConfig,
        root: str,
        seed: int,
        part: tuple[int, int] = (0, 1),
        targets: list[dict[str, Any]] | None = None,
    ):
        """``targets``: the learner's target networks' state dicts, until its weights are
        first published (a fresh run publishes none before its first ``publish_every``
        steps)."""
        import torch

        torch.set_num_threads(1)
        from mtopt.qtopt.networks import QNetwork
        from mtopt.qtopt.updater import BellmanUpdater
        from mtopt.replay.buffers import TaskBuffers
        from mtopt.replay.logreplay import LogReplay
        from mtopt.store.reader import EpisodeReader
        from mtopt.success.network import SuccessDetector

        self.cfg, self.root = cfg, Path(root)
        registry = cfg.registry()
        self.sd = SuccessDetector.load(self.root / "sd", registry.names)
        self.buffers = TaskBuffers(registry.names, cfg.replay.capacity_per_bucket)
        self.replay = LogReplay(
            registry, self.buffers, self.sd, cfg.replay.impersonation, reward=cfg.replay.reward
        )
        self.reader = EpisodeReader(
            self.root / "store",
            must_exist=False,
            shards_per_poll=cfg.replay.read_shards_per_poll,
            part=part if part[1] > 1 else None,
        )
        wanted = min(cfg.replay.min_episodes, cfg.max_episodes or cfg.replay.min_episodes)
        self.min_episodes = max(1, -(-wanted // part[1]))  # this worker's share
        nets = [QNetwork(cfg.qnet).eval(), QNetwork(cfg.qnet).eval()]
        for net, state in zip(nets, targets or [], strict=False):
            net.load_state_dict(state)
        self.updater = BellmanUpdater(
            self.buffers,
            nets,
            cfg.cem_bellman,
            cfg.discounts(registry),
            cfg.replay.batch_size,
            cfg.replay.success_ratio,
            cfg.replay.rebalance,
            seed,
            task_weights=cfg.replay.task_shares,
            mc_bound=cfg.learner.mc_bound,
            mc_mix=cfg.learner.mc_mix,
        )
        self.q_version = -1
        self.ingested = 0

    def pid(self) -> int:
        return os.getpid()

    def _reload(self) -> None:
        from mtopt.qtopt.learner import load_network
        from mtopt.qtopt.weights import WeightsError, load_latest, read_latest
        from mtopt.success.network import SuccessDetector

        try:
            latest = read_latest(self.root / "weights")
            if latest is not None and int(latest["version"]) != self.q_version:
                version, tensors, meta = load_latest(self.root / "weights")
                self.updater.set_targets(
                    [load_network(tensors, meta, "target0"), load_network(tensors, meta, "target1")]
                )
                self.q_version = version
            if SuccessDetector.latest_version(self.root / "sd") > self.sd.version:
                sd = SuccessDetector.load(self.root / "sd")
                self.replay.set_reward_model(sd)  # (raises: self.sd stays)
                self.sd = sd
        except (OSError, ValueError, WeightsError) as exc:
            # a file being replaced, a share that hiccups (NFS): the networks and the
            # detector it has stay, and the next call tries again (as robots do)
            log.warning("replay actor: reload failed (%s); retrying", exc)

    def step(self, batches: int, ready: bool | None = None) -> dict[str, Any]:
        """``ready``: the driver's word that the workers together hold enough episodes
        (a worker whose part of the store is small would otherwise never reach its own
        share); None: this worker's own share decides."""
        from mtopt.replay.source import replay_items

        self._reload()
        eps = self.reader.poll()
        if eps:
            self.ingested += self.replay.ingest(replay_items(eps, self.cfg.qnet))
        out = []
        # a store larger than one poll (a resumed run's) is read in parts first: no
        # batches from its oldest part meanwhile
        enough = len(self.buffers) >= self.min_episodes if ready is None else ready
        # (shards it could not read, retried at each poll, hold nothing back: one that
        # stays unreadable, no permission, stopped this worker's batches for good)
        backlog = self.reader.behind - self.reader.retrying
        if backlog == 0 and enough and len(self.buffers) > 0:
            for _ in range(batches):
                b = self.updater.make_batch()
                out.append(
                    {
                        k: getattr(b, k).numpy()
                        for k in ("images", "states", "actions", "task_idx", "targets")
                    }
                )
        comp = self.replay.stats.composition(self.buffers.tasks)
        return {
            "batches": out,
            "ingested": self.ingested,
            "episodes_held": len(self.buffers),
            "composition": comp,
            "behind": self.reader.behind,  # shards of its part not read yet
        }

    def report_view(self) -> dict[str, Any]:
        """For the end-of-run report: this worker's buffer sizes per task (success,
        failure) and the composition of the batches it samples."""
        from mtopt.runtime.report import batch_composition

        return {
            "buffer_sizes": {t: list(v) for t, v in self.buffers.sizes().items()},
            "batch_share": batch_composition(self.updater),
        }


def merged_report_views(
    views: list[dict[str, Any]],
) -> tuple[dict[str, list[int]], dict[str, dict[str, float]]]:
    """Replay workers' ``report_view``s as one: their buffers are disjoint, so the sizes
    add up; the learner takes as many batches from each, so the batch shares average."""
    from mtopt.runtime.report import merge_batch_shares

    sizes: dict[str, list[int]] = {}
    for view in views:
        for task, (succ, fail) in view["buffer_sizes"].items():
            mine = sizes.setdefault(task, [0, 0])
            mine[0] += int(succ)
            mine[1] += int(fail)
    return sizes, merge_batch_shares([v["batch_share"] for v in views])


class _FinalViews:
    """An ``EpisodeSource`` of the store's new episodes as ``FinalView``s."""

    def __init__(self, reader: Any):
        self.reader = reader

    def poll(self) -> list[Any]:
        return list(self.reader.poll_final_views())

    @property
    def behind(self) -> int:
        return int(self.reader.behind)

    @property
    def retrying(self) -> int:
        return int(self.reader.retrying)


def merged_progress(results: list[dict[str, Any]]) -> tuple[int, dict[str, dict[str, int]]]:
    """Episodes ingested and the data composition over replay workers that each read a
    disjoint part of the store: their sums."""
    comp: dict[str, dict[str, int]] = {}
    for res in results:
        for task, counts in res["composition"].items():
            mine = comp.setdefault(task, dict.fromkeys(counts, 0))
            for k, v in counts.items():
                mine[k] = mine.get(k, 0) + int(v)
    return sum(int(r["ingested"]) for r in results), comp


def held_progress(
    results: list[dict[str, Any]], ingested: int, comp: dict[str, dict[str, int]]
) -> tuple[int, dict[str, dict[str, int]]]:
    """``merged_progress``, except while the workers together count fewer episodes than
    before: a replay actor that restarted counts from 0 while it re-reads its part of the
    store, so the run's count and composition hold until it has caught up (they dipped)."""
    read, now = merged_progress(results)
    return (read, now) if read >= ingested else (ingested, comp)


def _replay_actor_cls() -> Any:
    import ray

    class ReplayActor(ReplayService):
        def __init__(
            self,
            cfg: RunConfig,
            root: str,
            seed: int,
            part: tuple[int, int] = (0, 1),
            targets: list[dict[str, Any]] | None = None,
        ):
            # its seed was fixed when the actor was created: a restart replayed its
            # first sampling and CEM stream
            super().__init__(cfg, root, _seed_after_restart(seed), part, targets)

    return ray.remote(max_restarts=-1, max_task_retries=-1, num_cpus=0.5)(ReplayActor)


def run_ray(
    cfg: RunConfig,
    out: str | Path,
    resume: bool = False,
    address: str | None = None,
    kill_hook: Any = None,
) -> dict[str, Any]:
    """Run the MT-Opt loop on Ray. ``kill_hook(robots, replays, step)`` is for fault tests.
    The run folder is held (``local.hold_run``) until it returns. SIGTERM stops it as
    Ctrl-C does (checkpoint, report); its config.json says ``runtime: ray`` whatever
    ``cfg.runtime`` was (a preset's 'local' made a later ``mtopt run --resume`` go on
    locally)."""
    from mtopt._signals import stop_on_sigterm

    if cfg.runtime != "ray":
        cfg = dataclasses.replace(cfg, runtime="ray")
    made: list[Any] = []
    try:
        with stop_on_sigterm():
            return _run_ray(cfg, out, resume, address, kill_hook, made)
    finally:
        for run in made:
            run.release()


def _run_ray(
    cfg: RunConfig,
    out: str | Path,
    resume: bool,
    address: str | None,
    kill_hook: Any,
    made: list[Any],
) -> dict[str, Any]:
    import ray
    import torch

    from mtopt.qtopt.bellman import TrainBatch
    from mtopt.replay.ingest import StoreIngest
    from mtopt.replay.logreplay import ReplayStats
    from mtopt.runtime.local import (
        LocalRun,
        after_train_step,
        elapsed_before,
        last_evaluated,
        progress_bar,
        published_at,
        resume_learner,
        show_progress,
        updater_seed,
    )
    from mtopt.store.reader import EpisodeReader

    check_ray_address(address)  # seconds, before minutes of staging
    run = LocalRun(cfg, out, resume)
    made.append(run)
    c, p = cfg, run.paths
    t_start = time.time()
    t0 = t_start  # when the run started, counting its earlier invocations
    sd_labels = sd_since = 0
    fleet_error: str | None = None
    replay_error: str | None = None
    resumed = resume and p.checkpoint.exists()
    # the learner first: a checkpoint or init_from that does not fit fails before the
    # success detector's examples are staged (minutes)
    if resumed:
        learner, extra = resume_learner(p, c)
        sd_labels = run.episode_labels_kept(int(extra.get("sd_labels", 0)))
        sd_since = int(extra.get("sd_since", 0))
        run.history = list(extra.get("history", []))
        t0 = t_start - elapsed_before(extra)
    else:
        learner, started_from = run.new_learner()
        if started_from:
            run._log(started_from)
    sd = run.init_sd()
    sd_tail: StoreIngest[Any] | None = None  # (started just before the robots)

    def extras(now: float) -> dict[str, Any]:
        """What a resume needs besides the learner (the local runtime's keys)."""
        return {
            "history": run.history,
            "sd_labels": sd_labels,
            "sd_since": sd_tail.since_mark if sd_tail else sd_since,
            "elapsed_s": now - t0,
        }

    # replay actors need target networks from the start: a resumed run's are published
    # (robots had them before the stop); a fresh run's go to the actors directly, since
    # robots act with whatever is published (the random network, half their episodes,
    # from the first one; the local runtime's bootstrap data is all scripted). Over a
    # stopped run's weights new_learner has published them, marked untrained.
    initial_targets = None
    if learner.step > 0:
        if not published_at(p.weights, learner.step, False):  # (a resume's may be there)
            learner.publish(p.weights)
    else:
        initial_targets = [
            {k: v.detach().cpu() for k, v in net.state_dict().items()} for net in learner.targets
        ]
    scripted = run.scripted_baseline()
    started_here = not ray.is_initialized()
    main_thread = threading.current_thread() is threading.main_thread()
    on_sigterm = signal.getsignal(signal.SIGTERM) if main_thread else None
    if started_here:
        # a local Ray gets the CPUs its actors ask for (0.5 each), at least 2: with fewer,
        # an actor that cannot be placed waited forever and the run never ended
        try:
            ray.init(
                # "local": a new local instance, even where RAY_ADDRESS or a `ray start`
                # on this machine would have been joined (and refused our num_cpus)
                address=address or "local",
                num_cpus=None
                if address
                else max(2, math.ceil(0.5 * (c.robots + c.replay_workers))),
                include_dashboard=False,
                log_to_driver=False,
                ignore_reinit_error=True,
            )
        except ConnectionError as exc:  # --address with no cluster there: one line
            raise ConfigError(f"--address {address}: no Ray cluster reached ({exc})") from None
        # ray.init makes SIGTERM exit the driver at once: the caller's handler again
        # (mtopt run's raises KeyboardInterrupt: checkpoint, evaluation and report)
        if on_sigterm is not None and signal.getsignal(signal.SIGTERM) is not on_sigterm:
            signal.signal(signal.SIGTERM, on_sigterm)
    threads_before = torch.get_num_threads()
    if started_here and not address:
        torch.set_num_threads(driver_threads(os.cpu_count() or 2, c.robots, c.replay_workers))
    ingested = 0
    comp: dict[str, dict[str, int]] = {}
    buffer_sizes: dict[str, list[int]] = {}
    batch_share: dict[str, dict[str, float]] = {}
    stats: dict[str, float] = {}
    bar = progress_bar(learner.step, c.max_learner_steps)
    sd_pool = ThreadPoolExecutor(1, thread_name_prefix="sd-round")
    sd_job: Future[tuple[Any, int]] | None = None
    replays: list[Any] = []
    robots: list[Any] = []
    pending: dict[Any, Any] = {}
    failures: dict[Any, int] = {}  # robot actor -> its calls failed in a row

    def settle_robots(timeout_s: float) -> None:
        """Wait (bounded) for the robots' calls under way (none is started again), then
        have their writers flush what they buffer, so the final count sees it."""
        end = time.time() + timeout_s
        for ref in list(pending):
            with contextlib.suppress(Exception):
                ray.get(ref, timeout=max(0.1, end - time.time()))
        flush_end = max(end, time.time() + 10)  # (its own 10 s: the calls may have used it)
        for ref in flush_robots():
            with contextlib.suppress(Exception):
                ray.get(ref, timeout=max(0.1, flush_end - time.time()))

    def flush_robots() -> list[Any]:
        """Have every robot write what its writer buffers (not waited for): before the
        robots idle (the end of collecting), since the writer's
        ``flush_seconds`` is checked only when an episode is written, and a driver
        killed meanwhile takes the actors and their buffers with it."""
        refs = []
        for r in robots:
            if failures.get(r, 0) >= MAX_ROBOT_FAILURES:  # dropped: its calls fail
                continue
            with contextlib.suppress(Exception):
                refs.append(r.flush.remote())
        return refs

    def final_view(timeout_s: float) -> None:
        """The episodes the last robot calls flushed and the buffers' composition, for the
        summary and the report; best effort, bounded (an actor may be gone)."""
        nonlocal ingested, comp, buffer_sizes, batch_share
        if not replays:
            return
        end = time.time() + timeout_s
        with contextlib.suppress(Exception):
            # until every worker has read its whole part (a resumed run that ends before
            # its re-read did, or one poll's worth of shards at the end, read in parts),
            # or the shards left stop going down (one that cannot be read yet)
            behind = None
            while True:
                results = ray.get(
                    [r.step.remote(0) for r in replays], timeout=max(0.1, end - time.time())
                )
                ingested, comp = held_progress(results, ingested, comp)
                left = sum(int(r.get("behind", 0)) for r in results)
                if left == 0 or (behind is not None and left >= behind) or time.time() > end:
                    break
                behind = left
        with contextlib.suppress(Exception):
            buffer_sizes, batch_share = merged_report_views(
                ray.get(
                    [r.report_view.remote() for r in replays], timeout=max(10.0, end - time.time())
                )
            )

    def start_sd_tail() -> StoreIngest[Any] | None:
        """SD relabel + retrain rounds, as the local runtime's: the driver tails the store
        for the newest episodes (the replay actors reload each published SD and rescore).
        Started just before the robots (inside the run's try, whose end stops it: started
        before the scripted baseline and Ray, it outlived an error in either)."""
        if c.sd.improve_every_episodes <= 0:
            return None
        p.store.mkdir(parents=True, exist_ok=True)
        reader = EpisodeReader(
            p.store, must_exist=False, shards_per_poll=c.replay.read_shards_per_poll
        )
        keep_recent = 5 * max(1, c.sd.label_budget_per_round)
        if resumed:
            # counted before the stop (sd_since): only the newest episodes are read, into
            # the next round's pool (all skipped, the first round after a resume labeled
            # the first poll's ~16 episodes instead of up to keep_recent)
            shards = reader.new_shards()
            newest = newest_shards(shards, keep_recent)
            reader.skip(shards[: len(shards) - newest])
            backlog = -(-newest // c.replay.read_shards_per_poll)
        else:  # a fresh run on a copied store: its episodes are read, not counted towards
            # the first round (as the local runtime; it used to start one at once); the
            # robots start after this count
            backlog = -(-len(reader.new_shards()) // c.replay.read_shards_per_poll)
        return StoreIngest(
            _FinalViews(reader),  # final images and ground truth only: no frames decoded
            len,
            keep_recent=keep_recent,
            name="sd-tail",
            since_mark=sd_since,
            backlog_polls=backlog,
        )

    sd_tail = start_sd_tail()
    try:
        robot_cls, replay_cls = _robot_actor_cls(), _replay_actor_cls()
        fleet_size = 0 if resume and c.robots and run.collected_enough() else c.robots
        robots = [robot_cls.remote(i, c, str(p.root), c.seed * 100 + i) for i in range(fleet_size)]
        targets_ref = ray.put(initial_targets)  # (kept: a restarted actor gets it again)
        replays = [
            replay_cls.remote(
                c,
                str(p.root),
                updater_seed(c.seed + 1 + i, learner.step),
                (i, c.replay_workers),
                targets_ref,
            )
            for i in range(c.replay_workers)
        ]
        # episodes per robot call: the driver's end of a run waits for the calls under
        # way (60 s) before it flushes and closes the robots; a user's robot (a real arm,
        # tens of seconds an episode) makes one at a time so its last call ends in time
        per_call = 1 if c.robot_factory else 4
        pending.update({r.run.remote(per_call): r for r in robots})
        last_eval = last_evaluated(run.history, learner.step, c.eval.every_steps)
        held, wanted = (
            0,
            max(1, min(c.replay.min_episodes, c.max_episodes or c.replay.min_episodes)),
        )
        dropped = 0
        deadline = t_start + c.budget_minutes * 60
        collecting = True

        def service_robots(
            any_within_s: float | None = None, stop: threading.Event | None = None
        ) -> None:
            """Start the next call of every robot whose call has ended (while
            ``collecting``, and until ``stop`` is set), counting the failed ones;
            without ``any_within_s`` only those ended now, with it the first that ends
            within that many seconds (and the others ended by then)."""
            nonlocal dropped
            if not pending:
                if any_within_s:
                    time.sleep(any_within_s)
                return
            refs = list(pending)
            if any_within_s is None:
                done, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
            else:
                done, rest = ray.wait(refs, num_returns=1, timeout=any_within_s)
                if done and rest:  # and the others that ended meanwhile
                    done += ray.wait(rest, num_returns=len(rest), timeout=0)[0]
            for ref in done:
                actor = pending.pop(ref)
                try:
                    ray.get(ref)
                    failures[actor] = 0
                except ray.exceptions.RayError as exc:
                    # an error in the robot's episode, or its actor died: a killed actor
                    # restarts (its flushed episodes are in the store) and its next call
                    # resets the count; one that cannot start again fails every call and
                    # is dropped (it used to be called forever, collecting nothing)
                    failures[actor] = failures.get(actor, 0) + 1
                    log.warning("robot actor failed (%d in a row): %s", failures[actor], exc)
                    if failures[actor] >= MAX_ROBOT_FAILURES:
                        log.error("robot actor failed %d times in a row: dropped", failures[actor])
                        dropped += 1
                        continue
                if collecting and not (stop is not None and stop.is_set()):
                    pending[actor.run.remote(per_call)] = actor

        def evaluate_while_collecting() -> None:
            """The driver's evaluation, while a thread goes on starting the robots' calls
            (the loop that starts them waits for the evaluation: the robots idled through
            every one, about 20 learned episodes per task)."""
            stop = threading.Event()
            failed: list[BaseException] = []

            def pump() -> None:
                try:
                    while not stop.is_set():
                        service_robots(any_within_s=0.5, stop=stop)
                except Exception as exc:  # raised in the loop's thread, as there
                    failed.append(exc)

            thread = threading.Thread(target=pump, name="robots-during-eval", daemon=True)
            try:
                thread.start()
                run._evaluate(learner, scripted, ingested, t0, sd, stats)
            finally:
                stop.set()  # no call is started after this: the loop's own again
                interrupted = False
                while thread.is_alive():  # (at most 0.5 s)
                    try:
                        thread.join()
                    except KeyboardInterrupt:  # a second Ctrl-C: the thread ends first
                        interrupted = True
                if interrupted:
                    raise KeyboardInterrupt
            if failed:
                raise failed[0]

        while time.time() < deadline and not (
            c.max_learner_steps and learner.step >= c.max_learner_steps
        ):
            service_robots()
            if sd_tail is not None:
                # a round runs beside the loop (robots and learner go on), one at a time
                sd_tail.check()
                if sd_job is not None and sd_job.done():
                    sd_before = sd.version
                    sd, sd_labels = sd_job.result()
                    sd_job = None
                    if sd.version != sd_before:  # as the local runtime: checkpointed at once
                        learner.save_checkpoint(p.checkpoint, extras(time.time()))
                if sd_job is None and run.sd_round_due(sd, sd_tail):
                    sd_job = sd_pool.submit(run.sd_round, sd, sd_tail, sd_labels)
            if c.robots and dropped == c.robots:
                fleet_error = f"every robot actor failed {MAX_ROBOT_FAILURES} times in a row"
                run._log(f"{fleet_error}: stopping (checkpoint and report follow)")
                break
            # each replay actor reads its part of the store and samples its own batches
            try:
                results = ray.get(
                    [r.step.remote(4, held >= wanted) for r in replays],
                    timeout=REPLAY_STEP_TIMEOUT_S,
                )
            except ray.exceptions.GetTimeoutError:
                replay_error = (
                    f"the replay actors gave no batches in {REPLAY_STEP_TIMEOUT_S:.0f} s "
                    "(one that cannot be placed, or that keeps dying)"
                )
                run._log(f"{replay_error}: stopping (checkpoint and report follow)")
                break
            except ray.exceptions.RayError as exc:  # one raised, or is dead for good
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
                replay_error = f"a replay actor failed: {first}"
                run._log(f"{replay_error}: stopping (checkpoint and report follow)")
                break
            ingested, comp = held_progress(results, ingested, comp)
            held = sum(int(r["episodes_held"]) for r in results)
            batches = [b for res in results for b in res["batches"]]
            if c.max_episodes and ingested >= c.max_episodes and collecting:
                collecting = False
                flush_robots()
            for b in batches:
                if c.max_learner_steps and learner.step >= c.max_learner_steps:
                    break
                # Ray hands numpy arrays over read-only (zero copy): a writable copy each
                tensors = {k: torch.from_numpy(np.array(v)) for k, v in b.items()}
                stats = learner.train_step(TrainBatch(**tensors), run.registry.names)
                bar.update(1)
                after_train_step(learner, p, c, extras)
                if learner.step - last_eval >= c.eval.every_steps:
                    # between the batches, at the step itself (after the loop's batches
                    # the points landed up to 4 x replay_workers - 1 steps past it); on
                    # the grid of every_steps (a resume's first may be off it)
                    last_eval = learner.step - learner.step % c.eval.every_steps
                    evaluate_while_collecting()
                    # the point in a checkpoint at once: the step's own checkpoint (if it
                    # had one) came before it, and a resume does not evaluate it again
                    learner.save_checkpoint(p.checkpoint, extras(time.time()))
            if kill_hook is not None:
                kill_hook(robots, replays, learner.step)
            show_progress(bar, ingested, sd.version, learner.version, stats)
            if not batches:
                time.sleep(0.2)
        if sd_job is not None:  # a round under way: its detector and labels are kept
            sd, sd_labels = sd_job.result()
            sd_job = None
        settle_robots(60)
        final_view(120)
    except KeyboardInterrupt:  # as the local runtime: checkpoint, evaluate, report
        log.warning("interrupted: checkpointing and writing the report")
        # the checkpoint first: what follows waits on actors, and a SIGKILL after a
        # SIGTERM's grace period lost every step since the last one
        with contextlib.suppress(Exception):
            learner.save_checkpoint(p.checkpoint, extras(time.time()))
        # the robots' last calls finish (a few episodes) and are counted, as on a normal end
        settle_robots(30)
        final_view(30)
    finally:
        bar.close()
        if sd_job is not None:  # interrupted mid-round: its detector and labels are kept,
            with contextlib.suppress(Exception):  # so the checkpoint matches run/sd
                sd, sd_labels = sd_job.result()
        sd_pool.shutdown(wait=False, cancel_futures=True)
        if sd_tail is not None:
            with contextlib.suppress(Exception):
                sd_tail.close(timeout_s=10)
        try:
            # each robot on its own (a dead one fails at once and must not keep the
            # others from closing: a real arm parked, its writer's last episodes flushed)
            closing = [r.close.remote() for r in robots]
            close_by = time.monotonic() + 30
            for ref in closing:
                with contextlib.suppress(Exception):
                    ray.get(ref, timeout=max(0.1, close_by - time.monotonic()))
            if started_here:
                ray.shutdown()
        finally:
            torch.set_num_threads(threads_before)  # the final evaluation has the cores
    return run.finish(
        learner,
        scripted=scripted,
        episodes=ingested,
        t_origin=t0,
        t_start=t_start,
        sd=sd,
        sd_labels=sd_labels,
        stats=stats,
        checkpoint_extras=extras,
        composition=comp or ReplayStats().composition(run.registry.names),
        buffer_sizes=buffer_sizes,
        batch_share=batch_share,
        extra={"runtime": "ray", "fleet_error": fleet_error, "replay_error": replay_error},
    )
