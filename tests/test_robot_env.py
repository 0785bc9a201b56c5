"""``mtopt/Robot-v0``: any Robot as a Gymnasium env, rewarded by a success detector."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from tests.robot_factories import TRACKED, ArmWithoutTruth

import mtopt
from mtopt.robots.action import make_action
from mtopt.robots.base import Observation, StepResult
from mtopt.robots.env import RobotEnv
from mtopt.robots.sim_robot import SimRobot
from mtopt.sim.cell import SimConfig
from mtopt.sim.env import SimCellEnv
from mtopt.sim.runner import RobotContractError
from mtopt.success.network import SDNetConfig, SuccessDetector, SuccessNet
from mtopt.tasks import DEFAULT_REGISTRY, UnknownTaskError

TASKS = DEFAULT_REGISTRY.names


def actions(n: int, seed: int = 0) -> list[np.ndarray]:
    """Random moves, the gripper closing half way through, no TERMINATE."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        a = rng.uniform(-1, 1, 6).astype(np.float32)
        a[4] = 1.0 if i >= n // 2 else -1.0
        a[5] = -1.0
        out.append(a)
    return out


def published_sd(folder: Path, tasks: tuple[str, ...] = TASKS, size: int = 64) -> Path:
    import torch

    torch.manual_seed(0)
    SuccessDetector(SuccessNet(SDNetConfig(num_tasks=len(tasks), image_size=size)), tasks).publish(
        folder
    )
    return folder


def test_the_simulated_cell_as_a_robot_gives_what_simcell_gives() -> None:
    """The same robot, scene and actions: the same observations, final image and reward
    (the simulator's ground truth) as ``mtopt/SimCell-v0``."""
    ref = SimCellEnv(task="lift-any")
    env = RobotEnv(SimRobot(SimConfig(), robot_id="gym"), task="lift-any")
    try:
        for seed in (0, 1):
            (o1, i1), (o2, i2) = ref.reset(seed=seed), env.reset(seed=seed)
            assert i1["scene_seed"] == i2["scene_seed"] and i1["prepared"] == i2["prepared"]
            assert (o1["image"] == o2["image"]).all() and (o1["state"] == o2["state"]).all()
            for a in actions(ref.config.max_steps, seed):
                s1, s2 = ref.step(a), env.step(a)
                assert (s1[0]["image"] == s2[0]["image"]).all()
                assert s1[1:4] == s2[1:4]
                assert (s1[4]["pose"] == s2[4]["pose"]).all()
            assert s2[3] and s1[4]["success"] == s2[4]["success"] and "sd_probability" not in s2[4]
            assert (s1[4]["final_image"] == s2[4]["final_image"]).all()
    finally:
        ref.close()
        env.close()


def test_the_robot_env_passes_gymnasiums_checker() -> None:
    env = RobotEnv(SimRobot(SimConfig(max_steps=4), robot_id="gym"), max_steps=4)
    try:
        check_env(env, skip_render_check=True)
    finally:
        env.close()


