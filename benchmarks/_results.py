"""The end of every benchmark: write its JSON result atomically, then show it.

A benchmark killed while writing leaves the previous result file intact, never half of
a new one (``mtopt._io.atomic_write``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mtopt._io import atomic_write_bytes


def write_result(
    path: str | Path,
    out: dict[str, Any],
    show: Any = None,
    allow_nan: bool = True,
    echo: bool = True,
) -> Path:
    """Write ``out`` to ``path`` as indented JSON (parent folders made as needed) and,
    with ``echo``, print ``show`` (default: all of ``out``). ``allow_nan=False`` refuses
    NaN and infinity (a ValueError, and the old file stays)."""
    text = json.dumps(out, indent=2, allow_nan=allow_nan, default=str) + "\n"
    written = atomic_write_bytes(path, text.encode())
    if echo:
        print(json.dumps(out if show is None else show, indent=2, default=str))
    return written
