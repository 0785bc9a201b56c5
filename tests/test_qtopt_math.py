"""Hand-computed tests for the QT-Opt math: Bellman targets, loss, CEM, target networks."""

import math

import pytest
import torch
from torch import nn

from mtopt._images import random_shift
from mtopt.qtopt.bellman import TransitionBatch, bellman_targets, compute_targets
from mtopt.qtopt.cem import CEMConfig, cem_maximize, cem_maximize_split, choose_gripper_branch
from mtopt.qtopt.learner import Learner, LearnerConfig
from mtopt.qtopt.loss import q_loss
from mtopt.qtopt.networks import QNetConfig, QNetwork
from qtopt_fixtures import fast_and_literal_logits

torch.set_num_threads(1)
SMALL = QNetConfig(
    num_tasks=3, image_size=32, tower_channels=8, merge_size=8, head_channels=8, fc_units=16
)


def test_bellman_targets_by_hand() -> None:
    r = torch.tensor([0.0, 1.0, 0.0])
    done = torch.tensor([0.0, 1.0, 1.0])
    next_q = torch.tensor([0.5, 0.9, 0.7])
    # 0 + 0.9 * 1 * 0.5 = 0.45 ; terminal success: 1 ; terminal failure: 0
    assert torch.allclose(bellman_targets(r, done, next_q, 0.9), torch.tensor([0.45, 1.0, 0.0]))


def test_loss_by_hand() -> None:
    logits = torch.tensor([0.0, math.log(3.0)])  # q = 0.5, 0.75
    targets = torch.tensor([1.0, 0.5])
    # -(log 0.5) = 0.693147 ; -(0.5 log 0.75 + 0.5 log 0.25) = 0.836988 ; mean = 0.765068
    assert q_loss(logits, targets).item() == pytest.approx(0.765068, abs=1e-5)


class ConstNet(QNetwork):
    """Q(s, a, task) = sigmoid(offset - |a - a0|^2): known maximum at a0, value sigmoid(offset)."""

    def __init__(self, offset: float, a0: torch.Tensor):
        super().__init__(SMALL)
        self.offset, self.a0 = offset, a0

    def logits_from_features(self, feats, state, action, task, images=None):  # type: ignore[no-untyped-def]
        return self.offset - ((action - self.a0) ** 2).sum(1)

    def candidate_context(self, feats, state, task, images=None, view=None):  # type: ignore[no-untyped-def]
        return None

    def candidate_logits(self, ctx, actions):  # type: ignore[no-untyped-def]
        return self.offset - ((actions - self.a0) ** 2).sum(2)


def test_clipped_double_q_targets_by_hand() -> None:
    a0 = torch.tensor([0.2, -0.3, 0.1, 0.0, 1.0, -1.0])
    n1, n2 = ConstNet(2.0, a0), ConstNet(0.0, a0)  # max values sigmoid(2)=0.8808, sigmoid(0)=0.5
    b = 3
    batch = TransitionBatch(
        images=torch.zeros(b, 32, 32, 3, dtype=torch.uint8),
        states=torch.zeros(b, 2),
        actions=torch.zeros(b, 6),
        task_idx=torch.tensor([0, 1, 2]),
        rewards=torch.tensor([0.0, 1.0, 0.0]),
        next_images=torch.zeros(b, 32, 32, 3, dtype=torch.uint8),
        next_states=torch.zeros(b, 2),
        dones=torch.tensor([0.0, 1.0, 1.0]),
    )
    cfg = CEMConfig(iterations=4, samples=256, elites=10, precision="fp32")
    out = compute_targets(
        [n1, n2], batch, gamma=0.9, cfg=cfg, generator=torch.Generator().manual_seed(0)
    )
    # live transition: 0.9 * min(0.8808, 0.5) ~= 0.45 (CEM gets close to a0: within 1e-2 of Q)
    assert out.targets[0].item() == pytest.approx(0.45, abs=0.01)
    assert out.targets[1:].tolist() == [1.0, 0.0]


def test_cem_finds_known_optimum_including_binary_dims() -> None:
    a0 = torch.tensor([[0.5, -0.5, 0.25, -0.75, 1.0, -1.0], [-0.2, 0.1, 0.9, 0.0, -1.0, 1.0]])

    def score(actions: torch.Tensor) -> torch.Tensor:  # (B, N, 6)
        return -((actions - a0[:, None]) ** 2).sum(2)

    best, s = cem_maximize(
        score, 2, CEMConfig(iterations=5, samples=128, elites=8), torch.Generator().manual_seed(1)
    )
    assert torch.allclose(best[:, :4], a0[:, :4], atol=0.15)
    assert torch.equal(best[:, 4:], a0[:, 4:])
    assert (s > -0.1).all()


