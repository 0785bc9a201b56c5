"""Q-network of MT-Opt (Fig. 9), sized for 64x64 images on a CPU.

image (uint8 HxWx3) --7 convs--> feature map (C x m x m)          [``tower``]
[action, state, one-hot task] --FC--> C, tiled over m x m and added
--9 convs--> --2 FC--> sigmoid  => Q in [0, 1]                      [``head``]

``tower`` runs once per state; ``head`` runs once per (state, candidate action), which
is what CEM needs. ``head_type="multihead"`` replaces the single output by one
3-layer FC head per task (the paper's ablation, Fig. 10).
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass
from dataclasses import replace as dataclasses_replace
from typing import Any, ClassVar, Literal, cast

import numpy as np
import torch
from torch import nn

from mtopt.qtopt.crop import camera_named, crop_grid, gripper_crop
from mtopt.robots.action import ACTION_DIM
from mtopt.robots.base import STATE_DIM

HeadType = Literal["onehot", "multihead"]


@dataclass(frozen=True)
class QNetConfig:
    num_tasks: int = 13
    """Number of tasks (size of the one-hot task input)."""
    image_size: int = 64
    """Input image side in pixels (square)."""
    tower_channels: int = 32
    """Channels of the 7 image-tower convolutions."""
    merge_size: int = 8
    """Spatial side of the feature map where action/state/task are added (8 is cheap)."""
    head_channels: int = 16
    """Channels of the 9 post-merge convolutions."""
    head_stride: int = 2
    """Stride of the first post-merge convolution (2: the other 8 run at merge_size/2)."""
    fc_units: int = 64
    """Width of the fully connected layers."""
    head_type: HeadType = "onehot"
    """'onehot' (one output, task as input) or 'multihead' (one FC head per task)."""
    stem: Literal["conv5", "s2d", "s2d4"] = "conv5"
    """First tower layer: 'conv5' a 5x5 stride-2 convolution on the 3 colour channels
    (halves the image); 's2d' space-to-depth (each 2x2 pixel block becomes 12 channels)
    and a 3x3 stride-1 convolution, the same output size; 's2d4' space-to-depth by 4
    (48 channels) and a 3x3 convolution, a quarter of the image side, which replaces
    the stem and the next stride-2 layer (still 7 convolutions: one more at the merge
    size). benchmarks/learner_speed.py measures them."""
    norm: bool = False
    """GroupNorm after every tower convolution. Off by default: with He init the signal
    keeps its scale without it, and the learner step is ~2x faster (bf16: 2.4x). The
    80-minute run with GroupNorm (r5) and the 92-minute run without (r6,
    docs/learning-history.md) learned at least as well per learner step without it, at
    twice the steps per second."""
    gripper_xy: bool = False
    """Also feed the gripper's horizontal position (x, y from the robot's kinematics,
    ``Observation.pose``; not in the paper, whose state is status and height only) with
    the state features. Episodes must then carry poses. The grasp-outcome probe
    (benchmarks/grasp_outcome_probe.py) measured it: held-out AUC 0.73 -> 0.78, with
    ``coord_channels`` 0.79, against 0.86 for a model given the true object offsets."""
    coord_channels: bool = False
    """CoordConv: two more input channels holding every pixel's row and column in
    [-1, 1], so the convolutions can tell where in the image a thing is."""
    gripper_crop: int = 0
    """0: off. Else also look at a ``crop_window``-pixel square of the image centred
    where the point below the gripper (its x, y: needs ``gripper_xy``) projects through
    the calibrated camera ``crop_camera`` (mtopt.qtopt.crop), resampled to this side:
    an object in the crop's centre is under the gripper. A small conv tower turns the
    crop into ``fc_units`` features fed with the state features. Not in the paper."""
    crop_window: int = 16
    """Side of the gripper crop in image pixels (16 of 64: about 13 cm of the bin)."""
    crop_camera: str = "sim-scene"
    """Calibration the gripper crop projects through: a name in mtopt.qtopt.crop.CAMERAS,
    or a real camera's ``pinhole:ex,ey,ez,tx,ty,tz,ux,uy,uz,fov_deg[,aspect]``
    (``mtopt.qtopt.crop.camera_named``)."""
    action_crop_step_m: float = 0.0
    """0: off. Else (needs ``gripper_crop``) the network also looks, for every candidate
    action, at what would be under the gripper after the action's move: the crop
    tower's convolutions run once per state on a window twice the crop's side around
    the gripper, and each candidate reads a crop-sized block of that feature map centred
    where (x + dx * step, y + dy * step) projects (bilinear between feature cells; a
    zero move reads the central block), then the crop tower's fully connected layer.
    ``step`` must be the robot's ``max_step_m`` (0.05 in the simulated cell). These
    features enter the action embedding, so Q(s, a) sees the post-move view instead of
    inferring it from the numbers dx, dy. Per candidate it costs a c x 4 x 4 sample and
    one small matmul. Not in the paper. Workspace limits that stop a real move are not
    modelled (the view goes where the move would)."""

    @property
    def state_dim(self) -> int:
        """Width of the state features the network takes (2, or 4 with ``gripper_xy``)."""
        return STATE_DIM + (2 if self.gripper_xy else 0)

    @property
    def crop_dim(self) -> int:
        """Width of the gripper-crop features appended to the state features (0: none)."""
        return self.fc_units if self.gripper_crop else 0

    @property
    def action_crop_dim(self) -> int:
        """Width of the post-move crop features in the action embedding (0: none)."""
        return self.fc_units if self.action_crop_step_m > 0 else 0

    def validate(self) -> QNetConfig:
        for name in ("image_size", "tower_channels", "merge_size", "head_channels", "fc_units",
                     "head_stride", "num_tasks"):  # fmt: skip
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.merge_size % self.head_stride:
            raise ValueError(
                f"head_stride {self.head_stride} must divide merge_size {self.merge_size}"
            )
        if self.image_size % self.merge_size or self.image_size // self.merge_size not in (
            2,
            4,
            8,
            16,
        ):
            raise ValueError(
                f"image_size {self.image_size} / merge_size {self.merge_size} must be 2, 4, 8 or 16"
            )
        if self.stem not in ("conv5", "s2d", "s2d4"):
            raise ValueError(f"stem must be 'conv5', 's2d' or 's2d4', got {self.stem!r}")
        if self.stem == "s2d4" and self.image_size // self.merge_size < 4:
            raise ValueError("stem 's2d4' quarters the image: image_size / merge_size must be >= 4")
        if self.head_type not in ("onehot", "multihead"):
            raise ValueError(f"head_type must be 'onehot' or 'multihead', got {self.head_type!r}")
        if self.num_tasks < 1:
            raise ValueError(f"num_tasks must be >= 1, got {self.num_tasks}")
        if self.gripper_crop:
            if not self.gripper_xy:
                raise ValueError(
                    "gripper_crop needs gripper_xy (the crop is cut where x, y project)"
                )
            if self.gripper_crop < 4 or self.gripper_crop % 4:
                raise ValueError(
                    f"gripper_crop must be 0 or a multiple of 4, got {self.gripper_crop}"
                )
            if not 2 <= self.crop_window <= self.image_size:
                raise ValueError(
                    f"crop_window must be in [2, image_size={self.image_size}], got {self.crop_window}"
                )
        # checked without a crop too: a bad value is saved with the weights and refused
        # only later (a run that turns the crop on, --init-from)
        camera_named(self.crop_camera)  # a clear ValueError for a bad name or calibration
        if self.action_crop_step_m < 0 or not math.isfinite(self.action_crop_step_m):
            raise ValueError(f"action_crop_step_m must be >= 0, got {self.action_crop_step_m}")
        if self.action_crop_step_m > 0 and not self.gripper_crop:
            raise ValueError("action_crop_step_m needs gripper_crop (it reuses the crop tower)")
        return self

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


POSE_XY_SCALE = 5.0
"""Gripper x, y (m) are fed times this (about +-1 over the bins), as the image is."""


def gripper_xy(state: torch.Tensor) -> torch.Tensor:
    """The gripper's x, y in metres (B, 2) from Q-network state features with
    ``gripper_xy`` (columns STATE_DIM, STATE_DIM + 1, times POSE_XY_SCALE)."""
    return state[:, STATE_DIM : STATE_DIM + 2].float() / POSE_XY_SCALE


def q_state(states: np.ndarray, poses: np.ndarray | None, cfg: QNetConfig) -> np.ndarray:
    """The state features the Q-network takes, from the robot's ``states`` (..., 2) and
    ``poses`` (..., 4: x, y, z, yaw) of the same observations: the states themselves,
    or with ``cfg.gripper_xy`` the states followed by x and y times ``POSE_XY_SCALE``."""
    states = np.asarray(states, np.float32)
    if not cfg.gripper_xy:
        return states
    if poses is None:
        raise ValueError(
            "this Q-network takes the gripper's x, y (QNetConfig.gripper_xy), but the "
            "observation or episode has no pose (proprioception)"
        )
    xy = np.asarray(poses, np.float32)[..., :2] * POSE_XY_SCALE
    return np.concatenate([states, xy], axis=-1)


@dataclass
class CandidateContext:
    """Per-state, action-independent part of the post-merge computation (CEM fast path)."""

    conv_feats: torch.Tensor
    """(B, m'*m'*H): first post-merge conv of the tower features (NHWC), biases folded in."""
    h_state: torch.Tensor
    """(B, u): first embedding layer's pre-activation from state + task (+ bias)."""
    w_action: torch.Tensor
    """(u, 6): first embedding layer's weights on the action."""
    z_to_conv: torch.Tensor
    """(u, m'*m'*H): last embedding layer composed with the merge conv's linear map."""
    task: torch.Tensor
    """(B,) task indices."""
    shape: tuple[int, int, int]
    """(H, m', m') of the first post-merge conv's output."""
    view_map: torch.Tensor | None = None
    """With ``action_crop_step_m``: the crop tower's feature map around each gripper
    (``CropTower.view_map``)."""
    xy: torch.Tensor | None = None
    """With ``action_crop_step_m``: the grippers' x, y (B, 2, metres)."""
    w_action_crop: torch.Tensor | None = None
    """With ``action_crop_step_m``: first embedding layer's weights on the post-move
    crop features, transposed (u_crop, u)."""


