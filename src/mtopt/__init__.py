"""mtopt: MT-Opt, continuous multi-task robotic reinforcement learning (QT-Opt style).

Importing ``mtopt`` registers the Gymnasium environment ``mtopt/SimCell-v0``.
"""

from __future__ import annotations

__version__ = "0.1.0"

ENV_ID = "mtopt/SimCell-v0"


def _register_envs() -> None:
    import gymnasium

    if ENV_ID not in gymnasium.registry:
        gymnasium.register(id=ENV_ID, entry_point="mtopt.sim.env:SimCellEnv")


_register_envs()
