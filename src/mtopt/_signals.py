"""Stop cleanly on SIGTERM as on Ctrl-C.

Long jobs (``mtopt run``, ``mtopt collect`` and its robot processes) treat SIGTERM like
Ctrl-C: they flush what they hold, checkpoint, and exit. A process started in the
background by a non-interactive shell ignores SIGINT, so SIGTERM is how schedulers,
``kill`` and process managers stop it.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """Within the block, SIGTERM (and SIGINT where it was ignored) raise KeyboardInterrupt.
    Outside the main thread this does nothing (Python only delivers signals there)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old_term = signal.signal(signal.SIGTERM, _raise_interrupt)
    old_int = signal.getsignal(signal.SIGINT)
    if old_int == signal.SIG_IGN:
        signal.signal(signal.SIGINT, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old_term)
        if old_int == signal.SIG_IGN:
            signal.signal(signal.SIGINT, old_int)


def install_for_process() -> None:
    """For a worker process that owns its lifetime: SIGTERM raises KeyboardInterrupt."""
    signal.signal(signal.SIGTERM, _raise_interrupt)