@dataclass(frozen=True)
class DenseConv:
    """A padded stride-1 convolution on a small NHWC map, flattened to a linear map, then
    ReLU (the CEM fast path's post-merge layers).

    ``weight`` is the dense (H*W*C x H*W*C) matrix. Output row r of a k x k conv with
    padding p reads only input rows r-p .. r-p+k-1, a contiguous column range of the
    flattened input, so on a CPU the layer runs as one matmul per output row
    (``row_blocks``: input columns, output columns, weight block). On a 4x4 map with a
    3x3 kernel that skips the 6 of 16 row-pair blocks that are zero: 62.5% of the dense
    FLOPs, measured 1.46x faster at 2048 rows on one AVX2 core. Exact up to float
    rounding. Elsewhere (a GPU: launch-bound) the dense matrix runs as one matmul."""

    weight: torch.Tensor
    bias: torch.Tensor
    row_blocks: tuple[tuple[slice, slice, torch.Tensor], ...]

    MIN_ROWS_FOR_BLOCKS: ClassVar[int] = 256
    """Fewer rows (one robot's 64 candidates) run the dense matmul: there the four
    smaller matmuls were 6% slower (cem_speed.json: act 5.33 vs 5.03 ms), while 64
    states x 64 candidates ran 33% faster blocked (511 vs 383 states/s)."""

    @classmethod
    def from_dense(
        cls, weight: torch.Tensor, bias: torch.Tensor, rows: int, k: int, padding: int
    ) -> DenseConv:
        width = weight.shape[0] // rows  # one map row, flattened: W * C
        blocks = []
        for r in range(rows):
            lo, hi = max(0, r - padding) * width, min(rows, r - padding + k) * width
            out = slice(r * width, (r + 1) * width)
            blocks.append((slice(lo, hi), out, weight[lo:hi, out].contiguous()))
        return cls(weight, bias, tuple(blocks))

    def __call__(self, x: torch.Tensor, row_blocks: bool = True) -> torch.Tensor:
        if (
            not row_blocks
            or x.device.type != "cpu"
            or len(self.row_blocks) < 3
            or x.shape[0] < self.MIN_ROWS_FOR_BLOCKS
        ):
            return torch.addmm(self.bias, x, self.weight).relu_()
        parts = [torch.addmm(self.bias[out], x[:, cols], w) for cols, out, w in self.row_blocks]
        return torch.cat(parts, 1).relu_()


