"""mtopt: MT-Opt, continuous multi-task robotic reinforcement learning (QT-Opt style).

Importing ``mtopt`` registers the Gymnasium environments ``mtopt/SimCell-v0`` (the
simulated cell) and ``mtopt/Robot-v0`` (any ``Robot``, rewarded by a success detector).
"""

from __future__ import annotations

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
