"""Gymnasium environment ``mtopt/SimCell-v0`` (registered on ``import mtopt``).

Observation: ``{"image": uint8 (H, W, 3), "state": float32 [gripper_status, gripper_height]}``
(gripper status: the measured finger closure, 0 open, 1 closed on nothing; see ``SimConfig``).
Action: ``Box(-1, 1, (6,))`` with the layout of ``mtopt.robots.action``.
Info: ``"pose"``, the gripper's x, y, z (m) and yaw (rad) in the robot frame: the
measured position and the commanded yaw, wrapped to [-pi, pi] (a Q-network with
``QNetConfig.gripper_xy`` takes x, y).
Reward: the simulator's ground-truth success (0/1) of ``task``, given on the final step
only, judged as mtopt's evaluation judges it: the episode ends the way every stored
episode does, with the robot presenting the outcome (``Robot.final_image``: a held object
is lifted to a fixed pose), and the ground truth is read after that; ``info["final_image"]``
is the outcome image a success detector would judge. It is there for evaluation and for
users of the env; the mtopt training pipeline never uses it: its rewards come from the
learned success detector. After the final step, call ``reset()``; ``step()`` raises.
``reset(options={"task": NAME})`` switches the task (for this and later episodes);
``reset(options={"scene_seed": S})`` sets up scene ``S`` (a stored episode's ``seed``, or
an evaluation scene of ``mtopt.eval.evaluate.eval_scene_seed``: the same scene and start
pose mtopt's evaluation uses) instead of one drawn from the env's generator, which draws
at or above 2^28 and never meets an evaluation scene (``mtopt.sim.seeds``). Scenes
changed on 2026-12-05 (the cell's ground-truth fixes, ``CELL_VERSION`` 2 in the stored
``scene`` descriptions): a seed from before gives another fixture layout now.

A trained policy acts in the env through ``env_observation(obs, info)`` (the pose is in
``info``): ``policy, sim, registry = mtopt.policies.cem_policy.load_policy(folder)``,
``policy.reset(task, rng)``, then ``policy.act(env_observation(obs, info))`` each step.

Episode ends: ``terminated`` when the policy sends TERMINATE; ``truncated`` at
``max_steps``. Both are the episode's end in the same sense: the outcome is presented and
judged, and no reward can follow, so for value targets treat either as terminal (mtopt's
learner does; a library that bootstraps on ``truncated`` would add a value that cannot
be had). ``env.spec.max_episode_steps`` says ``max_steps`` (for wrappers such as
``TimeAwareObservation``; the env needs no TimeLimit). Register no shorter
``max_episode_steps`` than ``max_steps``: a cut from outside
ends the episode before its outcome is presented and judged (no reward, no ``success``).
Gymnasium makes a spec's ``max_episode_steps`` a ``TimeLimit``: to re-make the env from
``env.spec`` with another ``max_steps``, pass ``max_episode_steps`` as well. A longer
``max_episode_steps`` never lengthens an episode (the env cannot see the ``TimeLimit``
that reports it in ``env.spec``): pass ``max_steps``.
Info at reset: ``scene_seed``, ``task``, ``prepared`` (False: the scene could not be set up
for the task, e.g. no object could be put in the gripper for a placing task; the episode
runs anyway; mtopt's evaluation replaces such a scene with the next one), ``possible``
(False: the scene holds nothing the task could succeed with, such as no ball for
lift-ball; evaluation replaces those too), ``pose``. At each step: ``step``, ``pose``; at
the last one also ``success`` (bool) and ``final_image``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.envs.registration import EnvSpec

from mtopt.robots.action import ACTION_DIM, validate_action
from mtopt.robots.base import STATE_DIM, Observation
from mtopt.robots.sim_robot import SimRobot
from mtopt.sim.cell import NOT_COPYABLE, SimConfig
from mtopt.sim.runner import checked_prepare
from mtopt.sim.seeds import random_scene_seed
from mtopt.tasks.registry import DEFAULT_REGISTRY, TaskRegistry, TaskSpec

STATE_LOW = np.array([0.0, -0.1], np.float32)
STATE_HIGH = np.array([1.0, 1.0], np.float32)
"""The env's state bounds: gripper status in [0, 1], height in [-0.1, 1] m."""


def env_obs(o: Observation) -> dict[str, np.ndarray]:
    """The env's observation of ``o``: the image, and the state clipped to its bounds."""
    state = np.clip(o.state, STATE_LOW, STATE_HIGH).astype(np.float32)
    return {"image": o.image, "state": state}


def env_pose(o: Observation) -> np.ndarray:
    """``info["pose"]``: the gripper's x, y, z, yaw, or NaNs for a robot that gives none."""
    return np.array(o.pose if o.pose is not None else np.full(4, np.nan), np.float32)


