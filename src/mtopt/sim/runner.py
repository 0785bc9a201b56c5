"""Run whole episodes of a policy on a robot (shared by the demo, collection and evaluation)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mtopt.policies.base import Policy
from mtopt.robots.action import validate_action
from mtopt.robots.base import Observation, Robot
from mtopt.tasks.registry import TaskSpec


@dataclass
class EpisodeRecord:
    """Everything observed in one episode. images/states have T+1 entries, actions T."""

    task: str
    images: list[np.ndarray] = field(default_factory=list)
    states: list[np.ndarray] = field(default_factory=list)
    poses: list[np.ndarray | None] = field(default_factory=list)
    """Proprioception (``Observation.pose``) per observation; None where the robot gave none."""
    actions: list[np.ndarray] = field(default_factory=list)
    final_image: np.ndarray | None = None
    terminated: bool = False
    prepared: bool = True

    @property
    def num_steps(self) -> int:
        return len(self.actions)

    def pose_array(self) -> np.ndarray | None:
        """(T+1, 4) float32 poses, or None unless every observation had one."""
        if not self.poses or any(p is None for p in self.poses):
            return None
        return np.stack([np.asarray(p, np.float32) for p in self.poses])


def run_episode(
    robot: Robot,
    policy: Policy,
    task: TaskSpec,
    rng: np.random.Generator,
    max_steps: int,
    skip_unprepared: bool = False,
) -> EpisodeRecord:
    """Start an episode from the robot's current scene, run ``policy`` until TERMINATE or
    ``max_steps``, and return the record (the scene is not reset here). With
    ``skip_unprepared``, a robot that cannot set up the task's initial condition
    (``prepare_for_task`` returns False) runs nothing: the record has ``prepared=False``,
    no steps and no final image."""
    robot.start_episode()
    prepared = robot.prepare_for_task(task.starts_holding)
    rec = EpisodeRecord(task=task.name, prepared=prepared)
    if skip_unprepared and not prepared:
        return rec
    obs: Observation = robot.observe()
    policy.reset(task.name, rng)
    rec.images.append(obs.image)
    rec.states.append(obs.state)
    rec.poses.append(obs.pose)
    for _ in range(max_steps):
        action = validate_action(policy.act(obs))  # a clear error, never a wild command
        result = robot.act(action)
        obs = result.observation
        rec.actions.append(action)
        rec.images.append(obs.image)
        rec.states.append(obs.state)
        rec.poses.append(obs.pose)
        if result.terminated:
            rec.terminated = True
            break
    rec.final_image = robot.final_image()
    return rec