def test_cem_pick_mean_returns_the_refit_mean_with_the_likelier_commands() -> None:
    """One iteration by hand: the elites are the top-scoring samples; 'mean' returns their
    mean for dx..dyaw, each binary command at its majority value, and that action's score."""
    a0 = torch.tensor([[0.3, -0.2, 0.1, 0.0, 1.0, -1.0]])
    seen: list[torch.Tensor] = []

    def score(actions: torch.Tensor) -> torch.Tensor:
        seen.append(actions.clone())
        return -((actions - a0[:, None]) ** 2).sum(2)

    cfg = CEMConfig(iterations=1, samples=32, elites=5, pick="mean")
    got, s = cem_maximize(score, 1, cfg, torch.Generator().manual_seed(3))
    samples = seen[0][0]  # (32, 6)
    top = samples[(-((samples - a0) ** 2).sum(1)).topk(5).indices]
    want = torch.cat(
        [top[:, :4].mean(0), torch.where((top[:, 4:] > 0).float().mean(0) > 0.5, 1.0, -1.0)]
    )
    assert torch.allclose(got[0], want)
    assert s.item() == pytest.approx(-((want - a0[0]) ** 2).sum().item())
    assert len(seen) == 2 and seen[1].shape == (1, 1, 6)  # one more evaluation, of the mean
    # on an exact quadratic the mean lands nearer the optimum than the best sample
    targets = torch.rand(200, 6, generator=torch.Generator().manual_seed(0)) * 1.6 - 0.8
    targets[:, 4:] = 1.0

    def quad(actions: torch.Tensor) -> torch.Tensor:
        return -((actions - targets[:, None]) ** 2).sum(2)

    err = {}
    for pick in ("best", "mean"):
        a, _ = cem_maximize(quad, 200, CEMConfig(pick=pick), torch.Generator().manual_seed(1))
        err[pick] = (a[:, :2] - targets[:, :2]).norm(dim=1).median().item()
    assert err["mean"] < 0.9 * err["best"], err
    with pytest.raises(ValueError, match="pick"):
        CEMConfig(pick="median").validate()  # type: ignore[arg-type]


def test_split_cem_searches_each_gripper_command_and_applies_the_margin() -> None:
    """gripper='split': one search with the gripper held open, one held closed, each over
    ``samples`` candidates; the max over both (Bellman), or close only where the closed
    branch beats the open one by ``close_margin`` (acting)."""
    # open optimum at (0.5, ...) scores 0; the closed branch peaks at -0.05 elsewhere
    a_open = torch.tensor([0.5, -0.5, 0.25, -0.75])
    a_closed = torch.tensor([-0.2, 0.1, 0.9, 0.0])
    seen: list[torch.Tensor] = []

    def score(actions: torch.Tensor) -> torch.Tensor:  # (B, N, 6)
        seen.append(actions.clone())
        closed = actions[..., 4] > 0
        d_open = ((actions[..., :4] - a_open) ** 2).sum(2)
        d_closed = ((actions[..., :4] - a_closed) ** 2).sum(2) + 0.05
        return -torch.where(closed, d_closed, d_open)

    cfg = CEMConfig(iterations=5, samples=128, elites=8, gripper="split")
    acts, s = cem_maximize_split(score, 2, cfg, torch.Generator().manual_seed(1))
    assert acts.shape == (2, 2, 6) and s.shape == (2, 2)
    assert seen[0].shape == (2, 256, 6)  # both branches' candidates side by side
    assert (seen[0][:, :128, 4] == -1).all() and (seen[0][:, 128:, 4] == 1).all()
    assert torch.allclose(acts[:, 0, :4], a_open.expand(2, 4), atol=0.15)
    assert torch.allclose(acts[:, 1, :4], a_closed.expand(2, 4), atol=0.15)
    best, bs = cem_maximize(score, 2, cfg, torch.Generator().manual_seed(1))
    assert (best[:, 4] == -1).all() and torch.equal(bs, s.max(1).values)
    # the margin by hand: close where Q_closed >= Q_open + margin
    q = torch.tensor([[0.50, 0.55], [0.50, 0.52], [0.6, 0.4]])
    a = torch.stack([torch.zeros(3, 6), torch.ones(3, 6)], 1)
    got_a, got_q = choose_gripper_branch(a, q, close_margin=0.03)
    assert got_q.tolist() == pytest.approx([0.55, 0.50, 0.6])
    assert got_a[:, 0].tolist() == [1.0, 0.0, 0.0]
    assert choose_gripper_branch(a, q)[1].tolist() == pytest.approx([0.55, 0.52, 0.6])
    with pytest.raises(ValueError, match="gripper"):
        CEMConfig(gripper="both").validate()  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="close_margin"):
        CEMConfig(gripper="split", close_margin=2.0).validate()
    with pytest.raises(ValueError, match="needs gripper='split'"):
        CEMConfig(close_margin=0.1).validate()


