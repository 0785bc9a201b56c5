"""The Bellman updater in a background thread (what `mtopt run` does by default): the same
targets as the serial updater, its own copies of the target networks, errors raised in
the learner's thread, and no race with episodes filed while it samples."""

import contextlib
import queue
import threading
import time

import numpy as np
import pytest
import torch

from mtopt.qtopt.cem import CEMConfig
from mtopt.qtopt.learner import Learner, LearnerConfig
from mtopt.qtopt.updater import BackgroundUpdater, BellmanUpdater
from mtopt.replay.buffers import ReplayEpisode, TaskBuffers
from mtopt.replay.logreplay import LogReplay
from mtopt.tasks import DEFAULT_REGISTRY
from qtopt_fixtures import SMALL

torch.set_num_threads(1)
CEM = CEMConfig(iterations=1, samples=8, elites=2)


def episode(eid: str, task: str, rng: np.random.Generator, steps: int = 3) -> ReplayEpisode:
    return ReplayEpisode(
        eid,
        task,
        rng.integers(0, 255, (steps + 1, 32, 32, 3), dtype=np.uint8),
        rng.random((steps + 1, 2), dtype=np.float32),
        rng.uniform(-1, 1, (steps, 6)).astype(np.float32),
    )


def buffers(n: int = 6) -> TaskBuffers:
    rng = np.random.default_rng(0)
    buf = TaskBuffers(["a", "b"], capacity_per_bucket=50)
    for i in range(n):
        buf.add(episode(f"e{i}", "ab"[i % 2], rng), [("a", float(i % 3 == 0)), ("b", 1.0)])
    return buf


def test_background_batches_equal_the_serial_updaters_batches() -> None:
    learner = Learner(SMALL, LearnerConfig())
    serial = BellmanUpdater(buffers(), learner.targets, CEM, batch_size=8, seed=3)
    bg = BackgroundUpdater(
        BellmanUpdater(buffers(), learner.targets, CEM, batch_size=8, seed=3), depth=2
    )
    try:
        for _ in range(3):  # same seed, same buffers, same targets: the same batches in order
            a, b = serial.make_batch(), bg.get(timeout=30)
            assert torch.equal(a.images, b.images) and torch.equal(a.actions, b.actions)
            assert torch.allclose(a.targets, b.targets)
    finally:
        bg.close()
    assert not bg.alive


def test_an_updater_with_one_discount_per_task_uses_each_tasks_own() -> None:
    learner = Learner(SMALL, LearnerConfig())
    with pytest.raises(ValueError, match="3 discounts for 2 tasks"):
        BellmanUpdater(buffers(), learner.targets, CEM, gamma=[0.9, 0.9, 0.9])
    one = BellmanUpdater(buffers(), learner.targets, CEM, gamma=0.9, batch_size=16, seed=3)
    each = BellmanUpdater(buffers(), learner.targets, CEM, gamma=[0.9, 0.0], batch_size=16, seed=3)
    a, b = one.make_batch(), each.make_batch()  # the same draws: only the discounts differ
    assert torch.equal(a.task_idx, b.task_idx) and set(b.task_idx.tolist()) == {0, 1}
    task_a = b.task_idx == 0
    assert torch.allclose(a.targets[task_a], b.targets[task_a])
    # task "b" with gamma 0: its targets are its rewards, 1 at a success's last step (this
    # fixture files every episode as a success for "b") and 0 before; with 0.9, 0.9 * Q'
    tb, ta = b.targets[~task_a], a.targets[~task_a]
    assert set(tb.tolist()) == {0.0, 1.0}
    assert torch.equal(tb == 1, ta == 1)
    assert ((ta > 0) & (ta < 1))[tb == 0].all()


def test_background_updater_computes_with_copies_refreshed_by_set_targets() -> None:
    learner = Learner(SMALL, LearnerConfig(target_period=1))
    up = BellmanUpdater(buffers(), learner.targets, CEM, batch_size=4, seed=0)
    bg = BackgroundUpdater(up, depth=1)
    try:
        own = up.target_nets
        assert all(o is not t for o, t in zip(own, learner.targets, strict=True))
        before = learner.target_version
        learner.train_step(bg.get(timeout=30))  # period 1: the targets change every step
        assert learner.target_version == before + 1
        # the learner changed its targets in place; the thread's copies did not move
        w_learner = next(learner.targets[0].parameters())
        w_thread = next(own[0].parameters())
        assert not torch.equal(w_learner, w_thread)
        bg.set_targets(learner.targets)
        assert torch.equal(next(up.target_nets[0].parameters()), w_learner)
        assert up.target_nets[0] is not learner.targets[0]
    finally:
        bg.close()


def test_an_error_in_the_thread_is_raised_by_get_and_get_times_out() -> None:
    learner = Learner(SMALL, LearnerConfig())
    empty = TaskBuffers(["a", "b"])
    bg = BackgroundUpdater(BellmanUpdater(empty, learner.targets, CEM, batch_size=4), depth=1)
    with pytest.raises(RuntimeError, match="updater thread failed") as err:
        bg.get(timeout=30)
    assert "buffers are empty" in str(err.value.__cause__)
    bg.close()
    with pytest.raises(ValueError, match="depth"):
        BackgroundUpdater(BellmanUpdater(buffers(), learner.targets, CEM), depth=0)

    class Slow(BellmanUpdater):
        def make_batch(self, *a, **k):  # type: ignore[no-untyped-def]
            time.sleep(0.5)
            return super().make_batch(*a, **k)

    bg = BackgroundUpdater(Slow(buffers(), learner.targets, CEM, batch_size=4), depth=1)
    with pytest.raises(queue.Empty):
        bg.get(timeout=0.05)
    bg.close()


