"""One robot's continuous collection loop (MT-Opt, "Continuous Data Collection").

Pick a random enabled task, pick its policy (scripted bootstrap or the learned CEM
policy), run the episode, write it, then decide: attempt another task from the current
scene (tasks chain, e.g. lift then place) or reset the scene. The chain/reset decision
and the task choice are pure functions, tested on hand-built cases.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mtopt.policies.base import Policy
from mtopt.robots.base import Robot
from mtopt.sim.runner import EpisodeRecord, RobotContractError, run_episode
from mtopt.sim.seeds import random_scene_seed
from mtopt.store.schema import Episode
from mtopt.store.writer import EpisodeWriter
from mtopt.tasks.registry import TaskRegistry, TaskSpec

if TYPE_CHECKING:
    from mtopt.qtopt.cem import CEMConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CollectConfig:
    tasks: tuple[str, ...] = ()
    """Enabled tasks (empty: every registered task)."""
    task_weights: tuple[float, ...] = ()
    """Relative weights of the enabled tasks (empty: uniform)."""
    max_chain: int = 3
    """Episodes attempted from one scene before it is reset."""
    reset_prob: float = 0.25
    """Chance of resetting after any episode (fresh scenes keep the data diverse)."""
    chain_place_after_lift: bool = True
    """When the robot still holds an object, attempt a placing task next."""
    reset_after_place: bool = True
    """A placing episode ends the chain. Its object stays in the left bin, and a later
    placing episode in the same scene would be judged from a final image that already
    shows an object on the plate or in the bowl, success or not (before this, 31% of
    placing episodes came after another placing episode in the same scene)."""
    max_steps: int = 15
    """Maximum actions per episode."""
    flush_every: int = 16
    """Episodes buffered before a shard is written."""
    flush_seconds: float = 10.0
    """Longest time an episode stays unflushed."""
    scripted_epsilon: float = 0.1
    """Per-step probability of a random action while a scripted policy collects."""
    scripted_early_terminate: float = 0.2
    """Per-episode probability that a scripted policy TERMINATEs at a random early step
    (the data must show that ending early fails; see ``policies.exploration``)."""
    learned_fraction: float = 0.5
    """Before a task reaches parity, the share of its episodes that the learned CEM
    policy (with exploration) collects once Q weights are published. Without it the
    learned policy never sees the states its own mistakes lead to: offline data from the
    scripted policies alone leaves Q free to extrapolate on actions they never take."""
    learned_fraction_min: float | None = None
    """None: before parity the learned policy collects a fixed ``learned_fraction``.
    A number: it collects ``learned_fraction`` times its success relative to the
    scripted policy's (the ``ratio`` the trainer's evaluation writes to the switch file),
    but no less than this (``pre_parity_share``). In run r12's first 4,400 episodes the
    learned policy collected 1,348 lift episodes with 1 success (scripted: 82 of 1,428):
    a fixed half of each task's episodes spent on a policy that cannot yet succeed halves
    the successes the replay learns from."""
    parity_fraction: float = 0.75
    """After a task reaches parity (or collects with a proxy task's learned policy), the
    share of its episodes the learned policy collects; the rest stay scripted. A policy
    at parity on a 60-episode evaluation can still collect fewer successes than the
    scripted one with its exploration (run r7, lift-any), and a skill whose successes dry
    up stops learning. Later, with the learned policy far above the scripted one, 0.95
    (runs r37, r38: two seeds, 110 minutes) placed 80% held-out on average against 75-78%
    for 0.75 at 2.5-3 hours, and lifted 55-66% against 66-67%: the seed (and the
    machine) moved each task by 5-11 points (docs/learning-history.md)."""

    def validate(self) -> CollectConfig:
        for name in ("reset_prob", "scripted_epsilon", "scripted_early_terminate"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"collect.{name} must be in [0, 1], got {v}")
        for name in ("max_chain", "max_steps", "flush_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"collect.{name} must be >= 1, got {getattr(self, name)}")
        if not self.flush_seconds > 0:
            raise ValueError(f"collect.flush_seconds must be > 0, got {self.flush_seconds}")
        w = self.task_weights
        if w and not (all(math.isfinite(x) and x >= 0 for x in w) and sum(w) > 0):
            raise ValueError(f"collect.task_weights must be >= 0 with a positive sum, got {w}")
        check_shares(
            self.learned_fraction, self.parity_fraction, self.learned_fraction_min, "collect."
        )
        return self


def check_shares(
    learned_fraction: float,
    parity_fraction: float,
    learned_fraction_min: float | None,
    prefix: str = "",
) -> None:
    """The learned policy's shares of episodes (CollectConfig and PolicyProvider)."""
    for name, v in (("learned_fraction", learned_fraction), ("parity_fraction", parity_fraction)):
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"{prefix}{name} must be in [0, 1], got {v}")
    m = learned_fraction_min
    if m is not None and not 0.0 <= m <= learned_fraction:
        raise ValueError(
            f"{prefix}learned_fraction_min must be None or in [0, learned_fraction="
            f"{learned_fraction}], got {m}"
        )