def test_an_arm_without_ground_truth_is_rewarded_by_the_success_detector(tmp_path: Path) -> None:
    sd_dir = published_sd(tmp_path / "sd")
    env = gym.make(
        mtopt.ROBOT_ENV_ID,
        robot_factory="tests.robot_factories:make_arm",
        task="place-any",
        success_detector=str(sd_dir),
        seed=3,
    )
    try:
        assert env.spec is not None and env.spec.max_episode_steps == 15
        sd = SuccessDetector.load(sd_dir)
        obs, info = env.reset()
        assert obs["image"].shape == (64, 64, 3) and info["task"] == "place-any"
        assert "possible" not in info  # no ground truth: it cannot tell
        stop = np.zeros(6, np.float32)
        stop[5] = 1.0  # TERMINATE
        obs, reward, terminated, truncated, info = env.step(stop)
        assert terminated and not truncated and "success_truth" not in info  # none known
        p = float(sd.score(info["final_image"][None])[0, TASKS.index("place-any")])
        assert info["sd_probability"] == pytest.approx(p)
        assert reward == float(p >= 0.5) and info["success"] == (p >= 0.5)
        # a chain: the next task goes on from where this one ended, no new scene
        _, info = env.reset(options={"task": "lift-any", "keep_scene": True})
        assert "scene_seed" not in info and info["task"] == "lift-any"
        with pytest.raises(ValueError, match="keep_scene goes on"):
            env.reset(options={"keep_scene": True, "scene_seed": 5})
    finally:
        env.close()
    # a threshold of its own
    env = RobotEnv(
        robot_factory="tests.robot_factories:make_arm",
        success_detector=SuccessDetector.load(sd_dir),
        threshold=0.01,
    )
    try:
        env.reset(seed=0)
        *_, info = env.step(stop)
        assert info["success"] == (info["sd_probability"] >= 0.01)
    finally:
        env.close()


def test_with_both_the_detectors_verdict_is_the_reward_and_the_truth_is_beside_it(
    tmp_path: Path,
) -> None:
    env = RobotEnv(
        SimRobot(SimConfig(), robot_id="gym"), success_detector=published_sd(tmp_path / "sd")
    )
    try:
        env.reset(seed=0)
        for a in actions(15):
            *_, truncated, info = env.step(a)
        assert truncated and isinstance(info["success_truth"], bool) and "sd_probability" in info
    finally:
        env.close()


def test_gym_make_with_your_own_robot_keeps_the_spec_without_the_robot() -> None:
    robot = SimRobot(SimConfig(max_steps=6), robot_id="gym")
    env = gym.make(mtopt.ROBOT_ENV_ID, robot=robot)
    try:
        assert env.spec is not None and env.spec.max_episode_steps == 6  # the robot's cell
        # the spec cannot carry the robot: re-made from it, the env says so instead of
        # being made without it
        with pytest.raises(ValueError, match=r"made with robot= a SimRobot.*robot_factory="):
            gym.make(env.spec)
        env.reset(seed=0)
        for i, a in enumerate(actions(6)):
            *_, truncated, _ = env.step(a)
            assert truncated == (i == 5)
    finally:
        env.close()
    robot.observe()  # still open: the caller's
    robot.close()


def test_a_robot_is_driven_by_one_open_env_at_a_time() -> None:
    """Two envs on one robot would each act in the scene the other set up: refused,
    with ``gym.make_vec(..., robot=...)`` (the same robot to every sub-env); free again
    once the env driving it is closed."""
    robot = SimRobot(SimConfig(max_steps=4), robot_id="gym")
    try:
        env = gym.make(mtopt.ROBOT_ENV_ID, robot=robot)
        with pytest.raises(ValueError, match="already driven by another open Robot-v0 env"):
            gym.make(mtopt.ROBOT_ENV_ID, robot=robot)
        env.close()
        with pytest.raises(ValueError, match="already driven"):
            gym.make_vec(mtopt.ROBOT_ENV_ID, num_envs=2, vectorization_mode="sync", robot=robot)
        again = gym.make(mtopt.ROBOT_ENV_ID, robot=robot, task="lift-ball")
        _, info = again.reset(seed=0)
        assert info["possible"] == again.unwrapped.task.predicate.possible(robot.scene_state())
        again.close()
    finally:
        robot.close()


