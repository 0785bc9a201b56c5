"""Saving matplotlib figures: laid out, written atomically, closed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mtopt._io import atomic_write


def save_figure(fig: Any, out: str | Path, dpi: int = 100) -> Path:
    """Lay out ``fig``, write it as a PNG to ``out`` atomically (a reader never sees half
    an image; the folder is created), close it, and return ``out``."""
    import matplotlib.pyplot as plt

    try:
        fig.tight_layout()
        return atomic_write(out, lambda f: fig.savefig(f, format="png", dpi=dpi))
    finally:
        plt.close(fig)