def test_release_margin_by_hand() -> None:
    """A gripper closed now opens only where Q_open >= Q_closed + release_margin; an open
    one closes by close_margin as before."""
    q = torch.tensor([[0.60, 0.55], [0.70, 0.55], [0.50, 0.52], [0.50, 0.52]])
    a = torch.stack([torch.zeros(4, 6), torch.ones(4, 6)], 1)  # branch 1: closed
    closed_now = torch.tensor([True, True, False, False])
    got_a, got_q = choose_gripper_branch(
        a, q, close_margin=0.03, release_margin=0.1, closed_now=closed_now
    )
    # row 0: opening beats staying closed by 0.05 < 0.1: stays closed; row 1: by 0.15:
    # opens; rows 2-3 are open now: 0.52 < 0.50 + 0.03, so they stay open
    assert got_a[:, 0].tolist() == [1.0, 0.0, 0.0, 0.0]
    assert got_q.tolist() == pytest.approx([0.55, 0.70, 0.50, 0.50])
    # without a release margin the closed rows follow close_margin (the rule before)
    same = choose_gripper_branch(a, q, close_margin=0.03, closed_now=closed_now)
    assert same[0][:, 0].tolist() == [0.0, 0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="release_margin must be in"):
        CEMConfig(gripper="split", release_margin=1.5).validate()
    with pytest.raises(ValueError, match="release_margin needs gripper='split'"):
        CEMConfig(release_margin=0.1).validate()