def test_a_spec_never_remakes_the_env_without_its_loaded_success_detector(
    tmp_path: Path,
) -> None:
    """Made with a loaded detector, the env cannot be made again from its spec (which
    would reward by ground truth instead, silently); made with the detector's folder, it
    can, with the same rewards."""
    sd_dir = published_sd(tmp_path / "sd")
    factory = "tests.robot_factories:make_arm"
    loaded = gym.make(
        mtopt.ROBOT_ENV_ID, robot_factory=factory, success_detector=SuccessDetector.load(sd_dir)
    )
    try:
        assert loaded.spec is not None
        with pytest.raises(ValueError, match="made with success_detector= a SuccessDetector"):
            gym.make(loaded.spec)
        again = gym.make(loaded.spec, success_detector=str(sd_dir))  # given again: fine
        again.close()
    finally:
        loaded.close()
    by_folder = gym.make(mtopt.ROBOT_ENV_ID, robot_factory=factory, success_detector=str(sd_dir))
    assert by_folder.spec is not None
    remade = gym.make(by_folder.spec)
    try:
        stop = np.zeros(6, np.float32)
        stop[5] = 1.0
        infos = []
        for env in (by_folder, remade):
            env.reset(seed=4)
            infos.append(env.step(stop)[-1])
        assert "sd_probability" in infos[1]
        assert infos[0]["sd_probability"] == infos[1]["sd_probability"]
    finally:
        by_folder.close()
        remade.close()


class TallArm(ArmWithoutTruth):
    """An arm whose gripper reaches 1.5 m above the bin floor (inside the Robot
    protocol's plausible heights, above the simulated cell's 1 m)."""

    def _taller(self, o: Observation) -> Observation:
        state = np.array([o.state[0], 1.5], np.float32)
        pose = None if o.pose is None else np.array([*o.pose[:2], 1.5, o.pose[3]], np.float32)
        return dataclasses.replace(o, state=state, pose=pose)

    def observe(self) -> Observation:
        return self._taller(super().observe())

    def act(self, action: np.ndarray) -> StepResult:
        r = super().act(action)
        return StepResult(self._taller(r.observation), r.terminated)


def test_the_robot_env_reports_a_taller_arms_height_as_it_is(tmp_path: Path) -> None:
    arm = TallArm("tall", 0, SimConfig())
    env = RobotEnv(arm, success_detector=str(published_sd(tmp_path / "sd")))
    try:
        obs, info = env.reset(seed=0)
        assert obs["state"][1] == pytest.approx(1.5) and info["pose"][2] == pytest.approx(1.5)
        assert env.observation_space.contains(obs)
        obs, *_ = env.step(actions(1)[0])
        assert obs["state"][1] == pytest.approx(1.5) and env.observation_space.contains(obs)
    finally:
        env.close()
        arm.close()


class ArmThatIgnoresTerminate(ArmWithoutTruth):
    def act(self, action: np.ndarray) -> StepResult:
        return StepResult(super().act(action).observation, False)


