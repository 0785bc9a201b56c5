"""Adapter from the episode store to LogReplay's inputs."""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np

from mtopt.qtopt.networks import QNetConfig, q_state
from mtopt.replay.buffers import ReplayEpisode
from mtopt.store.schema import Episode

log = logging.getLogger(__name__)


def to_replay(ep: Episode, qnet: QNetConfig | None = None) -> tuple[ReplayEpisode, np.ndarray]:
    """(ReplayEpisode, final image) for a stored episode. Its states are the state
    features ``qnet`` takes (``q_state``: with ``gripper_xy`` the episode's poses are
    appended; an episode without poses then raises ValueError)."""
    states = ep.states if qnet is None else q_state(ep.states, ep.poses, qnet)
    replay_ep = ReplayEpisode(
        ep.episode_id, ep.task, ep.images, states, ep.actions, ep.gt_success_by_task
    )
    return replay_ep, ep.final_image


def replay_items(
    episodes: Iterable[Episode], qnet: QNetConfig | None = None
) -> list[tuple[ReplayEpisode, np.ndarray]]:
    """Replay items of the episodes with at least one step. With a ``qnet`` that takes the
    gripper's position, episodes stored without poses (older shards, robots without
    proprioception) are left out and counted in a warning."""
    out: list[tuple[ReplayEpisode, np.ndarray]] = []
    skipped = 0
    misfit = 0
    for e in episodes:
        if e.num_steps < 1:
            continue
        if qnet is not None and qnet.gripper_xy and e.poses is None:
            skipped += 1
            continue
        if qnet is not None and (
            e.images.shape[1:] != (qnet.image_size, qnet.image_size, 3)
            or not np.isfinite(e.states).all()
            or (qnet.gripper_xy and e.poses is not None and not np.isfinite(e.poses).all())
        ):
            # another camera size, NaN from a driver: one robot's bad episodes must not
            # stop ingestion (and with it the run), nor reach the learner
            misfit += 1
            continue
        out.append(to_replay(e, qnet))
    if skipped:
        log.warning(
            "left out %d episodes without poses: the Q-network takes the gripper's x, y", skipped
        )
    if misfit:
        assert qnet is not None  # counted only against a Q-network's inputs
        log.warning(
            "left out %d episodes whose images are not %dx%d pixels or whose states or "
            "poses are not finite",
            misfit,
            qnet.image_size,
            qnet.image_size,
        )
    return out
