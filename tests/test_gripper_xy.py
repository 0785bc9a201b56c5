"""The optional proprioceptive Q-network inputs: the gripper's x, y with the state
features (``QNetConfig.gripper_xy``) and CoordConv channels (``coord_channels``), and the
episodes' ``poses`` column they need."""

import dataclasses
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from mtopt.policies.cem_policy import CEMPolicy
from mtopt.qtopt.cem import CEMConfig
from mtopt.qtopt.networks import QNetwork, q_state
from mtopt.replay.source import replay_items
from mtopt.robots.base import Observation
from mtopt.store import EpisodeReader, EpisodeWriter
from mtopt.store.schema import ARROW_SCHEMA, episodes_to_table
from qtopt_fixtures import SMALL, fast_and_literal_logits
from test_store import make_episode

POSE_SMALL = dataclasses.replace(SMALL, gripper_xy=True, coord_channels=True)


def test_q_state_by_hand() -> None:
    states = np.array([[1.0, 0.1], [0.5, 0.2]], np.float32)
    poses = np.array([[0.02, 0.14, 0.1, 0.3], [-0.1, 0.2, 0.2, 0.0]], np.float32)
    assert np.array_equal(q_state(states, poses, SMALL), states)  # the paper's 2 features
    assert np.array_equal(q_state(states, None, SMALL), states)  # no pose needed
    got = q_state(states, poses, POSE_SMALL)
    want = np.array([[1.0, 0.1, 0.1, 0.7], [0.5, 0.2, -0.5, 1.0]], np.float32)  # x, y times 5
    assert got.shape == (2, POSE_SMALL.state_dim) == (2, 4)
    assert np.allclose(got, want)
    with pytest.raises(ValueError, match="no pose"):
        q_state(states, None, POSE_SMALL)


def test_poses_round_trip_and_old_shards_read_without_them(tmp_path: Path) -> None:
    side = SMALL.image_size  # replay leaves out episodes of another image size
    with_pose = make_episode(1, steps=3, size=side)
    with_pose.poses = np.arange(16, dtype=np.float32).reshape(4, 4) / 10
    without = make_episode(2, steps=2, size=side)
    w = EpisodeWriter(tmp_path, robot_id="r0")
    w.write(with_pose)
    w.write(without)
    w.flush()
    # a shard written before the poses column existed (same schema version, one column less)
    old_schema = pa.schema(
        [f for f in ARROW_SCHEMA if f.name != "poses"], metadata=ARROW_SCHEMA.metadata
    )
    old = (
        episodes_to_table([make_episode(3, steps=2, size=side)])
        .drop_columns(["poses"])
        .cast(old_schema)
    )
    (tmp_path / "shards" / "r1").mkdir()
    pq.write_table(old, tmp_path / "shards" / "r1" / "zz-old.parquet")
    got = {e.episode_id: e for e in EpisodeReader(tmp_path).episodes()}
    assert len(got) == 3
    assert np.array_equal(got["ep00001"].poses, with_pose.poses)
    assert got["ep00002"].poses is None and got["ep00003"].poses is None
    with pytest.raises(ValueError, match="poses must be"):
        dataclasses.replace(with_pose, poses=np.zeros((3, 4), np.float32))

    # a network that takes x, y gets them appended; pose-less episodes are left out
    items = replay_items(got.values(), POSE_SMALL)
    assert [ep.episode_id for ep, _ in items] == ["ep00001"]
    assert np.allclose(items[0][0].states[:, 2:], with_pose.poses[:, :2] * 5.0)
    assert np.array_equal(items[0][0].states[:, :2], with_pose.states)
    assert len(replay_items(got.values(), SMALL)) == 3  # the paper's state: all of them


