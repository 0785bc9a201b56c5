"""Local runtime: the whole MT-Opt loop on one machine from one command.

Wiring only (the algorithms live in their rooms):

  robot processes (collect.fleet)  --episodes-->  store/ (Parquet shards)
  main process: store reader -> LogReplay (SD rewards, impersonation, per-task buffers)
                -> BellmanUpdater (re-balanced batches, CEM targets) -> Learner
                -> published weights (robots reload) / checkpoints / evaluation / report
                -> incremental SD relabel (oracle labeler) + retrain

Everything durable lives under the run directory; ``--resume`` rebuilds the replay
buffers from the store and continues the learner from its last checkpoint.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mtopt._io import atomic_write_json, locked_by_another
from mtopt.collect.fleet import FleetSpec, run_fleet
from mtopt.config import ConfigError, changed_fields, describe_changes, save_config
from mtopt.eval.evaluate import (
    EVAL_SCENES_VERSION,
    SETUP_TRIES,
    evaluate_outcomes,
    evaluate_policy,
    paired_comparison,
    success_rates,
)
from mtopt.eval.fleet import FleetJudge, fleet_rates
from mtopt.policies.cem_policy import CEMPolicy
from mtopt.policies.scripted import scripted_policy_for
from mtopt.qtopt.learner import Learner, load_network, network_digest
from mtopt.qtopt.networks import with_more_tasks
from mtopt.qtopt.updater import BackgroundUpdater, BellmanUpdater
from mtopt.qtopt.weights import (
    WeightsError,
    check_config,
    load_source,
    read_latest,
    snapshot_due,
    snapshot_latest,
    split_prefixed,
)
from mtopt.replay.buffers import TaskBuffers
from mtopt.replay.ingest import StoreIngest
from mtopt.replay.logreplay import LogReplay
from mtopt.replay.source import replay_items
from mtopt.runtime.config import (
    SD_SOURCES,
    VALIDATION_SHARE,
    RunConfig,
    check_same_task_inputs,
    load_config_changes,
    load_run_config,
    resume_config,
    with_sd_sources,
)
from mtopt.runtime.policy_folder import average_run
from mtopt.sim.cell import CELL_VERSION
from mtopt.store.reader import EpisodeReader
from mtopt.success.data import (
    LabeledSet,
    episode_examples,
    examples_for,
    label_counts,
    split_held_out,
    stage_examples,
)
from mtopt.success.improve import disputes_given_labels, select_episodes
from mtopt.success.network import SuccessDetector, SuccessNet, view_meta
from mtopt.success.train import evaluate_sd, mean_finite, train_sd
from mtopt.tasks.registry import TaskRegistry

log = logging.getLogger(__name__)


@dataclasses.dataclass
class RunPaths:
    root: Path

    @property
    def store(self) -> Path:
        return self.root / "store"

    @property
    def weights(self) -> Path:
        return self.root / "weights"

    @property
    def sd(self) -> Path:
        return self.root / "sd"

    @property
    def checkpoint(self) -> Path:
        return self.root / "checkpoints" / "learner.pt"

    @property
    def switch(self) -> Path:
        return self.root / "switch.json"

    @property
    def history(self) -> Path:
        return self.root / "history.json"

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def config_changes(self) -> Path:
        """Every resume that changed a setting: when, and ``field: [old, new]``."""
        return self.root / "config_changes.json"

    @property
    def report(self) -> Path:
        return self.root / "report"


def pooled_success(
    history: list[dict[str, Any]], window: int, min_points: int = 1
) -> dict[str, float]:
    """Per task, the learned policy's success pooled over the last ``window`` evaluations
    (weighted by their episode counts, ``episodes_per_task`` in each point, default 1).
    A task evaluated in fewer than ``min_points`` of them is left out: not judged yet.

    One evaluation of 20 episodes cannot tell 5% from 10%: switching a task to its
    learned policy on a single lucky evaluation handed the whole lift skill to a policy
    with ~1% success in one run, starving the replay of successful lifts. A task switches
    only with a full window (``switch_table``'s ``ready``): before 2026-12-05 the first
    evaluation alone could switch a task, the pool holding only it.
    """
    points = same_scenes(history)
    points = points[-window:] if window > 0 else points
    num: dict[str, float] = {}
    den: dict[str, float] = {}
    seen: dict[str, int] = {}
    for pt in points:
        n = float(pt.get("episodes_per_task", 1))
        for task, rate in pt["success"].items():
            num[task] = num.get(task, 0.0) + rate * n
            den[task] = den.get(task, 0.0) + n
            seen[task] = seen.get(task, 0) + 1
    return {t: num[t] / den[t] for t in num if den[t] > 0 and seen[t] >= min_points}


def same_scenes(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The latest points of ``history`` evaluated on the same scenes as the last one (the
    same ``eval_key``; points from before it was recorded have none). A resume that
    changes what the evaluation meets (its seed, object split or cell, or
    ``EVAL_SCENES_VERSION``) starts a new pool: success on other scenes is not evidence
    about these, and the scripted baseline it is compared with is measured again."""
    if not history:
        return []
    key = history[-1].get("eval_key")
    start = len(history)
    while start > 0 and history[start - 1].get("eval_key") == key:
        start -= 1
    return history[start:]


def switched(history: Sequence[dict[str, Any]]) -> list[str]:
    """The tasks the last point of ``history`` switched to the learned policy (none
    before the first point)."""
    return list(history[-1].get("switch", {}).get("learned", [])) if history else []


def parity_table(
    history: list[dict[str, Any]],
    scripted: dict[str, float],
    registry: TaskRegistry,
    cfg: RunConfig,
) -> dict[str, Any]:
    """The switch table after the evaluation ``history[-1]``: each task's success pooled
    over the last ``parity_window`` evaluations; a task switches only with a full window,
    and one switched before (the previous point's table) keeps its policy down to the
    hysteresis (``switch_table``)."""
    window = cfg.parity_window
    return switch_table(
        pooled_success(history, window),
        scripted,
        registry,
        cfg.parity_margin,
        switched(history[:-1]),
        cfg.parity_hysteresis,
        ready=pooled_success(history, window, min_points=window).keys(),
    )


def sd_round_due(since: int, every: int, growth: float, rounds_done: int) -> bool:
    """Whether the next SD relabel + retrain round is due: ``since`` episodes collected
    since the last one, the first after ``every`` episodes, each next one ``growth`` times
    later (every=0: never)."""
    if every <= 0:
        return False
    return since >= every * growth ** max(0, rounds_done)


def switch_table(
    learned: dict[str, float],
    scripted: dict[str, float],
    registry: TaskRegistry,
    margin: float,
    previous: Sequence[str] = (),
    hysteresis: float = 0.0,
    ready: Collection[str] | None = None,
    unjudged_keep: bool = False,
) -> dict[str, Any]:
    """Which tasks collect with the learned policy (parity with scripted), and proxies:
    tasks not at parity collect with the learned policy of their skill's generic task
    (lift-any / place-any) once that one is at parity, bootstrapping the harder tasks.

    A task reaches parity when its learned success is at least ``scripted + margin``; a
    task already switched (``previous``) keeps its learned policy until it falls below
    ``scripted + margin - hysteresis``. Without hysteresis a task near parity flips back
    and forth with the noise of the evaluation (run r7: lift-any switched at 25k steps
    and back at 33k), and each flip changes where its data comes from.

    ``ready``: the tasks with enough evaluations to switch or be switched back (None:
    all); a task outside it keeps the policy it has. The run passes those with a full
    ``parity_window`` of points on the current evaluation scenes (``same_scenes``).
    ``unjudged_keep``: a task switched before (``previous``) that ``learned`` does not
    judge at all keeps its switch (eval.on='fleet': too few recent episodes of it).

    ``ratio``: each task's learned success over the scripted one (tasks the evaluation
    does not cover take their skill's generic task's), for ``collect.learned_fraction_min``.
    """
    was = set(previous)

    def keeps(t: str, r: float) -> bool:
        bar = scripted.get(t, 1.0) + margin - (hysteresis if t in was else 0.0)
        return r > 0 and r >= bar

    judged = [t for t in learned if ready is None or t in ready]
    at_parity = [t for t in judged if keeps(t, learned[t])]
    # switched before and not ready (a resume onto other evaluation scenes, or with a
    # wider window): kept until a full window judges it, not dropped on fewer points
    at_parity += [t for t in previous if t in learned and t not in judged]
    if unjudged_keep:
        at_parity += [t for t in previous if t not in learned and t not in at_parity]
    proxy: dict[str, str] = {}
    generic = {"lift": "lift-any", "place": "place-any"}
    for t in registry:
        g = generic.get(t.skill)
        if t.name not in at_parity and g in at_parity and g != t.name:
            proxy[t.name] = g
    ratio = {t: r / scripted[t] for t, r in learned.items() if scripted.get(t, 0.0) > 0}
    for t in registry:
        g = generic.get(t.skill)
        if t.name not in ratio and g in ratio:
            ratio[t.name] = ratio[g]
    return {
        "learned": at_parity,
        "proxy": proxy,
        "ratio": {t: round(r, 4) for t, r in sorted(ratio.items())},
    }


def progress_bar(step: int, max_steps: int) -> Any:
    """The run's progress bar in learner steps (both runtimes)."""
    import sys

    from tqdm import tqdm

    return tqdm(
        desc="mtopt run",
        unit="step",
        total=max_steps or None,
        initial=step,
        # redirected to a log file: one line a minute instead of ten a second
        mininterval=0.1 if sys.stderr.isatty() else 60.0,
    )


def show_progress(
    bar: Any, episodes: int, sd_version: int, q_version: int, stats: dict[str, float]
) -> None:
    bar.set_postfix(
        episodes=str(episodes),  # tqdm writes a number like 20000 as "2e+4"
        sd=f"v{sd_version}",
        q=f"v{q_version}",
        loss=f"{stats.get('loss', 0):.3f}",
        refresh=False,  # shown on the bar's next (rate-limited) refresh
    )


def resume_learner(paths: RunPaths, cfg: RunConfig) -> tuple[Learner, dict[str, Any]]:
    """The learner of a run from its checkpoint, which must hold the Q-network the config
    describes (LogReplay builds the network's inputs from the config)."""
    learner, extra = Learner.resume(paths.checkpoint, cfg.learner, logdir=paths.root / "tb")
    if learner.qnet_cfg != cfg.qnet:
        diff = describe_changes(learner.qnet_cfg, cfg.qnet, "qnet.")
        raise ConfigError(
            f"the checkpoint {paths.checkpoint} holds another Q-network than the config "
            f"({diff}; checkpoint -> config)"
        )
    learner.task_names = cfg.registry().names[: cfg.qnet.num_tasks]  # published with weights
    count_on_from_published(learner, paths)
    return learner, extra


def count_on_from_published(learner: Learner, paths: RunPaths) -> bool:
    """A run killed between checkpoints has published versions past the checkpoint's
    (or, before its first checkpoint, past a fresh learner's 0). They belong to training
    that was lost, but robots have acted with them and tagged episodes with their
    numbers, so the learner counts on from the newest one (publish() refuses to go back;
    versions stay unique and increasing). Returns whether any version is published."""
    latest = read_latest(paths.weights)
    if latest is not None and int(latest["version"]) > learner.version:
        learner.version = int(latest["version"])
    return latest is not None


def new_learner(paths: RunPaths, cfg: RunConfig, registry: TaskRegistry) -> tuple[Learner, str]:
    """A fresh run's learner and a line for the log: random networks, or (``init_from``)
    a trained run's, each grown by the tasks it was not trained on; a new task starts as
    the first task of its skill, which it was trained on (``networks.with_more_tasks``).

    Where a run stopped before its first checkpoint had published weights, this
    learner's networks are published over them at once: robots act with whatever is
    published, and would otherwise act with the lost run's until the first publish.
    Random networks are published as untrained, so that robots act scripted, as in a
    fresh folder; ``init_from``'s are acted with."""
    learner, line = _fresh_learner(paths, cfg, registry)
    if count_on_from_published(learner, paths):
        learner.publish(paths.weights, untrained=not cfg.init_from)
    return learner, line


def _fresh_learner(paths: RunPaths, cfg: RunConfig, registry: TaskRegistry) -> tuple[Learner, str]:
    learner = Learner(cfg.qnet, cfg.learner, logdir=paths.root / "tb")
    learner.task_names = registry.names[: cfg.qnet.num_tasks]
    if not cfg.init_from:
        return learner, ""
    version, tensors, meta = load_source(cfg.init_from)
    nets = {
        "online": learner.online,
        "acting": learner.acting,
        "target0": learner.targets[0],
        "target1": learner.targets[1],
    }
    like: list[int] = []
    for part, dst in nets.items():
        for name in (part, "acting", "online"):  # a policy folder may hold one network
            if split_prefixed(tensors, name):  # (a network that does not fit: its error)
                src = load_network(tensors, meta, name)
                break
        else:
            raise WeightsError(f"init_from {cfg.init_from}: no Q-network in its weights")
        trained = src.cfg.num_tasks
        if part == "online":
            theirs = meta.get("tasks") or source_tasks(cfg.init_from, trained, paths.root)
            check_source_tasks(cfg.init_from, registry.names[:trained], theirs[:trained])
            check_source_definitions(cfg.init_from, registry, theirs[:trained], paths.root)
            if trained > cfg.qnet.num_tasks:
                extra = ", ".join(theirs[len(registry) : trained])
                raise WeightsError(
                    f"init_from {cfg.init_from} has {trained} task inputs and this run "
                    f"{cfg.qnet.num_tasks}: list the source's tasks past the built-in ones "
                    f"({extra or 'unnamed'}) first in --tasks-file, then the new ones"
                )
        if trained < cfg.qnet.num_tasks:
            like = [
                first_of_skill(registry, i, trained) for i in range(trained, cfg.qnet.num_tasks)
            ]
            src = with_more_tasks(src, like)
        check_config(cfg.qnet.to_dict(), src.cfg.to_dict(), f"init_from {cfg.init_from}")
        dst.load_state_dict(src.state_dict())
    # fine-tuned from the source's networks: averages with its checkpoints stay valid
    learner.origin = str(meta.get("origin") or network_digest(learner.online))
    grown = ", ".join(
        f"{registry.names[i]} as {registry.names[j]}"
        for i, j in enumerate(like, start=cfg.qnet.num_tasks - len(like))
        if i < len(registry)
    )
    return learner, (
        f"Q-network from {cfg.init_from} (weights v{version}, step {meta.get('step')})"
        + (f"; new tasks start as: {grown}" if grown else "")
    )


def source_folders(source: str | Path) -> tuple[Path, ...]:
    """The folders whose ``config.json`` may describe the network at ``source`` (a run or
    policy folder, its ``weights/``, or a weights file in it, a snapshot too), nearest
    first."""
    p = Path(source).resolve()
    folder = p if p.is_dir() else p.parent
    return (folder, folder.parent, folder.parent.parent)


def source_run(source: str | Path) -> Path | None:
    """The run or policy folder the network at ``source`` belongs to: the nearest of
    ``source_folders`` with a ``config.json``; None without one."""
    return next((d for d in source_folders(source) if (d / "config.json").is_file()), None)


def source_tasks(
    source: str | Path, trained: int, starting: str | Path | None = None
) -> tuple[str, ...]:
    """The tasks a network at ``source`` (a run or policy folder, its ``weights/``, or a
    weights file in it) was trained on, in input order, for weights published before
    they said so themselves (``meta["tasks"]``): from the ``config.json`` of the folder
    it belongs to; without one, the built-in tasks (every run's first tasks). The run
    being ``starting`` is never that folder (a source kept inside it would otherwise be
    checked against the new run's own tasks)."""
    from mtopt.tasks import DEFAULT_REGISTRY

    mine = Path(starting).resolve() if starting is not None else None
    unreadable = ""
    for d in source_folders(source):
        if d == mine or not (d / "config.json").is_file():
            continue
        try:
            return load_run_config(d / "config.json").registry().names[:trained]
        except (ConfigError, ValueError, TypeError) as exc:  # not a run's config
            unreadable = f" ({d / 'config.json'} is not a run's config: {exc})"
    if trained > len(DEFAULT_REGISTRY):
        raise WeightsError(
            f"init_from {source}: its network has {trained} task inputs, and no config.json "
            f"beside it says what the ones past the built-in tasks are{unreadable}"
        )
    return DEFAULT_REGISTRY.names[:trained]


def check_source_tasks(source: str | Path, names: Sequence[str], theirs: Sequence[str]) -> None:
    """``names`` (this run's first tasks, as many as the source network has) must be the
    tasks ``theirs`` the network at ``source`` was trained on, in order: otherwise a task
    would silently take another's input (a tasks file that differs from the source run's,
    or lists tasks in another order)."""
    if tuple(names) != tuple(theirs[: len(names)]):
        mine, other = ", ".join(names), ", ".join(theirs)
        raise WeightsError(
            f"init_from {source} was trained on the tasks [{other}], but this run's first "
            f"{len(names)} tasks are [{mine}]: a new run's tasks file must list the source "
            "run's extra tasks first, in their order, and the new tasks after them"
        )


def check_source_definitions(
    source: str | Path, registry: TaskRegistry, names: Sequence[str], starting: str | Path
) -> None:
    """Each of ``names`` (the source network's tasks) means in this run what it meant in
    the source run (its ``config.json``, when it has one): a tasks file may define a
    task of the same name anew, and the new definition would silently take the old
    one's trained input."""
    own = source_run(source)
    if own is None or own.resolve() == Path(starting).resolve():
        return
    try:
        theirs = load_run_config(own / "config.json").registry()
    except (ConfigError, ValueError, TypeError):  # not a run's config: names only
        return
    for name in names:
        if name not in theirs.names or name not in registry.names:
            continue
        a, b = registry.get(name), theirs.get(name)
        if (a.skill, a.starts_holding, a.predicate) != (b.skill, b.starts_holding, b.predicate):
            raise WeightsError(
                f"init_from {source}: its task {name!r} is {b.skill} {b.predicate}, this "
                f"run's is {a.skill} {a.predicate}: a task defined anew needs a new name "
                "(it would take the old definition's trained input)"
            )


def first_of_skill(registry: TaskRegistry, index: int, trained: int) -> int:
    """The task a new task ``index`` starts as: the first of its skill among the ``trained``
    ones; for a skill with none, the first that starts as it does (holding an object or
    not); task 0 for a spare slot past the registry."""
    if index >= len(registry):
        return 0
    spec = registry.get(registry.names[index])
    old = [registry.get(registry.names[i]) for i in range(min(trained, len(registry)))]
    same_skill = [i for i, t in enumerate(old) if t.skill == spec.skill]
    same_start = [i for i, t in enumerate(old) if t.starts_holding == spec.starts_holding]
    return (same_skill or same_start or [0])[0]


def after_train_step(
    learner: Learner,
    paths: RunPaths,
    cfg: RunConfig,
    extras: Callable[[float], dict[str, Any]],
) -> None:
    """What follows each learner step in every runtime: the weights published every
    ``publish_every`` steps (kept as a snapshot when one is due), and a checkpoint every
    ``checkpoint_every`` steps with ``extras(now)``, what a resume needs besides the
    learner, also at a step an evaluation follows (its own checkpoint, after it, holds
    its point): a kill during the evaluation lost the steps since the one before and
    made a second snapshot of the step on the resume."""
    if learner.step % cfg.publish_every == 0:
        learner.publish(paths.weights)
        if snapshot_due(learner.step, cfg.snapshot_every, cfg.publish_every):
            snapshot_latest(paths.weights)
    if learner.step % cfg.checkpoint_every == 0:
        learner.save_checkpoint(paths.checkpoint, extras(time.time()))


def last_evaluated(history: Sequence[dict[str, Any]], step: int, every: int) -> int:
    """The step the evaluation schedule counts from at ``step``: the multiple of
    ``every`` at or below the run's last evaluation (below ``step`` for a run with none
    yet), so a resume keeps the points on the grid of multiples of ``every``. Counting
    from the checkpoint's step left up to 1.5 intervals unevaluated and every later point
    off the grid; from a stop's final evaluation (at any step) likewise off it."""
    at = int(history[-1]["step"]) if history else step
    return at - at % every


def updater_seed(seed: int, step: int) -> int:
    """The Bellman updater's seed (replay sampling, CEM noise): ``seed`` for a fresh run,
    one of its own for a run resumed at ``step`` (the same seed would replay the start's
    random streams on every resume)."""
    if step == 0:
        return seed
    return int(np.random.SeedSequence([seed, step]).generate_state(1)[0])


def elapsed_before(extra: dict[str, Any]) -> float:
    """Seconds a run has run in its earlier invocations, from its checkpoint's extras.

    Checkpoints store ``elapsed_s``. Older ones did not, and each invocation's evaluation
    times (``wall_s``) restarted at 0; their sum is recovered from the history, where
    every invocation ended with an evaluation (``history_elapsed``)."""
    if "elapsed_s" in extra:
        return float(extra["elapsed_s"])
    return history_elapsed(extra.get("history", []))


def history_elapsed(history: list[dict[str, Any]]) -> float:
    """The total of per-invocation ``wall_s`` clocks (pure): each drop of ``wall_s`` starts
    a new invocation, whose predecessor ran until its last point. Only for histories
    written before ``wall_s`` counted from the run's start."""
    total = last = 0.0
    for point in history:
        wall = float(point.get("wall_s", 0.0))
        if wall < last:
            total += last
        last = wall
    return total + last


RUN_SD_ORIGIN = "run"
"""The ``origin`` the run's own SDs (its first, and one a relabel round) are published
with; ``mtopt sd train`` and ``sd improve`` publish theirs as "sd train" / "sd improve"."""


def _sim_key(sim: Any) -> dict[str, Any]:
    """A cell's settings for a cache of ground-truth outcomes: ``spawn`` only when not
    'sampled' (keys written before the field existed, all of them 'sampled', stay
    valid); never ``outcome_fixtures_share`` (the final image's layout: no outcome
    depends on it)."""
    key = dataclasses.asdict(sim)
    if key.get("spawn") == "sampled":
        del key["spawn"]
    key.pop("outcome_fixtures_share", None)
    return key


def eval_sim(cfg: RunConfig) -> Any:
    """The cell of a run's held-out evaluation: the run's, with the evaluation's objects."""
    return dataclasses.replace(cfg.sim, object_split=cfg.eval.split)  # type: ignore[arg-type]


def eval_scenes(cfg: RunConfig) -> dict[str, Any]:
    """What decides the scenes a run's held-out evaluation meets and how they play out
    (JSON values): its tasks, seed, cell settings and object split, the scene rules of
    the code, and the cell's version where it is not 3: the keys of runs made under
    cell 3 stay as they were, and so do those of cells 1 and 2 (whose runs, resumed
    under cell 3, are not told apart by it)."""
    return dict(
        json.loads(
            json.dumps(
                {
                    "tasks": list(cfg.eval.tasks),
                    "seed": cfg.eval_seed,
                    "sim": _sim_key(eval_sim(cfg)),
                    # scenes a place task cannot be set up in: replaced since 2026-12-04
                    "setup_tries": SETUP_TRIES,
                    # lift scenes without an object the task may lift: replaced since v2
                    "eval_scenes": EVAL_SCENES_VERSION,
                    # the cell's physics and ground truth (its objects' rests, the
                    # placing rules): another version plays the same scenes out otherwise
                    **({"cell_version": CELL_VERSION} if CELL_VERSION != 3 else {}),
                    # a task redefined under its name (the built-in ones are the code's)
                    **({"extra_tasks": list(cfg.extra_tasks)} if cfg.extra_tasks else {}),
                },
                default=str,
            )
        )
    )


def eval_key(cfg: RunConfig) -> str:
    """A short digest of ``eval_scenes``, kept in each history point (``same_scenes``)."""
    text = json.dumps(eval_scenes(cfg), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


RUN_LOCK = ".run.lock"
"""The file in a run folder that a live run holds an exclusive lock on (``hold_run``)."""


def published_at(weights: Path, step: int, untrained: bool) -> bool:
    """Whether the latest published weights in ``weights`` are the learner's at ``step``
    (and marked untrained as asked): a resume that trained nothing published the same
    network again as a new version."""
    try:
        latest = read_latest(weights)
    except WeightsError:
        return False
    meta = dict((latest or {}).get("meta") or {})
    return (
        latest is not None and meta.get("step") == step and bool(meta.get("untrained")) == untrained
    )


_HELD: dict[Path, list[int]] = {}
"""Run folders this process holds: [file descriptor, holders]."""
_HELD_LOCK = threading.RLock()  # re-entered by LocalRun.__del__ from a garbage collection


def hold_run(root: Path) -> Path:
    """Take the run folder ``root`` for this process: an exclusive lock on its
    ``RUN_LOCK`` file (the kernel lets go when the process dies, so a run killed outright
    resumes), with our pid in it for the message. A second ``mtopt run`` (``--resume``
    of a live run) used to rewrite config.json, start its own robots on the store and
    publish into the same weights folder, until one of the two died on a version clash.
    Within one process the folder may be held more than once (a LocalRun made again to
    resume it); ``let_go_of_run`` once per hold. Where the file system has no locks,
    nothing is checked. Returns the key to let go with."""
    key = root.resolve()
    with _HELD_LOCK:
        if key in _HELD:
            _HELD[key][1] += 1
            return key
        fd = os.open(key / RUN_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        if locked_by_another(fd):
            pid = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            raise ConfigError(
                f"{root} is in use by another mtopt run (pid {pid or 'unknown'}): stop it "
                "before resuming, or choose another --out"
            )
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        _HELD[key] = [fd, 1]
        return key


def let_go_of_run(key: Path) -> None:
    """One ``hold_run`` less; the lock goes with the last."""
    with _HELD_LOCK:
        held = _HELD.get(key)
        if held is None:
            return
        held[1] -= 1
        if held[1] <= 0:
            del _HELD[key]
            os.close(held[0])


class LocalRun:
    def __init__(
        self,
        cfg: RunConfig,
        out: str | Path,
        resume: bool = False,
        registry: TaskRegistry | None = None,
    ):
        """``registry``: the run's tasks, which must be ``cfg.registry()`` (the built-in
        tasks and ``cfg.extra_tasks``; the default): the robots, config.json and a resume
        know only those (a registry with a task of its own made 13-task robots fail on
        14-task weights). Add tasks with ``extra_tasks``."""
        if registry is None:
            registry = cfg.registry()
        elif tuple(registry.names) != tuple(cfg.registry().names):
            raise ValueError(
                f"registry= holds the tasks {list(registry.names)}, the config's "
                f"{list(cfg.registry().names)}: give new tasks in cfg.extra_tasks"
            )
        if not resume:  # absolute, checked to exist (`mtopt run` did so already)
            cfg = with_sd_sources(cfg)
        self.cfg = cfg.validate(registry)
        self.cfg.check_robot_factory()
        self.paths = RunPaths(Path(out))
        self.registry = registry
        self.resume = resume
        if (self.paths.root / "exported.json").exists():
            # a run in it rewrote its config.json and published a random network as the
            # folder's latest weights, which its users then acted with
            raise ConfigError(
                f"{out} is a policy folder (mtopt export or average): choose another --out"
            )
        self.paths.root.mkdir(parents=True, exist_ok=True)
        self._held: Path | None = hold_run(self.paths.root)
        try:  # refused past here (a config change, a run there): let go
            if not resume and self.paths.checkpoint.exists():
                raise FileExistsError(
                    f"{out} already holds a run; pass --resume to continue it or choose another --out"
                )
            self.history: list[dict[str, Any]] = []
            self.log_lines: list[str] = []
            self.last_outcomes: dict[str, list[bool]] = {}
            """Episode outcomes of the latest evaluation of the acting weights, per task."""
            self.fleet: FleetJudge | None = None
            """eval.on='fleet': the robots' own episodes judged by the SD (``_evaluate``)."""
            if self.cfg.eval_on == "fleet":
                self.fleet = FleetJudge(
                    self.paths.store, self.cfg.eval.tasks, self.cfg.eval.fleet_window
                )
            if resume and self.paths.config.exists():
                try:
                    saved = load_run_config(self.paths.config)
                except ConfigError as exc:  # unreadable: set aside; cfg is rewritten below
                    self._log(f"{exc}; moved to {self._set_aside(self.paths.config).name}")
                else:
                    self._record_config_changes(saved, cfg)
            self._config_is_ours = not resume and not self.paths.config.exists()
            save_config(cfg, self.paths.config)
            torch.manual_seed(cfg.seed)
        except BaseException:
            self.release()
            raise

    def collected_enough(self) -> bool:
        """Whether the store already holds ``max_episodes`` (a resume of a run that
        collected them all): then no robots start, as the log says (they collected for
        the whole re-read of the store before)."""
        if not self.cfg.max_episodes:
            return False
        from mtopt.collect.fleet import written_per_robot

        n = sum(written_per_robot(self.paths.store).values())
        if n < self.cfg.max_episodes:
            return False
        self._log(f"no robots: the store holds {n} episodes, max_episodes {self.cfg.max_episodes}")
        return True

    def release(self) -> None:
        """Let go of the run folder (``hold_run``): at the end of ``run``, or by hand for
        a LocalRun made but not run."""
        held, self._held = self._held, None
        if held is not None:
            let_go_of_run(held)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.release()

    def new_learner(self) -> tuple[Learner, str]:
        """``new_learner`` for this run. A fresh run whose learner cannot be made (an
        ``init_from`` that does not fit) removes the config.json it wrote, which would
        make the folder look like a run to a later ``--resume``; a resumed run's is kept."""
        try:
            return new_learner(self.paths, self.cfg, self.registry)
        except BaseException:
            if self._config_is_ours and not self.paths.checkpoint.exists():
                self.paths.config.unlink(missing_ok=True)
            raise

    @classmethod
    def resume_from(
        cls,
        out: str | Path,
        assignments: Sequence[str] = (),
        registry: TaskRegistry | None = None,
    ) -> LocalRun:
        """Continue the run in ``out`` with its own ``config.json``, changed only by
        ``assignments`` (``["budget_minutes=40"]``), as ``mtopt run --resume`` does."""
        paths = RunPaths(Path(out))
        if not paths.config.exists():
            raise ConfigError(f"{out} holds no run to resume (no config.json)")
        cfg = resume_config(load_run_config(paths.config), None, list(assignments), out)
        return cls(cfg, out, resume=True, registry=registry)

    def _record_config_changes(self, saved: RunConfig, cfg: RunConfig) -> None:
        """A resume may change settings (a budget, a learning rate) but not the Q-network
        the checkpoint holds; what it changes is logged and kept in config_changes.json,
        so the run's config.json alone never hides that its first part ran otherwise."""
        if cfg.qnet != saved.qnet:
            raise ConfigError(
                f"resuming {self.paths.root} with another Q-network than it was started with "
                f"({describe_changes(saved.qnet, cfg.qnet, 'qnet.')}); "
                "resume with the run's own config (LocalRun.resume_from, mtopt run --resume)"
            )
        check_same_task_inputs(saved, cfg, f"resuming {self.paths.root}")
        changes = changed_fields(saved, cfg)
        if not changes:
            return
        self._log(f"resuming with changed settings: {describe_changes(saved, cfg)}")
        started = {  # settings only a start uses, once what they made exists
            "learner.seed": self.paths.checkpoint,  # weights and random streams come from it
            "sd.examples_per_task": self.paths.sd / "examples.npz",  # staged already
        }
        for key, made in started.items():
            if key in changes and made.exists():
                self._log(
                    f"note: {key} has no effect on this resume: only a run's start uses it "
                    f"({made.name} exists); start a new run for another"
                )
        log = load_config_changes(self.paths.config_changes)
        if log is None:  # damaged: set aside, never fatal
            bad = self._set_aside(self.paths.config_changes)
            self._log(f"config_changes.json was unreadable; moved to {bad.name}")
            log = []
        log.append(
            {
                "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "changes": {k: [a, b] for k, (a, b) in changes.items()},
            }
        )
        atomic_write_json(self.paths.config_changes, log)

    @staticmethod
    def _set_aside(path: Path, why: str = "corrupt") -> Path:
        bad = path.with_name(f"{path.name}.{why}-{int(time.time())}")
        os.replace(path, bad)
        return bad

    # ------------------------------------------------------------------ stages
    def _log(self, msg: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        self.log_lines.append(line)
        print(line, flush=True)

    def _own_examples(self, key: str) -> LabeledSet:
        """The example set ``sd.<key>`` names, for the run's tasks and image size (a
        ConfigError that names the setting, before any SD is trained)."""
        path = getattr(self.cfg.sd, key)
        try:
            return examples_for(
                path,
                self.registry.names,
                self.cfg.sim.image_size,
                self.cfg.sim.outcome_fixtures_share,
            )
        except (FileNotFoundError, ValueError) as exc:
            raise ConfigError(f"sd.{key}: {exc}") from None

    def _copy_own_examples(self) -> LabeledSet:
        """``sd.examples_file`` copied into ``sd/examples.npz``, less the share held out
        for ``sd/validation.npz`` when no ``sd.validation_file`` is given (that is
        written first: examples.npz never stands without its validation set)."""
        c, sd = self.cfg.sd, self.paths.sd
        data = self._own_examples("examples_file")
        if not c.validation_file:
            try:
                data, held = split_held_out(
                    data, VALIDATION_SHARE, f"examples of {c.examples_file}"
                )
            except ValueError as exc:
                raise ConfigError(
                    f"sd.examples_file: {exc} (by id hash): give more examples, or a "
                    "held-out set as sd.validation_file"
                ) from None
            held.save(sd / "validation.npz")
            self._log(
                f"{len(held)} of {len(held) + len(data)} examples of {c.examples_file} held "
                "out to measure the run's SDs on"
            )
        counts = label_counts(data)
        missing = [t for t, (pos, neg) in counts.items() if not (pos and neg)]
        if missing:
            self._log(
                f"sd.examples_file has no positive or no negative labels for {', '.join(missing)}: "
                "the SD learns nothing of them, and their rewards are guesses"
            )
        self._log(f"success-detector examples: {len(data)} from {c.examples_file}")
        data.save(sd / "examples.npz")
        return data

    def _sd_train_set(self) -> LabeledSet:
        path = self.paths.sd / "examples.npz"
        if path.exists():
            return LabeledSet.load(path)
        c = self.cfg
        if c.sd.examples_file:
            return self._copy_own_examples()
        data = stage_examples(
            self.registry,
            self.registry.names,
            c.sd.examples_per_task,
            "train",
            True,
            c.seed,
            c.sim.image_size,
            progress=True,
            outcome_fixtures_share=c.sim.outcome_fixtures_share,
        )
        data.save(path)
        return data

    def _sd_val_set(self) -> LabeledSet:
        path = self.paths.sd / "validation.npz"
        if path.exists():
            return LabeledSet.load(path)
        c = self.cfg
        if c.sd.validation_file:
            data = self._own_examples("validation_file")
            data.save(path)
            return data
        if c.sd.examples_file:  # its held-out share
            self._copy_own_examples()
            return LabeledSet.load(path)
        n = max(2, c.sd.examples_per_task // 4)
        data = stage_examples(
            self.registry,
            self.registry.names,
            n,
            "test",
            True,
            c.seed + 1,
            c.sim.image_size,
            outcome_fixtures_share=c.sim.outcome_fixtures_share,
        )
        data.save(path)
        return data

    def _check_sd_tasks(self) -> None:
        """The staged examples and SD weights in ``sd/`` are for this run's tasks: a fresh
        start into a folder a start with other tasks left them in (stopped while staging,
        a tasks file mended) stages again instead of training the new task's output on
        another task's labels, and refuses a success detector trained for other tasks."""
        sd = self.paths.sd
        key_path = sd / "tasks.key.json"
        # the names, and the descriptions of the tasks the run adds (the built-in ones are
        # the code's: a later version's wording must not lock a run out of its resume)
        key = json.loads(  # as read back (tuples in a task description become lists)
            json.dumps({"names": list(self.registry.names), "extra_tasks": self.cfg.extra_tasks})
        )
        sources = {k: getattr(self.cfg.sd, k) for k in SD_SOURCES if getattr(self.cfg.sd, k)}
        if sources:  # (runs without them keep the key they had)
            key["sd_sources"] = sources
        if self.cfg.sim.outcome_fixtures_share != 0.5:  # staged in that view (as above)
            key["outcome_fixtures_share"] = self.cfg.sim.outcome_fixtures_share
        if key_path.exists():
            old = json.loads(key_path.read_text())
            if isinstance(old, list):  # the first form of the key (2026-12-05): task dicts
                other = [d.get("name") for d in old] != key["names"]
            else:
                other = old != key
        else:  # a run from before the key: its staged examples name their tasks
            examples = sd / "examples.npz"
            other = examples.exists() and LabeledSet.load(examples).tasks != self.registry.names
        if other:
            if SuccessDetector.latest_version(sd) > 0:
                raise ConfigError(
                    f"{sd} holds a success detector trained for other tasks, or made from "
                    f"other sd.* files (tasks.key.json there lists them); delete {sd} to "
                    "make one for these, or choose another --out"
                )
            for name in ("examples.npz", "validation.npz", "episode_labels.npz", "quality.json"):
                if (sd / name).exists():
                    moved = self._set_aside(sd / name, "other-tasks")
                    self._log(f"{name} was made for other tasks: moved to {moved.name}")
        sd.mkdir(parents=True, exist_ok=True)
        atomic_write_json(key_path, key)

    def init_sd(self) -> SuccessDetector:
        self._check_sd_tasks()
        if SuccessDetector.latest_version(self.paths.sd) > 0:
            sd = SuccessDetector.load(self.paths.sd, self.registry.names)
            self._log(f"loaded success detector v{sd.version}")
            self._recover_sd_quality(sd)
            return sd
        given = self._check_sd_sources()  # every sd.* file, before anything is made
        if given is not None:
            return self._copy_sd_weights(given)
        if (self.paths.sd / "examples.npz").exists():
            self._log(f"reusing success-detector examples in {self.paths.sd}")
        elif not self.cfg.sd.examples_file:
            self._log(
                "staging success-detector examples (positives and near misses, randomized scenes)"
            )
        data = self._sd_train_set()
        net = train_sd(data, self.cfg.sd.train, progress=True)
        sd = SuccessDetector(net, self.registry.names)
        # what relabel rounds fine-tune; the next version there: a start that died
        # between these two publishes, or an SD deleted to be retrained, left one
        initial = self.paths.sd / "initial"
        view = view_meta(data.outcome_fixtures_share)  # staged: the run's; a file's: its own
        sd.publish(initial, extra_meta=view)
        sd.publish(self.paths.sd, extra_meta={"origin": RUN_SD_ORIGIN, "episode_labels": 0, **view})
        self._record_sd_quality(sd, labels=0)
        return sd

    def _check_sd_sources(self) -> SuccessDetector | None:
        """Every ``sd.*`` file the run's first SD is made from, read and checked before
        anything is trained or published (a bad one found after the SD was published
        would lock the run folder: a resume cannot change them): the example sets' tasks,
        image size and labels, no example in both ``examples_file`` and
        ``validation_file``, and ``sd.weights``' SD, which is returned (None without).
        Copies of ``examples_file`` a dead start left in ``sd/`` are made again (the file
        may have been exported anew since; copying is cheap, unlike staging)."""
        c = self.cfg.sd
        if c.examples_file:  # validation.npz is its split unless a file of its own
            (self.paths.sd / "examples.npz").unlink(missing_ok=True)
            if not c.validation_file:
                (self.paths.sd / "validation.npz").unlink(missing_ok=True)
        sets = {
            k: self._own_examples(k) for k in ("examples_file", "validation_file") if getattr(c, k)
        }
        if len(sets) == 2:
            shared = set(sets["examples_file"].ids.tolist()) & set(
                sets["validation_file"].ids.tolist()
            )
            if shared:
                raise ConfigError(
                    f"sd.examples_file and sd.validation_file share {len(shared)} examples "
                    f"(such as {sorted(shared)[0]!r}): held-out examples must not be trained "
                    "on (`mtopt sd export --validation-out` keeps them apart)"
                )
        if not c.weights:
            return None
        try:
            sd = SuccessDetector.load(c.weights, self.registry.names)
        except (WeightsError, ValueError, KeyError, TypeError, RuntimeError) as exc:
            raise ConfigError(f"sd.weights: {exc}") from None
        if sd.net.cfg.image_size != self.cfg.sim.image_size:
            raise ConfigError(
                f"sd.weights: the SD in {c.weights} judges {sd.net.cfg.image_size}-pixel "
                f"images, the run's camera gives {self.cfg.sim.image_size} (sim.image_size)"
            )
        view, own = sd.outcome_fixtures_share, self.cfg.sim.outcome_fixtures_share
        if view is not None and view != own:
            raise ConfigError(
                f"sd.weights: the SD in {c.weights} was trained on outcome images at "
                f"outcome_fixtures_share {view}, the run's cell renders {own} "
                "(sim.outcome_fixtures_share)"
            )
        return sd

    def _copy_sd_weights(self, sd: SuccessDetector) -> SuccessDetector:
        """``sd.weights``' latest SD (``sd``) as the run's first, and what relabel rounds
        fine-tune from (``sd/initial``)."""
        origin = f"{self.cfg.sd.weights} v{sd.version}"
        view = view_meta(sd.outcome_fixtures_share)  # the copied SD's record, if it has one
        sd.publish(self.paths.sd / "initial", extra_meta={"copied_from": origin, **view})
        sd.publish(
            self.paths.sd,
            extra_meta={
                "origin": RUN_SD_ORIGIN,
                "episode_labels": 0,
                "copied_from": origin,
                **view,
            },
        )
        self._log(f"success detector v{sd.version}: a copy of {origin} (sd.weights)")
        self._record_sd_quality(sd, labels=0)
        return sd

    def _recover_sd_quality(self, sd: SuccessDetector) -> None:
        """A kill between publishing one of the run's SDs and its quality.json line left
        the SD without its line: the line is written now, so the rounds count
        (``_sd_rounds_done``) and the quality record stay whole. SDs of others (``mtopt sd
        train`` / ``sd improve``) and SDs published before the origin was kept get none."""
        if sd.meta.get("origin") != RUN_SD_ORIGIN:
            return
        path = self.paths.sd / "quality.json"
        rows = json.loads(path.read_text()) if path.exists() else []
        if any(r.get("version") == sd.version for r in rows):
            return
        self._log(f"SD v{sd.version} has no quality line (a kill as it was published): adding it")
        self._record_sd_quality(sd, labels=int(sd.meta.get("episode_labels", 0)))

    def _record_sd_quality(self, sd: SuccessDetector, labels: int) -> None:
        metrics = evaluate_sd(sd, self._sd_val_set())
        bal = {  # None: a task without both classes among the held-out examples
            t: round(v, 4) if math.isfinite(v := m["balanced_accuracy"]) else None
            for t, m in metrics.items()
        }
        path = self.paths.sd / "quality.json"
        rows = json.loads(path.read_text()) if path.exists() else []
        rows.append({"version": sd.version, "episode_labels": labels, "balanced_accuracy": bal})
        atomic_write_json(path, rows)
        on = self.cfg.sd.validation_file or self.cfg.sd.examples_file
        where = f"held-out examples of {on}" if on else "held-out staged scenes"
        mean = mean_finite(bal.values())
        shown = "n/a" if mean is None else f"{mean:.3f}"
        self._log(f"SD v{sd.version}: mean balanced accuracy on {where} {shown}")

    def improve_sd(
        self, sd: SuccessDetector, recent: list[Any], labels_so_far: int
    ) -> tuple[SuccessDetector, int]:
        """The paper's loop: score collected episodes, label the most disputed (related
        tasks contradicting each other) and the most uncertain, retrain."""
        lab_path = self.paths.sd / "episode_labels.npz"
        before = LabeledSet.load(lab_path) if lab_path.exists() else None
        # an episode is labeled once: not again after an earlier round (rounds' candidates
        # can overlap), nor twice in this one (a store can hold an id twice: a client's
        # retried write; both copies scored alike and were picked side by side)
        done = set() if before is None else {str(i) for i in before.ids}
        unique = []
        for e in recent:
            if str(e.episode_id) not in done:
                done.add(str(e.episode_id))
                unique.append(e)
        recent = unique
        size = sd.net.cfg.image_size
        fits = [e for e in recent if np.shape(e.final_image) == (size, size, 3)]
        if len(fits) < len(recent):  # a robot whose camera gives another size: not labeled
            self._log(
                f"SD round: {len(recent) - len(fits)} of {len(recent)} episodes have final "
                f"images of another size than the detector's {size}x{size}: left out"
            )
        recent = fits
        # the oracle labels with the ground truth: a real arm's episodes have none (and
        # then no examples need staging for a round that cannot label anything)
        if not any(getattr(e, "gt_success_by_task", None) for e in recent):
            return sd, labels_so_far
        base = self._sd_train_set()
        # an example set made of this store's episodes (sd.examples_file / validation_file
        # from `sd export`): its episodes are not labeled again, and the validation
        # set's never trained on (the run's quality.json would read high)
        held = {str(i) for i in base.ids} | {str(i) for i in self._sd_val_set().ids}
        recent = [e for e in recent if str(e.episode_id) not in held]
        if not recent:
            return sd, labels_so_far
        finals = np.stack([e.final_image for e in recent])
        probs = sd.score(finals)
        if before is not None:  # (labeled before this rule: kept in the file, not trained on)
            before_kept = np.flatnonzero(~np.isin(before.ids.astype(str), sorted(held)))
            known = base.concat(before.subset(before_kept))
        else:
            known = base
        disputes = disputes_given_labels(probs, known.labels, known.mask)
        pick = select_episodes(probs, self.cfg.sd.label_budget_per_round, disputes)
        new = episode_examples([recent[i] for i in pick], self.registry, source="oracle")
        if len(new) == 0:
            return sd, labels_so_far
        labeled = new if before is None else before.concat(new)
        labeled.save(lab_path)
        data = known.concat(new)
        tcfg = dataclasses.replace(
            self.cfg.sd.train, steps=self.cfg.sd.retrain_steps, seed=sd.version
        )
        net = train_sd(data, tcfg, init=self._retrain_start(sd))
        new_sd = SuccessDetector(net, self.registry.names)
        labels = labels_so_far + len(new)
        # the next free version (`sd improve` may share the folder)
        new_sd.publish(
            self.paths.sd,
            extra_meta={
                "origin": RUN_SD_ORIGIN,
                "episode_labels": labels,
                **view_meta(data.outcome_fixtures_share),
            },
        )
        self._record_sd_quality(new_sd, labels)
        return new_sd, labels

    def sd_round_due(self, sd: SuccessDetector, tail: StoreIngest[Any]) -> bool:
        """``sd_round_due`` for this run's settings and ``tail``'s count, and episodes to
        label: with none read yet (a Ray resume skips the old store) the round waits
        rather than reset the count with nothing done, and while a resume re-reads the
        store (oldest first) it waits for the newest episodes: a round due at a stop
        (Ctrl-C in a round) labeled the store's first, scripted ones."""
        c = self.cfg.sd
        if c.improve_every_episodes <= 0 or tail.since_mark < c.improve_every_episodes:
            return False  # (not due at the shortest interval: no file read each step)
        if not tail.caught_up:
            return False
        return sd_round_due(
            tail.since_mark, c.improve_every_episodes, c.improve_growth, self._sd_rounds_done(sd)
        ) and bool(tail.recent())

    def episode_labels_kept(self, checkpointed: int) -> int:
        """The episode labels the run's SD rounds gave, as ``sd/episode_labels.npz`` keeps
        them (written first in a round): a kill between a round's labels and the next
        checkpoint left the checkpoint's count short of them for good."""
        path = self.paths.sd / "episode_labels.npz"
        if not path.exists():
            return checkpointed
        try:
            return max(checkpointed, len(LabeledSet.load(path)))
        except ValueError:  # unreadable: the next round says so
            return checkpointed

    def _sd_rounds_done(self, sd: SuccessDetector) -> int:
        """The run's own relabel rounds so far: quality.json has a line per SD the run
        made (its first, then one a round). Versions `mtopt sd improve` published into
        the run's sd folder are no rounds of the run (they made its rounds ever rarer)."""
        path = self.paths.sd / "quality.json"
        if not path.exists():  # a run from before quality.json
            return max(0, sd.version - 1)
        return max(0, len(json.loads(path.read_text())) - 1)

    def sd_round(
        self,
        sd: SuccessDetector,
        tail: StoreIngest[Any],
        labels_so_far: int,
        use: Callable[[SuccessDetector], object] | None = None,
    ) -> tuple[SuccessDetector, int]:
        """An SD relabel + retrain round on the newest episodes ``tail`` keeps, when one is
        due (``sd_round_due``); ``use(new_sd)`` runs before ``tail`` ingests again. Both
        runtimes call it; the Ray replay actors load the published SD themselves."""
        if not self.sd_round_due(sd, tail):
            return sd, labels_so_far
        with tail.paused():
            sd, labels = self.improve_sd(sd, tail.recent(), labels_so_far)
            if use is not None:
                use(sd)
            tail.mark()
        return sd, labels

    def _retrain_start(self, sd: SuccessDetector) -> SuccessNet:
        """The network a relabel round fine-tunes (``SDConfig.retrain_from``): a copy when
        it is the detector in use, which goes on scoring while the round trains (the Ray
        driver evaluates beside it; an interrupted round left half-trained weights under
        the old version)."""
        initial = self.paths.sd / "initial"
        if self.cfg.sd.retrain_from == "previous":
            return copy.deepcopy(sd.net)
        if SuccessDetector.latest_version(initial) == 0:  # a run from before it was kept
            self._log("no staged-only SD in sd/initial: fine-tuning the current SD")
            return copy.deepcopy(sd.net)
        return SuccessDetector.load(initial, self.registry.names).net

    def scripted_baseline(self) -> dict[str, float]:
        """The scripted policies' held-out success per evaluation task, measured once per
        run and kept in ``scripted_eval.json``, on the same scenes as the learned
        policy's evaluations. Changed evaluation tasks, seed, object split, episode count
        or cell (a resume with other settings) measure it again: the kept numbers were of
        other scenes, and a task added on a resume had none."""
        if self.fleet is not None:
            self._log(
                "evaluation on the fleet's own episodes (eval.on=fleet): the scripted "
                "policies' success is measured on them at each evaluation"
            )
            return {}
        path = self.paths.root / "scripted_eval.json"
        key_path = self.paths.root / "scripted_eval.key.json"
        key = {**self.eval_scenes(), "episodes": self.cfg.eval.scripted_episodes}
        if path.exists():
            cached = dict(json.loads(path.read_text()))
            if key_path.exists():
                valid = json.loads(key_path.read_text()) == key
            else:  # a run from before the key was kept: its numbers stand for its tasks
                valid = all(t in cached for t in self.cfg.eval.tasks)
            if valid:
                return {t: cached[t] for t in self.cfg.eval.tasks}
            self._log("scripted baseline: the evaluation settings changed, measuring again")
        res = evaluate_policy(
            scripted_policy_for,
            self.registry,
            self.cfg.eval.tasks,
            self.cfg.eval.scripted_episodes,
            self._eval_sim(),
            self.cfg.eval_seed,
        )
        atomic_write_json(path, res)
        atomic_write_json(key_path, key)
        return res

    def eval_scenes(self) -> dict[str, Any]:
        """What decides the scenes the held-out evaluation meets (``eval_scenes``)."""
        return eval_scenes(self.cfg)

    def eval_key(self) -> str:
        """A short digest of ``eval_scenes``, kept in each history point (``same_scenes``)."""
        return eval_key(self.cfg)

    def _eval_sim(self) -> Any:
        return eval_sim(self.cfg)

    def _eval_outcomes(self, pol: CEMPolicy) -> dict[str, list[bool]]:
        """Episode outcomes of a greedy CEM policy per evaluation task, on the run's
        held-out evaluation scenes (the same scenes at every evaluation)."""
        return evaluate_outcomes(
            lambda spec: pol,
            self.registry,
            self.cfg.eval.tasks,
            self.cfg.eval.episodes_per_task,
            self._eval_sim(),
            self.cfg.eval_seed,
        )

    def learned_outcomes(self, learner: Learner) -> dict[str, list[bool]]:
        """Episode outcomes of the learner's acting weights (``_eval_outcomes``)."""
        # robots act on the CPU with published weights: evaluate the same way, wherever
        # the learner trains (a GPU learner's nets are copied over)
        net = (
            learner.acting if learner.device.type == "cpu" else copy.deepcopy(learner.acting).cpu()
        )
        # the robots' search (fp32): with cem_act's "auto" the evaluation searched in bf16
        # on AMX machines, another argmax than the robots' and evaluate_run.py's
        pol = CEMPolicy(
            self.registry.names, network=net, cem=self.cfg.collection_cem(), seed=self.cfg.seed
        )
        return self._eval_outcomes(pol)

    def average_at_end(self) -> dict[str, Any] | None:
        """Average the latest weights with the last ``average_last`` snapshots into
        ``DIR/policy-averaged`` and evaluate it on the scenes of the last evaluation of
        the acting weights, paired with it. None when off or when it cannot be made (the
        reason is logged; the run's own results are unaffected)."""
        last = self.cfg.average_last
        if last and self.fleet is not None:
            self._log("no averaged policy: eval.on=fleet has no scenes to evaluate it on")
            return None
        if last == 0 or not self.last_outcomes:
            return None
        try:
            folder, made = average_run(self.paths.root, self.cfg, last)
        except (WeightsError, OSError) as exc:
            self._log(f"no averaged policy: {exc}")
            return None
        pol = CEMPolicy(
            self.registry.names,
            weights_dir=folder / "weights",
            cem=self.cfg.collection_cem(),
            seed=self.cfg.seed,
        )
        outcomes = self._eval_outcomes(pol)
        acting = self.last_outcomes
        result = {
            "folder": str(folder),
            **made,
            "episodes_per_task": self.cfg.eval.episodes_per_task,
            "success": success_rates(outcomes),
            "acting": success_rates(acting),
            "averaged_minus_acting": {
                t: paired_comparison(acting[t], w).as_dict()
                for t, w in outcomes.items()
                if w and len(acting.get(t, [])) == len(w)
            },
        }
        atomic_write_json(folder / "evaluation.json", result)
        self._log(
            f"averaged policy ({len(made['averaged']['sources'])} checkpoints) in {folder}: "
            + ", ".join(
                f"{t}={r:.2f} (acting {result['acting'][t]:.2f})"
                for t, r in result["success"].items()
            )
        )
        return result

    # ------------------------------------------------------------------ main loop
    def run(self) -> dict[str, Any]:
        from mtopt._signals import stop_on_sigterm

        if self.cfg.runtime != "local":
            self.release()
            raise ValueError(
                f"this config's runtime is {self.cfg.runtime!r}: run it with "
                "mtopt.runtime.ray_runtime.run_ray (as mtopt run does), or set runtime='local'"
            )
        try:
            with stop_on_sigterm():
                return self._run()
        finally:
            self.release()

    def _run(self) -> dict[str, Any]:
        c, p = self.cfg, self.paths
        t_start = time.time()
        t_origin = t_start  # when the run started, counting its earlier invocations
        # the learner first: a checkpoint or init_from that does not fit fails before the
        # success detector's examples are staged (minutes)
        resumed = self.resume and p.checkpoint.exists()
        if resumed:
            learner, extra = resume_learner(p, c)
            self.history = list(extra.get("history", []))
            sd_labels = self.episode_labels_kept(int(extra.get("sd_labels", 0)))
            sd_since = int(extra.get("sd_since", 0))
            t_origin = t_start - elapsed_before(extra)
            self._log(
                f"resumed learner at step {learner.step} (weights v{learner.version}, "
                f"{(t_start - t_origin) / 60:.1f} minutes run before)"
            )
        else:
            if self.resume:  # a --resume that found no checkpoint starts over: say so
                self._log(f"no checkpoint in {p.root}: the run starts from the beginning")
            learner, started_from = self.new_learner()
            if started_from:
                self._log(started_from)
            sd_labels = sd_since = 0
        sd = self.init_sd()
        scripted = self.scripted_baseline()
        if scripted:
            self._log(
                "scripted baseline (held-out): "
                + ", ".join(f"{k}={v:.2f}" for k, v in scripted.items())
            )
        buffers = TaskBuffers(self.registry.names, c.replay.capacity_per_bucket)
        # the background Bellman updater samples while this thread ingests and relabels
        buffers_lock = threading.Lock()
        replay = LogReplay(
            self.registry,
            buffers,
            sd,
            c.replay.impersonation,
            buffers_lock=buffers_lock,
            reward=c.replay.reward,
        )
        updater = BellmanUpdater(
            buffers,
            learner.targets,
            c.cem_bellman,
            c.discounts(self.registry),
            c.replay.batch_size,
            c.replay.success_ratio,
            c.replay.rebalance,
            updater_seed(c.seed, learner.step),
            task_weights=c.replay.task_shares,
            mc_bound=c.learner.mc_bound,
            mc_mix=c.learner.mc_mix,
            buffers_lock=buffers_lock,
        )
        background: BackgroundUpdater | None = None
        reader = EpisodeReader(
            p.store, must_exist=False, shards_per_poll=c.replay.read_shards_per_poll
        )
        spec = FleetSpec(
            store=str(p.store),
            robots=c.robots,
            episodes_per_robot=None,
            collect=dataclasses.replace(c.collect, max_steps=c.sim.max_steps),
            sim=dataclasses.asdict(c.sim),
            seed=c.seed + 17 * len(self.history),
            weights_dir=str(p.weights),
            switch_file=str(p.switch),
            epsilon=c.epsilon,
            noise_std=c.noise_std,
            max_rate=c.max_collect_rate,
            extra_tasks=c.extra_tasks,
            cem=c.collection_cem(),
            robot_factory=c.robot_factory,
        )
        stop_fleet = threading.Event()
        fleet_summary: dict[str, Any] = {}
        # One core per robot process, the rest to the learner: oversubscribed OpenMP threads
        # spin-wait on each other and slowed training ~20x when measured.
        torch.set_num_threads(max(1, (os.cpu_count() or 2) - c.robots))

        fleet_error: list[str] = []

        def fleet() -> None:
            try:
                if backlog and self.collected_enough():
                    stop_fleet.set()
                    return
                fleet_summary.update(run_fleet(spec, should_stop=stop_fleet.is_set))
            except Exception as exc:  # the run stops, checkpoints and reports it
                log.exception("robot fleet failed")
                fleet_error.append(f"{type(exc).__name__}: {exc}")
                return
            # robots collect until told to stop: a fleet that ends by itself lost them all
            if c.robots and not stop_fleet.is_set() and not fleet_summary.get("interrupted"):
                refused = fleet_summary.get("refused") or {}
                if refused:
                    robot, why = next(iter(refused.items()))
                    fleet_error.append(f"robot {robot} does not fit this run: {why}")
                else:
                    fleet_error.append(
                        "every robot process stopped (each failed more than its restarts allow)"
                    )

        p.store.mkdir(parents=True, exist_ok=True)
        # LogReplay tails the store from a thread of its own (replay/ingest.py says why),
        # started before the robots so that its backlog is the store as the run found it:
        # a resumed run counted those episodes towards its next SD round before (a fresh
        # run on an old store does not count them), and the learner waits until they are
        # read (in parts, so memory is bounded by the buffers), rather than train on the
        # store's oldest episodes meanwhile.
        counted_at = time.time()  # the robots' episodes start after this
        backlog = len(reader.new_shards())  # a fresh run on a copied store too
        ingest = StoreIngest(
            reader,
            lambda eps: replay.ingest(replay_items(eps, c.qnet)),
            keep_recent=5 * max(1, c.sd.label_budget_per_round),
            since_mark=sd_since,
            backlog_polls=-(-backlog // c.replay.read_shards_per_poll),
            is_new=lambda e: e.started_at >= counted_at,
        )
        thread = threading.Thread(target=fleet, name="fleet", daemon=True)
        thread.start()
        self._log(f"fleet started: {c.robots} robot process(es) -> {p.store}")
        bar = progress_bar(learner.step, c.max_learner_steps)

        def checkpoint_extras(now: float) -> dict[str, Any]:
            """What a resume needs besides the learner: history, SD labels, the run's age."""
            return {
                "history": self.history,
                "sd_labels": sd_labels,
                "sd_since": ingest.since_mark,  # episodes towards the next SD round
                "elapsed_s": now - t_origin,
            }

        # at least one episode: replay.min_episodes=0 sampled from empty buffers and crashed
        needed = max(1, min(c.replay.min_episodes, c.max_episodes or c.replay.min_episodes))
        last_eval_step = last_evaluated(self.history, learner.step, c.eval.every_steps)
        deadline = t_start + c.budget_minutes * 60
        stats: dict[str, float] = {}
        backlog_done = backlog == 0
        try:
            while not (c.max_learner_steps and learner.step >= c.max_learner_steps):
                # (checked first too: a resumed run that is done trains no further step)
                ingest.check()
                if fleet_error:
                    self._log(
                        f"the robot fleet failed ({fleet_error[0]}): stopping; the checkpoint "
                        "and the report follow, and --resume continues"
                    )
                    break
                if not backlog_done and ingest.caught_up:
                    backlog_done = True
                    self._log(
                        f"{'re-read' if resumed else 'read'} the store: {ingest.backlog_read} "
                        f"episodes from {backlog} shards ({len(buffers)} kept by the buffers), "
                        f"{time.time() - t_start:.0f} s after the "
                        f"{'resume' if resumed else 'start'}: training goes on"
                    )
                if c.max_episodes and ingest.ingested >= c.max_episodes:
                    stop_fleet.set()
                sd_before = sd.version
                sd, sd_labels = self.sd_round(sd, ingest, sd_labels, replay.set_reward_model)
                if sd.version != sd_before:
                    # the round's labels and reset count into the checkpoint at once: a
                    # kill before the next one undercounted them and could repeat the round
                    learner.save_checkpoint(p.checkpoint, checkpoint_extras(time.time()))
                if backlog_done and len(buffers) >= needed:
                    if c.bellman_prefetch and background is None:
                        background = BackgroundUpdater(updater, c.bellman_prefetch)
                    batch = background.get() if background else updater.make_batch()
                    target_version = learner.target_version
                    stats = learner.train_step(batch, self.registry.names)
                    if background and learner.target_version != target_version:
                        background.set_targets(learner.targets)
                    bar.update(1)
                    after_train_step(learner, p, c, checkpoint_extras)
                    if learner.step - last_eval_step >= c.eval.every_steps:
                        last_eval_step = learner.step
                        self._evaluate(learner, scripted, ingest.ingested, t_origin, sd, stats)
                        # the point in a checkpoint at once: a kill before the next one lost
                        # it for good (a resume does not evaluate that step again)
                        learner.save_checkpoint(p.checkpoint, checkpoint_extras(time.time()))
                    show_progress(bar, ingest.ingested, sd.version, learner.version, stats)
                elif c.robots > 0 and not thread.is_alive():
                    ingest.close()  # the fleet is done: read what it wrote last
                    if len(buffers) < needed:
                        break
                else:
                    time.sleep(0.2)
                if time.time() > deadline:
                    break
        except KeyboardInterrupt:
            # the fleet first: robots the same Ctrl-C (or a SIGTERM to the group) stopped
            # must not be taken for robots that stopped on their own and restarted
            stop_fleet.set()
            self._log("interrupted: checkpointing and writing the report")
            # at once, before the clean-up (the fleet's stop, the last reads: up to
            # minutes): a second Ctrl-C or SIGTERM during it lost the steps since the
            # last periodic checkpoint
            learner.save_checkpoint(p.checkpoint, checkpoint_extras(time.time()))
        finally:
            bar.close()
            if background:
                background.close()
            stop_fleet.set()
            thread.join(timeout=60)
            ingest.close()  # after one last poll: episodes flushed while stopping
        from mtopt.runtime.report import batch_composition

        return self.finish(
            learner,
            scripted=scripted,
            episodes=ingest.ingested,
            t_origin=t_origin,
            t_start=t_start,
            sd=sd,
            sd_labels=sd_labels,
            stats=stats,
            checkpoint_extras=checkpoint_extras,
            composition=replay.stats.composition(self.registry.names),
            buffer_sizes={t: list(v) for t, v in buffers.sizes().items()},
            batch_share=batch_composition(updater),
            extra={
                "fleet": fleet_summary,
                "fleet_error": fleet_error[0] if fleet_error else None,
            },
        )

    def finish(
        self,
        learner: Learner,
        *,
        scripted: dict[str, float],
        episodes: int,
        t_origin: float,
        t_start: float,
        sd: SuccessDetector,
        sd_labels: int,
        stats: dict[str, float],
        checkpoint_extras: Callable[[float], dict[str, Any]],
        composition: dict[str, dict[str, int]],
        buffer_sizes: dict[str, list[int]],
        batch_share: dict[str, dict[str, float]] | None,
        extra: dict[str, Any],
    ) -> dict[str, Any]:
        """The end of a run, either runtime's: publish the last weights, a last evaluation,
        the checkpoint, the optional average, then ``summary.json`` and the report."""
        from mtopt.runtime.report import write_report

        p = self.paths
        # a stop before the first training step: the network is the random one of step 0
        # (init_from's, trained elsewhere, is not). Published unmarked, robots of a resumed
        # run collected half their bootstrap episodes with it, and it was evaluated.
        untrained = learner.step == 0 and not self.cfg.init_from
        if not published_at(p.weights, learner.step, untrained):
            learner.publish(p.weights, untrained=untrained)
        # checkpointed before the evaluation (minutes) too: a second Ctrl-C or a kill
        # during it loses no training
        learner.save_checkpoint(p.checkpoint, checkpoint_extras(time.time()))
        # not again at a step evaluated already on these scenes (the same weights; a
        # resume that changed the evaluation's scenes and trained nothing evaluates)
        last = self.history[-1] if self.history else {}
        done = last.get("step") == learner.step and (
            self.fleet is not None or last.get("eval_key") == self.eval_key()
        )
        if untrained:
            self._log("no training step yet: no final evaluation")
        elif not done:
            self._evaluate(learner, scripted, episodes, t_origin, sd, stats)
        if self.fleet is not None and self.history:  # the scripted bar of the last point
            scripted = self.history[-1].get("scripted", {})
        t_end = time.time()
        learner.save_checkpoint(p.checkpoint, checkpoint_extras(t_end))
        averaged = self.average_at_end()  # after the checkpoint: optional, never in its way
        if averaged is None and not self.last_outcomes:
            # nothing evaluated in this invocation (a resume that trained no step): the
            # average made at this step before still stands, where the report dropped it
            averaged = self.earlier_average(learner.step)
        summary = {
            "episodes": episodes,
            "learner_steps": learner.step,
            "q_version": learner.version,
            "sd_version": sd.version,
            "sd_episode_labels": sd_labels,
            "wall_minutes": round((t_end - t_start) / 60, 2),
            "total_wall_minutes": round((t_end - t_origin) / 60, 2),
            "final": self.history[-1] if self.history else {},
            "scripted": scripted,
            "composition": composition,
            "buffer_sizes": buffer_sizes,
            # each task's share of the training batches at the end (the report's figure)
            "batch_share": batch_share or {},
            "averaged": averaged,
            **extra,
        }
        # the summary first: a report that fails (a plot, the store's scan) loses nothing
        atomic_write_json(p.root / "summary.json", summary)
        write_report(self, summary, batch_share)
        return summary

    def earlier_average(self, step: int) -> dict[str, Any] | None:
        """The averaged policy of the last summary.json, if that summary ended at
        ``step`` (the same acting weights) and it was made (None otherwise)."""
        try:
            earlier = json.loads((self.paths.root / "summary.json").read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(earlier, dict) or earlier.get("learner_steps") != step:
            return None
        averaged = earlier.get("averaged")
        return averaged if isinstance(averaged, dict) else None

    def fleet_point(self, sd: SuccessDetector) -> tuple[dict[str, Any], dict[str, Any]]:
        """An evaluation point of the robots' latest episodes (eval.on='fleet') and its
        switch table: per task, the learned policy's success and the scripted one's over
        the latest ``eval.fleet_window`` episodes each, judged by ``sd``. A task with
        fewer than ``eval.episodes_per_task`` x ``parity_window`` of either (what a
        switch pools in 'sim') is not judged, and keeps the policy it has. Each point
        pools its window already, so the table is of it alone."""
        assert self.fleet is not None
        self.fleet.poll()
        least = self.cfg.eval.episodes_per_task * self.cfg.parity_window
        rates = fleet_rates(*self.fleet.outcomes(sd), least)
        table = switch_table(
            rates.learned,
            rates.scripted,
            self.registry,
            self.cfg.parity_margin,
            switched(self.history),
            self.cfg.parity_hysteresis,
            unjudged_keep=True,
        )
        counts = [rates.episodes[t]["learned"] for t in rates.learned]
        point = {
            "success": rates.learned,
            "episodes_per_task": min(counts) if counts else 0,
            "scripted": rates.scripted,
            "evaluated_on": "fleet",
            "fleet_episodes": rates.episodes,
        }
        return point, table

    def _evaluate(
        self,
        learner: Learner,
        scripted: dict[str, float],
        episodes: int,
        t0: float,
        sd: SuccessDetector,
        stats: dict[str, float],
    ) -> None:
        """Evaluate the acting weights and append a point to the history; ``t0`` is when
        the run started (earlier invocations included), so ``wall_s`` is the run's age.
        eval.on='fleet': judge the robots' latest episodes instead (``fleet_point``)."""
        if self.fleet is not None:
            point, table = self.fleet_point(sd)
        else:
            self.last_outcomes = self.learned_outcomes(learner)
            point = {
                "success": success_rates(self.last_outcomes),
                "episodes_per_task": self.cfg.eval.episodes_per_task,
                "scripted": scripted,
                "eval_key": self.eval_key(),
            }
        learned = point["success"]
        point = {
            "step": learner.step,
            "episodes": episodes,
            "wall_s": round(time.time() - t0, 1),
            **point,
            "sd_version": sd.version,
            "q_version": learner.version,
            "loss": stats.get("loss"),
        }
        self.history.append(point)
        if self.fleet is None:
            table = parity_table(self.history, scripted, self.registry, self.cfg)
        point["switch"] = table
        atomic_write_json(self.paths.history, self.history)
        atomic_write_json(self.paths.switch, table)
        if self.fleet is None:
            rates = ", ".join(f"{k}={v:.2f}" for k, v in learned.items())
        else:
            bar = point["scripted"]
            rates = "fleet's episodes, learned (scripted): " + (
                ", ".join(f"{k}={v:.2f} ({bar[k]:.2f})" for k, v in learned.items())
                or f"no task has {self.cfg.eval.episodes_per_task} of each yet"
            )
        self._log(f"eval @ step {learner.step}, {episodes} episodes: {rates}")
