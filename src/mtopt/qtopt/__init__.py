"""QT-Opt core: Fig. 9 Q-network, CEM, Bellman targets (clipped double Q), learner."""

from mtopt.qtopt.bellman import TrainBatch, TransitionBatch, bellman_targets, compute_targets
from mtopt.qtopt.cem import CEMConfig, cem_argmax, cem_maximize
from mtopt.qtopt.learner import Learner, LearnerConfig, load_network
from mtopt.qtopt.networks import QNetConfig, QNetwork

__all__ = [
    "CEMConfig",
    "Learner",
    "LearnerConfig",
    "QNetConfig",
    "QNetwork",
    "TrainBatch",
    "TransitionBatch",
    "bellman_targets",
    "cem_argmax",
    "cem_maximize",
    "compute_targets",
    "load_network",
]
