"""Gymnasium environment ``mtopt/Robot-v0``: any ``Robot`` (a real arm, another
simulator) as a Gymnasium env, rewarded by a success detector.

``gym.make("mtopt/Robot-v0", robot_factory="my_arms:make_arm", task="lift-any",
success_detector="runs/cell-a/sd")`` makes the robot with a factory, as ``mtopt run``
does (``mtopt.robots.factory``); ``robot=`` takes one you made (the env then leaves it
open on ``close()``: it is yours). Observations, actions and episode ends are those of
``mtopt/SimCell-v0`` (``mtopt.sim.env``; the state's bounds are the Robot protocol's
plausible ranges, ``STATE_RANGES``, wider than the simulated cell's), and what the robot gives back (observations,
step results, the final image, ``prepare_for_task``'s answer) is checked against the Robot
protocol as collection checks it (``RobotContractError``, naming the robot).

Reward (final step only, 0/1): the success detector's verdict on the outcome image
(``info["sd_probability"]`` at or above ``threshold``, as LogReplay gives rewards), as the pipeline's rewards are. Without
a success detector, the robot's own ground truth (``scene_state()``, the simulated
cell's); a robot with neither is refused. With both, ``info["success_truth"]`` gives the
ground truth beside the detector's verdict (``info["success"]``).

``reset()`` sets up a new scene (``robot.reset_scene``, with a seed drawn from the env's
generator, or ``options={"scene_seed": S}``); ``options={"keep_scene": True}`` starts the
next episode from where the last one ended (``robot.start_episode`` only: a chain, as
collection chains tasks, and no scene reset for a real cell); ``options={"task": NAME}``
switches the task.
"""

from __future__ import annotations

import dataclasses
import weakref
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.envs.registration import EnvSpec

from mtopt.robots.action import ACTION_DIM, validate_action
from mtopt.robots.base import STATE_DIM, STATE_RANGES, Observation, Robot
from mtopt.robots.factory import (
    check_factory_spec,
    gripper_status_mismatch,
    make_robot,
    missing_methods,
)
from mtopt.sim.cell import SimConfig
from mtopt.sim.env import (
    _checked_registry,
    _checked_seed,
    env_pose,
    reset_options,
    task_in,
    task_possible,
)
from mtopt.sim.runner import (
    checked_act,
    checked_final_image,
    checked_observation,
    checked_prepare,
)
from mtopt.sim.seeds import random_scene_seed
from mtopt.tasks.registry import DEFAULT_REGISTRY, TaskRegistry, TaskSpec

ROBOT_STATE_LOW = np.array([lo for lo, _ in STATE_RANGES], np.float32)
ROBOT_STATE_HIGH = np.array([hi for _, hi in STATE_RANGES], np.float32)
"""The env's state bounds: the Robot protocol's plausible ranges (``STATE_RANGES``), which
every observation is checked against, wider than the simulated cell's (``mtopt.sim.env``):
a taller arm's height is reported, not cut at 1 m."""


def robot_env_obs(o: Observation) -> dict[str, np.ndarray]:
    """The env's observation of a checked ``o``: a copy of its image (a camera driver
    that fills one frame buffer would change observations already returned) and its
    state as float32."""
    state = np.clip(o.state, ROBOT_STATE_LOW, ROBOT_STATE_HIGH).astype(np.float32)
    return {"image": np.array(o.image, copy=True), "state": state}


class _NotInSpec(str):
    """What an env's spec keeps in place of a keyword it cannot carry (a robot, a loaded
    success detector): making the env again from the spec then fails with a clear error
    instead of making an env without them (ground-truth rewards instead of the
    detector's, or no robot)."""


_DRIVEN: dict[int, weakref.ReferenceType[RobotEnv]] = {}
"""The open envs made with ``robot=``, by ``id`` of the robot they drive."""