def pre_parity_share(learned_fraction: float, minimum: float | None, ratio: float | None) -> float:
    """Share of a task's episodes the learned policy collects before parity (pure).

    ``ratio``: its evaluated success over the scripted policy's (None: not known yet).
    With ``minimum`` None the share is fixed at ``learned_fraction``; otherwise it is
    ``learned_fraction * ratio`` clipped to [minimum, learned_fraction]."""
    if minimum is None or ratio is None:
        return learned_fraction
    return min(learned_fraction, max(minimum, learned_fraction * ratio))


@dataclass(frozen=True)
class Decision:
    reset: bool
    reason: str


def decide_next(
    holding: bool,
    objects_left: int,
    chain_len: int,
    max_chain: int,
    u: float,
    reset_prob: float,
    placed: bool = False,
) -> Decision:
    """Chain another task from this scene, or reset it? (``u`` is a uniform draw in [0, 1);
    ``placed``: the episode just ended was a placing task and placing ends a chain.)"""
    if chain_len >= max_chain:
        return Decision(True, "chain length reached")
    if placed:
        return Decision(True, "placed: the fixtures must be clear for the next place")
    if objects_left == 0 and not holding:
        return Decision(True, "nothing left to pick")
    if u < reset_prob:
        return Decision(True, "random reset")
    return Decision(False, "holding an object" if holding else "objects left")


MAX_FAILED_SETUPS = 50
"""Scenes in a row on which no enabled task could be set up before a robot gives up (a
robot that can never stage its tasks, not one that met a hard scene)."""

NEVER_SET_UP = 20
"""Failed setups of a task, none of it run yet, at which a robot warns (once per task)."""


def choose_task(
    tasks: Sequence[TaskSpec],
    weights: Sequence[float],
    holding: bool,
    prefer_placing_when_holding: bool,
    rng: np.random.Generator,
) -> TaskSpec:
    """Weighted random task; while holding an object, placing tasks are chained if enabled.
    A task of weight 0 is never drawn while one of positive weight is there (a narrowed
    pool of zero weights used to fall back to drawing them uniformly)."""
    pool = [i for i in range(len(tasks)) if weights[i] > 0] or list(range(len(tasks)))
    if holding and prefer_placing_when_holding:
        placing = [i for i in pool if tasks[i].starts_holding]
        pool = placing or pool
    w = np.array([weights[i] for i in pool], dtype=np.float64)
    if w.sum() <= 0:
        w = np.ones(len(pool))
    return tasks[pool[int(rng.choice(len(pool), p=w / w.sum()))]]


PolicyFor = Callable[[TaskSpec], Policy]


