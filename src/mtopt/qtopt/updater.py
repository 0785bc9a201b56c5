"""The Bellman updater stage: re-balanced sampling -> CEM targets -> train batches."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from mtopt.qtopt.bellman import TrainBatch, TransitionBatch, compute_targets
from mtopt.qtopt.cem import CEMConfig
from mtopt.qtopt.networks import QNetwork
from mtopt.replay.buffers import TaskBuffers


class BellmanUpdater:
    def __init__(
        self,
        buffers: TaskBuffers,
        target_nets: Sequence[QNetwork],
        cem: CEMConfig,
        gamma: float = 0.9,
        batch_size: int = 64,
        success_ratio: float = 0.5,
        rebalance: bool = True,
        seed: int = 0,
        mc_bound: bool = False,
    ):
        self.buffers = buffers
        self.target_nets = list(target_nets)
        self.cem = cem
        self.gamma = gamma
        self.batch_size = batch_size
        self.success_ratio = success_ratio
        self.rebalance = rebalance
        self.mc_bound = mc_bound
        self.rng = np.random.default_rng(seed)
        # CEM samples where the target networks are (a CPU generator cannot feed a GPU)
        self.device = next(self.target_nets[0].parameters()).device
        self.gen = torch.Generator(self.device).manual_seed(seed)
        self.task_counts = np.zeros(len(buffers.tasks), np.int64)
        self.success_counts = np.zeros(len(buffers.tasks), np.int64)

    def set_targets(self, nets: Sequence[QNetwork]) -> None:
        """Use newer lagged target networks (e.g. reloaded from published weights)."""
        self.target_nets = list(nets)

    def make_batch(self) -> TrainBatch:
        tr = self.buffers.sample(self.batch_size, self.rng, self.success_ratio, self.rebalance)
        np.add.at(self.task_counts, tr.task_idx, 1)
        # success episodes show up as reward at their last step; count by episode label instead
        batch = TransitionBatch.from_numpy(tr).to(self.device)
        return compute_targets(
            self.target_nets, batch, self.gamma, self.cem, self.gen, self.mc_bound
        )