def _check_not_driven(robot: object) -> None:
    """Refuse a robot that another open ``RobotEnv`` drives: two envs would reset and
    move one arm in turn, each acting in the other's scene. ``gym.make_vec(...,
    robot=...)`` in sync mode passes the same robot to every sub-env and stops here (an
    async vector env forks a copy of it into each worker, which no check in one process
    sees: give it ``robot_factory``)."""
    for key in [k for k, r in _DRIVEN.items() if r() is None]:  # envs dropped unclosed
        del _DRIVEN[key]
    ref = _DRIVEN.get(id(robot))
    other = None if ref is None else ref()
    if other is not None and not other._closed and other._robot is robot:
        raise ValueError(
            f"robot {getattr(robot, 'robot_id', robot)!r} is already driven by another open "
            "Robot-v0 env: close that env first, or give each env its own robot (a vector "
            "env: robot_factory='MODULE:NAME', which makes one robot per sub-env)"
        )


class RobotEnv(gym.Env[dict[str, np.ndarray], np.ndarray]):
    metadata = {"render_modes": []}  # noqa: RUF012
    render_mode = None  # (a robot's camera is its observation: nothing more to render)
    _spec: EnvSpec | None = None

    def __init__(
        self,
        robot: Robot | None = None,
        *,
        robot_factory: str = "",
        task: str | TaskSpec = "lift-any",
        success_detector: str | Path | Any = None,
        threshold: float = 0.5,
        max_steps: int | None = None,
        seed: int | None = None,
        registry: TaskRegistry | None = None,
        sim: SimConfig | None = None,
        robot_id: str = "gym",
        render_mode: str | None = None,
    ):
        """``robot``, or ``robot_factory`` (``MODULE:NAME``, called as
        ``NAME(robot_id=..., seed=..., sim=...)`` with ``sim``, default ``SimConfig()``:
        its ``image_size`` is the size asked for). ``success_detector``: a weights
        folder (``RUN/sd``, ``mtopt sd train``'s) or a loaded ``SuccessDetector`` that
        knows ``task``. ``max_steps``: default ``sim.max_steps`` (without ``sim``, a
        ``SimRobot``'s own cell's). With ``sim``, a robot that declares a
        ``gripper_status`` other than ``sim.gripper_status`` is refused."""
        for name, given in (("robot", robot), ("success_detector", success_detector)):
            if isinstance(given, _NotInSpec):  # gym.make(env.spec) of an env made with one
                raise ValueError(
                    f"this env's spec cannot make it again: it was made with {name}= {given}, "
                    "an object a spec does not carry. Make it with robot_factory='MODULE:NAME' "
                    "and success_detector=FOLDER (keywords a spec keeps), or pass the "
                    f"{name} again: gym.make(env.spec, {name}=...)"
                )
        if render_mode is not None:  # (gym.make passes the one asked for)
            raise ValueError(
                f"render_mode must be None for Robot-v0 (the observation's image is the "
                f"robot's camera), got {render_mode!r}"
            )
        self.registry = DEFAULT_REGISTRY if registry is None else _checked_registry(registry)
        self.task = task_in(self.registry, task)
        self._initial_seed = _checked_seed(seed)
        if (
            isinstance(threshold, bool)
            or not isinstance(threshold, int | float | np.integer | np.floating)
            or not 0.0 < threshold < 1.0
        ):
            raise ValueError(f"threshold must be a number in (0, 1), got {threshold!r}")
        self.threshold = float(threshold)
        if sim is not None and not isinstance(sim, SimConfig):
            raise TypeError(f"sim must be a SimConfig, got {type(sim).__name__}")
        own = getattr(robot, "config", None)  # a SimRobot's cell, when no sim is given
        cell = (sim or (own if isinstance(own, SimConfig) else SimConfig())).validate()
        steps = cell.max_steps if max_steps is None else max_steps
        if isinstance(steps, bool) or not isinstance(steps, int | np.integer):
            raise ValueError(f"max_steps must be an integer, got {steps!r}")  # 2.5 ran 2
        if steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {steps}")
        self.max_steps = int(steps)
        if (robot is None) == (not robot_factory):
            raise ValueError("give either robot= (a Robot) or robot_factory='MODULE:NAME'")
        self._owns_robot = robot is None
        if robot is None:
            check_factory_spec(robot_factory)
            robot = make_robot(  # its gripper status checked against a sim= given
                robot_factory, cell, robot_id, self._initial_seed or 0, sim is not None
            )
        else:
            _check_not_driven(robot)
            missing = missing_methods(robot)
            size = getattr(robot, "image_size", None)
            if missing or isinstance(size, bool) or not isinstance(size, int | np.integer):
                what = ", ".join(missing) if missing else "an int image_size"
                raise TypeError(
                    f"robot= must implement mtopt.robots.base.Robot: a {type(robot).__name__} "
                    f"lacks {what}"
                )
        self._robot: Robot = robot
        if sim is not None and (status := gripper_status_mismatch(robot, cell)) is not None:
            raise ValueError(f"robot {robot.robot_id} {status}")
        truth = getattr(robot, "scene_state", None)
        self._truth = truth if callable(truth) else None
        try:
            self._sd = self._load_sd(success_detector)
            self._sd_index = None if self._sd is None else self._sd_task_index(self.task.name)
        except BaseException:  # a robot the env made is not left connected
            self._release()
            raise
        side = robot.image_size
        self.observation_space = spaces.Dict(  # type: ignore[assignment]
            {
                "image": spaces.Box(0, 255, (side, side, 3), np.uint8),
                "state": spaces.Box(ROBOT_STATE_LOW, ROBOT_STATE_HIGH, (STATE_DIM,), np.float32),
            }
        )
        self.action_space = spaces.Box(-1.0, 1.0, (ACTION_DIM,), np.float32)
        self._steps = 0
        self._last: Observation | None = None
        self._done = False
        self._closed = False
        if not self._owns_robot:  # set up: from here on this env drives it
            _DRIVEN[id(robot)] = weakref.ref(self)

    def _release(self) -> None:
        if self._owns_robot:
            self._robot.close()
        elif (ref := _DRIVEN.get(id(self._robot))) is not None and ref() is self:
            del _DRIVEN[id(self._robot)]  # another env may drive it now

    def _load_sd(self, sd: Any) -> Any:
        from mtopt.success.network import SuccessDetector

        if sd is None:
            if self._truth is None:
                raise ValueError(
                    f"robot {self._robot.robot_id} has no ground truth (scene_state): give "
                    "success_detector= (a weights folder such as RUN/sd) to judge its episodes"
                )
            return None
        if not isinstance(sd, SuccessDetector):
            sd = SuccessDetector.load(sd)
        import mtopt

        if mtopt._forked_child:
            # an AsyncVectorEnv worker forked from a process that ran PyTorch: its thread
            # pool, copied mid-state, hung the first episode's scoring for good
            import torch

            torch.set_num_threads(1)
        size = sd.net.cfg.image_size
        if size != self._robot.image_size:
            raise ValueError(
                f"the success detector judges {size}-pixel images; robot "
                f"{self._robot.robot_id} gives {self._robot.image_size}"
            )
        return sd

    def _sd_task_index(self, task: str) -> int:
        assert self._sd is not None
        if task not in self._sd.tasks:
            raise ValueError(
                f"the success detector has no output for {task!r} (it knows "
                f"{', '.join(self._sd.tasks)})"
            )
        return int(self._sd.tasks.index(task))

    @property
    def spec(self) -> EnvSpec | None:
        return self._spec

    @spec.setter
    def spec(self, value: EnvSpec | None) -> None:
        # as SimCellEnv: the env ends its episodes at max_steps itself
        if value is not None:
            # gym.make keeps its keywords in the spec, and wrappers deep-copy the spec on
            # every read: a robot (a connection to an arm) or a loaded detector is no
            # keyword to copy, nor to re-make an env from
            kwargs = {
                k: _NotInSpec(f"a {type(v).__name__}")
                if (k == "robot" and v is not None)
                or (k == "success_detector" and not isinstance(v, (str, Path, type(None))))
                else v
                for k, v in value.kwargs.items()
            }
            steps = self.max_steps if value.max_episode_steps is None else value.max_episode_steps
            value = dataclasses.replace(value, kwargs=kwargs, max_episode_steps=steps)
        self._spec = value

    @property
    def robot(self) -> Robot:
        """The robot the env drives."""
        return self._robot

    def render(self) -> None:
        """Nothing to render (render_mode None): tools that call it get None, as from
        ``SimCellEnv`` without a render mode."""
        return None

    _to_obs = staticmethod(robot_env_obs)
    _pose = staticmethod(env_pose)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        task, chosen, rest = reset_options(options, self.registry, self.task, ("keep_scene",))
        keep = rest.get("keep_scene", False)
        seed = _checked_seed(seed)
        if not isinstance(keep, bool):
            raise ValueError(f"options['keep_scene'] must be True or False, got {keep!r}")
        if keep and chosen is not None:
            raise ValueError("options: keep_scene goes on from the scene; scene_seed sets one up")
        if keep and self._last is None:
            raise ValueError("options['keep_scene']: no scene yet (the first reset sets one up)")
        self._check_open()
        index = None if self._sd is None else self._sd_task_index(task.name)
        self.task, self._sd_index = task, index
        self._last = None  # a robot call that raises below leaves no episode to step on
        if seed is None:
            seed = self._initial_seed
        self._initial_seed = None  # the constructor's seed seeds the first reset only
        super().reset(seed=seed)
        drawn = random_scene_seed(self.np_random)  # drawn either way: the stream stays put
        info: dict[str, Any] = {"task": task.name}
        if not keep:
            scene_seed = drawn if chosen is None else int(chosen)
            self._robot.reset_scene(scene_seed)
            info["scene_seed"] = scene_seed
        self._robot.start_episode()
        ready = checked_prepare(self._robot, task.starts_holding, task.held_category)
        # after the set-up: a chain's lift puts back an object the last task held
        possible = task_possible(task, self._truth)
        if possible is not None:  # a robot without ground truth cannot tell
            info["possible"] = possible
        self._steps = 0
        self._done = False
        self._last = checked_observation(self._robot, self._robot.observe(), "observe()")
        info.update(prepared=ready, pose=self._pose(self._last))
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
        result = checked_act(self._robot, a, self._steps + 1)
        self._steps += 1
        self._last = result.observation
        terminated = bool(result.terminated)
        truncated = not terminated and self._steps >= self.max_steps
        info: dict[str, Any] = {"step": self._steps, "pose": self._pose(self._last)}
        reward = 0.0
        if terminated or truncated:
            self._done = True
            final = checked_final_image(self._robot)  # presents the outcome
            info["final_image"] = np.array(final, copy=True)  # (a driver's buffer)
            truth = None
            if self._truth is not None:
                truth = bool(self.task.succeeded(self._truth()))
            if self._sd is not None:
                assert self._sd_index is not None
                p = float(self._sd.score(final[None])[0, self._sd_index])
                success = p >= self.threshold  # as LogReplay's rewards
                info["sd_probability"] = p
                if truth is not None:
                    info["success_truth"] = truth
            else:
                assert truth is not None
                success = truth
            info["success"] = success
            reward = float(success)
        return self._to_obs(self._last), reward, terminated, truncated, info

    def close(self) -> None:
        if not self._closed:
            self._release()
        self._closed = True

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the env is closed: make a new one")

    def __getstate__(self) -> None:
        # a copy would share the robot (a connection to an arm)
        raise TypeError("a RobotEnv drives a robot and cannot be copied or pickled: make another")
