"""Bellman targets with clipped double Q over two lagged target networks.

target = r + gamma * (1 - done) * min_k Q_target_k(s', a*, task),
a* = CEM argmax over the first target network (the image tower runs once per s').
Terminal transitions skip the CEM entirely (their next value is multiplied by 0).

Optionally (``mc_bound``) the target is raised to the episode's own discounted return,
target = max(target, R_final * gamma ** steps_to_go): with a sparse final reward, what
the episode actually achieved from (s, a) is a sample of the behaviour policy's return,
which the optimal Q cannot be below in a deterministic cell. This is not in QT-Opt or
MT-Opt; it is a known remedy for slow reward propagation with sparse rewards
(self-imitation / Monte-Carlo lower bounds), off by default.

Optionally (``mc_mix`` = beta > 0) the target is mixed with that return,
target = (1 - beta) * target + beta * R_final * gamma ** steps_to_go: the return ranks the
actions of the data directly where the bootstrapped value is still flat
(``benchmarks/offline_fit_probe.py``), at the price of valuing the behaviour policy's
actions rather than the greedy ones. Not in QT-Opt or MT-Opt; 0 (off) by default.

gamma is one number (QT-Opt's 0.9 for every task) or one per task index
(``task_discounts``): each transition is then discounted by its own task's gamma, as
if each task were its own MDP, which it is; the Q-function's task input keeps them
apart. Not in MT-Opt, which uses one discount; one is the default.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch

from mtopt.qtopt.cem import CEMConfig, cem_argmax, precision_context
from mtopt.qtopt.networks import QNetwork

Discount = float | torch.Tensor
"""One discount for every transition, or a tensor of one per transition (``per_sample``)."""


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
    final_rewards: torch.Tensor | None = None  # (B,) the episode's reward for the task
    steps_to_go: torch.Tensor | None = None  # (B,) actions after this one in the episode

    @classmethod
    def from_numpy(cls, t: object) -> TransitionBatch:
        """From any object with the same numpy fields (e.g. ``replay.buffers.Transitions``)."""
        f = {
            k: torch.from_numpy(np.ascontiguousarray(getattr(t, k)))
            for k in cls.__dataclass_fields__
            if getattr(t, k, None) is not None
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
    fields = {k: getattr(batch, k) for k in batch.__dataclass_fields__}
    return type(batch)(**{k: v.to(device) for k, v in fields.items() if v is not None})


def task_discounts(
    tasks: Sequence[tuple[str, str]], gamma: float, overrides: Mapping[str, float]
) -> tuple[float, ...]:
    """The discount of each task, given as (name, skill) in task-index order (pure): its
    own entry in ``overrides``, else its skill's, else ``gamma``."""
    return tuple(
        float(overrides[name] if name in overrides else overrides.get(skill, gamma))
        for name, skill in tasks
    )


def per_sample(gamma: float | Sequence[float] | torch.Tensor, task_idx: torch.Tensor) -> Discount:
    """``gamma`` as ``bellman_targets`` takes it for a batch of tasks ``task_idx``: a
    number stays a number; one discount per task becomes each transition's own."""
    if isinstance(gamma, numbers.Real) or (torch.is_tensor(gamma) and gamma.ndim == 0):
        return float(gamma)
    g = torch.as_tensor(gamma, dtype=torch.float32, device=task_idx.device)
    if g.ndim != 1:
        raise ValueError(
            f"gamma must be a number or one discount per task, got shape {tuple(g.shape)}"
        )
    if len(task_idx) and int(task_idx.max()) >= len(g):
        raise ValueError(
            f"gamma has discounts for {len(g)} tasks, the batch has task index {int(task_idx.max())}"
        )
    return g[task_idx]


def bellman_targets(
    rewards: torch.Tensor, dones: torch.Tensor, next_q: torch.Tensor, gamma: Discount
) -> torch.Tensor:
    """r + gamma * (1 - done) * next_q (pure; next_q already the min over target nets)."""
    return rewards + gamma * (1.0 - dones) * next_q


def mc_lower_bound(
    targets: torch.Tensor, final_rewards: torch.Tensor, steps_to_go: torch.Tensor, gamma: Discount
) -> torch.Tensor:
    """max(target, R_final * gamma ** steps_to_go) (pure): the episode's discounted return."""
    return torch.maximum(targets, final_rewards * gamma**steps_to_go)


def mc_mix(
    targets: torch.Tensor,
    final_rewards: torch.Tensor,
    steps_to_go: torch.Tensor,
    gamma: Discount,
    beta: float,
) -> torch.Tensor:
    """(1 - beta) * target + beta * R_final * gamma ** steps_to_go (pure)."""
    return (1.0 - beta) * targets + beta * final_rewards * gamma**steps_to_go


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
    if cfg.close_margin or cfg.release_margin or cfg.pick != "best":
        # a target wants the max CEM found: not an acting bias between the gripper's
        # branches, nor Q at the elites' mean
        cfg = dataclasses.replace(cfg, close_margin=0.0, release_margin=0.0, pick="best")
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
    gamma: float | Sequence[float] | torch.Tensor = 0.9,
    cfg: CEMConfig = CEMConfig(),
    generator: torch.Generator | None = None,
    mc_bound: bool = False,
    mc_mix_beta: float = 0.0,
) -> TrainBatch:
    """Bellman targets for a transition batch -> a ``TrainBatch`` for the learner.

    ``gamma``: one discount, or one per task index (``task_discounts``).
    ``mc_bound``: raise each target to the episode's discounted return; ``mc_mix_beta``:
    then mix that return in with this weight (both need the batch's ``final_rewards``
    and ``steps_to_go``)."""
    if not 0.0 <= mc_mix_beta <= 1.0:
        raise ValueError(f"mc_mix_beta must be in [0, 1], got {mc_mix_beta}")
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
    g = per_sample(gamma, batch.task_idx)  # each transition its own task's
    targets = bellman_targets(batch.rewards.float(), batch.dones.float(), next_q, g)
    if mc_bound or mc_mix_beta > 0:
        if batch.final_rewards is None or batch.steps_to_go is None:
            raise ValueError("mc_bound and mc_mix need the batch's final_rewards and steps_to_go")
        final, to_go = batch.final_rewards.float(), batch.steps_to_go.float()
        if mc_bound:
            targets = mc_lower_bound(targets, final, to_go, g)
        if mc_mix_beta > 0:
            targets = mc_mix(targets, final, to_go, g, mc_mix_beta)
    return TrainBatch(
        batch.images, batch.states.float(), batch.actions.float(), batch.task_idx, targets
    )