def test_cem_argmax_applies_the_release_margin_where_the_state_says_holding(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """cem_argmax reads 'holding' from the state's measured closure (feature 0): fingers
    kept apart; open ones, or ones that met on nothing, follow the plain rule."""
    import mtopt.qtopt.cem as cem_mod
    from mtopt.qtopt.networks import QNetConfig, QNetwork

    seen: list[object] = []
    real = cem_mod.choose_gripper_branch

    def spy(actions, q, close_margin=0.0, release_margin=0.0, closed_now=None):  # type: ignore[no-untyped-def]
        seen.append((release_margin, None if closed_now is None else closed_now.tolist()))
        return real(actions, q, close_margin, release_margin, closed_now)

    monkeypatch.setattr(cem_mod, "choose_gripper_branch", spy)
    torch.manual_seed(0)
    net = QNetwork(QNetConfig(num_tasks=1, image_size=16, tower_channels=4, merge_size=4,
                              head_channels=4, fc_units=8)).eval()  # fmt: skip
    images = torch.randint(0, 255, (3, 16, 16, 3), dtype=torch.uint8)
    # open; closed on an object; fingers met on nothing
    states = torch.tensor([[0.0, 0.1], [0.6, 0.1], [1.0, 0.1]])
    task = torch.zeros(3, dtype=torch.long)
    cfg = CEMConfig(gripper="split", release_margin=0.1)
    cem_mod.cem_argmax(net, images, states, task, cfg, torch.Generator().manual_seed(0))
    cem_mod.cem_argmax(net, images, states, task, CEMConfig(gripper="split"))
    assert seen == [(0.1, [False, True, False]), (0.0, None)]


def test_cem_variance_floor_and_config_errors() -> None:
    best, _ = cem_maximize(lambda a: torch.zeros(a.shape[:2]), 1, CEMConfig(iterations=3))
    assert best.shape == (1, 6)
    with pytest.raises(ValueError, match="elites"):
        CEMConfig(samples=4, elites=6).validate()


def test_periodic_target_update_lags() -> None:
    learner = Learner(SMALL, LearnerConfig(target_update="periodic", target_period=2))
    w0 = [p.clone() for p in learner.online.parameters()]
    with torch.no_grad():
        for p in learner.online.parameters():
            p.add_(1.0)
    learner.step = 1
    learner._update_targets()  # step 1: no update
    assert torch.equal(next(learner.targets[0].parameters()), w0[0])
    learner.step = 2
    learner._update_targets()  # step 2: target1 <- online, target2 <- old target1
    assert torch.equal(next(learner.targets[0].parameters()), w0[0] + 1)
    assert torch.equal(next(learner.targets[1].parameters()), w0[0])


def test_polyak_target_update_by_hand() -> None:
    learner = Learner(SMALL, LearnerConfig(target_update="polyak", polyak_tau=0.5))
    with torch.no_grad():
        for t in learner.targets:
            for p in t.parameters():
                p.zero_()
        for p in learner.online.parameters():
            p.fill_(1.0)
    learner._update_targets()
    assert next(learner.targets[0].parameters()).flatten()[0].item() == pytest.approx(0.5)
    assert next(learner.targets[1].parameters()).flatten()[0].item() == pytest.approx(0.25)


def test_network_shapes_and_multihead() -> None:
    for head in ("onehot", "multihead"):
        net = QNetwork(QNetConfig(**{**SMALL.to_dict(), "head_type": head}))
        imgs = torch.randint(0, 255, (5, 32, 32, 3), dtype=torch.uint8)
        q = net(imgs, torch.rand(5, 2), torch.rand(5, 6), torch.tensor([0, 1, 2, 0, 1]))
        assert q.shape == (5,) and ((q >= 0) & (q <= 1)).all()
        feats = net.tower(imgs)
        assert torch.allclose(
            net.head(feats, torch.zeros(5, 2), torch.zeros(5, 6), torch.zeros(5, dtype=torch.long)),
            net(imgs, torch.zeros(5, 2), torch.zeros(5, 6), torch.zeros(5, dtype=torch.long)),
        )
    with pytest.raises(ValueError, match="head_type"):
        QNetConfig(head_type="many").validate()  # type: ignore[arg-type]


def test_space_to_depth_stem_by_hand() -> None:
    net = QNetwork(QNetConfig(**{**SMALL.to_dict(), "stem": "s2d"}))
    unshuffle, first = net.tower.net[0], net.tower.net[1][0]
    assert isinstance(unshuffle, torch.nn.PixelUnshuffle) and first.in_channels == 12
    # pixel (row 1, col 0) of a 2x2 block is channel c * 4 + 2 of that block's position
    x = torch.zeros(1, 3, 4, 4)
    x[0, 1, 3, 2] = 1.0  # colour 1, row 3, col 2: block (1, 1), offset (1, 0)
    y = unshuffle(x)
    assert y.shape == (1, 12, 2, 2) and y[0, 1 * 4 + 2, 1, 1] == 1.0 and y.sum() == 1.0
    imgs = torch.randint(0, 255, (2, 32, 32, 3), dtype=torch.uint8)
    assert net.tower(imgs).shape == QNetwork(SMALL).tower(imgs).shape
    # s2d4: 4x4 blocks (48 channels) at a quarter of the side, still 7 convolutions
    net4 = QNetwork(QNetConfig(**{**SMALL.to_dict(), "stem": "s2d4"}))
    convs4 = [m for m in net4.tower.modules() if isinstance(m, torch.nn.Conv2d)]
    assert net4.tower.net[1][0].in_channels == 48 and len(convs4) == 7
    assert [c.stride[0] for c in convs4] == [1, 1, 1, 1, 1, 1, 1]  # 32 -> 8 by unshuffle only
    assert net4.tower(imgs).shape == QNetwork(SMALL).tower(imgs).shape
    with pytest.raises(ValueError, match="stem"):
        QNetConfig(stem="conv7").validate()  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="quarters"):
        QNetConfig(stem="s2d4", image_size=32, merge_size=16).validate()


@pytest.mark.parametrize("head", ["onehot", "multihead"])
@pytest.mark.parametrize("merge", [8, 16])
def test_cem_fast_path_equals_fig9_merge(head: str, merge: int) -> None:
    """conv(feats + tile(z)) folded into conv(feats) + L(z): same logits as the literal merge."""
    cfg = QNetConfig(
        **{**SMALL.to_dict(), "head_type": head, "merge_size": merge, "head_channels": 6}
    )
    net = QNetwork(cfg).eval()
    b, n = 3, 5
    imgs = torch.randint(0, 255, (b, 32, 32, 3), dtype=torch.uint8)
    states, tasks = torch.rand(b, 2), torch.tensor([2, 0, 2])
    actions = torch.rand(b, n, 6) * 2 - 1
    fast, slow = fast_and_literal_logits(net, imgs, states, tasks, actions)
    assert torch.allclose(fast, slow, atol=1e-5), (fast - slow).abs().max()


