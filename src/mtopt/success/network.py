"""Multi-task success detector: Fig. 9 minus the action inputs.

image --7 convs (the Q-network's tower design)--> + FC(one-hot task) tiled --convs--> FC
--> sigmoid = P(success | final image, task). The tower runs once per image; ``scores``
evaluates every task for a batch of images in one call (what LogReplay needs).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mtopt.qtopt.networks import ImageTower, QNetConfig, _conv
from mtopt.qtopt.weights import (
    WeightsError,
    check_config,
    load_latest,
    load_version,
    publish,
    publish_next,
    read_latest,
)


def view_meta(share: float | None) -> dict[str, float]:
    """``extra_meta`` that records the outcome view a detector was trained in (none where
    it is unknown): ``SuccessDetector.outcome_fixtures_share`` reads it back."""
    return {} if share is None else {"outcome_fixtures_share": float(share)}


@dataclass(frozen=True)
class SDNetConfig:
    num_tasks: int = 13
    image_size: int = 64
    tower_channels: int = 32
    merge_size: int = 8
    head_channels: int = 32
    head_convs: int = 3
    fc_units: int = 64
    norm: bool = True
    """GroupNorm in the image tower (the SD trains on few, varied images: it keeps it)."""

    def tower_cfg(self) -> QNetConfig:
        return QNetConfig(
            num_tasks=self.num_tasks,
            image_size=self.image_size,
            tower_channels=self.tower_channels,
            merge_size=self.merge_size,
            norm=self.norm,
        )


class SuccessNet(nn.Module):
    def __init__(self, cfg: SDNetConfig):
        super().__init__()
        self.cfg = cfg
        c, h = cfg.tower_channels, cfg.head_channels
        self.tower = ImageTower(cfg.tower_cfg().validate())
        self.embed = nn.Sequential(
            nn.Linear(cfg.num_tasks, cfg.fc_units),
            nn.ReLU(inplace=True),
            nn.Linear(cfg.fc_units, c),
        )
        self.post = nn.Sequential(
            _conv(c, h, stride=2), *[_conv(h, h) for _ in range(cfg.head_convs - 1)]
        )
        side = cfg.merge_size // 2
        self.fc = nn.Sequential(
            nn.Flatten(),
            nn.Linear(h * side * side, cfg.fc_units),
            nn.ReLU(inplace=True),
            nn.Linear(cfg.fc_units, 1),
        )

    def logits_all(self, images: torch.Tensor) -> torch.Tensor:
        """(N, H, W, 3) uint8 -> (N, T) logits for every task."""
        feats = self.tower(images)  # (N, C, m, m)
        n, t = feats.shape[0], self.cfg.num_tasks
        z = self.embed(torch.eye(t, device=feats.device))  # (T, C)
        x = (feats[:, None] + z[None, :, :, None, None]).reshape(n * t, *feats.shape[1:])
        return self.fc(self.post(x)).reshape(n, t)


class SuccessDetector:
    """A trained SD with its task list and version; ``score`` is what LogReplay calls."""

    def __init__(self, net: SuccessNet, tasks: Sequence[str], version: int = 0):
        if len(tasks) != net.cfg.num_tasks:
            raise ValueError(
                f"SD network has {net.cfg.num_tasks} task outputs, got {len(tasks)} task names"
            )
        self.net = net.eval()
        self._tasks = tuple(tasks)
        self._version = version
        self.meta: dict[str, Any] = {}
        """The metadata published with these weights (``load``), read with them."""

    @property
    def tasks(self) -> tuple[str, ...]:
        return self._tasks

    @property
    def outcome_fixtures_share(self) -> float | None:
        """The outcome view it was trained in (``SimConfig.outcome_fixtures_share``), as
        published with it (``view_meta``); None where unknown (published before the
        record, 2026-12-06, or trained on sets without it)."""
        share = self.meta.get("outcome_fixtures_share")
        return None if share is None else float(share)

    @property
    def version(self) -> int:
        return self._version

    def _check(self, images: np.ndarray) -> None:
        s = self.net.cfg.image_size
        if images.ndim != 4 or images.shape[1:] != (s, s, 3) or images.dtype != np.uint8:
            raise ValueError(
                f"success detector expects uint8 images of shape (N, {s}, {s}, 3), got {images.dtype} {images.shape}"
            )

    @torch.no_grad()
    def score(self, images: np.ndarray, batch: int = 256) -> np.ndarray:
        """(N, H, W, 3) uint8 -> (N, len(tasks)) P(success)."""
        self._check(images)
        out = [
            torch.sigmoid(
                self.net.logits_all(torch.from_numpy(np.ascontiguousarray(images[i : i + batch])))
            ).numpy()
            for i in range(0, len(images), batch)
        ]
        return np.concatenate(out) if out else np.zeros((0, len(self._tasks)), np.float32)

    def task_index(self, task: str) -> int:
        if task not in self._tasks:
            raise ValueError(
                f"unknown task {task!r} for this success detector; it knows {list(self._tasks)}"
            )
        return self._tasks.index(task)

    def publish(
        self,
        directory: str | Path,
        version: int | None = None,
        extra_meta: dict[str, Any] | None = None,
    ) -> Path:
        """Publish as ``version`` (None: the one after the latest in ``directory``, picked
        under the folder's publish lock, so another process publishing there, such as
        ``mtopt sd improve`` beside a run, cannot make it fail). ``version`` is set only
        once the weights are written. ``extra_meta``: more metadata for the weights file
        and ``sd-latest.json`` (such as who published them: ``origin``)."""
        meta: dict[str, Any] = {
            **(extra_meta or {}),
            "net": asdict(self.net.cfg),
            "tasks": list(self._tasks),
        }
        tensors = dict(self.net.state_dict())
        if version is None:
            version, path = publish_next(directory, tensors, meta, prefix="sd")
        else:
            path = publish(directory, tensors, version, meta, prefix="sd")
        self._version = version
        return path

    @classmethod
    def load(
        cls,
        directory: str | Path,
        expected_tasks: Sequence[str] | None = None,
        version: int | None = None,
    ) -> SuccessDetector:
        """The latest published SD in ``directory``, or an earlier kept ``version``."""
        if read_latest(directory, "sd") is None:
            raise WeightsError(
                f"no success detector weights in {directory} (run `mtopt sd train` first)"
            )
        if version is None:
            version, tensors, meta = load_latest(directory, "sd")
        else:
            tensors, meta = load_version(directory, version, "sd")
        cfg = SDNetConfig(**meta["net"])
        if expected_tasks is not None:
            check_config(
                {"tasks": list(expected_tasks)}, {"tasks": meta["tasks"]}, "success detector"
            )
        net = SuccessNet(cfg)
        net.load_state_dict(tensors)
        sd = cls(net, meta["tasks"], version)
        sd.meta = dict(meta)
        return sd

    @staticmethod
    def latest_version(directory: str | Path) -> int:
        latest = read_latest(directory, "sd")
        return 0 if latest is None else int(latest["version"])