class CollectLoop:
    """Runs episodes on one robot and writes them. ``robot`` may expose sim-only
    ``scene_state()`` (ground truth, stored in the gt_ columns), ``holding()`` and
    ``objects_left()`` (proprioception/perception any robot can provide).

    A task whose initial condition the robot cannot set up (``prepare_for_task``
    returns False: a placing task with nothing to pick up, or a category placing task
    chained after a lift of another category) is not run and nothing is stored for it:
    another task is drawn on the same scene, and the scene is reset only once every
    enabled task failed to set up on it (up to ``MAX_FAILED_SETUPS`` scenes in a row;
    ``unprepared`` counts the misses per task; a task missed ``NEVER_SET_UP`` times
    before any episode of it ran is warned about). A reset per miss cost a scene and the
    lift just chained (place-ball-in-bowl missed ~20 times a minute in a 13-task run,
    each a warning). A robot holding an object after an episode chains a placing task;
    when the task drawn is not one (no placing task enabled, or
    ``chain_place_after_lift`` off), the scene is reset first rather than the object
    dropped where the last episode presented it.
    """

    def __init__(
        self,
        robot: Robot,
        registry: TaskRegistry,
        writer: EpisodeWriter,
        policy_for: PolicyFor,
        cfg: CollectConfig = CollectConfig(),
        seed: int = 0,
    ):
        for name in ("holding", "objects_left", "scene_state"):
            # optional methods; an attribute or property of the name would read as missing
            # (holding: never; objects_left: 1) without a word
            if hasattr(robot, name) and not callable(getattr(robot, name)):
                raise RobotContractError(
                    f"robot {robot.robot_id}: {name} must be a method (robots.base.Robot), "
                    f"got {type(getattr(robot, name)).__name__}"
                )
        cfg.validate()
        self.robot = robot
        self.registry = registry
        self.tasks = [registry.get(t) for t in cfg.tasks] if cfg.tasks else list(registry)
        if not self.tasks:
            # it used to reset the scene 50 times (a real cell: 50 physical resets), then
            # blame the scenes
            raise ValueError(f"robot {robot.robot_id}: no tasks to collect (an empty registry)")
        if cfg.task_weights and len(cfg.task_weights) != len(self.tasks):
            raise ValueError(
                f"task_weights has {len(cfg.task_weights)} values for {len(self.tasks)} enabled tasks"
            )
        self.weights = list(cfg.task_weights) if cfg.task_weights else [1.0] * len(self.tasks)
        self.writer = writer
        self.policy_for = policy_for
        self.cfg = cfg
        self.rng = np.random.default_rng(seed)
        self.chain_len = 0
        self.prev_id: str | None = None
        self.needs_reset = True
        self.counts: dict[str, int] = {}
        self.unprepared: dict[str, int] = {}

    def _holding(self) -> bool:
        f = getattr(self.robot, "holding", None)
        return bool(f()) if callable(f) else False

    def _objects_left(self) -> int:
        f = getattr(self.robot, "objects_left", None)
        return int(f()) if callable(f) else 1

    def run_one(self) -> Episode:
        """One stored episode (chained in the scene, or after a reset). An episode that
        raises (the robot, the policy, the store) leaves the scene in an unknown state:
        the next call resets it and starts a new chain, where it used to go on in the
        disturbed scene and link its episode to the one before the failure."""
        try:
            return self._run_one()
        except BaseException:
            self.needs_reset = True
            raise

    def _run_one(self) -> Episode:
        failed: set[str] = set()  # tasks that could not be set up on this scene
        scenes = 0  # scenes in this call on which no enabled task could be set up
        while True:
            if self.needs_reset:
                self.robot.reset_scene(random_scene_seed(self.rng))
                self.chain_len, self.prev_id, self.needs_reset = 0, None, False
                failed.clear()
            # a task of weight 0 is not collected (while any task has weight): not even
            # where no task of positive weight can be set up on this scene (it got half
            # of a place-ball-in-bowl robot's episodes, on every scene without a ball)
            enabled = [i for i, w in enumerate(self.weights) if w > 0] or list(
                range(len(self.tasks))
            )
            left = [i for i in enabled if self.tasks[i].name not in failed]
            if not left:
                # every enabled task failed to set up on this scene (one task: a robot
                # collecting a single placing task meets a scene it cannot stage in ~1
                # of 200): a fresh scene, up to MAX_FAILED_SETUPS in a row
                scenes += 1
                if scenes >= MAX_FAILED_SETUPS:
                    raise RuntimeError(
                        f"robot {self.robot.robot_id} could not set up any enabled task "
                        f"on {scenes} scenes in a row (prepare_for_task returned False for "
                        f"{sorted(failed)})"
                    )
                self.needs_reset = True
                continue
            holding = self._holding()
            task = choose_task(
                [self.tasks[i] for i in left],
                [self.weights[i] for i in left],
                holding,
                self.cfg.chain_place_after_lift,
                self.rng,
            )
            if holding and not task.starts_holding and self.chain_len > 0:
                # no placing task to chain: a lift here would start at the presentation
                # pose and drop the held object outside the bin; a fresh scene instead
                self.needs_reset = True
                continue
            policy = self.policy_for(task)
            started = time.time()
            rec = run_episode(
                self.robot, policy, task, self.rng, self.cfg.max_steps, skip_unprepared=True
            )
            if rec.prepared:
                break
            failed.add(task.name)
            missed = self.unprepared.get(task.name, 0) + 1
            self.unprepared[task.name] = missed
            log.debug(
                "robot %s could not set up %s (prepare_for_task returned False): nothing "
                "stored, another task is drawn on the scene",
                self.robot.robot_id,
                task.name,
            )
            if missed == NEVER_SET_UP and not self.counts.get(task.name):
                # a scene without the task's object is routine (a miss per few minutes
                # per task); a task never staged is a robot or task file to look at
                log.warning(
                    "robot %s could not set up %s on %d tries and has run none of it: "
                    "can the robot stage it (prepare_for_task)?",
                    self.robot.robot_id,
                    task.name,
                    missed,
                )
        ended = time.time()
        ep = stored_episode(
            self.robot,
            self.registry,
            task,
            policy,
            rec,
            chain_index=self.chain_len,
            prev_episode_id=self.prev_id,
            started_at=started,
            ended_at=ended,
        )
        self.writer.write(ep)
        self.counts[task.name] = self.counts.get(task.name, 0) + 1
        self.chain_len += 1
        self.prev_id = ep.episode_id
        d = decide_next(
            self._holding(),
            self._objects_left(),
            self.chain_len,
            self.cfg.max_chain,
            float(self.rng.random()),
            self.cfg.reset_prob,
            placed=self.cfg.reset_after_place and (task.skill == "place" or task.starts_holding),
        )
        self.needs_reset = d.reset
        return ep