def test_cem_argmax_equals_naive_full_network() -> None:
    from mtopt.qtopt.cem import cem_argmax, naive_cem_argmax

    net = QNetwork(SMALL).eval()
    imgs = torch.randint(0, 255, (4, 32, 32, 3), dtype=torch.uint8)
    states, tasks = torch.rand(4, 2), torch.tensor([0, 1, 2, 1])
    cfg = CEMConfig(samples=16, elites=4, precision="fp32")
    a1, q1 = cem_argmax(net, imgs, states, tasks, cfg, torch.Generator().manual_seed(3))
    a2, q2 = naive_cem_argmax(net, imgs, states, tasks, cfg, torch.Generator().manual_seed(3))
    assert torch.equal(a1, a2)
    assert torch.allclose(q1, q2, atol=1e-6)
    assert torch.allclose(q1, net(imgs, states, a1, tasks), atol=1e-6)


def test_bad_image_shape_is_a_clear_error() -> None:
    net = QNetwork(SMALL)
    with pytest.raises(ValueError, match=r"expects images of shape \(B, 32, 32, 3\) uint8"):
        net.tower(torch.zeros(2, 64, 64, 3, dtype=torch.uint8))


def test_dense_post_cache_follows_weight_updates() -> None:
    net = QNetwork(SMALL).eval()
    imgs = torch.randint(0, 255, (2, 32, 32, 3), dtype=torch.uint8)
    states, tasks, actions = torch.rand(2, 2), torch.tensor([0, 1]), torch.rand(2, 3, 6)

    def both() -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            feats = net.tower(imgs)
            fast = net.candidate_logits(net.candidate_context(feats, states, tasks), actions)
            slow = net.logits(
                imgs.repeat_interleave(3, 0),
                states.repeat_interleave(3, 0),
                actions.reshape(6, 6),
                tasks.repeat_interleave(3),
            )
        return fast.reshape(6), slow

    fast, slow = both()
    assert torch.allclose(fast, slow, atol=1e-5)
    with torch.no_grad():
        for p in net.post[3].parameters():
            p.add_(0.3)  # in-place, like an optimizer step
    fast2, slow2 = both()
    assert not torch.allclose(slow, slow2, atol=1e-4)
    assert torch.allclose(fast2, slow2, atol=1e-5)


@pytest.mark.parametrize("side", [2, 4])
def test_dense_conv_row_blocks_by_hand_and_against_conv2d(side: int) -> None:
    """A 3x3 padded conv on a side x side NHWC map as ``DenseConv``: on a 4x4 map output
    row r reads input rows r-1..r+1, so with one map row of w = 4 * C values the blocks
    read columns [0, 2w), [0, 3w), [w, 4w), [2w, 4w); both ways equal conv2d + ReLU."""
    from mtopt.qtopt.networks import DenseConv

    c = 3
    conv = nn.Conv2d(c, c, 3, 1, 1)
    d = side * side * c
    basis = torch.eye(d).reshape(d, side, side, c).permute(0, 3, 1, 2)
    with torch.no_grad():
        resp = nn.functional.conv2d(basis, conv.weight, None, 1, 1)
    dense = resp.permute(0, 2, 3, 1).reshape(d, d)
    layer = DenseConv.from_dense(dense, conv.bias.detach().repeat(side * side), side, 3, 1)
    w = side * c
    if side == 4:
        cols = [(b[0].start, b[0].stop) for b in layer.row_blocks]
        assert cols == [(0, 2 * w), (0, 3 * w), (w, 4 * w), (2 * w, 4 * w)]
    x = torch.randn(300, side, side, c)  # >= MIN_ROWS_FOR_BLOCKS
    with torch.no_grad():
        want = torch.relu(conv(x.permute(0, 3, 1, 2))).permute(0, 2, 3, 1).reshape(300, d)
        got = layer(x.reshape(300, d))
        whole = layer(x.reshape(300, d), row_blocks=False)  # one matmul, zero blocks included
    assert torch.allclose(got, want, atol=1e-5) and torch.allclose(whole, want, atol=1e-5)


@pytest.mark.parametrize("head", ["onehot", "multihead"])
def test_signal_reaches_the_output_at_init(head: str) -> None:
    """The 9 post-merge convolutions have no normalisation: with PyTorch's default init the
    merged features shrank ~2.5x in std per layer and Q at init was flat in the action
    (std over actions ~4e-7). He init keeps every post-merge layer within 20x of the merge."""
    torch.manual_seed(0)
    net = QNetwork(QNetConfig(head_type=head))  # type: ignore[arg-type]
    images = torch.randint(0, 256, (32, 64, 64, 3), dtype=torch.uint8)
    states, tasks = torch.rand(32, 2), torch.randint(0, 13, (32,))
    actions = torch.rand(32, 6) * 2 - 1
    with torch.no_grad():
        feats = net.tower(images)
        onehot = torch.nn.functional.one_hot(tasks, 13).float()
        x = feats + net.embed(torch.cat([actions, states, onehot], 1))[:, :, None, None]
        merge_rms = float(x.pow(2).mean().sqrt())
        for layer in net.post:
            x = layer(x)
            assert float(x.pow(2).mean().sqrt()) > merge_rms / 20
        # for one state, the logit depends on the action (the old init gave ~4e-7)
        one = net.logits_from_features(
            feats[:1].expand(32, -1, -1, -1),
            states[:1].expand(32, -1),
            actions,
            tasks[:1].expand(32),
        )
    assert float(one.std()) > 1e-3


