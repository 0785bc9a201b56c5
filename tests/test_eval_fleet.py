"""Evaluation on the fleet's own episodes (eval.on='fleet'): rates by hand, the judge on
a store, the run's switch table from it, and the config's resolution of 'auto'."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from mtopt.eval.fleet import FleetJudge, fleet_rates
from mtopt.runtime.config import RunConfig, preset
from mtopt.store import Episode, EpisodeWriter

TASKS = ("lift-any", "place-any")


def episode(
    i: int, task: str, policy: str, success: bool, tasks: tuple[str, ...] = TASKS
) -> Episode:
    """An episode whose final image says whether it succeeded and, in one pixel, its
    task's column of the fake SD (``BrightIsSuccess`` reads both)."""
    final = np.full((8, 8, 3), 200 if success else 10, np.uint8)
    final[0, 0, 0] = tasks.index(task) if task in tasks else 255
    return Episode(
        episode_id=f"ep{i:04d}",
        robot_id="arm-1",
        task=task,
        policy=policy,
        policy_version=3 if policy == "cem" else 0,
        seed=-1,
        images=np.zeros((2, 8, 8, 3), np.uint8),
        states=np.zeros((2, 2), np.float32),
        actions=np.zeros((1, 6), np.float32),
        final_image=final,
        scene={"cell": "arm-lab"},
        started_at=float(i),
        ended_at=float(i) + 0.5,
    )


class BrightIsSuccess:
    """A success detector: an image brighter than ``cut`` (its green channel) is a
    success of the task whose column its marked pixel names, and of no other (a judge
    that read another task's column would see failures)."""

    def __init__(self, version: int, cut: float = 100.0, tasks: tuple[str, ...] = TASKS):
        self.version = version
        self.tasks = tasks
        self.cut = cut
        self.scored = 0

    def score(self, images: np.ndarray) -> np.ndarray:
        self.scored += len(images)
        bright = images[..., 1].reshape(len(images), -1).mean(axis=1) > self.cut
        out = np.zeros((len(images), len(self.tasks)), np.float32)
        for row, (image, ok) in enumerate(zip(images, bright, strict=True)):
            column = int(image[0, 0, 0])
            if column < len(self.tasks):
                out[row, column] = float(ok)
        return out


def test_fleet_rates_by_hand() -> None:
    rates = fleet_rates(
        {"lift-any": [True, False, False, True], "place-any": [True]},
        {"lift-any": [False, False, True], "place-any": [True, True, False]},
        min_episodes=3,
    )
    assert rates.learned == {"lift-any": 0.5}  # place-any: one learned episode, not judged
    assert rates.scripted == pytest.approx({"lift-any": 1 / 3})
    assert rates.episodes == {
        "lift-any": {"learned": 4, "scripted": 3},
        "place-any": {"learned": 1, "scripted": 3},
    }
    assert fleet_rates({}, {"lift-any": [True]}, 1).learned == {}


def test_the_judge_keeps_the_latest_window_per_task_and_policy(tmp_path: Path) -> None:
    store = tmp_path / "store"
    judge = FleetJudge(store, ["lift-any", "place-any"], window=3)
    assert judge.poll() == 0  # no store yet: nothing, no error
    # lift-any: learned ok, ok, fail, fail (window 3: the last three), scripted fail, ok
    plan = [
        ("lift-any", "cem", True),
        ("lift-any", "cem", True),
        ("lift-any", "scripted-pick", False),
        ("lift-any", "cem", False),
        ("lift-ball", "cem", True),  # not an evaluated task: not kept
        ("lift-any", "cem@place-any", True),  # a proxy's: neither side
        ("lift-any", "teleop", True),  # a policy of the user's own: neither side
        ("lift-any", "cem", False),
        ("lift-any", "scripted-pick", True),
    ]
    with EpisodeWriter(store, "arm-1", flush_every=2) as w:
        for i, (task, policy, ok) in enumerate(plan):
            w.write(episode(i, task, policy, ok))
    assert judge.poll() == 6
    sd = BrightIsSuccess(version=1)
    learned, scripted = judge.outcomes(sd)
    assert learned == {"lift-any": [True, False, False]}
    assert scripted == {"lift-any": [False, True]}
    assert sd.scored == 5
    judge.outcomes(sd)
    assert sd.scored == 5  # cached per detector version
    newer = BrightIsSuccess(version=2, cut=250.0)  # calls everything a failure
    assert judge.outcomes(newer)[0] == {"lift-any": [False, False, False]}
    assert newer.scored == 5
    with EpisodeWriter(store, "arm-1", flush_every=1) as w:
        w.write(episode(100, "place-any", "scripted-place", True))
    assert judge.poll() == 1
    assert judge.outcomes(newer)[1]["place-any"] == [False]
    assert newer.scored == 6  # only the new one
    with pytest.raises(ValueError, match="window"):
        FleetJudge(store, ["lift-any"], window=0)


