"""The gripper-centred crop (``QNetConfig.gripper_crop``): the camera projection by hand
and against PyBullet's, the crop's sampling grid, and the Q-network that takes it."""

import dataclasses

import numpy as np
import pytest
import torch

from mtopt.qtopt.cem import CEMConfig, cem_argmax, naive_cem_argmax
from mtopt.qtopt.crop import CAMERAS, CROP_POINT_Z, PinholeCamera, gripper_crop, project
from mtopt.qtopt.networks import POSE_XY_SCALE, QNetConfig, QNetwork
from qtopt_fixtures import SMALL, fast_and_literal_logits

# straight down from 1 m, 90 degrees vertical field of view (tan 45 = 1); world -x is up
# in the image, so the image's right is +y and its bottom +x
DOWN = PinholeCamera(eye=(0.0, 0.0, 1.0), target=(0.0, 0.0, 0.0), up=(-1.0, 0.0, 0.0), fov_deg=90)
CROP_SMALL = dataclasses.replace(SMALL, gripper_xy=True, coord_channels=True, gripper_crop=8)


def test_projection_by_hand() -> None:
    pts = torch.tensor(
        [
            [0.0, 0.0, 0.0],  # on the axis: the image centre
            [0.0, 0.5, 0.0],  # depth 1, 0.5 right: x = 0.5
            [0.25, 0.0, 0.0],  # 0.25 towards +x, which is down in the image: y = +0.25
            [0.2, -0.3, 0.5],  # depth 0.5: x = -0.3 / 0.5, y = 0.2 / 0.5
        ],
        dtype=torch.float64,
    )
    want = torch.tensor([[0.0, 0.0], [0.5, 0.0], [0.0, 0.25], [-0.6, 0.4]], dtype=torch.float64)
    assert torch.allclose(project(DOWN, pts), want, atol=1e-12)
    wide = dataclasses.replace(DOWN, aspect=2.0)  # twice as wide: x halves, y stays
    assert torch.allclose(project(wide, pts), want * torch.tensor([0.5, 1.0]), atol=1e-12)


def test_sim_camera_projects_as_pybullet_renders() -> None:
    """The calibration the crop uses is the simulator's policy camera: PyBullet's own view
    and projection matrices put the same points at the same place (OpenGL's y points up,
    image rows down)."""
    pb = pytest.importorskip("pybullet")
    from mtopt.sim.cell import CAMERA_VIEWS

    cam = CAMERAS["sim-scene"]
    scene = CAMERA_VIEWS["scene"]
    assert (scene.eye, scene.target, scene.up) == (cam.eye, cam.target, cam.up)
    view = np.array(pb.computeViewMatrix(list(cam.eye), list(cam.target), list(cam.up)))
    proj = np.array(pb.computeProjectionMatrixFOV(cam.fov_deg, 1.0, 0.05, 2.0))
    m = proj.reshape(4, 4).T @ view.reshape(4, 4).T  # column-major
    rng = np.random.default_rng(0)
    pts = np.c_[rng.uniform(-0.1, 0.1, 20), rng.uniform(-0.23, 0.23, 20), rng.uniform(0, 0.2, 20)]
    h = m @ np.c_[pts, np.ones(20)].T
    want = np.stack([h[0] / h[3], -h[1] / h[3]], 1)
    got = project(cam, torch.from_numpy(pts)).numpy()
    assert np.allclose(got, want, atol=1e-6)


def test_crop_samples_pixel_centres_around_the_projection() -> None:
    """Below a gripper at x = y = 0 the point (0, 0, CROP_POINT_Z) projects to the image
    centre; a 2-pixel window sampled at 2 x 2 reads exactly the 4 central pixels of an
    8-pixel image (their centres sit at NDC -0.125 and +0.125)."""
    img = torch.rand(2, 3, 8, 8)
    centre = gripper_crop(img, torch.zeros(2, 2), DOWN, window=2, out=2)
    assert torch.allclose(centre, img[:, :, 3:5, 3:5], atol=1e-6)
    # a gripper 1 pixel to the right: at depth 1 - CROP_POINT_Z one pixel (2 / 8 of NDC)
    # is 0.25 * (1 - z) m of y
    right = torch.tensor([[0.0, 0.25 * (1 - CROP_POINT_Z)]] * 2)
    assert torch.allclose(gripper_crop(img, right, DOWN, 2, 2), img[:, :, 3:5, 4:6], atol=1e-5)
    # 4 x 4 samples of a 4-pixel window: the central 4 x 4 pixels
    assert torch.allclose(gripper_crop(img, torch.zeros(2, 2), DOWN, 4, 4), img[:, :, 2:6, 2:6])
    # out of the image, the border repeats
    far = gripper_crop(img, torch.tensor([[5.0, 5.0]] * 2), DOWN, 2, 2)
    assert torch.allclose(far, img[:, :, 7:8, 7:8].expand(-1, -1, 2, 2), atol=1e-6)


