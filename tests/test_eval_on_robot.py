"""``mtopt evaluate``: a learned policy on any robot, judged by the success detector;
``evaluate_on_robot`` and ``summarize`` by hand, the simulated cell's scenes as the
benchmark's, and the command end to end with a stand-in arm."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from mtopt.cli import app
from mtopt.eval.on_robot import JudgedEpisode, RobotEvaluation, evaluate_on_robot, summarize
from mtopt.robots.action import wants_terminate
from mtopt.robots.base import Observation, StepResult
from mtopt.tasks import DEFAULT_REGISTRY


class CountingArm:
    """A robot whose final image's pixel (0, 0) holds the number of its episode (1, 2,
    ...), that cannot set up a placing task on its scenes of odd seed, and that says
    its lift succeeded on every third episode."""

    robot_id, image_size = "eval-00", 8

    def __init__(self) -> None:
        self.episodes, self.seed, self.steps = 0, 0, 0

    def _obs(self) -> Observation:
        return Observation(np.zeros((8, 8, 3), np.uint8), np.zeros(2, np.float32))

    def reset_scene(self, seed: int | None = None) -> Observation:
        self.seed = int(seed or 0)
        return self._obs()

    def start_episode(self) -> Observation:
        return self._obs()

    def prepare_for_task(self, starts_holding: bool) -> bool:
        return not (starts_holding and self.seed % 2)

    def observe(self) -> Observation:
        return self._obs()

    def act(self, action: np.ndarray) -> StepResult:
        self.steps += 1
        done = wants_terminate(action)
        return StepResult(self._obs(), terminated=done)

    def final_image(self) -> np.ndarray:
        self.episodes += 1
        img = np.zeros((8, 8, 3), np.uint8)
        img[0, 0, 0] = self.episodes
        return img

    def scene_description(self) -> dict[str, Any]:
        return {"seed": self.seed}

    def scene_state(self) -> dict[str, Any]:
        return {"episode": self.episodes}

    def close(self) -> None: ...


class EpisodeNumberJudge:
    """The probability of success is 0.9 for even episode numbers, 0.2 for odd ones."""

    tasks = DEFAULT_REGISTRY.names

    def score(self, images: np.ndarray) -> np.ndarray:
        n = images[:, 0, 0, 0].astype(int)
        p = np.where(n % 2 == 0, 0.9, 0.2)
        return np.repeat(p[:, None], len(self.tasks), axis=1)


class StopAtOnce:
    name, version = "stop", 3

    def reset(self, task: str, rng: np.random.Generator) -> None: ...

    def act(self, obs: Observation) -> np.ndarray:
        from mtopt.robots.action import make_action

        return make_action(terminate=True)


def test_evaluate_on_robot_judges_each_episode_with_the_detector_by_hand(monkeypatch) -> None:
    from mtopt.tasks.registry import TaskSpec

    # the simulator's verdict: every third episode succeeded (episodes 3, 6, ...)
    monkeypatch.setattr(TaskSpec, "succeeded", lambda self, state: state["episode"] % 3 == 0)
    arm, stored = CountingArm(), []
    evaluation = evaluate_on_robot(
        arm,
        lambda spec: StopAtOnce(),  # type: ignore[arg-type, return-value]
        DEFAULT_REGISTRY,
        ["lift-any", "place-any"],
        4,
        max_steps=5,
        judge=EpisodeNumberJudge(),
        seed=5,
        write=stored.append,
    )
    judged, unprepared = evaluation.judged, evaluation.unprepared
    lift = judged["lift-any"]
    # episodes 1-4: the detector says 0.2, 0.9, 0.2, 0.9; the truth: only episode 3
    assert [e.sd_success for e in lift] == [False, True, False, True]
    assert [e.sd_prob for e in lift] == [0.2, 0.9, 0.2, 0.9]
    assert [e.gt_success for e in lift] == [False, False, True, False]
    assert all(e.steps == 1 for e in lift)  # TERMINATE at once
    assert [e.episode_id for e in lift] == [ep.episode_id for ep in stored[:4]]
    assert stored[0].policy == "stop" and stored[0].policy_version == 3
    place = judged["place-any"]
    # each placing scene of odd seed is replaced (up to 3 tries) or left unjudged
    assert len(place) + unprepared["place-any"] == 4 and unprepared["lift-any"] == 0
    table = summarize(evaluation)
    assert table["lift-any"]["sd_success"] == {"success": 0.5, "ci95": [0.15, 0.85]}
    assert table["lift-any"]["gt_success"]["success"] == 0.25
    assert table["lift-any"]["sd_agreement"] == 0.25  # only episode 1 agrees: 0 and 0
    assert table["lift-any"]["sd_outcomes"] == "0101" and table["lift-any"]["gt_outcomes"] == "0010"


def test_summarize_without_ground_truth_gives_the_detectors_rate_alone() -> None:
    eps = [
        JudgedEpisode("lift-any", p, p >= 0.5, None, 3, f"e{i}") for i, p in enumerate([0.7, 0.1])
    ]
    row = summarize(RobotEvaluation({"lift-any": eps}, {"lift-any": 1}))["lift-any"]
    assert row["sd_success"]["success"] == 0.5 and row["not_set_up"] == 1
    assert row["gt_success"] is None and row["sd_agreement"] is None and "gt_outcomes" not in row
    empty = summarize(RobotEvaluation({"x": []}, {"x": 2}))["x"]
    assert empty["episodes"] == 0 and empty["sd_success"] is None  # not 0%: not evaluated


def test_a_judge_without_the_task_is_refused_before_any_episode() -> None:
    class LiftOnly(EpisodeNumberJudge):
        tasks = ("lift-any",)

    arm = CountingArm()
    with pytest.raises(ValueError, match=r"no head for \['place-any'\]"):
        evaluate_on_robot(
            arm, lambda s: StopAtOnce(), DEFAULT_REGISTRY, ["lift-any", "place-any"], 2, 5,  # type: ignore[arg-type, return-value]
            LiftOnly(),
        )  # fmt: skip
    assert arm.episodes == 0


def test_on_the_simulated_cell_the_scenes_are_the_benchmarks() -> None:
    """The simulator's verdicts equal ``evaluate_outcomes`` one task at a time (what
    ``benchmarks/evaluate_run.py`` reports) for the same policy and seed."""
    from mtopt.eval.evaluate import evaluate_outcomes
    from mtopt.policies.scripted import scripted_policy_for
    from mtopt.robots.sim_robot import SimRobot
    from mtopt.sim.cell import SimConfig

    sim = SimConfig(object_split="test")
    robot = SimRobot(sim, robot_id="eval-00", seed=5)
    try:
        judged = evaluate_on_robot(
            robot, scripted_policy_for, DEFAULT_REGISTRY, ["lift-any", "place-any"], 3,
            sim.max_steps, EpisodeNumberJudge(), seed=5,
        ).judged  # fmt: skip
    finally:
        robot.close()
    for task in ("lift-any", "place-any"):
        want = evaluate_outcomes(scripted_policy_for, DEFAULT_REGISTRY, [task], 3, sim, seed=5)
        assert [e.gt_success for e in judged[task]] == want[task], task


def _interrupt_after(n: int, inner: Any) -> Any:
    """An ``on_episode`` that raises KeyboardInterrupt (Ctrl-C) after ``n`` episodes."""
    seen = [0]

    def on_episode(one: JudgedEpisode) -> None:
        if inner is not None:
            inner(one)
        seen[0] += 1
        if seen[0] == n:
            raise KeyboardInterrupt

    return on_episode


def test_mtopt_evaluate_end_to_end_with_a_stand_in_arm(tmp_path: Path) -> None:
    import torch

    from mtopt.config import override, save_config
    from mtopt.qtopt.learner import Learner
    from mtopt.runtime.config import preset
    from mtopt.success.network import SDNetConfig, SuccessDetector, SuccessNet
    from qtopt_fixtures import SMALL

    torch.manual_seed(0)
    run = tmp_path / "run"
    save_config(override(preset("local"), ["sim.image_size=32"]), run / "config.json")
    names = DEFAULT_REGISTRY.names
    Learner(dataclasses.replace(SMALL, num_tasks=len(names))).publish(run / "weights")
    net = SuccessNet(SDNetConfig(num_tasks=len(names), image_size=32, tower_channels=8))
    SuccessDetector(net, names).publish(run / "sd", version=4)
    out, store = tmp_path / "eval.json", tmp_path / "eval-store"
    args = ["evaluate", str(run), "--tasks", "lift-any", "--episodes", "2", "--seed", "7"]
    arm = ["--robot-factory", "tests.robot_factories:make_arm"]
    res = CliRunner().invoke(app, [*args, *arm, "--json", str(out), "--store", str(store)])
    assert res.exit_code == 0, res.output
    result = json.loads(out.read_text())
    row = result["tasks"]["lift-any"]
    assert row["episodes"] == 2 and len(row["sd_outcomes"]) == 2
    assert row["gt_success"] is None  # the stand-in arm has no ground truth
    assert result["sd_version"] == 4 and result["robot"] == "tests.robot_factories:make_arm"
    assert result["acting_search"]["gripper"] == "joint"  # the run's own (cem_act)
    from mtopt.store import EpisodeReader

    rows = EpisodeReader(store).metadata()
    assert len(rows) == 2 and {r["robot_id"] for r in rows} == {"eval-00"}
    # a task named twice runs once (it ran twice, the first pass thrown away)
    twice = [*args[:2], "--tasks", "lift-any,lift-any", *args[4:], *arm, "--store", str(store)]
    res = CliRunner().invoke(app, twice)
    assert res.exit_code == 0 and len(EpisodeReader(store).metadata()) == 4, res.output

    # the default robot: the run's simulated cell, with the simulator's verdict beside;
    # acting with another search than the run's (--act), which the results record
    act = ["--act", "gripper=split", "--act", "release_margin=0.1"]
    res = CliRunner().invoke(app, [*args, *act, "--json", str(out)])
    assert res.exit_code == 0, res.output
    searched = json.loads(out.read_text())["acting_search"]
    assert (searched["gripper"], searched["release_margin"]) == ("split", 0.1)
    row = json.loads(out.read_text())["tasks"]["lift-any"]
    assert row["gt_success"] is not None and 0.0 <= row["sd_agreement"] <= 1.0
    assert "simulator" in res.output and "agreement" in res.output

    # the arm drops out on its third scene: what was judged is reported and written,
    # marked incomplete, and the command fails
    dropout = ["--robot-factory", "tests.robot_factories:make_arm_that_drops_out"]
    both = ["--tasks", "lift-any,place-any,lift-ball", "--episodes", "2", "--seed", "7"]
    res = CliRunner().invoke(app, ["evaluate", str(run), *both, *dropout, "--json", str(out)])
    assert res.exit_code == 1 and "stopped answering" in res.output, res.output
    result = json.loads(out.read_text())
    assert result["complete"] is False and "ConnectionError" in result["error"]
    assert result["tasks"]["lift-any"]["episodes"] == 2
    assert result["tasks"]["place-any"]["sd_success"] is None
    assert result["tasks"]["lift-ball"]["sd_success"] is None  # never reached
    assert res.output.count("not evaluated") == 2
    # Ctrl-C part-way: what was judged is written, and the exit says it was stopped
    import mtopt.eval.on_robot as on_robot_mod

    real = on_robot_mod.evaluate_on_robot

    def stopped(*a: Any, **k: Any) -> Any:
        k["on_episode"] = _interrupt_after(2, k.get("on_episode"))
        return real(*a, **k)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(on_robot_mod, "evaluate_on_robot", stopped)
        res = CliRunner().invoke(app, ["evaluate", str(run), *both, *arm, "--json", str(out)])
    assert res.exit_code == 130, res.output
    result = json.loads(out.read_text())
    assert result["interrupted"] is True and result["complete"] is False
    assert result["tasks"]["lift-any"]["episodes"] == 2
    # --store of another image size (16-pixel episodes; these robots give 32)
    from tests.test_store import make_episode

    from mtopt.store import EpisodeWriter

    small = tmp_path / "small-store"
    with EpisodeWriter(small, "r0") as w:
        w.write(make_episode(0, size=16))
    res = CliRunner().invoke(app, [*args, *arm, "--store", str(small)])
    assert res.exit_code == 2 and "holds 16x16-pixel episodes" in res.output, res.output
    # an output it could not write is said before any episode
    (tmp_path / "a-file").write_text("")
    res = CliRunner().invoke(app, [*args, *dropout, "--json", str(tmp_path / "a-file" / "x.json")])
    assert res.exit_code == 2 and "cannot write to" in res.output, res.output

    for bad, says in (
        (["--part", "target0"], "--part must be acting or online"),
        (["--seed", "0"], "--seed 0 is the in-run evaluation block"),  # the local preset's seed
        (["--episodes", "1001"], "episode"),  # more than a scene block holds
        (["--tasks", "fly"], "fly"),
        (["--tasks", ","], "names no task"),
        (["--sd", str(tmp_path / "nope")], "no success detector folder"),
        (["--robot-factory", "tests.robot_factories:make_leg"], "has no 'make_leg'"),
        (["--store", str(run / "store")], "the run's own store"),
        (["--store", str(run / "config.json")], "is a file, not a folder"),  # was a traceback
    ):
        res = CliRunner().invoke(app, ["evaluate", str(run), *bad])
        assert res.exit_code == 2 and says in res.output, (bad, res.output)
    res = CliRunner().invoke(app, ["evaluate", str(tmp_path)])
    assert res.exit_code == 2 and "not a run or policy folder" in res.output
    # a run judged on its robots' episodes never evaluated on scenes of its seed: the
    # seed passes that check (and this call fails at the next, on the episode count)
    fleet = override(preset("local"), ["sim.image_size=32", "eval.on=fleet"])
    save_config(fleet, run / "config.json")
    res = CliRunner().invoke(app, ["evaluate", str(run), "--seed", "0", "--episodes", "1001"])
    assert res.exit_code == 2 and "in-run" not in res.output and "episode" in res.output
    save_config(override(preset("local"), ["sim.image_size=32"]), run / "config.json")
    # a detector for other images; a run killed before its first weights
    other = SuccessNet(SDNetConfig(num_tasks=len(names), image_size=16, tower_channels=8))
    SuccessDetector(other, names).publish(tmp_path / "sd16")
    res = CliRunner().invoke(app, [*args, "--sd", str(tmp_path / "sd16")])
    assert res.exit_code == 2 and "judges 16-pixel images; the run's robots give 32" in res.output
    empty = tmp_path / "empty"
    (empty / "weights").mkdir(parents=True)
    save_config(override(preset("local"), ["sim.image_size=32"]), empty / "config.json")
    res = CliRunner().invoke(app, ["evaluate", str(empty), "--sd", str(run / "sd"), "--seed", "7"])
    assert res.exit_code == 2 and "no published" in res.output, res.output