class PolicyProvider:
    """Scripted bootstrap policies, switched to the learned CEM policy per task.

    Before parity, ``learned_fraction`` of a task's episodes still go to the learned
    policy (QT-Opt's on-policy correction; with ``learned_fraction_min`` scaled by how
    close it is to the scripted policy, ``pre_parity_share``); after it,
    ``parity_fraction`` do (1.0: all). The switch file (written by the trainer's
    evaluation) looks like ``{"learned": ["lift-any", ...], "proxy": {"lift-ball":
    "lift-any"}, "ratio": {"lift-any": 0.4, ...}}``: tasks in
    ``learned`` act with CEM on their own task id; a ``proxy`` task collects with another
    (easier) task's learned policy, which bootstraps hard tasks.
    """

    def __init__(
        self,
        registry: TaskRegistry,
        weights_dir: str | Path | None = None,
        switch_file: str | Path | None = None,
        epsilon: float = 0.1,
        noise_std: float = 0.1,
        reload_every: int = 10,
        seed: int = 0,
        scripted_epsilon: float = 0.0,
        scripted_early_terminate: float = 0.0,
        learned_fraction: float = 0.0,
        parity_fraction: float = 1.0,
        learned_fraction_min: float | None = None,
        cem: CEMConfig | None = None,
    ):
        """``cem``: the learned policy's action search (default: ``CEMPolicy``'s)."""
        from mtopt.policies.exploration import Exploring
        from mtopt.policies.scripted import scripted_policy_for

        self.registry = registry
        self.cem = cem
        self.weights_dir = Path(weights_dir) if weights_dir else None
        self.switch_file = Path(switch_file) if switch_file else None
        self.epsilon, self.noise_std = epsilon, noise_std
        self.reload_every = reload_every
        self.seed = seed
        check_shares(learned_fraction, parity_fraction, learned_fraction_min)
        self.learned_fraction = learned_fraction
        self.learned_fraction_min = learned_fraction_min
        self.parity_fraction = parity_fraction
        self._rng = np.random.default_rng(seed + 99991)
        self._scripted: dict[str, Policy] = {t.name: scripted_policy_for(t) for t in registry}
        if scripted_epsilon > 0 or scripted_early_terminate > 0:
            self._scripted = {
                k: Exploring(p, scripted_epsilon, scripted_early_terminate)
                for k, p in self._scripted.items()
            }
        self._cem: Any = None
        self._calls = 0
        self._switch: dict[str, Any] = {"learned": [], "proxy": {}}

    @classmethod
    def for_collection(
        cls,
        registry: TaskRegistry,
        weights_dir: str | Path | None,
        switch_file: str | Path | None,
        collect: CollectConfig,
        epsilon: float,
        noise_std: float,
        seed: int = 0,
        cem: CEMConfig | None = None,
    ) -> PolicyProvider:
        """The provider a run's robots use: exploration and policy shares from ``collect``
        (both runtimes' robots build it here); ``cem``, the run's acting search
        (``RunConfig.collection_cem()``)."""
        return cls(
            registry,
            weights_dir,
            switch_file,
            epsilon,
            noise_std,
            seed=seed,
            cem=cem,
            scripted_epsilon=collect.scripted_epsilon,
            scripted_early_terminate=collect.scripted_early_terminate,
            learned_fraction=collect.learned_fraction,
            parity_fraction=collect.parity_fraction,
            learned_fraction_min=collect.learned_fraction_min,
        )

    def _refresh(self) -> None:
        if self.switch_file and self.switch_file.exists():
            with contextlib.suppress(json.JSONDecodeError):
                self._switch = json.loads(self.switch_file.read_text())
        if self.weights_dir is None:
            return
        if self._cem is None:
            from mtopt.policies.cem_policy import CEMPolicy
            from mtopt.qtopt.weights import read_latest

            latest = read_latest(self.weights_dir)
            if latest is None or dict(latest.get("meta") or {}).get("untrained"):
                return  # scripted until trained weights are published
            from mtopt.qtopt.cem import CEMConfig

            self._cem = CEMPolicy(
                self.registry.names,
                weights_dir=self.weights_dir,
                cem=self.cem or CEMConfig(precision="fp32"),  # CEMPolicy's default
                epsilon=self.epsilon,
                noise_std=self.noise_std,
                seed=self.seed,
            )
        else:
            self._cem.maybe_reload()

    def __call__(self, task: TaskSpec) -> Policy:
        if self._calls % self.reload_every == 0:
            self._refresh()
        self._calls += 1
        if self._cem is not None:
            at_parity = task.name in self._switch.get("learned", [])
            proxy = None if at_parity else self._switch.get("proxy", {}).get(task.name)
            if at_parity or proxy:
                share = self.parity_fraction
            else:
                ratio = self._switch.get("ratio", {}).get(task.name)
                share = pre_parity_share(self.learned_fraction, self.learned_fraction_min, ratio)
            if share > 0 and self._rng.random() < share:
                return _TaskBound(self._cem, proxy or task.name, proxy is not None)
        return self._scripted[task.name]


