"""The Bellman updater stage: re-balanced sampling -> CEM targets -> train batches.

``BellmanUpdater`` makes one batch when asked. ``BackgroundUpdater`` runs one in its own
thread, a few batches ahead of the learner, as the paper's Bellman updaters run beside
its learner: on a CPU the CEM targets cost more than the Adam step they feed, so the
serial loop left a core idle whenever the robots did not need it.
"""

from __future__ import annotations

import contextlib
import numbers
import queue
import threading
import time
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from mtopt.qtopt.bellman import TrainBatch, TransitionBatch, compute_targets
from mtopt.qtopt.cem import CEMConfig
from mtopt.qtopt.networks import QNetwork, frozen_copy
from mtopt.replay.buffers import TaskBuffers


class BellmanUpdater:
    def __init__(
        self,
        buffers: TaskBuffers,
        target_nets: Sequence[QNetwork],
        cem: CEMConfig,
        gamma: float | Sequence[float] = 0.9,
        batch_size: int = 64,
        success_ratio: float = 0.5,
        rebalance: bool = True,
        seed: int = 0,
        task_weights: Mapping[str, float] | None = None,
        mc_bound: bool = False,
        mc_mix: float = 0.0,
        buffers_lock: contextlib.AbstractContextManager[object] | None = None,
    ):
        self.buffers = buffers
        # held while sampling: another thread may be adding episodes to the buffers
        self.buffers_lock: contextlib.AbstractContextManager[object] = (
            buffers_lock if buffers_lock is not None else contextlib.nullcontext()
        )
        self.target_nets = list(target_nets)
        self.cem = cem
        self.batch_size = batch_size
        self.success_ratio = success_ratio
        self.rebalance = rebalance
        self.task_weights = dict(task_weights or {})
        self.mc_bound = mc_bound
        self.mc_mix = mc_mix
        self.rng = np.random.default_rng(seed)
        # CEM samples where the target networks are (a CPU generator cannot feed a GPU)
        self.device = next(self.target_nets[0].parameters()).device
        self.gen = torch.Generator(self.device).manual_seed(seed)
        # one discount, or one per task index (``bellman.task_discounts``), kept where
        # the targets are computed
        self.gamma: float | torch.Tensor = (
            float(gamma)
            if isinstance(gamma, numbers.Real)
            else torch.tensor(gamma, dtype=torch.float32, device=self.device)
        )
        if isinstance(self.gamma, torch.Tensor) and self.gamma.shape != (len(buffers.tasks),):
            raise ValueError(
                f"gamma has {self.gamma.numel()} discounts for {len(buffers.tasks)} tasks"
            )

    def set_targets(self, nets: Sequence[QNetwork]) -> None:
        """Use newer lagged target networks (e.g. reloaded from published weights)."""
        self.target_nets = list(nets)

    def make_batch(self, target_nets: Sequence[QNetwork] | None = None) -> TrainBatch:
        """A batch of transitions with their Bellman targets, computed with
        ``target_nets`` (default: the updater's current ones)."""
        with self.buffers_lock:
            tr = self.buffers.sample(
                self.batch_size, self.rng, self.success_ratio, self.rebalance, self.task_weights
            )
        if target_nets is None:  # one pair for the whole batch, even if swapped meanwhile
            target_nets = self.target_nets
        batch = TransitionBatch.from_numpy(tr).to(self.device)
        return compute_targets(
            target_nets, batch, self.gamma, self.cem, self.gen, self.mc_bound, self.mc_mix
        )


class BackgroundUpdater:
    """A ``BellmanUpdater`` in a daemon thread, up to ``depth`` batches ahead of the learner.

    The thread computes targets with its own copies of the target networks: the learner
    updates its targets in place, and a batch must not see half-updated weights. Call
    ``set_targets`` after every target update (``Learner.target_version`` counts them);
    batches already queued keep the targets they were made with (at most ``depth``
    batches old). The copies are reused: a refresh writes into a set the thread is not
    computing with (at most three sets exist), so Polyak targets, which change every
    step, cost a parameter copy per step, not a new network. Episodes may be added to the
    buffers while the thread samples, under
    the updater's ``buffers_lock``. An error in the thread is raised by ``get``.

    PyTorch releases the GIL inside its kernels, so with one intra-op thread per Python
    thread the targets and the Adam step run on two cores at once.
    """

    def __init__(self, updater: BellmanUpdater, depth: int = 2):
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.updater = updater
        self._lock = threading.Lock()  # guards which copy is current and which is in use
        self._busy: QNetwork | None = None  # first net of the set the thread computes with
        self._sets: list[list[QNetwork]] = []  # every set of copies made (reused)
        self.set_targets(updater.target_nets)
        self._queue: queue.Queue[TrainBatch] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, name="bellman-updater", daemon=True)
        self._thread.start()

    def set_targets(self, nets: Sequence[QNetwork]) -> None:
        """Newer target networks for the batches made from now on (copied here)."""
        with self._lock:
            current = self.updater.target_nets[0] if self._sets else None
            for spare in self._sets:
                free = spare[0] is not current and spare[0] is not self._busy
                if free and _copy_into(spare, nets):
                    break
            else:
                spare = [frozen_copy(n) for n in nets]
                # the others are no longer current nor in use: at most three sets live
                self._sets = [s for s in self._sets if s[0] is current or s[0] is self._busy]
                self._sets.append(spare)
            self.updater.set_targets(spare)

    def get(self, timeout: float | None = None) -> TrainBatch:
        """The next batch (waits up to ``timeout`` s, then ``queue.Empty``); raises what the
        thread raised if it failed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._error is not None:
                raise RuntimeError("the Bellman updater thread failed") from self._error
            if not self._thread.is_alive() and self._queue.empty():
                raise RuntimeError("the background updater is closed")
            wait = 0.1 if deadline is None else min(0.1, deadline - time.monotonic())
            if wait <= 0:
                raise queue.Empty
            try:
                return self._queue.get(timeout=wait)
            except queue.Empty:
                continue

    def close(self, timeout: float = 30.0) -> None:
        """Stop the thread (it finishes the batch it is computing)."""
        self._stop.set()
        with contextlib.suppress(queue.Empty):
            while True:  # unblock a put() waiting for room
                self._queue.get_nowait()
        self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _work(self) -> None:
        try:
            while not self._stop.is_set():
                with self._lock:
                    nets = list(self.updater.target_nets)
                    self._busy = nets[0]
                try:
                    batch = self.updater.make_batch(nets)
                finally:
                    with self._lock:
                        self._busy = None
                while not self._stop.is_set():
                    try:
                        self._queue.put(batch, timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except BaseException as e:  # raised in the learner's thread by get()
            self._error = e


def _copy_into(dst: Sequence[QNetwork], src: Sequence[QNetwork]) -> bool:
    """Copy ``src``'s parameters and buffers into ``dst`` in place, where the two have
    the same architecture (every tensor the same name, shape, dtype and device); False,
    with nothing written, where they do not. (``load_state_dict`` does the same in 2.7 ms
    for ``tuned``'s two networks, this in 0.9: a Polyak refresh comes every step.)"""
    if len(dst) != len(src):
        return False
    pairs = []
    for d, s in zip(dst, src, strict=True):
        ds, ss = d.state_dict(keep_vars=True), s.state_dict(keep_vars=True)
        if ds.keys() != ss.keys():
            return False
        for k, t in ds.items():
            u = ss[k]
            if t.shape != u.shape or t.dtype != u.dtype or t.device != u.device:
                return False
            pairs.append((t, u))
    with torch.no_grad():
        for t, u in pairs:
            t.copy_(u)
    return True