def test_auto_evaluates_on_the_fleet_when_the_robots_are_the_users() -> None:
    tiny = preset("tiny")
    assert tiny.eval_on == "sim"
    arm = dataclasses.replace(tiny, robot_factory="tests.robot_factories:make_arm")
    assert arm.eval_on == "fleet"
    forced = dataclasses.replace(tiny, eval=dataclasses.replace(tiny.eval, on="fleet"))
    assert forced.eval_on == "fleet"
    for bad, match in (
        (dataclasses.replace(tiny.eval, on="robots"), "eval.on"),
        (
            dataclasses.replace(tiny.eval, on="fleet", fleet_window=1, episodes_per_task=5),
            "fleet_window",
        ),
    ):
        with pytest.raises(ValueError, match=match):
            dataclasses.replace(tiny, eval=bad).validate()
    with pytest.raises(ValueError, match="learned_fraction_min"):
        dataclasses.replace(
            arm, collect=dataclasses.replace(arm.collect, learned_fraction_min=0.0)
        ).validate()
    assert (
        RunConfig().eval.fleet_window
        >= RunConfig().eval.episodes_per_task * RunConfig().parity_window
    )


def test_the_runs_fleet_point_switches_a_task_above_its_scripted_bar(tmp_path: Path) -> None:
    """The run's evaluation point from the fleet's episodes, and its switch table: a task
    switches when its learned episodes succeed at least as often as the scripted ones
    (plus the margin); one with too few episodes is not judged."""
    from mtopt.runtime.local import LocalRun

    cfg = preset("tiny")
    cfg = dataclasses.replace(
        cfg,
        eval=dataclasses.replace(
            cfg.eval,
            on="fleet",
            tasks=("lift-any", "place-any"),
            episodes_per_task=2,
            fleet_window=10,
        ),
        parity_margin=0.0,
        parity_window=2,  # judged from 4 episodes of each
    )
    run = LocalRun(cfg, tmp_path / "run")
    assert run.fleet is not None and run.scripted_baseline() == {}
    assert not (tmp_path / "run" / "scripted_eval.json").exists()
    plan = [("lift-any", "cem", ok) for ok in (True, True, False, True)]
    plan += [("lift-any", "scripted-pick", ok) for ok in (True, False, False, False)]
    plan += [("place-any", "cem", True)] * 2 + [("place-any", "scripted-place", False)] * 5
    names = tuple(run.registry.names)
    with EpisodeWriter(run.paths.store, "arm-1", flush_every=4) as w:
        for i, (task, policy, ok) in enumerate(plan):
            w.write(episode(i, task, policy, ok, names))
    sd = BrightIsSuccess(version=1, tasks=names)
    point, table = run.fleet_point(sd)  # type: ignore[arg-type]
    assert point["success"] == {"lift-any": 0.75}
    assert point["scripted"] == {"lift-any": 0.25}
    assert point["fleet_episodes"]["place-any"] == {"learned": 2, "scripted": 5}
    assert point["evaluated_on"] == "fleet"
    assert table["learned"] == ["lift-any"]
    assert table["proxy"].get("lift-ball") == "lift-any"
    # the next point: lift-any's learned episodes fall below its bar, but too few to judge
    # (a resume that asks for more): it keeps its switch; judged again, it loses it
    run.history.append({"switch": table})
    run.cfg = dataclasses.replace(run.cfg, parity_window=5)
    assert run.fleet_point(sd)[1]["learned"] == ["lift-any"]  # type: ignore[arg-type]
    with EpisodeWriter(run.paths.store, "arm-1", flush_every=8) as w:
        for i in range(8):
            w.write(episode(100 + i, "lift-any", "cem", False, names))
    point, table = run.fleet_point(sd)  # type: ignore[arg-type]
    assert point["success"] == {}  # 10 learned, 4 scripted: not judged yet
    assert table["learned"] == ["lift-any"]
    with EpisodeWriter(run.paths.store, "arm-1", flush_every=8) as w:
        for i in range(8):
            w.write(episode(200 + i, "lift-any", "scripted-pick", True, names))
    point, table = run.fleet_point(sd)  # type: ignore[arg-type]
    assert point["success"] == {"lift-any": 0.1} and table["learned"] == []
    assert point["scripted"] == {"lift-any": 0.8}


def test_a_proxys_episodes_are_stored_under_the_task_it_acted_as() -> None:
    from mtopt.collect.loop import _TaskBound

    class Cem:
        name, version = "cem", 4

    assert _TaskBound(Cem(), "lift-ball").name == "cem"
    assert _TaskBound(Cem(), "lift-any", proxy=True).name == "cem@lift-any"
