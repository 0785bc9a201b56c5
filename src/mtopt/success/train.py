"""Supervised training and evaluation of the multi-task success detector."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from mtopt._images import random_shift
from mtopt.success.data import LabeledSet
from mtopt.success.network import SDNetConfig, SuccessDetector, SuccessNet


@dataclass(frozen=True)
class SDTrainConfig:
    steps: int = 2000
    """SGD steps."""
    batch_size: int = 64
    """Images per step (each labeled for up to all tasks)."""
    lr: float = 1e-3
    """Adam learning rate (training from scratch)."""
    finetune_lr: float = 3e-4
    """Adam learning rate when fine-tuning an existing SD (incremental relabel rounds):
    a fresh Adam at the full rate moves a trained net far on a few hundred new labels."""
    ema_decay: float = 0.99
    """The returned weights are an exponential moving average of the iterates (about
    the last 1 / (1 - decay) steps; 0: the last iterate), which damps the round-to-round
    swings of the incremental loop."""
    shift: int = 3
    """Random translation augmentation (pixels)."""
    jitter: float = 0.1
    """Brightness/contrast jitter (fraction)."""
    labeled_fraction: float = 0.5
    """Share of each batch drawn from labeled episodes (any source but "staged") when the
    set has some: a few hundred labels of real outcomes would otherwise be a small
    minority next to the staged scenes, which look a little different."""
    seed: int = 0

    def __post_init__(self) -> None:
        # steps 0 or batch_size 0 returned an untrained SD without a word
        for name in ("steps", "batch_size"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) >= 1):
                raise ValueError(f"{name} must be an integer >= 1, got {getattr(self, name)!r}")
        for name in ("lr", "finetune_lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if self.shift < 0 or self.jitter < 0:
            raise ValueError(f"shift and jitter must be >= 0, got {self.shift}, {self.jitter}")
        if not 0.0 <= self.labeled_fraction <= 1.0:
            raise ValueError(f"labeled_fraction must be in [0, 1], got {self.labeled_fraction}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")


def batch_indices(
    n: int, labeled: torch.Tensor, batch: int, labeled_fraction: float, g: torch.Generator
) -> torch.Tensor:
    """Rows of one SD training batch: ``round(labeled_fraction * batch)`` drawn from the
    ``labeled`` rows (when there are some, but not only those), the rest from all ``n``."""
    k = round(labeled_fraction * batch) if 0 < len(labeled) < n else 0
    idx = torch.randint(0, n, (batch - k,), generator=g)
    if k:
        idx = torch.cat([idx, labeled[torch.randint(0, len(labeled), (k,), generator=g)]])
    return idx


def class_weights(
    labels: torch.Tensor, mask: torch.Tensor, labeled: torch.Tensor, labeled_share: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-task loss weights of positives and negatives that make both classes of every
    task weigh the same in expectation over the batches ``batch_indices`` draws: a row
    is drawn with probability ``(1 - s) / n``, plus ``s / len(labeled)`` for a
    ``labeled`` row, where ``s`` is the batches' labeled share (0 when every row or none
    is labeled). Counting the rows of the whole set instead was off wherever the labeled
    episodes succeed at another rate than the staged scenes (a hard task's episodes
    nearly all fail): there one class weighed a third of the loss, not a half."""
    n = labels.shape[0]
    p = torch.full((n,), 1.0 / n, dtype=torch.float64)
    if 0 < len(labeled) < n and labeled_share > 0:
        p = p * (1 - labeled_share)
        p[labeled] += labeled_share / len(labeled)
    m = mask.double()
    pos = (p[:, None] * labels.double() * m).sum(0)
    neg = (p[:, None] * (1 - labels.double()) * m).sum(0)
    tiny = 1e-12  # a class a task lacks is never weighed: 1 stands in
    w_pos = torch.where(pos > tiny, (pos + neg) / (2 * pos.clamp(min=tiny)), 1.0)
    w_neg = torch.where(neg > tiny, (pos + neg) / (2 * neg.clamp(min=tiny)), 1.0)
    return w_pos.float(), w_neg.float()


