"""mtopt: MT-Opt, continuous multi-task robotic reinforcement learning (QT-Opt style).

Importing ``mtopt`` registers the Gymnasium environments ``mtopt/SimCell-v0`` (the
simulated cell) and ``mtopt/Robot-v0`` (any ``Robot``, rewarded by a success detector).
"""

from __future__ import annotations

import os as _os

__version__ = "0.1.0"

ENV_ID = "mtopt/SimCell-v0"
ROBOT_ENV_ID = "mtopt/Robot-v0"


def _register_envs() -> None:
    import gymnasium

    if ENV_ID not in gymnasium.registry:
        gymnasium.register(id=ENV_ID, entry_point="mtopt.sim.env:SimCellEnv")
    if ROBOT_ENV_ID not in gymnasium.registry:  # any Robot (a real arm), SD rewards
        gymnasium.register(id=ROBOT_ENV_ID, entry_point="mtopt.robots.env:RobotEnv")


_register_envs()


def _mark_forked_child() -> None:
    global _forked_child
    _forked_child = True


_forked_child = False
"""True in a process forked from one that imported mtopt (a Gymnasium ``AsyncVectorEnv``
worker, a multiprocessing pool): PyTorch's thread pool, once used by the parent, hangs
the child's first convolution there, so a detector scoring in such a child runs on one
thread (``mtopt.robots.env``)."""
if hasattr(_os, "register_at_fork"):
    _os.register_at_fork(after_in_child=_mark_forked_child)