def reset_options(
    options: Any, registry: TaskRegistry, task: TaskSpec, extra: tuple[str, ...] = ()
) -> tuple[TaskSpec, int | None, dict[str, Any]]:
    """A reset's ``options`` checked: the task (``task`` without one), the scene seed
    (None without one) and the ``extra`` options an env takes besides, before the env
    changes anything (a clear error for an unknown option or a bad scene seed)."""
    if options is not None and not isinstance(options, dict):
        raise TypeError(f"options must be a dict such as {{'task': 'lift-any'}}, got {options!r}")
    options = dict(options or {})
    chosen_task = task_in(registry, options.pop("task")) if "task" in options else task
    chosen = options.pop("scene_seed", None)
    rest = {k: options.pop(k) for k in extra if k in options}
    if options:
        valid = sorted(["scene_seed", "task", *extra])
        raise ValueError(f"unknown reset options {sorted(options)}; valid: {valid}")
    if chosen is not None and (
        isinstance(chosen, bool)
        or not isinstance(chosen, (int, np.integer))
        or not 0 <= chosen < 2**63  # the store's int64 seed column holds it
    ):
        raise ValueError(f"options['scene_seed'] must be an int in [0, 2**63), got {chosen!r}")
    return chosen_task, None if chosen is None else int(chosen), rest


def task_in(registry: TaskRegistry, task: Any) -> TaskSpec:
    """The env's task from a task name or a ``TaskSpec`` (what ``env.task`` and a vector
    env's ``get_attr("task")`` give): one the registry holds under its name, else a
    clear error (a name lists the valid ones)."""
    if isinstance(task, TaskSpec):
        own = registry.get(task.name)
        if own != task:
            raise ValueError(
                f"task {task.name!r}: this TaskSpec is not the one the env's registry holds "
                "under that name; pass the registry that has it (registry=)"
            )
        return own
    if not isinstance(task, str):
        raise TypeError(f"task must be a task name (str) or a TaskSpec, got {task!r}")
    return registry.get(task)  # clear error listing valid tasks


def task_possible(task: TaskSpec, scene_state: Any) -> bool | None:
    """``info["possible"]``: whether the scene, set up for ``task``, holds what it needs (a
    lift task: an object of its category and size, released, in the right bin;
    ``TaskSpec.possible``), from ``scene_state`` (a robot's ``scene_state`` method); None
    where the robot reports no ground truth."""
    return task.possible(scene_state()) if callable(scene_state) else None