def test_random_shift_by_hand() -> None:
    # Generator seed 3 draws column offsets (1, 2), then row offsets (1, 0), in [0, 2 * pad].
    # Offset pad (=1) is the identity; column offset 2 moves the content one pixel left
    # and row offset 0 one pixel down, the border pixels replicated into the gap.
    x = torch.tensor([[1, 2, 3], [4, 5, 6], [7, 8, 9]], dtype=torch.uint8)
    images = x.reshape(1, 3, 3, 1).repeat(2, 1, 1, 2)  # (N=2, H, W, C=2)
    out = random_shift(images, 1, torch.Generator().manual_seed(3))
    assert out.shape == images.shape and out.dtype == torch.uint8
    assert torch.equal(out[0, ..., 0], x)
    assert torch.equal(out[1, ..., 0], torch.tensor([[2, 3, 3], [2, 3, 3], [5, 6, 6]]).byte())
    assert torch.equal(out[..., 0], out[..., 1])  # one offset per image, all channels
    assert random_shift(images, 0, torch.Generator()) is images
    with pytest.raises(ValueError, match="pad"):
        random_shift(images, -1, torch.Generator())


def test_interleaved_timing_calls_every_function_alike() -> None:
    """Round-robin: each function runs the same number of times (warm-up included), and
    the result is the best of its own calls. No timing is asserted, only bookkeeping."""
    from mtopt.qtopt.perf import time_interleaved

    counts = {"a": 0, "b": 0}

    def bump(k: str) -> None:
        counts[k] += 1

    out = time_interleaved(
        {"a": lambda: bump("a"), "b": lambda: bump("b")}, min_time=0.0, warmup=1, repeats=2
    )
    assert set(out) == {"a", "b"} and all(v >= 0 for v in out.values())
    assert counts["a"] == counts["b"] == 1 + 2 * 2  # warm-up + 2 rounds of 2 (>= 3 calls each)


def test_mc_lower_bound_by_hand() -> None:
    from mtopt.qtopt.bellman import mc_lower_bound

    targets = torch.tensor([0.30, 0.30, 0.95, 0.10])
    final = torch.tensor([1.0, 0.0, 1.0, 1.0])
    to_go = torch.tensor([2.0, 2.0, 1.0, 0.0])
    # success two steps before the end: 0.9^2 = 0.81 > 0.30 ; failure: no bound ;
    # 0.95 > 0.9 stays ; last step of a success: 0.9^0 = 1
    out = mc_lower_bound(targets, final, to_go, 0.9)
    assert torch.allclose(out, torch.tensor([0.81, 0.30, 0.95, 1.0]))


def _live_batch(b: int) -> TransitionBatch:
    """b non-terminal transitions of zeros (reward 0), without episode returns."""
    return TransitionBatch(
        images=torch.zeros(b, 32, 32, 3, dtype=torch.uint8),
        states=torch.zeros(b, 2),
        actions=torch.zeros(b, 6),
        task_idx=torch.zeros(b, dtype=torch.int64),
        rewards=torch.zeros(b),
        next_images=torch.zeros(b, 32, 32, 3, dtype=torch.uint8),
        next_states=torch.zeros(b, 2),
        dones=torch.zeros(b),
    )


def _half_valued_nets() -> list[ConstNet]:
    """Two target networks whose value is sigmoid(0) = 0.5 at any next state."""
    a0 = torch.tensor([0.2, -0.3, 0.1, 0.0, 1.0, -1.0])
    return [ConstNet(0.0, a0), ConstNet(0.0, a0)]


