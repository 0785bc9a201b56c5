"""Q-network of MT-Opt (Fig. 9), sized for 64x64 images on a CPU.

image (uint8 HxWx3) --7 convs--> feature map (C x m x m)          [``tower``]
[action, state, one-hot task] --FC--> C, tiled over m x m and added
--9 convs--> --2 FC--> sigmoid  => Q in [0, 1]                      [``head``]

``tower`` runs once per state; ``head`` runs once per (state, candidate action), which
is what CEM needs. ``head_type="multihead"`` replaces the single output by one
3-layer FC head per task (the paper's ablation, Fig. 10).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import torch
from torch import nn

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

    def validate(self) -> QNetConfig:
        if self.image_size % self.merge_size or self.image_size // self.merge_size not in (
            2,
            4,
            8,
            16,
        ):
            raise ValueError(
                f"image_size {self.image_size} / merge_size {self.merge_size} must be 2, 4, 8 or 16"
            )
        if self.head_type not in ("onehot", "multihead"):
            raise ValueError(f"head_type must be 'onehot' or 'multihead', got {self.head_type!r}")
        if self.num_tasks < 1:
            raise ValueError(f"num_tasks must be >= 1, got {self.num_tasks}")
        return self

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _conv(cin: int, cout: int, stride: int = 1, k: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2), nn.ReLU(inplace=True))


class ImageTower(nn.Module):
    """7 convolutions from the RGB image down to a ``merge_size`` feature map."""

    def __init__(self, cfg: QNetConfig):
        super().__init__()
        c = cfg.tower_channels
        downs = {2: 1, 4: 2, 8: 3, 16: 4}[cfg.image_size // cfg.merge_size]
        layers = [_conv(3, c, stride=2, k=5)]  # first conv halves the image
        strides = [2] * (downs - 1) + [1] * (6 - (downs - 1))
        for s in strides:
            layers.append(_conv(c, c, stride=s))
        self.net = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype == torch.uint8:
            x = images.permute(0, 3, 1, 2).float().div_(255.0)
        else:
            x = images.permute(0, 3, 1, 2) if images.shape[-1] == 3 else images
        x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x - 0.5)


class QNetwork(nn.Module):
    def __init__(self, cfg: QNetConfig):
        super().__init__()
        self.cfg = cfg.validate()
        c, h, u = cfg.tower_channels, cfg.head_channels, cfg.fc_units
        self.tower = ImageTower(cfg)
        self.embed = nn.Sequential(
            nn.Linear(ACTION_DIM + STATE_DIM + cfg.num_tasks, u),
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

    def logits_from_features(
        self, feats: torch.Tensor, state: torch.Tensor, action: torch.Tensor, task: torch.Tensor
    ) -> torch.Tensor:
        """Post-merge part. feats (B, C, m, m); state (B, 2); action (B, 6); task (B,) int.

        Returns logits (B,). Broadcasting: feats may be shared by several rows only if the
        caller repeats it (see ``cem``), so this stays a plain batched function.
        """
        onehot = nn.functional.one_hot(task.long(), self.cfg.num_tasks).to(feats.dtype)
        z = self.embed(torch.cat([action.to(feats.dtype), state.to(feats.dtype), onehot], dim=1))
        x = feats + z[:, :, None, None]
        x = self.fc(self.post(x))
        if self.out is not None:
            return self.out(x).squeeze(1)
        assert self.heads is not None
        outs = torch.stack([head(x).squeeze(1) for head in self.heads], dim=1)  # (B, T)
        return outs.gather(1, task.long()[:, None]).squeeze(1)

    def head(
        self, feats: torch.Tensor, state: torch.Tensor, action: torch.Tensor, task: torch.Tensor
    ) -> torch.Tensor:
        """Q in [0, 1] from tower features (runs only the post-merge layers)."""
        return torch.sigmoid(self.logits_from_features(feats, state, action, task))

    def logits(
        self, images: torch.Tensor, state: torch.Tensor, action: torch.Tensor, task: torch.Tensor
    ) -> torch.Tensor:
        return self.logits_from_features(self.tower(images), state, action, task)

    def forward(
        self, images: torch.Tensor, state: torch.Tensor, action: torch.Tensor, task: torch.Tensor
    ) -> torch.Tensor:
        """Q(s, a, task) in [0, 1]; images uint8 (B, H, W, 3)."""
        return torch.sigmoid(self.logits(images, state, action, task))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
