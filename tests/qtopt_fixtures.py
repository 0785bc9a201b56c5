"""Shared by the learner tests: a small Q-network config and random training batches."""

import torch

from mtopt.qtopt.bellman import TrainBatch
from mtopt.qtopt.networks import QNetConfig, QNetwork

SMALL = QNetConfig(
    num_tasks=2, image_size=32, tower_channels=8, merge_size=8, head_channels=8, fc_units=16
)


def batch(seed: int, n: int = 8) -> TrainBatch:
    """A random (s, a, task, target) batch for SMALL, the same for the same seed."""
    g = torch.Generator().manual_seed(seed)
    return TrainBatch(
        torch.randint(0, 255, (n, 32, 32, 3), dtype=torch.uint8, generator=g),
        torch.rand(n, 2, generator=g),
        torch.rand(n, 6, generator=g) * 2 - 1,
        torch.randint(0, 2, (n,), generator=g),
        torch.rand(n, generator=g),
    )


def fast_and_literal_logits(
    net: QNetwork,
    imgs: torch.Tensor,
    states: torch.Tensor,
    tasks: torch.Tensor,
    actions: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, N) logits of (B, N, 6) candidate actions by the CEM fast path and by the
    literal Fig. 9 network on repeated rows."""
    b, n, _ = actions.shape
    with torch.no_grad():
        feats = net.tower(imgs)
        ctx = net.candidate_context(feats, net.state_input(imgs, states), tasks, imgs)
        fast = net.candidate_logits(ctx, actions)
        slow = net.logits(
            imgs.repeat_interleave(n, 0),
            states.repeat_interleave(n, 0),
            actions.reshape(b * n, 6),
            tasks.repeat_interleave(n),
        ).reshape(b, n)
    return fast, slow
