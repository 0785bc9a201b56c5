"""Bellman targets with clipped double Q over two lagged target networks.

target = r + gamma * (1 - done) * min_k Q_target_k(s', a*, task),
a* = CEM argmax over the first target network (the image tower runs once per s').
Terminal transitions skip the CEM entirely (their next value is multiplied by 0).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch

from mtopt.qtopt.cem import CEMConfig, cem_argmax, precision_context
from mtopt.qtopt.networks import QNetwork


@dataclass
class TransitionBatch:
    images: torch.Tensor  # (B, H, W, 3) uint8
    states: torch.Tensor  # (B, 2)
    actions: torch.Tensor  # (B, 6)
    task_idx: torch.Tensor  # (B,) int64
    rewards: torch.Tensor  # (B,)
    next_images: torch.Tensor
    next_states: torch.Tensor
    dones: torch.Tensor  # (B,)

    @classmethod
    def from_numpy(cls, t: object) -> TransitionBatch:
        """From any object with the same numpy fields (e.g. ``replay.buffers.Transitions``)."""
        f = {
            k: torch.from_numpy(np.ascontiguousarray(getattr(t, k)))
            for k in cls.__dataclass_fields__
        }
        return cls(**f)

    def to(self, device: torch.device | str) -> TransitionBatch:
        """The same batch on ``device`` (no copy of a tensor already there)."""
        return _to(self, device)

    def __len__(self) -> int:
        return int(self.actions.shape[0])


@dataclass
class TrainBatch:
    """What the learner consumes: (s, a, task, target)."""

    images: torch.Tensor
    states: torch.Tensor
    actions: torch.Tensor
    task_idx: torch.Tensor
    targets: torch.Tensor

    def to(self, device: torch.device | str) -> TrainBatch:
        """The same batch on ``device`` (no copy of a tensor already there)."""
        return _to(self, device)

    def __len__(self) -> int:
        return int(self.actions.shape[0])


_B = TypeVar("_B", TransitionBatch, TrainBatch)


def _to(batch: _B, device: torch.device | str) -> _B:
    # Tensor.to returns the tensor itself where it already is on ``device``
    return type(batch)(**{k: getattr(batch, k).to(device) for k in batch.__dataclass_fields__})


def bellman_targets(
    rewards: torch.Tensor, dones: torch.Tensor, next_q: torch.Tensor, gamma: float
) -> torch.Tensor:
    """r + gamma * (1 - done) * next_q (pure; next_q already the min over target nets)."""
    return rewards + gamma * (1.0 - dones) * next_q


@torch.no_grad()
def next_state_values(
    target_nets: Sequence[QNetwork],
    next_images: torch.Tensor,
    next_states: torch.Tensor,
    task_idx: torch.Tensor,
    cfg: CEMConfig,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """min_k Q_k(s', a*, task) with a* from CEM over ``target_nets[0]``.

    Q_0(s', a*) is the best score CEM found; every other net runs once at a*.
    """
    a_star, q0 = cem_argmax(target_nets[0], next_images, next_states, task_idx, cfg, generator)
    qs = [q0]
    with precision_context(cfg.precision, next_images.device):
        for net in target_nets[1:]:
            qs.append(net(next_images, next_states, a_star, task_idx).float())
    return torch.stack(qs).min(0).values


@torch.no_grad()
def compute_targets(
    target_nets: Sequence[QNetwork],
    batch: TransitionBatch,
    gamma: float = 0.9,
    cfg: CEMConfig = CEMConfig(),
    generator: torch.Generator | None = None,
) -> TrainBatch:
    """Bellman targets for a transition batch -> a ``TrainBatch`` for the learner."""
    next_q = torch.zeros(len(batch), device=batch.rewards.device)
    live = batch.dones < 0.5
    if bool(live.any()):
        idx = live.nonzero().squeeze(1)
        next_q[idx] = next_state_values(
            target_nets,
            batch.next_images[idx],
            batch.next_states[idx].float(),
            batch.task_idx[idx],
            cfg,
            generator,
        )
    targets = bellman_targets(batch.rewards.float(), batch.dones.float(), next_q, gamma)
    return TrainBatch(
        batch.images, batch.states.float(), batch.actions.float(), batch.task_idx, targets
    )
