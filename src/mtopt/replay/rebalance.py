"""Batch re-balancing (MT-Opt): equal share per task, fixed success ratio within a task.

``allocate`` is the pure core: how many samples each (task, outcome) bucket contributes
to one batch, given which buckets have data. Tasks without any data give their share to
the others; a task with only successes (or only failures) fills its share from what it
has. Remainders are spread by a seeded RNG so that, in expectation, every task gets
exactly ``batch_size / n_tasks``.

``task_weights`` (``replay.task_shares``) departs from equal shares on purpose: a task of
weight w gets ``batch_size * w / W`` in expectation, W the sum of the weights of the tasks
with data (unnamed tasks weigh 1). MT-Opt's re-balancing is the default, all weights 1.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np


def weighted_shares(weights: np.ndarray, total: int, rng: np.random.Generator) -> np.ndarray:
    """Integers summing to ``total``, each ``total * w / sum(w)`` in expectation and off
    from it by less than 1: the floors, plus one more for as many tasks as the fractions
    add up to, chosen by systematic sampling (one uniform offset; a task is picked with
    probability exactly its fraction)."""
    exact = total * weights / weights.sum()
    shares = np.floor(exact).astype(np.int64)
    frac = exact - shares
    missing = total - int(shares.sum())
    if missing:
        # the points u, u + 1, ... fall in task i's stretch of the fractions' running sum
        # with probability frac[i] (< 1); rounding keeps exactly ``missing`` points
        edges = np.concatenate(([0.0], np.cumsum(frac)))
        edges *= missing / edges[-1]
        points = rng.random() + np.arange(missing)
        picked = np.searchsorted(edges, points, side="right") - 1
        shares[np.clip(picked, 0, len(shares) - 1)] += 1
    return shares


def allocate(
    sizes: Mapping[str, tuple[int, int]],
    batch_size: int,
    success_ratio: float,
    rng: np.random.Generator,
    task_weights: Mapping[str, float] | None = None,
) -> dict[str, tuple[int, int]]:
    """Split ``batch_size`` over tasks and outcomes.

    sizes: task -> (number of success items, number of failure items) available.
    success_ratio: target fraction of successes within each task's share, in [0, 1].
    task_weights: task -> relative share (> 0; tasks not named weigh 1); None or empty:
    equal shares.
    Returns task -> (n_success, n_failure) to sample (with replacement), summing to
    ``batch_size`` (0 for everything if no task has data).
    """
    if batch_size < 0:
        raise ValueError(f"batch_size must be >= 0, got {batch_size}")
    if not 0.0 <= success_ratio <= 1.0:
        raise ValueError(f"success_ratio must be in [0, 1], got {success_ratio}")
    tasks = [t for t, (s, f) in sizes.items() if s + f > 0]
    out = {t: (0, 0) for t in sizes}
    if not tasks or batch_size == 0:
        return out
    weights = [1.0 if not task_weights else float(task_weights.get(t, 1.0)) for t in tasks]
    if any(not (math.isfinite(w) and w > 0) for w in weights):
        raise ValueError(f"task weights must be finite and > 0, got {dict(task_weights or {})}")
    if len(set(weights)) == 1:  # equal shares (the same draws as before weights existed)
        base, extra = divmod(batch_size, len(tasks))
        shares = np.full(len(tasks), base, dtype=np.int64)
        if extra:
            shares[rng.choice(len(tasks), size=extra, replace=False)] += 1
    else:
        shares = weighted_shares(np.asarray(weights), batch_size, rng)
    for t, share in zip(tasks, shares, strict=True):
        n_s_avail, n_f_avail = sizes[t]
        if n_s_avail == 0:
            out[t] = (0, int(share))
        elif n_f_avail == 0:
            out[t] = (int(share), 0)
        else:
            exact = share * success_ratio
            n_s = int(np.floor(exact))
            if rng.random() < exact - n_s:  # unbiased rounding
                n_s += 1
            out[t] = (n_s, int(share) - n_s)
    return out


def uniform_allocate(
    sizes: Mapping[str, tuple[int, int]], batch_size: int, rng: np.random.Generator
) -> dict[str, tuple[int, int]]:
    """No re-balancing (ablation): sample items uniformly from everything available."""
    keys = [(t, o) for t, (s, f) in sizes.items() for o, n in ((0, s), (1, f)) if n > 0]
    out = {t: [0, 0] for t in sizes}
    if not keys or batch_size == 0:
        return {t: (0, 0) for t in sizes}
    weights = np.array([sizes[t][o] for t, o in keys], dtype=np.float64)
    counts = rng.multinomial(batch_size, weights / weights.sum())
    for (t, o), c in zip(keys, counts, strict=True):
        out[t][o] += int(c)
    return {t: (v[0], v[1]) for t, v in out.items()}