def test_compute_targets_mc_bound_needs_returns_and_raises_targets() -> None:
    nets, batch = _half_valued_nets(), _live_batch(2)
    cem = CEMConfig(iterations=3, samples=256, elites=16)
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="final_rewards"):
        compute_targets(nets, batch, 0.9, cem, g, mc_bound=True)
    batch.final_rewards = torch.tensor([1.0, 1.0])
    batch.steps_to_go = torch.tensor([1.0, 5.0])
    out = compute_targets(nets, batch, 0.9, cem, g, mc_bound=True).targets
    # TD: 0.9 * 0.5 = 0.45 ; returns 0.9 and 0.9^5 = 0.59049 are both above it
    assert out.tolist() == pytest.approx([0.9, 0.59049], abs=1e-5)
    plain = compute_targets(nets, batch, 0.9, cem, g).targets
    assert plain.tolist() == pytest.approx([0.45, 0.45], abs=1e-3)


def test_mc_mix_by_hand() -> None:
    from mtopt.qtopt.bellman import mc_mix

    targets = torch.tensor([0.4, 0.5, 0.0])
    final = torch.tensor([1.0, 0.0, 1.0])
    to_go = torch.tensor([2.0, 0.0, 0.0])
    # 0.75 * 0.4 + 0.25 * 0.81 = 0.5025 ; 0.75 * 0.5 + 0 = 0.375 ; 0 + 0.25 * 1 = 0.25
    out = mc_mix(targets, final, to_go, 0.9, 0.25)
    assert torch.allclose(out, torch.tensor([0.5025, 0.375, 0.25]))
    assert torch.equal(mc_mix(targets, final, to_go, 0.9, 0.0), targets)


def test_task_discounts_by_hand() -> None:
    from mtopt.qtopt.bellman import task_discounts

    tasks = [("lift-any", "lift"), ("place-any", "place"), ("place-in-bowl", "place")]
    # no overrides: gamma ; a skill's: its tasks ; a task's own wins over its skill's
    assert task_discounts(tasks, 0.9, {}) == (0.9, 0.9, 0.9)
    assert task_discounts(tasks, 0.9, {"place": 0.96}) == (0.9, 0.96, 0.96)
    assert task_discounts(tasks, 0.9, {"place": 0.96, "place-in-bowl": 0.5}) == (0.9, 0.96, 0.5)


def test_compute_targets_discount_each_transition_by_its_own_tasks_gamma() -> None:
    nets, batch = _half_valued_nets(), _live_batch(3)
    batch.task_idx = torch.tensor([2, 0, 1])  # the discount by task, not by position
    cem = CEMConfig(iterations=3, samples=256, elites=16)

    def targets(gamma: object, **kw: object) -> torch.Tensor:
        g = torch.Generator().manual_seed(0)
        return compute_targets(nets, batch, gamma, cem, g, **kw).targets  # type: ignore[arg-type]

    # next value 0.5 everywhere; tasks 2, 0, 1: 1.0 * 0.5, 0.9 * 0.5, 0.5 * 0.5
    want = [0.5, 0.45, 0.25]
    assert targets([0.9, 0.5, 1.0]).tolist() == pytest.approx(want, abs=1e-3)
    assert targets(torch.tensor([0.9, 0.5, 1.0])).tolist() == pytest.approx(want, abs=1e-3)
    assert targets(torch.tensor(0.9)).tolist() == pytest.approx(targets(0.9).tolist())
    assert targets([0.9, 0.9, 0.9]).tolist() == pytest.approx(targets(0.9).tolist())
    # the episode's return under its own task's discount: 1^3 = 1, 0.9^2 = 0.81,
    # 0.5^2 = 0.25 (its td 0.25)
    batch.final_rewards = torch.tensor([1.0, 1.0, 1.0])
    batch.steps_to_go = torch.tensor([3.0, 2.0, 2.0])
    assert targets([0.9, 0.5, 1.0], mc_bound=True).tolist() == pytest.approx(
        [1.0, 0.81, 0.25], abs=1e-3
    )
    with pytest.raises(ValueError, match="discounts for 2 tasks, the batch has task index 2"):
        targets([0.9, 0.5])
    with pytest.raises(ValueError, match="one discount per task"):
        targets([[0.9, 0.5, 1.0]])


def test_compute_targets_mc_mix_mixes_the_return_into_td() -> None:
    nets, batch = _half_valued_nets(), _live_batch(2)
    cem = CEMConfig(iterations=1, samples=16, elites=4)
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="final_rewards"):
        compute_targets(nets, batch, 0.9, cem, g, mc_mix_beta=0.5)
    with pytest.raises(ValueError, match="mc_mix_beta"):
        compute_targets(nets, batch, 0.9, cem, g, mc_mix_beta=1.5)
    batch.final_rewards = torch.tensor([1.0, 0.0])
    batch.steps_to_go = torch.tensor([1.0, 3.0])

    def targets(**kw: object) -> torch.Tensor:  # the same CEM draws every call
        return compute_targets(
            nets, batch, 0.9, cem, torch.Generator().manual_seed(0), **kw
        ).targets

    td = targets()
    returns = torch.tensor([0.9, 0.0])  # 1 * 0.9 ** 1 and 0 * 0.9 ** 3
    assert torch.allclose(targets(mc_mix_beta=0.5), 0.5 * td + 0.5 * returns)
    assert torch.allclose(targets(mc_mix_beta=1.0), returns)
    # the bound first, then the mix: max(td, 0.9) = 0.9 mixed with 0.9 stays 0.9
    both = targets(mc_bound=True, mc_mix_beta=0.5)
    assert torch.allclose(both, torch.stack([torch.tensor(0.9), 0.5 * td[1]]))