@pytest.mark.parametrize("merge", [8, 16])
def test_cem_fast_path_with_pose_and_coord_inputs(merge: int) -> None:
    net = QNetwork(dataclasses.replace(POSE_SMALL, merge_size=merge)).eval()
    assert net.embed[0].in_features == 6 + 4 + 2
    assert net.tower.net[0][0].in_channels == 5
    b, n = 3, 4
    imgs = torch.randint(0, 255, (b, 32, 32, 3), dtype=torch.uint8)
    states, tasks = torch.rand(b, 4), torch.tensor([1, 0, 1])
    actions = torch.rand(b, n, 6) * 2 - 1
    fast, slow = fast_and_literal_logits(net, imgs, states, tasks, actions)
    # the inputs matter: another gripper position gives other values
    moved = states.clone()
    moved[:, 2:] += 0.5
    other, _ = fast_and_literal_logits(net, imgs, moved, tasks, actions)
    assert torch.allclose(fast, slow, atol=1e-5), (fast - slow).abs().max()
    assert not torch.allclose(fast, other)


def test_coord_channels_break_translation_equivariance() -> None:
    """Two images that differ by a shift of a uniform one are the same to a plain conv
    stem away from the borders; with the coordinate channels the stem's output is not."""
    torch.manual_seed(0)
    img = torch.full((1, 32, 32, 3), 100, dtype=torch.uint8)
    plain = QNetwork(SMALL).tower.net[0](torch.zeros(1, 3, 32, 32))
    assert torch.allclose(plain[..., 4, 4], plain[..., 8, 8])  # uniform input, uniform map
    coord = QNetwork(POSE_SMALL).tower
    stem = coord.net[0]
    x = img.permute(0, 3, 1, 2).float() / 255 - 0.5
    rows = torch.linspace(-1, 1, 32).view(1, 1, 32, 1).expand(1, 1, 32, 32)
    cols = torch.linspace(-1, 1, 32).view(1, 1, 1, 32).expand(1, 1, 32, 32)
    out = stem(torch.cat([x, rows, cols], 1))
    assert not torch.allclose(out[..., 4, 4], out[..., 8, 8])
    assert coord(img).shape == QNetwork(SMALL).tower(img).shape


@pytest.mark.parametrize(
    ("stem", "norm"), [("conv5", False), ("conv5", True), ("s2d", False), ("s2d4", False)]
)
def test_coord_tower_equals_the_literal_five_channel_input(stem: str, norm: bool) -> None:
    """The tower adds the coordinate channels' convolution, computed once, instead of
    building the 5-channel input: the same features, and the same weight gradients."""
    cfg = dataclasses.replace(POSE_SMALL, stem=stem, norm=norm)  # type: ignore[arg-type]
    tower = QNetwork(cfg).tower
    img = torch.randint(0, 256, (3, 32, 32, 3), dtype=torch.uint8)
    x = img.permute(0, 3, 1, 2).float() / 255 - 0.5
    rows = torch.linspace(-1, 1, 32).view(1, 1, 32, 1).expand(3, 1, 32, 32)
    cols = torch.linspace(-1, 1, 32).view(1, 1, 1, 32).expand(3, 1, 32, 32)
    literal = tower.net(torch.cat([x, rows, cols], 1))
    fast = tower(img)
    assert torch.allclose(fast, literal, atol=1e-5)
    tower.fold_coords = False  # the benchmark switch: the literal input, in the tower
    assert torch.allclose(tower(img), literal, atol=1e-6)
    tower.fold_coords = True
    params = list(tower.parameters())
    g_fast = torch.autograd.grad(fast.square().sum(), params)
    g_lit = torch.autograd.grad(literal.square().sum(), params)
    for a, b in zip(g_fast, g_lit, strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-4)


def test_cem_policy_feeds_the_pose() -> None:
    net = QNetwork(POSE_SMALL).eval()
    pol = CEMPolicy(["a", "b"], network=net, cem=CEMConfig(samples=8, elites=2, precision="fp32"))
    pol.reset("a", np.random.default_rng(0))
    img = np.zeros((32, 32, 3), np.uint8)
    state = np.array([0.0, 0.1], np.float32)
    action = pol.act(Observation(img, state, pose=np.array([0.0, 0.1, 0.1, 0.0], np.float32)))
    assert action.shape == (6,)
    with pytest.raises(ValueError, match="no pose"):
        pol.act(Observation(img, state))