def test_bad_robots_and_settings_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="has no ground truth"):
        RobotEnv(robot_factory="tests.robot_factories:make_arm")
    with pytest.raises(ValueError, match=r"either robot= .* or robot_factory"):
        RobotEnv()
    with pytest.raises(TypeError, match=r"lacks reset_scene, .*, close"):
        RobotEnv(object())  # type: ignore[arg-type]
    few = published_sd(tmp_path / "few", TASKS[:2])
    with pytest.raises(ValueError, match="no output for 'place-in-bowl'"):
        RobotEnv(
            robot_factory="tests.robot_factories:make_tracked_arm",
            task="place-in-bowl",
            success_detector=few,
        )
    assert TRACKED and TRACKED[-1].closed  # the robot the env made is not left connected
    big = published_sd(tmp_path / "big", size=128)
    with pytest.raises(ValueError, match="judges 128-pixel images"):
        RobotEnv(robot_factory="tests.robot_factories:make_arm", success_detector=big)
    # without sim=, nothing to disagree with: a factory's binary arm is taken as it is
    RobotEnv(
        robot_factory="tests.robot_factories:make_binary_gripper_arm",
        success_detector=published_sd(tmp_path / "sd0"),
    ).close()
    binary = SimRobot(SimConfig(gripper_status="command"), robot_id="gym")
    with pytest.raises(ValueError, match="gripper status is 'command', where the run's"):
        RobotEnv(binary, sim=SimConfig())  # a cell that reads the measured closure
    binary.close()
    arm = ArmThatIgnoresTerminate("arm-1", 0, SimConfig())
    env = RobotEnv(arm, success_detector=published_sd(tmp_path / "sd"))
    try:
        with pytest.raises(ValueError, match="no scene yet"):
            env.reset(options={"keep_scene": True})
        env.reset(seed=0)
        with pytest.raises(UnknownTaskError, match="fly"):
            env.reset(options={"task": "fly"})
        stop = np.zeros(6, np.float32)
        stop[5] = 1.0
        with pytest.raises(RobotContractError, match="robot arm-1: act\\(\\) was sent TERMINATE"):
            env.step(stop)
        with pytest.raises(ValueError, match="unknown reset options"):
            env.reset(options={"tsak": "lift-any"})
    finally:
        env.close()
    arm.observe()  # the env leaves a robot it was given open: it is the caller's
    arm.close()
    from mtopt.tasks.registry import TaskRegistry

    factory = "tests.robot_factories:make_arm"
    for steps in (2.5, "3", True):  # 2.5 ran 2 steps, "3" three, True one
        with pytest.raises(ValueError, match="max_steps must be an integer"):
            RobotEnv(robot_factory=factory, max_steps=steps)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"threshold must be a number in \(0, 1\), got '0.5'"):
        RobotEnv(robot_factory=factory, threshold="0.5")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="registry holds no tasks"):  # was the default one
        RobotEnv(robot_factory=factory, registry=TaskRegistry([]))
    with pytest.raises(TypeError, match="registry must be a TaskRegistry, got dict"):
        SimCellEnv(registry={"lift-any": 1})  # type: ignore[arg-type]
    # a NumPy integer image size, as SimConfig takes it, is an int image size
    numpy_sized = SimRobot(SimConfig(image_size=np.int64(32)), robot_id="gym")
    env = RobotEnv(numpy_sized, max_steps=np.int64(3))
    try:
        assert env.max_steps == 3 and env.reset(seed=0)[0]["image"].shape == (32, 32, 3)
    finally:
        env.close()
        numpy_sized.close()


_FORKED_WORKERS = """
import sys
import numpy as np, gymnasium as gym
import mtopt
from mtopt.success.network import SuccessDetector
sd = sys.argv[1]
SuccessDetector.load(sd).score(np.zeros((4, 64, 64, 3), np.uint8))  # torch used in the parent
vec = gym.make_vec(mtopt.ROBOT_ENV_ID, num_envs=2, vectorization_mode="async",
                   vector_kwargs={"context": "fork"}, success_detector=sd, max_steps=2,
                   robot_factory="tests.robot_factories:make_arm")
vec.reset(seed=0)
for _ in range(5):
    vec.step(vec.action_space.sample())
vec.close()
print("scored in forked workers")
"""


def test_forked_vector_workers_score_after_the_parent_ran_torch(tmp_path: Path) -> None:
    """A user's agent ran PyTorch, then made an AsyncVectorEnv (fork on Linux) of
    Robot-v0 with a detector: the workers' first scoring hung for good on the thread pool
    they inherited mid-state."""
    import os
    import signal
    import subprocess
    import sys

    sd_dir = published_sd(tmp_path / "sd")
    root = Path(__file__).resolve().parents[1]
    p = subprocess.Popen(
        [sys.executable, "-c", _FORKED_WORKERS, str(sd_dir)],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # the workers too are stopped if it hangs
    )
    try:
        out, _ = p.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
        pytest.fail("the forked workers hung scoring their first episode")
    assert p.returncode == 0 and "scored in forked workers" in out, out[-2000:]


