"""Q loss: cross-entropy between Q = sigmoid(logits) and the Bellman target, both in [0, 1]."""

from __future__ import annotations

import torch
from torch.nn import functional as F


def q_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """mean over the batch of -[y log q + (1 - y) log(1 - q)], q = sigmoid(logits)."""
    return F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype))