def test_bellman_targets_take_the_plain_max_over_gripper_branches(monkeypatch) -> None:
    """An acting ``close_margin`` (open unless closing wins by the margin) or ``pick="mean"``
    must not bias the targets' max over next actions: CEM for targets runs without them."""
    import mtopt.qtopt.bellman as bellman

    seen: list[CEMConfig] = []

    def fake_argmax(net, images, states, task_idx, cfg, generator=None):  # type: ignore[no-untyped-def]
        seen.append(cfg)
        b = images.shape[0]
        return torch.zeros(b, 6), torch.full((b,), 0.5)

    monkeypatch.setattr(bellman, "cem_argmax", fake_argmax)
    cfg = CEMConfig(gripper="split", close_margin=0.1).validate()
    net = QNetwork(QNetConfig(image_size=16, num_tasks=2))
    q = bellman.next_state_values(
        [net], torch.zeros(3, 3, 16, 16), torch.zeros(3, 2), torch.zeros(3, dtype=torch.long), cfg
    )
    assert q.shape == (3,) and seen[0].close_margin == 0.0 and seen[0].gripper == "split"
    # nor Q at the elites' mean (an acting choice): the best sample CEM scored
    mean = CEMConfig(pick="mean").validate()
    bellman.next_state_values(
        [net], torch.zeros(3, 3, 16, 16), torch.zeros(3, 2), torch.zeros(3, dtype=torch.long), mean
    )
    assert seen[1].pick == "best"
    # nor the release margin (a closed gripper opening only when that clearly pays)
    held = CEMConfig(gripper="split", release_margin=0.1).validate()
    bellman.next_state_values(
        [net], torch.zeros(3, 3, 16, 16), torch.ones(3, 2), torch.zeros(3, dtype=torch.long), held
    )
    assert seen[2].release_margin == 0.0 and seen[2].gripper == "split"


def test_q_network_forward_says_what_is_wrong_with_its_inputs() -> None:
    """A user scoring with the network: the env's 2-number state for a gripper_xy network,
    a float image in 0..255, float task ids each got a crash deep inside or a silent 0."""
    import dataclasses

    from mtopt.qtopt.networks import QNetwork
    from qtopt_fixtures import SMALL

    net = QNetwork(dataclasses.replace(SMALL, gripper_xy=True)).eval()
    img = torch.zeros(2, 32, 32, 3, dtype=torch.uint8)
    state, action, task = torch.zeros(2, 4), torch.zeros(2, 6), torch.tensor([0, 1])
    assert net(img, state, action, task).shape == (2,)
    for args, says in (
        ((img.float() * 255, state, action, task), "images must be uint8"),
        ((img, state[:, :2], action, task), r"state must be \(B, 4\) from q_state"),
        ((img, state, action[:, :5], task), r"action must be \(B, 6\)"),
        ((img, state, action, task.float()), "task must be"),
    ):
        with pytest.raises(ValueError, match=says):
            net(*args)


def test_cem_pick_mean_breaks_an_even_split_of_the_elites_with_the_best_sample() -> None:
    """Two elites that disagree on TERMINATE: the best one's command wins (a tie used to
    terminate). The scorer ranks, by hand, one TERMINATE sample and one without."""
    seen: list[torch.Tensor] = []

    def score(actions: torch.Tensor) -> torch.Tensor:
        seen.append(actions.clone())
        s = torch.zeros(actions.shape[:2])
        if len(seen) == 1:
            stop = actions[0, :, 5] > 0
            s[0, int(torch.nonzero(~stop)[0])] = 2.0  # the best: goes on
            s[0, int(torch.nonzero(stop)[0])] = 1.0  # the other elite: terminates
        return s

    cfg = CEMConfig(iterations=1, samples=32, elites=2, pick="mean")
    got, _ = cem_maximize(score, 1, cfg, torch.Generator().manual_seed(0))
    assert got[0, 5].item() == -1.0