class SimCellEnv(gym.Env[dict[str, np.ndarray], np.ndarray]):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 4}  # noqa: RUF012
    _spec: EnvSpec | None = None

    def __init__(
        self,
        task: str | TaskSpec = "lift-any",
        image_size: int | None = None,
        max_steps: int | None = None,
        seed: int | None = None,
        object_split: str | None = None,
        randomize: bool | None = None,
        num_objects: int | None = None,
        gripper_status: str | None = None,
        gripper_settle_substeps: int | None = None,
        move_from: str | None = None,
        spawn: str | None = None,
        render_mode: str | None = None,
        registry: TaskRegistry | None = None,
        sim: SimConfig | None = None,
    ):
        """The cell's keywords (``image_size`` to ``spawn``) are ``SimConfig`` fields; one
        left out (None) takes ``SimConfig``'s default (64 pixels, 15 steps, "train"
        objects, no randomization, 4 objects, ...). ``sim=`` gives the whole cell instead
        (a trained policy's, from ``load_policy``); it cannot be combined with them."""
        self.registry = DEFAULT_REGISTRY if registry is None else _checked_registry(registry)
        self.task = task_in(self.registry, task)
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.render_mode = render_mode
        keywords = {
            "image_size": image_size,
            "max_steps": max_steps,
            "object_split": object_split,
            "randomize": randomize,
            "num_objects": num_objects,
            "gripper_status": gripper_status,
            "gripper_settle_substeps": gripper_settle_substeps,
            "move_from": move_from,
            "spawn": spawn,
        }
        cell = {k: v for k, v in keywords.items() if v is not None}
        if sim is not None:  # a trained policy's whole cell (load_policy's SimConfig)
            if not isinstance(sim, SimConfig):
                raise TypeError(f"sim must be a SimConfig, got {type(sim).__name__}")
            if cell:  # even one equal to the default: it would be ignored
                raise ValueError(
                    f"give the cell either as sim= or as keywords, not both: {sorted(cell)} "
                    "(dataclasses.replace(sim, ...) changes a SimConfig)"
                )
            self.config = sim.validate()
        else:
            self.config = SimConfig(**cell).validate()  # type: ignore[arg-type]
        image_size = self.config.image_size
        self.observation_space = spaces.Dict(  # type: ignore[assignment]
            {
                "image": spaces.Box(0, 255, (image_size, image_size, 3), np.uint8),
                "state": spaces.Box(
                    low=STATE_LOW,
                    high=STATE_HIGH,
                    shape=(STATE_DIM,),
                    dtype=np.float32,
                ),
            }
        )
        self.action_space = spaces.Box(-1.0, 1.0, (ACTION_DIM,), np.float32)
        # checked before the simulator connects: a bad seed holds no connection
        self._initial_seed = _checked_seed(seed)
        self._robot = SimRobot(self.config, robot_id="gym")
        self._steps = 0
        self._last: Observation | None = None
        self._done = False
        self._closed = False

    @property
    def spec(self) -> EnvSpec | None:
        return self._spec

    @spec.setter
    def spec(self, value: EnvSpec | None) -> None:
        # the env ends its episodes at max_steps itself, so gym.make adds no TimeLimit;
        # the spec still names the horizon, where wrappers (TimeAwareObservation) and
        # libraries look for it
        if value is not None and value.max_episode_steps is None:
            value = dataclasses.replace(value, max_episode_steps=self.config.max_steps)
        self._spec = value

    _to_obs = staticmethod(env_obs)
    _pose = staticmethod(env_pose)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        task, chosen, _ = reset_options(options, self.registry, self.task)
        seed = _checked_seed(seed)
        self._check_open()
        # after the options are checked: a reset that raised leaves the seed for the next
        self.task = task
        if seed is None:
            seed = self._initial_seed
        self._initial_seed = None  # the constructor's seed seeds the first reset only
        super().reset(seed=seed)
        drawn = random_scene_seed(self.np_random)  # drawn either way: the stream stays put
        scene_seed = drawn if chosen is None else int(chosen)
        self._last = None  # a reset that fails part-way leaves no episode to step in
        self._robot.reset_scene(scene_seed)
        self._robot.start_episode()
        ready = checked_prepare(self._robot, self.task.starts_holding, self.task.held_category)
        possible = task_possible(self.task, self._robot.scene_state)
        self._steps = 0
        self._done = False
        self._last = self._robot.observe()
        info = {
            "scene_seed": scene_seed,
            "task": self.task.name,
            "prepared": ready,
            "possible": possible,
            "pose": self._pose(self._last),
        }
        return self._to_obs(self._last), info

    def step(
        self, action: np.ndarray
    ) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        self._check_open()
        if self._last is None:
            raise RuntimeError("call reset() before step()")
        if self._done:
            raise RuntimeError("the episode has ended (terminated or truncated): call reset()")
        a = validate_action(action)
        result = self._robot.act(a)
        self._steps += 1
        self._last = result.observation
        terminated = result.terminated
        truncated = not terminated and self._steps >= self.config.max_steps
        info: dict[str, Any] = {"step": self._steps, "pose": self._pose(self._last)}
        reward = 0.0
        if terminated or truncated:
            self._done = True
            info["final_image"] = self._robot.final_image()  # presents the outcome
            success = self.task.succeeded(self._robot.scene_state())
            reward = float(success)
            info["success"] = success
        return self._to_obs(self._last), reward, terminated, truncated, info

    def render(self) -> np.ndarray | None:
        self._check_open()
        if self.render_mode != "rgb_array":
            return None
        return self._robot.cell.render(max(256, self.config.image_size))

    @property
    def robot(self) -> SimRobot:
        """The underlying ``SimRobot`` (Robot protocol) for advanced use."""
        return self._robot

    def close(self) -> None:
        self._robot.close()
        self._closed = True

    def _check_open(self) -> None:
        if self._closed:  # (it was PyBullet's "Not connected to physics server")
            raise RuntimeError("the env is closed: make a new one")

    def __getstate__(self) -> None:
        # copy.copy would otherwise share the PyBullet connection (SimCell refuses deep
        # copies and pickling; a shallow copy never reaches it)
        raise TypeError(NOT_COPYABLE)


def env_observation(obs: dict[str, np.ndarray], info: dict[str, Any]) -> Observation:
    """The ``Observation`` a policy acts on (``Policy.act``, ``CEMPolicy``) from the env's
    ``obs`` and the ``info`` of the same ``reset`` or ``step``: the image, the state
    features and ``info["pose"]``, which a ``tuned`` network needs (the gripper's x, y).
    Give the info of the same call: a pose from an earlier step still gives actions, but
    for where the gripper was."""
    if "pose" not in info:
        raise KeyError("info has no 'pose': give the info of the reset() or step() that gave obs")
    pose = np.asarray(info["pose"], np.float32)
    return Observation(obs["image"], obs["state"], None if np.isnan(pose).all() else pose)


def _checked_registry(registry: Any) -> TaskRegistry:
    """``registry=`` as given, if it is a TaskRegistry with tasks (an empty one was
    swapped for the default without a word, a dict failed at the first reset)."""
    if not isinstance(registry, TaskRegistry):
        raise TypeError(f"registry must be a TaskRegistry, got {type(registry).__name__}")
    if len(registry) == 0:
        raise ValueError("registry holds no tasks")
    return registry


def _checked_seed(seed: Any) -> int | None:
    """``seed`` as gymnasium takes it (None or an int >= 0; a NumPy integer is taken too),
    checked before the env changes anything: a bad seed used to fail inside gymnasium
    after the task had switched and the constructor's seed was used up."""
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be None or an int >= 0, got {seed!r}")
    return int(seed)