class _TaskBound:
    """A CEM policy acting with another task's id (proxy collection) or its own. A proxy's
    episodes are stored as ``cem@<task acted as>`` (e.g. ``cem@lift-any`` for lift-ball),
    so that they are not taken for the task's own learned policy's."""

    def __init__(self, policy: Any, act_as: str, proxy: bool = False):
        self._p = policy
        self._as = act_as
        self.name = f"{policy.name}@{act_as}" if proxy else policy.name

    @property
    def version(self) -> int:
        return int(self._p.version)

    def reset(self, task: str, rng: np.random.Generator) -> None:
        self._p.reset(self._as, rng)

    def act(self, obs: Any) -> np.ndarray:
        return np.asarray(self._p.act(obs))


def stored_episode(
    robot: Robot,
    registry: TaskRegistry,
    task: TaskSpec,
    policy: Policy,
    rec: EpisodeRecord,
    chain_index: int = 0,
    prev_episode_id: str | None = None,
    started_at: float = 0.0,
    ended_at: float = 0.0,
) -> Episode:
    """The store's episode for a run ``rec`` of ``task`` on ``robot``, just after it ended:
    the simulator's ground truth for every task of ``registry`` when the robot has
    ``scene_state`` (None otherwise), and its ``scene_description``."""
    gt: dict[str, bool] | None = None
    scene_state = getattr(robot, "scene_state", None)
    if callable(scene_state):
        state = scene_state()
        gt = {t.name: bool(t.succeeded(state)) for t in registry}
    desc = robot.scene_description()
    if not isinstance(desc, dict):
        raise RobotContractError(
            f"robot {robot.robot_id}: scene_description() must return a dict "
            f"(JSON-serialisable), got {type(desc).__name__}"
        )
    assert rec.final_image is not None
    return Episode(
        episode_id=uuid.uuid4().hex,
        robot_id=robot.robot_id,
        task=task.name,
        policy=policy.name,
        policy_version=int(policy.version),
        seed=stored_seed(desc.get("seed")),
        images=np.stack(rec.images),
        states=np.stack(rec.states).astype(np.float32),
        actions=np.stack(rec.actions).astype(np.float32),
        final_image=rec.final_image,
        scene=desc,
        chain_index=chain_index,
        prev_episode_id=prev_episode_id,
        started_at=started_at,
        ended_at=ended_at,
        terminated=rec.terminated,
        gt_success=None if gt is None else gt[task.name],
        gt_success_by_task=gt,
        poses=rec.pose_array(),
    )


def stored_seed(seed: object) -> int:
    """The store's ``seed`` column for a robot's ``scene_description()["seed"]``: an int
    in int64's range, else -1 (unknown; a real cell's text id, say, stays in ``scene``)."""
    whole = isinstance(seed, (int, np.integer)) and not isinstance(seed, bool)
    return int(seed) if whole and -(2**63) <= int(seed) < 2**63 else -1  # type: ignore[call-overload]