class ScoreAll:
    """A success detector that calls every episode a success of every task."""

    def __init__(self, tasks: tuple[str, ...]):
        self.tasks, self.version = tasks, 1

    def score(self, images: np.ndarray) -> np.ndarray:
        return np.ones((len(images), len(self.tasks)))


def test_filing_episodes_while_the_thread_samples_loses_and_breaks_nothing() -> None:
    """LogReplay files (and evicts) under the lock the sampling thread takes (checked on
    every call: the GIL makes a race too rare to provoke), and hundreds of episodes go
    through small buckets while batches keep coming, for a bounded time."""
    reg = DEFAULT_REGISTRY.subset(["lift-any", "lift-ball"])
    learner = Learner(SMALL, LearnerConfig())  # SMALL has 2 tasks, as reg
    lock = threading.Lock()
    buf = TaskBuffers(reg.names, capacity_per_bucket=5)
    unlocked: list[str] = []
    for name in ("add", "sample"):

        def checked(*a, _f=getattr(buf, name), _n=name, **k):  # type: ignore[no-untyped-def]
            if not lock.locked():
                unlocked.append(_n)
            return _f(*a, **k)

        setattr(buf, name, checked)
    replay = LogReplay(reg, buf, ScoreAll(reg.names), mode="skill", buffers_lock=lock)
    rng = np.random.default_rng(1)
    final = np.zeros((32, 32, 3), np.uint8)
    replay.ingest([(episode(f"s{i}", "lift-any", rng), final) for i in range(5)])
    up = BellmanUpdater(buf, learner.targets, CEM, batch_size=8, seed=0, buffers_lock=lock)
    bg = BackgroundUpdater(up, depth=2)
    got, filed, deadline = 0, 0, time.monotonic() + 120  # generous: a loaded 2-core CI
    try:
        while time.monotonic() < deadline and (got < 20 or filed < 400):
            items = [(episode(f"x{filed + j}", "lift-any", rng), final) for j in range(20)]
            filed += replay.ingest(items)
            with contextlib.suppress(queue.Empty):
                b = bg.get(timeout=0.01)
                assert b.images.shape == (8, 32, 32, 3) and len(b) == 8
                got += 1
    finally:
        bg.close()
    assert filed >= 400 and got >= 20
    assert unlocked == []
    assert replay.stats.collected["lift-any"] == filed + 5
    assert buf.sizes() == {"lift-any": (5, 0), "lift-ball": (5, 0)}  # bounded


def test_a_negative_prefetch_is_refused_when_the_config_is_built() -> None:
    from mtopt.config import override
    from mtopt.runtime.config import preset

    assert override(preset("local"), ["bellman_prefetch=0"]).bellman_prefetch == 0
    with pytest.raises(ValueError, match="bellman_prefetch must be >= 0"):
        override(preset("local"), ["bellman_prefetch=-1"])


def test_refreshed_targets_reuse_copies_and_never_write_the_set_in_use() -> None:
    """Polyak targets change every step: each refresh copies weights into a spare set of
    networks (at most three exist) instead of making new ones, and never into the set
    the thread is computing a batch with."""
    learner = Learner(SMALL, LearnerConfig(target_update="polyak", polyak_tau=0.5))
    started, release = threading.Event(), threading.Event()

    class Held(BellmanUpdater):
        def make_batch(self, *a, **k):  # type: ignore[no-untyped-def]
            started.set()
            release.wait(30)
            return super().make_batch(*a, **k)

    up = Held(buffers(), learner.targets, CEM, batch_size=4, seed=0)
    bg = BackgroundUpdater(up, depth=1)
    try:
        assert started.wait(30)
        in_use = up.target_nets[0]
        frozen = [p.clone() for p in in_use.parameters()]
        made = {id(s[0]) for s in bg._sets}
        for i in range(6):  # the learner moves its targets; the thread holds its batch
            with torch.no_grad():
                for p in learner.targets[0].parameters():
                    p.add_(0.01 * (i + 1))
            bg.set_targets(learner.targets)
            made |= {id(s[0]) for s in bg._sets}
            assert up.target_nets[0] is not in_use and up.target_nets[0] is not learner.targets[0]
            for a, b in zip(
                up.target_nets[0].parameters(), learner.targets[0].parameters(), strict=True
            ):
                assert torch.equal(a, b)
        assert len(made) == 3 and len(bg._sets) == 3  # in use, current, one spare
        assert all(torch.equal(a, b) for a, b in zip(in_use.parameters(), frozen, strict=True))
        assert not any(p.requires_grad for p in up.target_nets[0].parameters())
        release.set()
        bg.get(timeout=30)
    finally:
        release.set()
        bg.close()