def _conv(cin: int, cout: int, stride: int = 1, k: int = 3, norm: bool = False) -> nn.Sequential:
    """conv -> (GroupNorm) -> ReLU. GroupNorm is per sample, so a state's tower features do
    not depend on the other states in a batch (CEM reuses them across candidates)."""
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2)]
    if norm:
        layers.append(nn.GroupNorm(min(8, cout // 2) or 1, cout))
    layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def _nchw_unit(images: torch.Tensor) -> torch.Tensor:
    """NCHW in [0, 1] from uint8 (B, S, S, 3) images, or float ones in [0, 1], NHWC or
    NCHW (floats keep their dtype)."""
    if images.dtype == torch.uint8:
        return images.permute(0, 3, 1, 2).float().div_(255.0)
    return images.permute(0, 3, 1, 2) if images.shape[-1] == 3 else images


def _coord_map(x: torch.Tensor) -> torch.Tensor:
    """(1, 2, H, W): every pixel's row and column in [-1, 1], for images like ``x``."""
    h, w = x.shape[2:]
    rows = torch.linspace(-1, 1, h, dtype=x.dtype, device=x.device)
    cols = torch.linspace(-1, 1, w, dtype=x.dtype, device=x.device)
    return torch.stack([rows.view(h, 1).expand(h, w), cols.view(1, w).expand(h, w)])[None]


class ImageTower(nn.Module):
    """7 convolutions from the RGB image down to a ``merge_size`` feature map."""

    def __init__(self, cfg: QNetConfig):
        super().__init__()
        c = cfg.tower_channels
        downs = {2: 1, 4: 2, 8: 3, 16: 4}[cfg.image_size // cfg.merge_size]
        # the first layer halves the image (s2d4: quarters it)
        stem_downs = 2 if cfg.stem == "s2d4" else 1
        layers: list[nn.Module]
        cin = 5 if cfg.coord_channels else 3
        if cfg.stem == "conv5":
            layers = [_conv(cin, c, stride=2, k=5, norm=cfg.norm)]
        else:
            f = 2**stem_downs
            layers = [nn.PixelUnshuffle(f), _conv(cin * f * f, c, stride=1, k=3, norm=cfg.norm)]
        strides = [2] * (downs - stem_downs) + [1] * (6 - (downs - stem_downs))
        for s in strides:
            layers.append(_conv(c, c, stride=s, norm=cfg.norm))
        self.net = nn.Sequential(*layers)
        self.image_size = cfg.image_size
        self.norm = cfg.norm
        self.coord_channels = cfg.coord_channels
        self.channels_last = True
        """Run the convolutions in NHWC memory layout (faster on CPU; a benchmark switch).
        Not used under bf16 autocast with GroupNorm: PyTorch's channels_last GroupNorm is
        slow there (measured: tower of 64 images 13.3 ms NHWC vs 8.4 ms NCHW; an Adam step
        at batch 64 56 vs 41 ms)."""
        self.fold_coords = True
        """Add the coordinate channels' convolution, computed once, instead of building
        the 5-channel input (``_forward_with_coords``; a benchmark switch)."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images: (B, S, S, 3) uint8 in [0, 255], or float in [0, 1] as NHWC or NCHW."""
        s = self.image_size
        if images.ndim != 4 or (
            tuple(images.shape[1:]) != (s, s, 3)
            and (images.dtype == torch.uint8 or tuple(images.shape[1:]) != (3, s, s))
        ):
            raise ValueError(
                f"Q-network expects images of shape (B, {s}, {s}, 3) uint8, "
                f"got {images.dtype} {tuple(images.shape)}"
            )
        x = _nchw_unit(images)
        nhwc = self.channels_last and not (self.norm and torch.is_autocast_enabled(x.device.type))
        fmt = torch.channels_last if nhwc else torch.contiguous_format
        x = (x - 0.5).contiguous(memory_format=fmt)
        if self.coord_channels and self.fold_coords:
            return self._forward_with_coords(x, fmt)
        if self.coord_channels:  # the literal CoordConv input
            coords = _coord_map(x).expand(x.shape[0], -1, -1, -1)
            x = torch.cat([x, coords], 1).contiguous(memory_format=fmt)
        return self.net(x)

    def _forward_with_coords(self, x: torch.Tensor, fmt: torch.memory_format) -> torch.Tensor:
        """The tower on [image, row, column] channels without building that input.

        The first convolution is linear in its input, so conv([x, coords]) =
        conv_image(x) + conv_coords(coords) (zero padding included: exact up to float
        rounding), and the coordinate part is the same for every image: it runs on one
        (1, 2, H, W) map and is broadcast. Measured on one AVX2 core against the literal
        input (``fold_coords`` off, learner_speed_avx2_tuned.json): Adam step at batch 64
        68 vs 72 ms, Bellman targets 723 vs 639 per second."""
        coords = _coord_map(x)
        layers = list(self.net)
        first = 0
        if isinstance(layers[0], nn.PixelUnshuffle):  # s2d stems: channels c * f * f + offset
            x, coords, first = layers[0](x), layers[0](coords), 1
        block = layers[first]
        assert isinstance(block, nn.Sequential)
        conv = block[0]
        assert isinstance(conv, nn.Conv2d)
        k = x.shape[1]
        y = nn.functional.conv2d(x, conv.weight[:, :k], conv.bias, conv.stride, conv.padding)
        y = y.add_(
            nn.functional.conv2d(
                coords.contiguous(memory_format=fmt),
                conv.weight[:, k:],
                None,
                conv.stride,
                conv.padding,
            )
        )
        for layer in [*list(block)[1:], *layers[first + 1 :]]:
            y = layer(y)
        return y


class CropTower(nn.Module):
    """The gripper crop (``QNetConfig.gripper_crop``) -> ``fc_units`` features: three
    3x3 convolutions (the last two stride 2) and a fully connected layer."""

    def __init__(self, cfg: QNetConfig):
        super().__init__()
        c, side = cfg.tower_channels, cfg.gripper_crop // 4
        self.cfg = cfg
        self.camera = camera_named(cfg.crop_camera)
        self.net = nn.Sequential(
            _conv(3, c),
            _conv(c, c, stride=2),
            _conv(c, c, stride=2),
            nn.Flatten(),
            nn.Linear(c * side * side, cfg.fc_units),
            nn.ReLU(inplace=True),
        )

    def crops(self, images: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """(B, 3, crop, crop) in [-0.5, 0.5] from uint8 (B, S, S, 3) images (or float in
        [0, 1], NHWC or NCHW) and the Q-network's state features (x, y at columns
        STATE_DIM, STATE_DIM + 1, times POSE_XY_SCALE)."""
        x = _nchw_unit(images).float()
        xy = gripper_xy(state)
        c = self.cfg
        return gripper_crop(x, xy, self.camera, c.crop_window, c.gripper_crop) - 0.5

    def forward(self, images: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        # NHWC, as the image tower: the backward pass of these small convs ran 1.5x faster
        return self.net(self.crops(images, state).contiguous(memory_format=torch.channels_last))

    @property
    def convs(self) -> nn.Sequential:
        return cast(nn.Sequential, self.net[:3])

    @property
    def fc(self) -> nn.Sequential:
        return cast(nn.Sequential, self.net[3:])

    def view_map(self, images: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
        """The convolutions' feature map (B, c, h, h) of a window twice the crop's side
        (sampled twice as densely, so pixels match the crop's) around the points below the
        grippers at ``xy`` (B, 2, metres); ``images`` (B, 3, S, S) float in [0, 1]."""
        c = self.cfg
        crops = gripper_crop(images, xy, self.camera, 2 * c.crop_window, 2 * c.gripper_crop) - 0.5
        return self.convs(crops.contiguous(memory_format=torch.channels_last))

    def features_at(
        self, fmap: torch.Tensor, xy: torch.Tensor, moved: torch.Tensor
    ) -> torch.Tensor:
        """Crop features (B, N, fc_units) of views centred below ``moved`` (B, N, 2) read
        off ``view_map(images, xy)``: the block of (crop side / 4)^2 feature cells centred
        where the moved point projects, bilinear between cells, border cells beyond the
        map; then the fully connected layer. A zero move reads exactly the central cells."""
        c = self.cfg
        b, n = int(moved.shape[0]), int(moved.shape[1])
        size = int(c.image_size)
        side = c.gripper_crop // 4
        # in float32 whatever the autocast: a bf16 grid would be off by up to 1/8 pixel
        pts = crop_grid(self.camera, moved.reshape(b * n, 2).float(), size, c.crop_window, side)
        pts = pts.reshape(b, n * side, side, 2)
        centre = crop_grid(self.camera, xy.float(), size, 1, 1).reshape(b, 1, 1, 2)
        grid = (pts - centre) * (size / (2.0 * c.crop_window))  # image NDC -> map's [-1, 1]
        cells = nn.functional.grid_sample(
            fmap.float(), grid, mode="bilinear", padding_mode="border", align_corners=False
        )  # (B, c, N*side, side)
        ch = int(fmap.shape[1])
        cells = cells.reshape(b, ch, n, side, side).transpose(1, 2).reshape(b * n, ch, side, side)
        return self.fc(cells).reshape(b, n, -1)


class QNetwork(nn.Module):
    def __init__(self, cfg: QNetConfig):
        super().__init__()
        self.cfg = cfg.validate()
        c, h, u = cfg.tower_channels, cfg.head_channels, cfg.fc_units
        self.tower = ImageTower(cfg)
        self.crop_tower = CropTower(cfg) if cfg.gripper_crop else None
        self.embed = nn.Sequential(
            nn.Linear(
                ACTION_DIM + cfg.state_dim + cfg.crop_dim + cfg.num_tasks + cfg.action_crop_dim, u
            ),
            nn.ReLU(inplace=True),
            nn.Linear(u, c),
        )
        convs = [_conv(c, h, stride=cfg.head_stride)] + [_conv(h, h) for _ in range(8)]
        self.post = nn.Sequential(*convs)
        side = cfg.merge_size // cfg.head_stride
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(h * side * side, u), nn.ReLU(inplace=True))
        self.out: nn.Linear | None = None
        self.heads: nn.ModuleList | None = None
        if cfg.head_type == "onehot":
            self.out = nn.Linear(u, 1)
        else:
            self.heads = nn.ModuleList(
                nn.Sequential(
                    nn.Linear(u, u),
                    nn.ReLU(inplace=True),
                    nn.Linear(u, u),
                    nn.ReLU(inplace=True),
                    nn.Linear(u, 1),
                )
                for _ in range(cfg.num_tasks)
            )
        self.dense_small_convs = True
        """CEM fast path: run the post-merge convs on <= 4x4 maps as dense matmuls."""
        self.row_blocked = True
        """CEM fast path on a CPU: each dense post-merge conv as one matmul per output row
        (``DenseConv``; a benchmark switch)."""
        self._dense_cache: dict[str, Any] = {}
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He (fan-in, ReLU) initialisation with zero biases for every conv and linear layer.

        PyTorch's default init shrinks the signal's variance about 6x per conv+ReLU layer;
        through the 9 un-normalised post-merge convolutions that left Q at init flat in the
        action (logit std over actions ~4e-7 for a fixed state) and starved the early
        layers of gradient. With He init the post-merge activations keep their scale
        (``tests/test_qtopt_math.py::test_signal_reaches_the_output_at_init``). The output
        layers get a small init so Q starts near 0.5.
        """
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        heads = [h for h in self.heads or [] if isinstance(h, nn.Sequential)]
        outs = [self.out] if self.out is not None else [h[-1] for h in heads]
        for layer in outs:
            assert isinstance(layer, nn.Linear)
            nn.init.normal_(layer.weight, std=0.1 / layer.in_features**0.5)
            nn.init.zeros_(layer.bias)
        self._dense_cache.clear()

    def state_input(self, images: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """The per-state features the post-merge part takes with the action and task: the
        state features, followed by the gripper crop's features with ``gripper_crop``.
        (B, state_dim + crop_dim); ``state`` itself when there is no crop. With
        ``action_crop_step_m`` the crop's features are read off the view map (a zero
        move), so the gripper's view and the post-move views share one computation."""
        return self.state_and_view(images, state)[0]

    def state_and_view(
        self, images: torch.Tensor, state: torch.Tensor
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        """``state_input`` and, with ``action_crop_step_m``, the view map it was read from
        (``_view``), for ``candidate_context`` to reuse; None without it."""
        if self.crop_tower is None:
            return state, None
        if self.cfg.action_crop_step_m <= 0:
            crop = self.crop_tower(images, state)
            return torch.cat([state.to(torch.float32), crop.float()], 1), None
        fmap, xy = view = self._view(images, state)
        crop = self.crop_tower.features_at(fmap, xy, xy[:, None])[:, 0]
        return torch.cat([state.to(torch.float32), crop.float()], 1), view

    def _view(self, images: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(``CropTower.view_map`` around the grippers, their x, y in metres)."""
        assert self.crop_tower is not None
        xy = gripper_xy(state)
        return self.crop_tower.view_map(_nchw_unit(images).float(), xy), xy

    def post_move_xy(self, state: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Where the actions' moves take the gripper: state (B, state_dim + ...) with x, y
        at columns STATE_DIM, STATE_DIM + 1 (times POSE_XY_SCALE), actions (B, N, 6) ->
        (B, N, 2) metres (``action_crop_step_m``)."""
        return gripper_xy(state)[:, None] + actions[..., :2].float() * self.cfg.action_crop_step_m

    def action_crop_features(
        self, images: torch.Tensor | None, state: torch.Tensor, action: torch.Tensor
    ) -> torch.Tensor:
        """Post-move crop features (B, fc_units) of one action per state (training path)."""
        if images is None:
            raise ValueError(
                "this Q-network looks where the action moves (action_crop_step_m): pass the images"
            )
        assert self.crop_tower is not None
        fmap, xy = self._view(images, state)
        return self.crop_tower.features_at(fmap, xy, self.post_move_xy(state, action[:, None]))[
            :, 0
        ]

    def logits_from_features(
        self,
        feats: torch.Tensor,
        state: torch.Tensor,
        action: torch.Tensor,
        task: torch.Tensor,
        images: torch.Tensor | None = None,
        action_crop: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Post-merge part, literally as in Fig. 9. feats (B, C, m, m); state (B, state_dim
        + crop_dim): ``state_input``; action (B, 6); task (B,) int. Returns logits (B,).
        With ``action_crop_step_m`` also the post-move view's features (B, fc_units)
        (``action_crop_features``), or the states' ``images`` to compute them from."""
        onehot = nn.functional.one_hot(task.long(), self.cfg.num_tasks).to(feats.dtype)
        parts = [action.to(feats.dtype), state.to(feats.dtype), onehot]
        if self.cfg.action_crop_step_m > 0:
            if action_crop is None:
                action_crop = self.action_crop_features(images, state, action)
            parts.append(action_crop.to(feats.dtype))
        z = self.embed(torch.cat(parts, dim=1))
        x = feats + z[:, :, None, None]
        return self._output(self.fc(self.post(x)), task)

    def _output(self, x: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
        if self.out is not None:
            return self.out(x).squeeze(1)
        assert self.heads is not None
        # one Python iteration per task present (never per sample)
        out = x.new_empty(x.shape[0])
        task = task.long()
        for t in task.unique().tolist():
            idx = (task == t).nonzero().squeeze(1)
            out[idx] = self.heads[t](x.index_select(0, idx)).squeeze(1)
        return out

    # ------------------------------------------------------------ CEM fast path
    def candidate_context(
        self,
        feats: torch.Tensor,
        state: torch.Tensor,
        task: torch.Tensor,
        images: torch.Tensor | None = None,
        view: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> CandidateContext:
        """Everything about (s, task) that does not depend on the action, once per state.

        The merge (tile + add) is followed by a convolution, which is linear, so
        conv(feats + tile(z)) = conv(feats) + L(z), with L a small linear map from the
        C-vector z to the conv output (zero padding included, so this is exact). We run
        conv(feats) once per state here; per candidate only L(z), folded with the last
        embedding layer into one (u x H*m'*m') matrix, is added. The merged 8x8 map is
        never built per candidate. Layout is NHWC so the later convs get channels_last.
        ``state`` is ``state_input`` (with the crop's features when there is a crop);
        ``images`` the states' images, needed with ``action_crop_step_m`` unless ``view``
        (from ``state_and_view``) already holds their view map.
        """
        dt = feats.dtype
        w0, z_to_conv, z_bias, w_action, w_state, b1, w_acrop = self._merge_maps(dt, feats.shape[2])
        conv0 = self._merge_conv()
        conv_feats = nn.functional.conv2d(feats, w0, None, conv0.stride, conv0.padding)
        onehot = nn.functional.one_hot(task.long(), self.cfg.num_tasks).to(dt)
        st = torch.cat([state.to(dt), onehot], dim=1)
        return CandidateContext(
            conv_feats=conv_feats.permute(0, 2, 3, 1).reshape(feats.shape[0], -1) + z_bias,
            h_state=torch.addmm(b1, st, w_state),
            w_action=w_action,
            z_to_conv=z_to_conv,
            task=task,
            shape=(conv_feats.shape[1], conv_feats.shape[2], conv_feats.shape[3]),
            **self._action_crop_context(images, state, w_acrop, view),
        )

    def _action_crop_context(
        self,
        images: torch.Tensor | None,
        state: torch.Tensor,
        w_acrop: torch.Tensor,
        view: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> dict[str, Any]:
        if self.cfg.action_crop_step_m <= 0:
            return {}
        if view is not None:
            return {"view_map": view[0], "xy": view[1], "w_action_crop": w_acrop}
        if images is None:
            raise ValueError(
                "this Q-network looks where the action moves (action_crop_step_m): pass the images"
            )
        fmap, xy = self._view(images, state)
        return {"view_map": fmap, "xy": xy, "w_action_crop": w_acrop}

    def _merge_conv(self) -> nn.Conv2d:
        block = self.post[0]
        assert isinstance(block, nn.Sequential)
        conv = block[0]
        assert isinstance(conv, nn.Conv2d) and conv.bias is not None
        return conv

    @torch.no_grad()
    def _merge_maps(self, dt: torch.dtype, m: int) -> tuple[torch.Tensor, ...]:
        """Weight-only matrices of the folded merge, cached until a weight changes."""
        conv0 = self._merge_conv()
        lin1, lin2 = self.embed[0], self.embed[2]
        assert isinstance(lin1, nn.Linear) and isinstance(lin2, nn.Linear)
        params = [*conv0.parameters(), *lin1.parameters(), *lin2.parameters()]
        # the device too: .to(device) keeps a parameter's id and version
        key = (dt, m, params[0].device, tuple((id(p), p._version) for p in params))
        cached = self._dense_cache.get("merge")
        if cached is not None and cached[0] == key:
            return tuple(cached[1])
        c = lin2.out_features
        n_in = lin1.in_features - self.cfg.action_crop_dim
        basis = torch.eye(c, device=conv0.weight.device)[:, :, None, None].expand(c, c, m, m)
        resp = nn.functional.conv2d(basis, conv0.weight.float(), None, conv0.stride, conv0.padding)
        resp = resp.permute(0, 2, 3, 1).reshape(c, -1)  # row k: NHWC conv output of tiled e_k
        assert conv0.bias is not None
        maps = (
            conv0.weight.to(dt),
            (lin2.weight.float().T @ resp).to(dt),  # (u, m'*m'*H)
            (
                lin2.bias.float() @ resp
                + conv0.bias.float().repeat(resp.shape[1] // conv0.out_channels)
            ).to(dt),
            lin1.weight[:, :ACTION_DIM].to(dt),
            lin1.weight[:, ACTION_DIM:n_in].T.contiguous().to(dt),
            lin1.bias.to(dt),
            lin1.weight[:, n_in:].T.contiguous().to(dt),  # post-move crop (empty when off)
        )
        self._dense_cache["merge"] = (key, maps)
        return maps

    def candidate_logits(self, ctx: CandidateContext, actions: torch.Tensor) -> torch.Tensor:
        """Logits of (B, N, 6) candidate actions for B prepared states -> (B, N).

        Equal, up to float rounding, to ``logits_from_features`` on repeated rows.
        """
        b, n, _ = actions.shape
        ch, hh, ww = ctx.shape
        dt = ctx.h_state.dtype
        pre = ctx.h_state[:, None] + actions.to(dt) @ ctx.w_action.T  # (B, N, u)
        if ctx.w_action_crop is not None:
            assert self.crop_tower is not None and ctx.view_map is not None and ctx.xy is not None
            moved = ctx.xy[:, None] + actions[..., :2].float() * self.cfg.action_crop_step_m
            crop = self.crop_tower.features_at(ctx.view_map, ctx.xy, moved).to(dt)  # (B, N, u)
            pre = pre + crop @ ctx.w_action_crop
        h = torch.relu(pre)
        x = (h @ ctx.z_to_conv).add_(ctx.conv_feats[:, None]).relu_()  # (B, N, m'*m'*H)
        dense = self._dense_post(dt, (ch, hh, ww)) if self.dense_small_convs else None
        if dense is None:
            x = x.reshape(b * n, hh, ww, ch).permute(0, 3, 1, 2)  # NCHW view, channels_last
            x = self.fc(self.post[1:](x))
        else:
            convs, (w_fc, b_fc) = dense
            x = x.reshape(b * n, -1)
            for conv in convs:
                x = conv(x, self.row_blocked)
            x = torch.addmm(b_fc, x, w_fc).relu_()  # fc
        return self._output(x, ctx.task.repeat_interleave(n)).reshape(b, n)

    @torch.no_grad()
    def _dense_post(
        self, dtype: torch.dtype, shape: tuple[int, int, int]
    ) -> tuple[list[DenseConv], tuple[torch.Tensor, torch.Tensor]] | None:
        """The post-merge convs after the first one as linear maps on the flattened map.

        On a map of at most 4x4, a padded 3x3 conv is a small linear map; as dense
        matmuls (``DenseConv``) it runs far faster than a tiny conv (no per-call
        overhead, full GEMM efficiency). Exact up to float rounding. Built from the
        current weights and cached until any of them changes (``_version``). Returns the
        convs and the first FC layer (weight, bias) with its columns in NHWC order.
        """
        ch, hh, ww = shape
        if hh * ww > 16 or self.training:
            return None
        params = [p for m in (*list(self.post)[1:], self.fc) for p in m.parameters()]
        key = (dtype, shape, params[0].device, tuple((id(p), p._version) for p in params))
        cached = self._dense_cache.get("post")
        if cached is not None and cached[0] == key:
            return cached[1]
        d = hh * ww * ch
        basis = torch.eye(d, dtype=torch.float32, device=params[0].device)
        basis = basis.reshape(d, hh, ww, ch).permute(0, 3, 1, 2)  # row k: NHWC unit k
        convs: list[DenseConv] = []
        for block in list(self.post)[1:]:
            conv = block[0] if isinstance(block, nn.Sequential) else None
            if (
                not isinstance(block, nn.Sequential)
                or len(block) != 2
                or not isinstance(conv, nn.Conv2d)
                or not isinstance(block[1], nn.ReLU)
                or conv.stride != (1, 1)
                or conv.kernel_size[0] != conv.kernel_size[1]
                or conv.padding != (conv.kernel_size[0] // 2,) * 2
                or conv.bias is None
            ):
                return None
            resp = nn.functional.conv2d(basis, conv.weight.float(), None, 1, conv.padding)
            w = resp.permute(0, 2, 3, 1).reshape(d, d).to(dtype)
            bias = conv.bias.float().repeat(hh * ww).to(dtype)
            k = conv.kernel_size[0]  # square, padded k // 2 (checked above)
            convs.append(DenseConv.from_dense(w, bias, hh, k, k // 2))
        lin = self.fc[1]
        if not isinstance(lin, nn.Linear):
            return None
        w_fc = lin.weight.float().reshape(-1, ch, hh, ww).permute(0, 2, 3, 1).reshape(-1, d)
        out = (convs, (w_fc.T.contiguous().to(dtype), lin.bias.float().to(dtype)))
        self._dense_cache["post"] = (key, out)
        return out

    def head(
        self, feats: torch.Tensor, state: torch.Tensor, action: torch.Tensor, task: torch.Tensor
    ) -> torch.Tensor:
        """Q in [0, 1] from tower features (runs only the post-merge layers)."""
        return torch.sigmoid(self.logits_from_features(feats, state, action, task))

    def logits(
        self, images: torch.Tensor, state: torch.Tensor, action: torch.Tensor, task: torch.Tensor
    ) -> torch.Tensor:
        if self.cfg.action_crop_step_m <= 0:
            return self.logits_from_features(
                self.tower(images), self.state_input(images, state), action, task
            )
        # one view map per state for both the gripper's view and the post-move view
        assert self.crop_tower is not None
        fmap, xy = self._view(images, state)
        points = torch.stack([xy, self.post_move_xy(state, action[:, None])[:, 0]], 1)
        views = self.crop_tower.features_at(fmap, xy, points)  # (B, 2, u)
        st = torch.cat([state.to(torch.float32), views[:, 0].float()], 1)
        return self.logits_from_features(
            self.tower(images), st, action, task, action_crop=views[:, 1]
        )

    def forward(
        self, images: torch.Tensor, state: torch.Tensor, action: torch.Tensor, task: torch.Tensor
    ) -> torch.Tensor:
        """Q(s, a, task) in [0, 1]: images uint8 (B, H, W, 3); state (B, state_dim) from
        ``q_state`` (with ``gripper_xy`` the robot's 2 features, then x, y times
        ``POSE_XY_SCALE``); action (B, 6) in [-1, 1]; task (B,) integer indices into the
        run's task names. Shapes and dtypes are checked here, for callers outside the
        training loop (which calls ``logits``)."""
        b = images.shape[0] if images.ndim else -1
        problems = []
        if images.dtype != torch.uint8:
            problems.append(f"images must be uint8 (0-255), got {images.dtype}")
        if tuple(state.shape) != (b, self.cfg.state_dim):
            problems.append(
                f"state must be (B, {self.cfg.state_dim}) from q_state, got {tuple(state.shape)}"
            )
        if tuple(action.shape) != (b, ACTION_DIM):
            problems.append(f"action must be (B, {ACTION_DIM}), got {tuple(action.shape)}")
        if tuple(task.shape) != (b,) or task.is_floating_point() or task.dtype == torch.bool:
            problems.append(
                f"task must be (B,) integer indices, got {task.dtype} {tuple(task.shape)}"
            )
        if problems:
            raise ValueError("QNetwork.forward: " + "; ".join(problems))
        return torch.sigmoid(self.logits(images, state, action, task))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def frozen_copy(net: QNetwork) -> QNetwork:
    """A copy for inference only (target and acting networks): no gradients, eval mode."""
    c = copy.deepcopy(net)
    c.requires_grad_(False)
    c.eval()
    return c


def with_more_tasks(net: QNetwork, like: list[int]) -> QNetwork:
    """``net`` grown by ``len(like)`` tasks, for fine-tuning a trained multi-task network
    on new tasks (the paper's proactive adaptation): tasks ``0 .. n-1`` keep their
    meaning, and new task ``n + j`` starts as task ``like[j]``: its column of the task
    one-hot's embedding (or, multi-headed, its head) is a copy of that task's, so
    Q(s, a, n + j) equals Q(s, a, like[j]) until training moves them apart."""
    old = net.cfg.num_tasks
    if any(not 0 <= i < old for i in like):
        raise ValueError(f"like: task indices must lie in [0, {old}), got {like}")
    grown = QNetwork(dataclasses_replace(net.cfg, num_tasks=old + len(like)))
    state = {k: v.clone() for k, v in net.state_dict().items()}
    first = "embed.0.weight"
    at = ACTION_DIM + net.cfg.state_dim + net.cfg.crop_dim  # where the one-hot starts
    w = state[first]
    state[first] = torch.cat(
        [w[:, : at + old], w[:, [at + i for i in like]], w[:, at + old :]], dim=1
    )
    for j, i in enumerate(like):  # multi-headed: the new task's head is a copy
        for k in [k for k in state if k.startswith(f"heads.{i}.")]:
            state[f"heads.{old + j}." + k[len(f"heads.{i}.") :]] = state[k].clone()
    grown.load_state_dict(state)
    return grown.train(net.training)