def augment(images: torch.Tensor, shift: int, jitter: float, g: torch.Generator) -> torch.Tensor:
    """Random shift (replicate padding) + per-image brightness/contrast jitter; uint8 in/out."""
    n = images.shape[0]
    x = random_shift(images, shift, g).permute(0, 3, 1, 2).float()
    if jitter:
        b = 1 + (torch.rand(n, 1, 1, 1, generator=g) * 2 - 1) * jitter
        c = (torch.rand(n, 1, 1, 1, generator=g) * 2 - 1) * jitter * 255
        x = x * b + c
    return x.clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def train_sd(
    data: LabeledSet,
    cfg: SDTrainConfig = SDTrainConfig(),
    net_cfg: SDNetConfig | None = None,
    init: SuccessNet | None = None,
    progress: bool = False,
) -> SuccessNet:
    """Train (or fine-tune ``init``) on ``data`` with class-balanced, masked BCE. The
    same ``cfg.seed`` gives the same network; torch's global random state is left as it
    was (it was reseeded, under the caller's other draws)."""
    if len(data) == 0:
        raise ValueError("no labeled examples to train the success detector on")
    g = torch.Generator().manual_seed(cfg.seed)
    if init is not None:
        net, lr = init, cfg.finetune_lr
    else:
        with torch.random.fork_rng(devices=[]):  # the initial weights, from cfg.seed
            torch.manual_seed(cfg.seed)
            net = SuccessNet(
                net_cfg or SDNetConfig(num_tasks=len(data.tasks), image_size=data.images.shape[1])
            )
        lr = cfg.lr
    net.train()
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    ema = [p.detach().clone() for p in net.parameters()] if cfg.ema_decay else []
    images = torch.from_numpy(data.images)
    labels = torch.from_numpy(data.labels)
    mask = torch.from_numpy(data.mask).float()
    steps = range(cfg.steps)
    if progress:
        from tqdm import tqdm

        steps = tqdm(steps, desc="training SD", unit="step")
    batch = min(cfg.batch_size, len(data))
    labeled = torch.from_numpy(np.flatnonzero(data.sources.astype(str) != "staged"))
    # positives and negatives of every task weigh the same (balanced accuracy is the
    # goal), counted as the batches draw them
    share = round(cfg.labeled_fraction * batch) / batch
    w_pos, w_neg = class_weights(labels, mask, labeled, share)
    for _ in steps:
        idx = batch_indices(len(data), labeled, batch, cfg.labeled_fraction, g)
        x = augment(images[idx], cfg.shift, cfg.jitter, g)
        y, m = labels[idx], mask[idx]
        logits = net.logits_all(x)
        weight = m * (y * w_pos + (1 - y) * w_neg)
        loss = (
            F.binary_cross_entropy_with_logits(logits, y, reduction="none") * weight
        ).sum() / m.sum().clamp(min=1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if ema:
            with torch.no_grad():
                for e, p in zip(ema, net.parameters(), strict=True):
                    e.lerp_(p.detach(), 1.0 - cfg.ema_decay)
    if ema:
        with torch.no_grad():
            for e, p in zip(ema, net.parameters(), strict=True):
                p.copy_(e)
    return net.eval()


def mean_finite(values: Any) -> float | None:
    """The mean of the finite numbers among ``values``; None when there is none (an SD
    version with no task measured: ``np.nanmean`` warned and gave NaN). Balanced accuracy
    is NaN for a task without both classes (``evaluate_sd``)."""
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return sum(xs) / len(xs) if xs else None


def evaluate_sd(
    detector: SuccessDetector, data: LabeledSet, threshold: float = 0.5, bins: int = 10
) -> dict[str, dict[str, Any]]:
    """Per-task accuracy, balanced accuracy, precision, recall, ECE, confusion counts. A
    rate whose class is missing from ``data`` (recall without positives, say) is NaN, and
    so is balanced accuracy unless the task has examples of both classes."""
    probs = detector.score(data.images) if len(data) else np.zeros((0, len(detector.tasks)))
    out: dict[str, dict[str, Any]] = {}
    for j, task in enumerate(data.tasks):
        k = detector.task_index(task)
        m = data.mask[:, j]
        y = data.labels[m, j] > 0.5
        p = probs[m, k]
        pred = p >= threshold
        tp, tn = int((pred & y).sum()), int((~pred & ~y).sum())
        fp, fn = int((pred & ~y).sum()), int((~pred & y).sum())
        n = len(y)
        tpr = tp / (tp + fn) if tp + fn else float("nan")
        tnr = tn / (tn + fp) if tn + fp else float("nan")
        ece = 0.0
        if n:
            edges = np.linspace(0, 1, bins + 1)
            for lo, hi in itertools.pairwise(edges):
                sel = (p >= lo) & ((p < hi) | (hi == 1.0))
                if sel.any():
                    ece += sel.mean() * abs(p[sel].mean() - y[sel].mean())
        out[task] = {
            "n": n,
            "positives": int(y.sum()),
            "accuracy": (tp + tn) / n if n else float("nan"),
            # undefined unless both classes are there: the mean of the one rate there is
            # scored a detector that never says "success" 1.0 on a task with no positives
            "balanced_accuracy": (tpr + tnr) / 2 if tp + fn and tn + fp else float("nan"),
            "precision": tp / (tp + fp) if tp + fp else float("nan"),
            "recall": tpr,
            "ece": float(ece),
            "confusion": {"tp": tp, "fp": fp, "tn": tn, "fn": fn},
        }
    return out
