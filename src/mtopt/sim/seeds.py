"""Scene seeds: which ones evaluation keeps for itself and which ones collection draws.

A scene is a pure function of its seed (``SimCell.reset_scene``). Evaluation scenes are
held out by seed as well as by object: every seed below ``COLLECTION_SEED_LOW`` is
reserved for evaluation and tests, and every scene that collection, success-detector
staging or the Gymnasium env picks at random comes from ``[COLLECTION_SEED_LOW,
SEED_HIGH)``. (Until 2026-12-05 collection drew from the whole 31-bit range, which holds
the evaluation seeds: about one overlap per long run.)
"""

from __future__ import annotations

import numpy as np

SEED_HIGH = 2**31 - 1
"""Exclusive upper bound of every scene seed (PyBullet-independent; numpy takes 63 bits)."""
COLLECTION_SEED_LOW = 2**28
"""Seeds below this are reserved for evaluation and tests; random scenes start here."""
EVAL_SEEDS = 500
"""Evaluation seeds 0..499 name disjoint blocks of held-out scenes
(``mtopt.eval.evaluate.eval_scene_seed``); a run evaluates on its seed modulo this."""
EVAL_MAX_TASKS = 100
"""Tasks per evaluation at most (each task's scenes are a block of its own)."""
EVAL_MAX_EPISODES = 1000
"""Episodes per task and evaluation at most (more would reuse the next task's scenes)."""


def random_scene_seed(rng: np.random.Generator) -> int:
    """A scene seed for collection or staging, never one of the reserved evaluation seeds."""
    return int(rng.integers(COLLECTION_SEED_LOW, SEED_HIGH))


def is_reserved_seed(seed: int) -> bool:
    """True for the seeds kept for evaluation and tests."""
    return 0 <= seed < COLLECTION_SEED_LOW
