"""End-to-end Q-learning through Bellman targets: value must propagate one step back."""

import pytest
import torch

from mtopt.qtopt.bellman import TransitionBatch, compute_targets
from mtopt.qtopt.cem import CEMConfig, cem_argmax
from mtopt.qtopt.learner import Learner, LearnerConfig
from mtopt.qtopt.networks import QNetConfig

torch.set_num_threads(1)
S = 32


def image(pos: torch.Tensor) -> torch.Tensor:
    """Position 0, 1, 2 -> a bright square at the left, middle or right of a dark image.
    (Spatial, not global brightness: the tower's GroupNorm removes global intensity.)"""
    img = torch.full((len(pos), S, S, 3), 30, dtype=torch.uint8)
    for p in range(3):
        img[pos == p, 12:20, 2 + 10 * p : 10 + 10 * p] = 230
    return img


def chain_batch(n: int, g: torch.Generator) -> TransitionBatch:
    """Two-step chain. Step 0 (pos 0): dx > 0 -> pos 1, else pos 2, reward 0.
    Step 1 (pos 1 or 2): done; reward 1 iff dz > 0 and pos is the task's goal
    (task 0: pos 1, task 1: pos 2). So Q*(pos 0, a, task 0) = 0.9 [dx > 0]."""
    task = torch.randint(0, 2, (n,), generator=g)
    a = torch.rand(n, 6, generator=g) * 2 - 1
    first = torch.rand(n, generator=g) < 0.5
    pos1 = torch.randint(1, 3, (n,), generator=g)
    pos = torch.where(first, 0, pos1)
    nxt = torch.where(first, torch.where(a[:, 0] > 0, 1, 2), pos)
    goal = torch.where(task == 0, 1, 2)
    reward = (~first & (a[:, 2] > 0) & (pos == goal)).float()
    return TransitionBatch(
        image(pos), torch.zeros(n, 2), a, task, reward, image(nxt), torch.zeros(n, 2),
        (~first).float(),
    )  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("head", ["onehot", "multihead"])
def test_value_propagates_through_bellman_targets(head: str) -> None:
    torch.manual_seed(0)
    cfg = QNetConfig(
        num_tasks=2, image_size=S, tower_channels=16, merge_size=8, head_channels=16,
        fc_units=64, head_type=head,
    )  # fmt: skip
    learner = Learner(cfg, LearnerConfig(lr=1e-3, target_period=50))
    g, cg = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)
    cem = CEMConfig(samples=32, elites=4, precision="fp32")
    for _ in range(1500):
        learner.train_step(compute_targets(learner.targets, chain_batch(64, g), 0.9, cem, cg))
    net = learner.online.eval()
    with torch.no_grad():
        zero, s = torch.zeros(2, dtype=torch.long), torch.zeros(2, 2)
        for task, good_dx in ((0, 1.0), (1, -1.0)):
            t = torch.full((2,), task)
            a = torch.zeros(2, 6)
            a[:, 0] = torch.tensor([good_dx, -good_dx]) * 0.8
            q = net(image(zero), s, a, t)
            assert q[0].item() == pytest.approx(0.9, abs=0.1), q
            assert q[1].item() < 0.15, q
            best, q_best = cem_argmax(net, image(zero[:1]), s[:1], t[:1], cem, cg)
            assert best[0, 0].item() * good_dx > 0
            assert q_best.item() == pytest.approx(0.9, abs=0.1)
