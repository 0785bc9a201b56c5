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


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM wait: a stop that arrives there is delivered
    (to whatever handles it outside: KeyboardInterrupt, or the default) when the block
    ends, so that what the block changes is changed whole. The learner's update (Adam on
    every parameter, the target networks, the acting average) runs in one: a stop in the
    middle of it used to checkpoint some parameters stepped and others not. Outside the
    main thread this does nothing (signals are handled there)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        pending.append(signum)

    old = {}
    for sig in _STOP_SIGNALS:
        current = signal.getsignal(sig)
        if current is not signal.SIG_IGN:  # an ignored signal stays ignored
            old[sig] = signal.signal(sig, hold)
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        if pending:
            signal.raise_signal(pending[0])