def assert_fast_path_is_the_literal_network(
    net: QNetwork,
    imgs: torch.Tensor,
    states: torch.Tensor,
    tasks: torch.Tensor,
    actions: torch.Tensor,
) -> None:
    """The CEM fast path's logits equal the literal network's, and CEM over it picks what
    naive CEM (the full network on every candidate) picks with the same random draws."""
    fast, slow = fast_and_literal_logits(net, imgs, states, tasks, actions)
    assert torch.allclose(fast, slow, atol=1e-5), (fast - slow).abs().max()
    g = torch.Generator().manual_seed(1)
    a1, q1 = cem_argmax(net, imgs, states, tasks, CEMConfig(precision="fp32"), g)
    g = torch.Generator().manual_seed(1)
    a2, q2 = naive_cem_argmax(net, imgs, states, tasks, CEMConfig(precision="fp32"), g)
    assert torch.allclose(q1, q2, atol=1e-5) and torch.allclose(a1, a2, atol=1e-5)


def test_q_network_with_the_crop() -> None:
    net = QNetwork(CROP_SMALL).eval()
    u = CROP_SMALL.fc_units
    assert CROP_SMALL.crop_dim == u
    assert net.embed[0].in_features == 6 + 4 + u + 2
    b, n = 3, 5
    torch.manual_seed(0)
    imgs = torch.randint(0, 255, (b, 32, 32, 3), dtype=torch.uint8)
    states = torch.rand(b, 4)
    tasks = torch.tensor([1, 0, 1])
    actions = torch.rand(b, n, 6) * 2 - 1
    assert net.state_input(imgs, states).shape == (b, 4 + u)
    assert_fast_path_is_the_literal_network(net, imgs, states, tasks, actions)


def test_crop_features_see_only_the_window_and_follow_the_gripper() -> None:
    cfg = dataclasses.replace(CROP_SMALL, crop_window=8)
    net = QNetwork(cfg).eval()
    img = torch.full((1, 32, 32, 3), 90, dtype=torch.uint8)
    xy = torch.tensor([[0.0, 0.13]])  # above the right bin's centre
    state = torch.cat([torch.tensor([[0.0, 0.1]]), xy * POSE_XY_SCALE], 1)
    centre = project(CAMERAS["sim-scene"], torch.tensor([[0.0, 0.13, CROP_POINT_Z]]))[0]
    col, row = ((centre + 1) / 2 * 32).long().tolist()
    base = net.state_input(img, state)
    far = img.clone()
    far[:, (row + 16) % 32, (col + 16) % 32] = 250  # a pixel far outside the 8-pixel window
    near = img.clone()
    near[:, row, col] = 250  # the pixel below the gripper
    assert torch.equal(net.state_input(far, state), base)
    assert not torch.allclose(net.state_input(near, state), base)
    # gradients reach the crop tower through the Q-value
    q = net.logits(near, state, torch.zeros(1, 6), torch.tensor([0]))
    q.sum().backward()
    assert net.crop_tower is not None
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.crop_tower.parameters())


def test_crop_config_is_checked() -> None:
    with pytest.raises(ValueError, match="needs gripper_xy"):
        QNetConfig(gripper_crop=16).validate()
    with pytest.raises(ValueError, match="multiple of 4"):
        QNetConfig(gripper_xy=True, gripper_crop=10).validate()
    with pytest.raises(ValueError, match="crop_window"):
        QNetConfig(gripper_xy=True, gripper_crop=16, crop_window=65).validate()
    with pytest.raises(ValueError, match="unknown crop_camera"):
        QNetConfig(gripper_xy=True, gripper_crop=16, crop_camera="nope").validate()
    with pytest.raises(ValueError, match="crop_camera"):  # without a crop too
        QNetConfig(crop_camera="pinhole:1,2").validate()
    assert QNetConfig().crop_dim == 0 and QNetwork(SMALL).crop_tower is None


def test_a_real_cameras_calibration_in_the_config() -> None:
    """A real cell's camera from the command line (``--set qnet.crop_camera=pinhole:...``;
    it had to be added to CAMERAS in the source): the same projection as the camera."""
    from mtopt.config import override
    from mtopt.qtopt.crop import camera_named

    assert camera_named("pinhole:0,0,1,0,0,0,-1,0,0,90") == DOWN
    assert camera_named("pinhole:0,0,1,0,0,0,-1,0,0,90,1.5").aspect == 1.5
    cfg = override(CROP_SMALL, ["crop_camera=pinhole:0,0,1,0,0,0,-1,0,0,90"])
    assert cfg.validate().crop_camera.startswith("pinhole:")
    assert QNetwork(cfg).crop_tower.camera == DOWN  # type: ignore[union-attr]
    for bad, says in (
        ("pinhole:0,0,1,0,0,0,-1,0", "10 or 11 finite numbers"),
        ("pinhole:0,0,1,0,0,0,-1,0,0,nan", "10 or 11 finite numbers"),
        ("pinhole:0,0,1,0,0,0,-1,0,0,x", "10 or 11 finite numbers"),
        ("pinhole:0,0,1,0,0,1,-1,0,0,90", "target away from the eye"),
        ("pinhole:0,0,1,0,0,0,-1,0,0,190", r"fov must be in \(0, 180\)"),
        ("pinhole:0,0,1,0,0,0,0,0,1,90", "up must be a direction across the view"),
        ("pinhole:0,0,1,0,0,0,0,0,0,90", "up must be a direction across the view"),
    ):
        with pytest.raises(ValueError, match=says):
            QNetConfig(gripper_xy=True, gripper_crop=16, crop_camera=bad).validate()


