"""Adapter from the episode store to LogReplay's inputs."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from mtopt.replay.buffers import ReplayEpisode
from mtopt.store.schema import Episode


def to_replay(ep: Episode) -> tuple[ReplayEpisode, np.ndarray]:
    """(ReplayEpisode, final image) for a stored episode."""
    return ReplayEpisode(ep.episode_id, ep.task, ep.images, ep.states, ep.actions), ep.final_image


def replay_items(episodes: Iterable[Episode]) -> list[tuple[ReplayEpisode, np.ndarray]]:
    return [to_replay(e) for e in episodes if e.num_steps >= 1]
