"""Robot factories for the tests of ``robot_factory`` (``mtopt.robots.factory``): a
stand-in for a real arm, and factories that break the contract."""

from __future__ import annotations

from typing import Any

import numpy as np

from mtopt.robots.base import Observation, StepResult
from mtopt.robots.sim_robot import SimRobot
from mtopt.sim.cell import SimConfig


class ArmWithoutTruth:
    """What a real arm looks like to collection: the Robot protocol, ``holding`` and
    ``objects_left``, and no ``scene_state`` (no ground truth: its episodes' gt_ columns
    are null). The simulated cell does the moving."""

    def __init__(self, robot_id: str, seed: int, sim: SimConfig):
        self._cell = SimRobot(sim, robot_id=robot_id, seed=seed)
        self.robot_id = robot_id
        self.image_size = sim.image_size

    def reset_scene(self, seed: int | None = None) -> Observation:
        return self._cell.reset_scene(seed)

    def start_episode(self) -> Observation:
        return self._cell.start_episode()

    def prepare_for_task(self, starts_holding: bool, category: str | None = None) -> bool:
        return self._cell.prepare_for_task(starts_holding, category)

    def observe(self) -> Observation:
        return self._cell.observe()

    def act(self, action: np.ndarray) -> StepResult:
        return self._cell.act(action)

    def final_image(self) -> np.ndarray:
        return self._cell.final_image()

    def scene_description(self) -> dict[str, Any]:
        return {"cell": "arm-lab-1", "seed": "not a number"}  # a real cell's own id

    def holding(self) -> bool:
        return self._cell.holding()

    def objects_left(self) -> int:
        return self._cell.objects_left()

    def close(self) -> None:
        self._cell.close()


class TrackedArm(ArmWithoutTruth):
    """An arm that says whether it was closed (``TRACKED`` keeps every one made)."""

    closed = False

    def close(self) -> None:
        super().close()
        self.closed = True


TRACKED: list[TrackedArm] = []


def make_tracked_arm(robot_id: str, seed: int, sim: SimConfig) -> TrackedArm:
    TRACKED.append(TrackedArm(robot_id, seed, sim))
    return TRACKED[-1]


def make_arm(robot_id: str, seed: int, sim: SimConfig) -> ArmWithoutTruth:
    return ArmWithoutTruth(robot_id, seed, sim)


def make_misnamed_arm(robot_id: str, seed: int, sim: SimConfig) -> ArmWithoutTruth:
    return ArmWithoutTruth("arm-7", seed, sim)


def make_small_camera_arm(robot_id: str, seed: int, sim: SimConfig) -> ArmWithoutTruth:
    arm = ArmWithoutTruth(robot_id, seed, sim)
    arm.image_size = sim.image_size // 2
    return arm


def make_binary_gripper_arm(robot_id: str, seed: int, sim: SimConfig) -> ArmWithoutTruth:
    arm = ArmWithoutTruth(robot_id, seed, sim)
    arm.gripper_status = "command"  # type: ignore[attr-defined]
    return arm


def make_half_arm(robot_id: str, seed: int, sim: SimConfig) -> object:
    class HalfArm:
        def __init__(self) -> None:
            self.robot_id, self.image_size = robot_id, sim.image_size

        def observe(self) -> None: ...

    return HalfArm()


NOT_CALLABLE = 3


class ArmThatDropsOut(ArmWithoutTruth):
    """Its connection fails at the third scene reset (a real arm's network)."""

    def __init__(self, robot_id: str, seed: int, sim: SimConfig):
        super().__init__(robot_id, seed, sim)
        self.resets = 0

    def reset_scene(self, seed: int | None = None) -> Observation:
        self.resets += 1
        if self.resets == 3:
            raise ConnectionError("the arm's controller stopped answering")
        return super().reset_scene(seed)


def make_arm_that_drops_out(robot_id: str, seed: int, sim: SimConfig) -> ArmThatDropsOut:
    return ArmThatDropsOut(robot_id, seed, sim)


FLAKY: dict[str, Any] = {"made": [], "builds": 0, "fail_builds": set(), "fail_at_act": 40}
"""``make_flaky_arm``'s state: the arms made, the factory's calls, the calls (from 1)
that fail, the first arm's act that fails."""


class FlakyArm(TrackedArm):
    """The first arm made loses its controller mid-episode (at its ``fail_at_act``th act,
    a few episodes in); the ones made after it work."""

    def __init__(self, robot_id: str, seed: int, sim: SimConfig):
        super().__init__(robot_id, seed, sim)
        self.first, self.acts, self.seed = not FLAKY["made"], 0, seed

    def act(self, action: np.ndarray) -> StepResult:
        self.acts += 1
        if self.first and self.acts == FLAKY["fail_at_act"]:
            raise ConnectionError("the arm's controller stopped answering")
        return super().act(action)


def make_flaky_arm(robot_id: str, seed: int, sim: SimConfig) -> FlakyArm:
    FLAKY["builds"] += 1
    if FLAKY["builds"] in FLAKY["fail_builds"]:
        raise ConnectionError("the arm did not answer the factory")
    FLAKY["made"].append(FlakyArm(robot_id, seed, sim))
    return FLAKY["made"][-1]