ACTION_CROP = dataclasses.replace(CROP_SMALL, crop_window=8, action_crop_step_m=0.05)


def test_post_move_view_reads_the_view_map_by_hand(monkeypatch: pytest.MonkeyPatch) -> None:
    """Straight-down camera, 32-pixel image, 8-pixel crop window read as 2 x 2 feature
    cells: the view map covers 16 pixels as 4 x 4 cells of 4 pixels (4 * 2 / 32 NDC,
    times the depth 1 - CROP_POINT_Z in metres). No move reads the central cells 1-2;
    a move of exactly one cell to +y (right in the image) reads columns 2-3, to +x
    (down) rows 2-3; half a cell is the mean of the two blocks (bilinear)."""
    monkeypatch.setitem(CAMERAS, "down", DOWN)
    cell = 4 * 2 / 32 * (1 - CROP_POINT_Z)
    cfg = dataclasses.replace(ACTION_CROP, crop_camera="down", action_crop_step_m=cell)
    net = QNetwork(cfg).eval()
    tower = net.crop_tower
    assert tower is not None
    torch.manual_seed(0)
    imgs = torch.rand(2, 3, 32, 32)
    xy = torch.tensor([[0.1, -0.2], [-0.3, 0.05]])
    with torch.no_grad():
        fmap = tower.view_map(imgs, xy)
        assert fmap.shape == (2, 8, 4, 4)
        moves = torch.tensor([[0.0, 0.0], [0.0, cell], [cell, 0.0], [0.0, cell / 2]])
        got = tower.features_at(fmap, xy, xy[:, None] + moves[None])
        blocks = [fmap[:, :, 1:3, 1:3], fmap[:, :, 1:3, 2:4], fmap[:, :, 2:4, 1:3]]
        blocks.append((blocks[0] + blocks[1]) / 2)
        for j, block in enumerate(blocks):
            assert torch.allclose(got[:, j], tower.fc(block), atol=1e-5), j
        # the network's post-move view of action dy = 1 is the one-cell move's
        state = torch.cat([torch.rand(2, 2), xy * POSE_XY_SCALE], 1)
        right = torch.tensor([[0.0, 1.0, 0.0, 0.0, -1.0, -1.0]] * 2)
        u8 = (imgs * 255).round().to(torch.uint8).permute(0, 2, 3, 1)
        fmap8 = tower.view_map(u8.permute(0, 3, 1, 2).float() / 255, xy)
        want = tower.fc(fmap8[:, :, 1:3, 2:4])
        assert torch.allclose(net.action_crop_features(u8, state, right), want, atol=1e-5)
        # the gripper's own view (state features) is the zero move's
        assert torch.allclose(
            net.state_input(u8, state)[:, 4:], tower.fc(fmap8[:, :, 1:3, 1:3]), atol=1e-5
        )


def test_action_crop_fast_path_and_config() -> None:
    """The CEM fast path with post-move views equals the literal network on repeated
    rows; CEM over it equals naive CEM; gradients reach the crop tower; bad configs and
    missing images are clear errors."""
    cfg = ACTION_CROP
    assert cfg.action_crop_dim == cfg.fc_units
    net = QNetwork(cfg).eval()
    u = cfg.fc_units
    assert net.embed[0].in_features == 6 + 4 + u + 2 + u
    torch.manual_seed(0)
    b, n = 3, 5
    imgs = torch.randint(0, 255, (b, 32, 32, 3), dtype=torch.uint8)
    states = torch.cat([torch.rand(b, 2), (torch.rand(b, 2) * 0.2 - 0.1) * POSE_XY_SCALE], 1)
    tasks = torch.tensor([1, 0, 1])
    actions = torch.rand(b, n, 6) * 2 - 1
    assert_fast_path_is_the_literal_network(net, imgs, states, tasks, actions)
    # the post-move view changes with the move
    with torch.no_grad():
        v0 = net.action_crop_features(imgs, states, torch.zeros(b, 6))
        v1 = net.action_crop_features(imgs, states, torch.tensor([[1.0, 1.0, 0, 0, 0, 0]] * b))
    assert not torch.allclose(v0, v1)
    net.logits(imgs, states, actions[:, 0], tasks).sum().backward()
    assert net.crop_tower is not None
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.crop_tower.parameters())
    with pytest.raises(ValueError, match="pass the images"):
        net.logits_from_features(
            net.tower(imgs), net.state_input(imgs, states), actions[:, 0], tasks
        )
    with pytest.raises(ValueError, match="needs gripper_crop"):
        QNetConfig(gripper_xy=True, action_crop_step_m=0.05).validate()
    with pytest.raises(ValueError, match=">= 0"):
        dataclasses.replace(cfg, action_crop_step_m=-0.1).validate()
