"""Image augmentation shared by the Q-learner and the success detector (pure functions)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_shift(images: torch.Tensor, pad: int, g: torch.Generator) -> torch.Tensor:
    """Translate each image by its own random offset in [-pad, pad] pixels on both axes.

    ``images`` is (N, H, W, C), any dtype, on any device (``g`` is a CPU generator).
    The border is replicated into the gap (as in DrQ's pad-and-crop, which QT-Opt's
    random crops resemble). Output: same shape and dtype. ``pad=0`` returns the input
    unchanged. Draws 2 * N integers from ``g``, column offsets first.
    """
    if pad < 0:
        raise ValueError(f"pad must be >= 0, got {pad}")
    if pad == 0:
        return images
    n, h, w, c = images.shape
    x = images.permute(0, 3, 1, 2)
    padded = F.pad(x.float(), (pad,) * 4, mode="replicate").to(images.dtype)
    dev = images.device
    ox = torch.randint(0, 2 * pad + 1, (n,), generator=g).to(dev)
    oy = torch.randint(0, 2 * pad + 1, (n,), generator=g).to(dev)
    rows = oy[:, None] + torch.arange(h, device=dev)[None]  # (N, H)
    cols = ox[:, None] + torch.arange(w, device=dev)[None]  # (N, W)
    out = padded[
        torch.arange(n, device=dev)[:, None, None, None],
        torch.arange(c, device=dev)[None, :, None, None],
        rows[:, None, :, None],
        cols[:, None, None, :],
    ]
    return out.permute(0, 2, 3, 1).contiguous()
