"""Small measuring helpers shared by the qtopt benchmarks (timing, FLOP counting)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

from torch.utils.flop_counter import FlopCounterMode


def time_call(
    fn: Callable[[], object], min_time: float = 0.5, warmup: int = 2, stat: str = "min"
) -> float:
    """Seconds per call of ``fn``: the best ("min", least disturbed by other processes on a
    shared machine; the default), the "median" or the "mean" (throughput: for calls that
    alternate between fast and waiting, such as a consumer of a background producer) of
    repeated calls over ``min_time``."""
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
        if time.perf_counter() - start >= min_time and len(samples) >= 3:
            break
    if stat == "mean":
        return statistics.fmean(samples)
    return min(samples) if stat == "min" else statistics.median(samples)


def time_interleaved(
    fns: dict[str, Callable[[], object]], min_time: float = 0.5, warmup: int = 2, repeats: int = 3
) -> dict[str, float]:
    """Best seconds per call of each function, measured round-robin: every round calls
    each function ``repeats`` times, until each has run ``min_time`` in total and at least
    3 times. Slow phases of a shared machine then hit all functions alike, so the ratios
    between them hold even when the absolute times drift."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    while any(sum(v) < min_time or len(v) < 3 for v in samples.values()):
        for name, fn in fns.items():
            for _ in range(repeats):
                t0 = time.perf_counter()
                fn()
                samples[name].append(time.perf_counter() - t0)
    return {k: min(v) for k, v in samples.items()}


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs PyTorch's flop counter attributes to one call of ``fn`` (matmuls and convs)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())