def test_robot_env_renders_nothing_and_refuses_a_render_mode(tmp_path: Path) -> None:
    """Tools call env.render(): it raised NotImplementedError; render_mode= was a
    TypeError from the constructor."""
    sd = str(published_sd(tmp_path / "sd"))
    arm = "tests.robot_factories:make_arm"
    env = gym.make(mtopt.ROBOT_ENV_ID, robot_factory=arm, success_detector=sd)
    try:
        env.reset(seed=0)
        assert env.render() is None
    finally:
        env.close()
    with pytest.raises(ValueError, match="render_mode must be None for Robot-v0"):
        gym.make(mtopt.ROBOT_ENV_ID, robot_factory=arm, success_detector=sd, render_mode="human")


def test_keep_scene_after_an_episode_that_ends_holding_puts_the_object_back_in_the_bin() -> None:
    """A lift chained (keep_scene) after an episode that ended holding its object: the
    robot opened at the presentation pose over the gap and the object fell between the
    bins, out of reach for the rest of the chain, with prepared=True."""
    robot = SimRobot(SimConfig(), robot_id="gym")
    env = RobotEnv(robot, task="lift-any")
    try:
        env.reset(seed=0, options={"task": "place-in-bowl"})  # an object in the gripper
        terminate_closed = np.array([0, 0, 0, 0, 1, 1], dtype=np.float32)
        *_, terminated, _, _ = env.step(terminate_closed)
        assert terminated and robot.holding()  # presented, still held
        _, info = env.reset(options={"keep_scene": True, "task": "lift-any"})
        assert info["prepared"] and not robot.holding()
        bodies = [b for b, _ in robot.cell.object_bodies()]
        assert all(robot.in_right_bin(b) for b in bodies), [
            robot.cell.object_position(b) for b in bodies
        ]
        assert robot.objects_left() == len(bodies)
        pose = info["pose"]  # a start pose above the right bin, not the presentation pose
        assert abs(pose[1] - 0.13) < 0.1 and pose[2] > 0.12
    finally:
        env.close()


def test_a_chained_lift_is_possible_with_the_object_the_last_task_held() -> None:
    """``possible`` is judged once the scene is set up for the task: a lift-ball chained
    after an episode that ended holding the scene's only ball has that ball put back."""
    robot = SimRobot(SimConfig(), robot_id="gym")
    env = RobotEnv(robot, task="place-ball-in-bowl")
    try:
        terminate_closed = np.array([0, 0, 0, 0, 1, 1], dtype=np.float32)
        for seed in range(60):  # the scene's only ball in hand, still held at the end
            env.reset(seed=seed)
            scene = robot.scene_state()
            if any(o.category == "ball" and not o.in_gripper for o in scene.objects):
                continue
            *_, terminated, _, _ = env.step(terminate_closed)
            if terminated and robot.holding():
                break
        else:
            pytest.skip("no such scene among the first 60")
        _, info = env.reset(options={"keep_scene": True, "task": "lift-ball"})
        assert info["possible"] and not robot.holding()
    finally:
        env.close()


class _OneFrameBuffer(SimRobot):
    """A camera driver that fills one frame buffer for every image it hands out."""

    def _into_buffer(self, image: np.ndarray) -> np.ndarray:
        buf = self.__dict__.setdefault("buffer", np.zeros_like(image))
        buf[...] = image
        return buf

    def observe(self) -> Observation:
        o = super().observe()
        return dataclasses.replace(o, image=self._into_buffer(o.image))

    def final_image(self) -> np.ndarray:
        return self._into_buffer(super().final_image())


def test_observations_already_returned_do_not_change_with_a_drivers_frame_buffer() -> None:
    env = RobotEnv(_OneFrameBuffer(SimConfig(), robot_id="gym"), task="lift-any", max_steps=3)
    try:
        first, _ = env.reset(seed=0)
        kept = first["image"].copy()
        *_, info = env.step(make_action(dz=-1.0))
        *_, info = env.step(make_action(terminate=True))
        final = info["final_image"].copy()
        env.reset(seed=1)
        assert (first["image"] == kept).all() and (info["final_image"] == final).all()
    finally:
        env.close()
