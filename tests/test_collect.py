"""Collection: chain/reset decisions, task choice, the loop on a fake robot, the fleet CLI."""

import dataclasses
import logging
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from mtopt.cli import app
from mtopt.collect.loop import CollectConfig, CollectLoop, choose_task, decide_next
from mtopt.policies.scripted import scripted_policy_for
from mtopt.robots.base import Observation, StepResult
from mtopt.store import EpisodeReader, EpisodeWriter
from mtopt.tasks import DEFAULT_REGISTRY, get_task


def test_decide_next_hand_built_cases() -> None:
    assert decide_next(False, 3, 3, 3, 0.9, 0.2).reason == "chain length reached"
    assert decide_next(False, 0, 1, 3, 0.9, 0.2).reason == "nothing left to pick"
    assert not decide_next(True, 0, 1, 3, 0.9, 0.2).reset  # holding: a place can follow
    assert decide_next(False, 2, 1, 3, 0.1, 0.2).reason == "random reset"
    assert not decide_next(False, 2, 1, 3, 0.5, 0.2).reset
    # a placing episode ends the chain, even when the draw says chain on
    assert decide_next(False, 2, 1, 3, 0.5, 0.2, placed=True).reason.startswith("placed")


def test_choose_task_chains_placing_when_holding() -> None:
    tasks = [get_task("lift-any"), get_task("place-on-plate"), get_task("place-in-bowl")]
    rng = np.random.default_rng(0)
    picks = {choose_task(tasks, [1, 1, 1], True, True, rng).name for _ in range(50)}
    assert picks == {"place-on-plate", "place-in-bowl"}
    picks = [choose_task(tasks, [1, 0, 0], False, True, rng).name for _ in range(20)]
    assert set(picks) == {"lift-any"}


class FakeRobot:
    """A 'robot' whose gripper holds something after closing while low."""

    robot_id = "fake"
    image_size = 8

    def __init__(self) -> None:
        self.h, self.closed, self.held, self.resets = 0.2, False, False, 0

    def _obs(self) -> Observation:
        return Observation(
            np.zeros((8, 8, 3), np.uint8),
            np.array([self.closed, self.h], np.float32),
            np.array([0, 0.13, self.h, 0], np.float32),
        )

    def reset_scene(self, seed: int | None = None) -> Observation:
        self.resets += 1
        self.h, self.closed, self.held = 0.2, False, False
        return self._obs()

    def start_episode(self) -> Observation:
        if not self.held:
            self.h = 0.2
        return self._obs()

    def prepare_for_task(self, starts_holding: bool) -> bool:
        self.held = self.held or starts_holding
        self.closed = self.held
        return True

    def observe(self) -> Observation:
        return self._obs()

    def act(self, action: np.ndarray) -> StepResult:
        self.h = float(np.clip(self.h + 0.05 * action[2], 0.01, 0.3))
        close = action[4] > 0
        if close and not self.closed and self.h < 0.05:
            self.held = True
        if not close:
            self.held = False
        self.closed = close
        return StepResult(self._obs(), bool(action[5] > 0))

    def final_image(self) -> np.ndarray:
        return np.zeros((8, 8, 3), np.uint8)

    def scene_description(self) -> dict:
        return {"seed": 1}

    def close(self) -> None:
        pass

    def holding(self) -> bool:
        return self.held

    def objects_left(self) -> int:
        return 2


def test_loop_writes_chained_episodes(tmp_path: Path) -> None:
    robot = FakeRobot()
    reg = DEFAULT_REGISTRY.subset(["lift-any", "place-on-plate"])
    with EpisodeWriter(tmp_path, "fake", flush_every=100) as w:
        loop = CollectLoop(
            robot,
            reg,
            w,
            scripted_policy_for,
            CollectConfig(max_chain=2, reset_prob=0.0, reset_after_place=False),
            seed=1,
        )
        eps = [loop.run_one() for _ in range(6)]
    assert [e.chain_index for e in eps] == [0, 1, 0, 1, 0, 1]
    assert all(b.prev_episode_id == a.episode_id for a, b in zip(eps[::2], eps[1::2], strict=True))
    assert robot.resets == 3
    stored = EpisodeReader(tmp_path).poll()
    assert [e.episode_id for e in stored] == [e.episode_id for e in eps]
    assert all(e.gt_success is None for e in stored)  # no simulator: no ground truth


def test_an_episode_that_raises_ends_the_chain(tmp_path: Path) -> None:
    """A robot (or the store) raising mid-episode leaves the scene disturbed: the next
    episode starts a fresh scene and chain. It used to go on in that scene as chain
    index 1 linked to the episode before the failure."""

    class FlakyRobot(FakeRobot):
        fail_on: int | None = None
        acts = 0

        def act(self, action: np.ndarray) -> StepResult:
            self.acts += 1
            if self.acts == self.fail_on:
                raise ConnectionError("arm driver lost")
            return super().act(action)

    robot = FlakyRobot()
    reg = DEFAULT_REGISTRY.subset(["lift-any"])
    cfg = CollectConfig(max_chain=3, reset_prob=0.0, reset_after_place=False)
    with EpisodeWriter(tmp_path, "fake", flush_every=100) as w:
        loop = CollectLoop(robot, reg, w, scripted_policy_for, cfg, seed=1)
        first = loop.run_one()
        assert robot.resets == 1 and not loop.needs_reset  # a chain would go on
        robot.fail_on = robot.acts + 2
        with pytest.raises(ConnectionError):
            loop.run_one()
        after = loop.run_one()
    assert robot.resets == 2
    assert (after.chain_index, after.prev_episode_id) == (0, None)
    assert first.chain_index == 0


def test_collect_settings_that_cannot_work_are_clear_errors(tmp_path: Path) -> None:
    from mtopt.tasks.registry import TaskRegistry

    for bad, msg in [
        ({"max_steps": 0}, "max_steps must be >= 1"),
        ({"max_chain": 0}, "max_chain must be >= 1"),
        ({"flush_every": 0}, "flush_every must be >= 1"),
        ({"flush_seconds": 0.0}, "flush_seconds must be > 0"),
        ({"scripted_epsilon": 1.5}, "scripted_epsilon must be in [0, 1]"),
        ({"task_weights": (float("inf"), 1.0)}, "task_weights must be >= 0"),
        ({"task_weights": (0.0, 0.0)}, "task_weights must be >= 0"),
    ]:
        with pytest.raises(ValueError, match=msg.replace("[", r"\[").replace("]", r"\]")):
            CollectConfig(**bad).validate()  # type: ignore[arg-type]
    robot = FakeRobot()
    with EpisodeWriter(tmp_path, "fake") as w:
        with pytest.raises(ValueError, match="no tasks to collect"):
            CollectLoop(robot, TaskRegistry([]), w, scripted_policy_for)
        with pytest.raises(ValueError, match="max_steps must be >= 1"):
            CollectLoop(robot, DEFAULT_REGISTRY, w, scripted_policy_for, CollectConfig(max_steps=0))
    assert robot.resets == 0


def test_placing_ends_the_chain(tmp_path: Path) -> None:
    robot = FakeRobot()
    reg = DEFAULT_REGISTRY.subset(["lift-any", "place-on-plate"])
    with EpisodeWriter(tmp_path, "fake", flush_every=100) as w:
        loop = CollectLoop(
            robot, reg, w, scripted_policy_for, CollectConfig(max_chain=3, reset_prob=0.0), seed=2
        )
        eps = [loop.run_one() for _ in range(30)]
    places = [i for i, e in enumerate(eps[:-1]) if e.task == "place-on-plate"]
    assert places, "the fake robot should have tried some placing"
    assert all(eps[i + 1].chain_index == 0 for i in places)
    # and the switch turns it off: placing can follow placing in one scene again
    robot = FakeRobot()
    with EpisodeWriter(tmp_path / "b", "fake", flush_every=100) as w:
        cfg = CollectConfig(max_chain=3, reset_prob=0.0, reset_after_place=False)
        loop = CollectLoop(robot, reg, w, scripted_policy_for, cfg, seed=2)
        eps = [loop.run_one() for _ in range(30)]
    assert any(
        e.task == "place-on-plate" and eps[i + 1].chain_index > 0 for i, e in enumerate(eps[:-1])
    )


def test_collect_cli_two_robots(tmp_path: Path) -> None:
    res = CliRunner().invoke(
        app, ["collect", "--store", str(tmp_path), "--robots", "2", "--episodes", "3"]
    )
    assert res.exit_code == 0, res.output
    assert "robot-00': 3" in res.output and "robot-01': 3" in res.output
    eps = EpisodeReader(tmp_path).poll()
    assert len(eps) == 6 and all(e.gt_success_by_task is not None for e in eps)
    res = CliRunner().invoke(app, ["store", "stats", str(tmp_path)])
    assert res.exit_code == 0 and "6 episodes" in res.output and (tmp_path / "stats.png").exists()
    res = CliRunner().invoke(app, ["collect", "--store", str(tmp_path), "--tasks", "fly"])
    assert res.exit_code == 2 and "unknown task 'fly'" in res.output
    res = CliRunner().invoke(app, ["collect", "--store", str(tmp_path), "--tasks", " , "])
    assert res.exit_code == 2 and "names no task" in res.output  # (it collected every task)

    # the SD column: a detector published in the run's sd/ next to the store is used
    from mtopt.success.network import SDNetConfig, SuccessDetector, SuccessNet
    from mtopt.tasks import DEFAULT_REGISTRY

    store = tmp_path / "run" / "store"
    store.mkdir(parents=True)
    (tmp_path / "shards").rename(store / "shards")
    res = CliRunner().invoke(app, ["store", "stats", str(store)])
    assert res.exit_code == 0 and "success detector:" not in res.output
    sd = SuccessDetector(SuccessNet(SDNetConfig()), DEFAULT_REGISTRY.names)
    sd.publish(tmp_path / "run" / "sd", 1)
    res = CliRunner().invoke(app, ["store", "stats", str(store)])
    assert res.exit_code == 0 and "success detector:" in res.output, res.output
    rows = [ln.split() for ln in res.output.splitlines() if ln.startswith(("lift-", "place-"))]
    assert rows and all(r[-1].endswith("%") for r in rows)  # every task has an SD rate
    res = CliRunner().invoke(app, ["store", "stats", str(store), "--sd", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "no success detector weights" in res.output
    # a newer writer's shard: one line, not a traceback
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mtopt.store.schema import SCHEMA_KEY

    newer = pa.table({"episode_id": ["x"]}).replace_schema_metadata({SCHEMA_KEY: b"2"})
    pq.write_table(newer, store / "shards" / "robot-00" / "99999999999999999999-000000.parquet")
    res = CliRunner().invoke(
        app, ["store", "stats", str(store), "--sd", str(tmp_path / "run" / "sd")]
    )
    assert res.exit_code == 2 and "unknown schema version 2" in res.output, res.output


def test_sd_scores_leave_out_images_of_another_size(tmp_path: Path) -> None:
    """A store a robot of another camera wrote to: those episodes get no SD score (it
    used to end `mtopt store stats` in a traceback), the others are scored."""
    import torch

    from mtopt.store import EpisodeWriter
    from mtopt.store.stats import sd_scores
    from mtopt.success.network import SDNetConfig, SuccessDetector, SuccessNet
    from mtopt.tasks import DEFAULT_REGISTRY
    from test_store import make_episode

    torch.manual_seed(0)
    with EpisodeWriter(tmp_path, "r0", flush_every=10) as w:
        for i in range(3):
            w.write(make_episode(i, size=16))
        w.write(make_episode(3, size=8))
    net = SuccessNet(SDNetConfig(num_tasks=len(DEFAULT_REGISTRY.names), image_size=16))
    SuccessDetector(net, DEFAULT_REGISTRY.names).publish(tmp_path / "sd", 1)
    scores, other_size = sd_scores(tmp_path, tmp_path / "sd")
    assert sorted(scores) == ["ep00000", "ep00001", "ep00002"] and other_size == 1
    assert all(0.0 <= p <= 1.0 for p in scores.values())
    res = CliRunner().invoke(app, ["store", "stats", str(tmp_path), "--sd", str(tmp_path / "sd")])
    assert res.exit_code == 0 and "1 episodes have images of another size" in res.output


def test_store_stats_by_hand(tmp_path: Path) -> None:
    from mtopt.store import EpisodeWriter
    from mtopt.store.stats import store_stats
    from test_store import make_episode

    with EpisodeWriter(tmp_path, "r0", flush_every=10) as w:
        for i in range(4):  # gt success: 1 and 3
            w.write(make_episode(i))
    s = store_stats(tmp_path, {"ep00000": 0.9, "ep00001": 0.2, "ep00002": 0.7})
    t = s["tasks"]["lift-any"]
    assert s["episodes"] == 4 and t["episodes"] == 4
    assert t["gt_success_rate"] == 0.5
    assert abs(t["sd_success_rate"] - 2 / 3) < 1e-9  # 2 of the 3 scored episodes >= 0.5
    assert store_stats(tmp_path)["tasks"]["lift-any"]["sd_success_rate"] is None
    # at the threshold is a success, as LogReplay's rewards and `mtopt evaluate` judge
    at = store_stats(tmp_path, {"ep00000": 0.5})["tasks"]["lift-any"]["sd_success_rate"]
    assert at == 1.0
    assert s["duplicates"] == 0
    # a client writes episodes 2 and 3 again (a retry): each still counts once, as first
    # written (the copy of 3 says another policy, which is not counted)
    import dataclasses

    with EpisodeWriter(tmp_path, "r1", flush_every=10) as w:
        w.write(make_episode(2))
        w.write(dataclasses.replace(make_episode(3), policy="a-retry"))
    again = store_stats(tmp_path, {"ep00000": 0.9, "ep00001": 0.2, "ep00002": 0.7})
    assert again["duplicates"] == 2 and again["tasks"] == s["tasks"]
    assert again["episodes"] == 4 and again["policies"] == s["policies"]
    assert again["quarantined"] == 0
    # a shard set aside before this read (by the SD scoring that reads the images just
    # before it, or earlier) is counted: the count is of the store's quarantine/
    bad = tmp_path / "quarantine" / "r1" / "00000000000000000001-000000.parquet"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not parquet")
    assert store_stats(tmp_path)["quarantined"] == 1


def test_fleet_restarts_a_killed_robot_and_keeps_its_episodes(tmp_path: Path) -> None:
    import multiprocessing as mp
    import os
    import signal

    from mtopt.collect.fleet import FleetSpec, run_fleet

    spec = FleetSpec(
        store=str(tmp_path),
        robots=1,
        episodes_per_robot=24,
        collect=CollectConfig(flush_every=4, flush_seconds=60),
        sim={},
        seed=3,
    )
    seen = {"n": 0, "killed": False}

    def on_episode(i: int, task: str, policy: str, gt: object) -> None:
        seen["n"] += 1
        if seen["n"] == 10 and not seen["killed"]:
            for child in mp.active_children():
                os.kill(child.pid, signal.SIGKILL)  # type: ignore[arg-type]
            seen["killed"] = True

    summary = run_fleet(spec, on_episode)
    assert seen["killed"] and summary["restarts"][0] >= 1
    eps = EpisodeReader(tmp_path).poll()
    ids = [e.episode_id for e in eps]
    assert (
        len(ids) == len(set(ids)) == 24
    )  # the restarted robot finished the quota, nothing duplicated
    # the same fleet again on this store (a resumed run, or a new run on an old store):
    # new scenes, not the first run's again
    run_fleet(dataclasses.replace(spec, episodes_per_robot=6))
    rows = EpisodeReader(tmp_path).metadata()
    scenes = [r["seed"] for r in rows if r["chain_index"] == 0]
    assert len(rows) == 30 and len(scenes) == len(set(scenes)), "a scene was collected twice"


def test_fleet_restarts_a_robot_stopped_by_sigterm(tmp_path: Path) -> None:
    """A robot takes SIGTERM as a stop and exits 0 after flushing: sent to the robot alone
    (`kill <pid>` on one that looks stuck), the fleet must restart it, not finish a robot
    short (it used to count exit 0 as done: 3 of 8 episodes and no restart)."""
    import multiprocessing as mp
    import os
    import signal

    from mtopt.collect.fleet import FleetSpec, run_fleet

    spec = FleetSpec(
        store=str(tmp_path),
        robots=1,
        episodes_per_robot=8,
        collect=CollectConfig(flush_every=2, flush_seconds=60),
        sim={},
        seed=4,
    )
    seen = {"n": 0}

    def on_episode(i: int, task: str, policy: str, gt: object) -> None:
        seen["n"] += 1
        if seen["n"] == 3:
            for child in mp.active_children():
                os.kill(child.pid, signal.SIGTERM)  # type: ignore[arg-type]

    summary = run_fleet(spec, on_episode)
    assert summary["restarts"][0] == 1 and summary["failed"] == []
    ids = [e.episode_id for e in EpisodeReader(tmp_path).poll()]
    assert len(ids) == len(set(ids)) == 8
    # the same signal sent to the whole group (Ctrl-C, `timeout`): the fleet's own stop
    # arrives a moment after the robot exits, within the grace period, and nothing is
    # restarted (every robot used to be restarted while the run was stopping)
    group = tmp_path / "group"
    stopped_at: list[float] = []

    def signal_group(i: int, task: str, policy: str, gt: object) -> None:
        if not stopped_at:
            for child in mp.active_children():
                os.kill(child.pid, signal.SIGTERM)  # type: ignore[arg-type]
            stopped_at.append(time.monotonic())

    gone_at: list[float] = []

    def group_stop() -> bool:  # the driver's own stop: 0.5 s after its robot has exited
        if not stopped_at or mp.active_children():
            return False
        gone_at.append(time.monotonic())
        return gone_at[-1] - gone_at[0] > 0.5

    summary = run_fleet(
        dataclasses.replace(spec, store=str(group)), signal_group, should_stop=group_stop
    )
    assert summary["restarts"][0] == 0 and summary["failed"] == []
    assert 1 <= len(EpisodeReader(group).metadata()) < 8


def test_sigterm_stops_collect_cleanly_and_flushes(tmp_path: Path) -> None:
    """`mtopt collect` in the background ignores SIGINT; SIGTERM must stop it like Ctrl-C."""
    import re
    import signal
    import subprocess
    import sys
    import time

    store = tmp_path / "store"
    CLI = [sys.executable, "-m", "mtopt.cli"]
    proc = subprocess.Popen(
        [*CLI, "collect", "--store", str(store), "--robots", "1", "--episodes", "100000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not list(store.glob("shards/*/*.parquet")):
            time.sleep(0.5)
        time.sleep(1.0)  # some episodes sit in the writer's buffer now
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert "interrupted: buffered episodes were flushed" in out
    reader = EpisodeReader(store)
    n = len(list(reader.metadata()))
    assert reader.quarantined == []
    ran = sum(int(k) for k in re.findall(r"(\d+) episodes, ground-truth", out))
    assert n == ran > 0  # every episode the robot ran is in the store, buffered ones too


def test_robots_stop_when_their_parent_is_killed_outright(tmp_path: Path) -> None:
    """SIGKILL (or the OOM killer) of `mtopt collect` / `mtopt run` sets no stop event:
    its robot processes went on collecting as orphans, beside a resumed run's robots."""
    import os
    import signal
    import subprocess
    import sys
    import time

    store = tmp_path / "store"
    cli = [sys.executable, "-m", "mtopt.cli", "collect", "--store", str(store)]
    proc = subprocess.Popen(
        [*cli, "--robots", "1", "--episodes", "100000"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )

    def robots() -> list[int]:
        out = []
        for d in Path("/proc").iterdir():
            try:
                if not d.name.isdigit():
                    continue
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
                if ppid == proc.pid and b"spawn_main" in (d / "cmdline").read_bytes():
                    out.append(int(d.name))
            except (OSError, ValueError, IndexError):
                continue
        return out

    def running(pid: int) -> bool:  # not exited (a zombie waits for its new parent)
        try:
            return (Path(f"/proc/{pid}") / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False

    try:
        deadline = time.time() + 120
        while time.time() < deadline and not robots():
            time.sleep(0.5)
        (robot,) = robots()
        proc.kill()
        proc.wait(30)
        deadline = time.time() + 90  # the episode under way ends first
        while time.time() < deadline and running(robot):
            time.sleep(0.5)
        alive = running(robot)
    finally:
        if proc.poll() is None:
            proc.kill()
    if alive:
        os.kill(robot, signal.SIGKILL)
    assert not alive, "the robot went on collecting after its parent was killed"


class CannotHoldRobot(FakeRobot):
    """A robot that cannot put an object in its gripper on request (a real cell with
    nothing graspable left, say)."""

    def prepare_for_task(self, starts_holding: bool) -> bool:
        if starts_holding and not self.held:
            return False
        return super().prepare_for_task(starts_holding)


def test_a_task_the_robot_cannot_set_up_is_skipped_not_stored(tmp_path: Path) -> None:
    """The placing task is drawn but cannot be prepared: no episode of it is stored and
    a task that can run is drawn instead, on the same scene (a reset per miss cost a
    scene each time); with no such task left the loop says so."""
    robot = CannotHoldRobot()
    reg = DEFAULT_REGISTRY.subset(["lift-any", "place-on-plate"])
    with EpisodeWriter(tmp_path, "fake", flush_every=100) as w:
        cfg = CollectConfig(max_chain=1, reset_prob=0.0, chain_place_after_lift=False)
        loop = CollectLoop(robot, reg, w, scripted_policy_for, cfg, seed=3)
        eps = [loop.run_one() for _ in range(12)]
    assert {e.task for e in eps} == {"lift-any"}
    assert loop.unprepared.get("place-on-plate", 0) >= 1
    assert robot.resets == 12  # one per episode (max_chain=1), none per miss
    assert len(EpisodeReader(tmp_path).poll()) == 12
    only_place = DEFAULT_REGISTRY.subset(["place-on-plate"])
    with EpisodeWriter(tmp_path / "b", "fake") as w:
        loop = CollectLoop(CannotHoldRobot(), only_place, w, scripted_policy_for, cfg, seed=3)
        with pytest.raises(RuntimeError, match="could not set up any enabled task"):
            loop.run_one()


class SometimesCannotHoldRobot(FakeRobot):
    """Cannot stage a held object on every third scene (a scene with nothing it can
    pick, ~1 in 200 in the simulated cell)."""

    def __init__(self) -> None:
        super().__init__()
        self.asked = 0

    def prepare_for_task(self, starts_holding: bool) -> bool:
        if starts_holding and not self.held:
            self.asked += 1
            if self.asked % 3 == 0:
                return False
        return super().prepare_for_task(starts_holding)


class CanLifterRobot(FakeRobot):
    """Every lift holds a can; the ball placing task cannot use it (the simulated cell
    refuses a chained episode holding another category)."""

    def prepare_for_task(self, starts_holding: bool, category: str | None = None) -> bool:
        if starts_holding and category not in (None, "can"):
            return False
        return super().prepare_for_task(starts_holding)


def test_a_chained_place_the_held_object_cannot_serve_draws_another_placing_task(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """After a lift holding a can, place-ball-in-bowl cannot be set up: the loop used to
    reset the scene (the lift's chain lost) and warn each time; now another placing task
    goes on with the held can, and a task never set up is warned about once."""
    robot = CanLifterRobot()
    reg = DEFAULT_REGISTRY.subset(["lift-any", "place-any", "place-ball-in-bowl"])
    cfg = CollectConfig(max_chain=2, reset_prob=0.0, reset_after_place=True)
    with caplog.at_level(logging.WARNING), EpisodeWriter(tmp_path, "fake") as w:
        loop = CollectLoop(robot, reg, w, scripted_policy_for, cfg, seed=2)
        eps = [loop.run_one() for _ in range(100)]
    assert loop.unprepared["place-ball-in-bowl"] >= 20
    assert "place-ball-in-bowl" not in {e.task for e in eps}
    chained = [e for e in eps if e.chain_index == 1]
    assert "place-any" in {e.task for e in chained}  # (a lift that missed chains a lift)
    lifts = [i for i, e in enumerate(eps[:-1]) if e.task == "lift-any" and e.chain_index == 0]
    assert lifts and all(eps[i + 1].chain_index == 1 for i in lifts)  # every lift chained
    # a reset per episode that starts a chain, none per miss
    assert robot.resets == sum(e.chain_index == 0 for e in eps)
    warned = [r for r in caplog.records if "could not set up" in r.getMessage()]
    assert len(warned) == 1 and "place-ball-in-bowl on 20 tries" in warned[0].getMessage()


class LiftStartRecorder(FakeRobot):
    """Records whether it holds something when each episode starts."""

    def __init__(self) -> None:
        super().__init__()
        self.held_at_start: list[bool] = []

    def start_episode(self) -> Observation:
        self.held_at_start.append(self.held)
        return super().start_episode()


def test_a_robot_of_one_placing_task_outlasts_scenes_it_cannot_stage(tmp_path: Path) -> None:
    """With one enabled task, the first scene it could not set up used to end the robot
    (no other task left to draw); the fleet then gave it up after its restarts."""
    only_place = DEFAULT_REGISTRY.subset(["place-on-plate"])
    robot = SometimesCannotHoldRobot()
    with EpisodeWriter(tmp_path, "fake") as w:
        cfg = CollectConfig(max_chain=1, reset_prob=0.0)
        loop = CollectLoop(robot, only_place, w, scripted_policy_for, cfg, seed=3)
        eps = [loop.run_one() for _ in range(8)]
    assert {e.task for e in eps} == {"place-on-plate"} and loop.unprepared["place-on-plate"] >= 2


def test_zero_weight_tasks_are_never_drawn_and_a_held_object_is_not_dropped(
    tmp_path: Path,
) -> None:
    """A narrowed pool (holding: the placing tasks) of zero weights fell back to drawing
    them uniformly; and with no placing task to chain, a lift started at the pose the
    last episode presented its object in, and dropped it outside the bin: a fresh scene
    instead."""
    import numpy as np

    from mtopt.collect.loop import choose_task

    tasks = [DEFAULT_REGISTRY.get("lift-any"), DEFAULT_REGISTRY.get("place-any")]
    rng = np.random.default_rng(0)
    drawn = {choose_task(tasks, [1.0, 0.0], True, True, rng).name for _ in range(200)}
    assert drawn == {"lift-any"}
    robot = LiftStartRecorder()
    with EpisodeWriter(tmp_path, "fake") as w:
        cfg = CollectConfig(max_chain=3, reset_prob=0.0, reset_after_place=False)
        reg = DEFAULT_REGISTRY.subset(["lift-any", "place-any"])
        loop = CollectLoop(robot, reg, w, scripted_policy_for, cfg, seed=1)
        loop.weights = [1.0, 0.0]
        eps = [loop.run_one() for _ in range(12)]
    assert {e.task for e in eps} == {"lift-any"}
    assert any(robot.held_at_start) is False
    assert robot.resets > 1


def test_optional_robot_methods_written_as_properties_are_refused(tmp_path: Path) -> None:
    """``holding`` as a property read as "not holding" and ``objects_left`` as 1, without
    a word: a clear error when the loop is made."""
    from mtopt.sim.runner import RobotContractError

    class PropertyRobot(FakeRobot):
        @property  # type: ignore[override]
        def holding(self) -> bool:
            return True

    with (
        EpisodeWriter(tmp_path, "fake") as w,
        pytest.raises(RobotContractError, match="holding must be a method"),
    ):
        CollectLoop(PropertyRobot(), DEFAULT_REGISTRY, w, scripted_policy_for)


def test_rate_wait_holds_a_robot_to_its_rate() -> None:
    from mtopt.collect.fleet import rate_wait

    # 3 episodes at most 2 per second: due at 1.5 s; after 1.0 s, wait 0.5 s
    assert rate_wait(3, 2.0, 1.0) == pytest.approx(0.5)
    assert rate_wait(3, 2.0, 2.0) == 0.0  # behind its rate: no wait
    assert rate_wait(3, 0.0, 0.0) == 0.0  # 0: unlimited


def test_robot_seed_moves_on_with_the_episodes_written_and_ignores_the_clock() -> None:
    from mtopt.collect.fleet import robot_seed

    assert robot_seed(5, 0) == 5
    assert robot_seed(5, 2) == 5 + 2 * 7919  # a restart after 2 episodes: new scenes
    assert robot_seed(5, 2) == robot_seed(5, 2)  # the same store history: the same seed
    # two robots (bases 0 and 1) never share a seed while they wrote under 7919 episodes apart
    assert {robot_seed(0, k) for k in range(50)}.isdisjoint({robot_seed(1, k) for k in range(50)})


def test_collect_with_a_runs_weights_collects_as_the_runs_robots_did(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run's collection settings and parity switch, not the defaults: `tuned`'s 95%
    learned share after parity was 75%, and with no switch file every task was taken
    for one not at parity (50% learned, no proxies)."""
    import dataclasses
    import json

    import mtopt.collect.fleet as fleet
    from mtopt.config import override, save_config
    from mtopt.qtopt.learner import Learner
    from mtopt.runtime.config import preset

    cfg = override(preset("tiny"), ["collect.parity_fraction=0.95", "collect.max_chain=2"])
    save_config(cfg, tmp_path / "run" / "config.json")
    Learner(cfg.qnet).publish(tmp_path / "run" / "weights")
    (tmp_path / "run" / "switch.json").write_text(json.dumps({"learned": ["lift-any"]}))
    seen: list[object] = []

    def capture(spec: object, *a: object, **k: object) -> dict:  # type: ignore[type-arg]
        seen.append(spec)
        return {"written": {}, "restarts": {}, "interrupted": False, "failed": []}

    monkeypatch.setattr(fleet, "run_fleet", capture)
    args = ["collect", "--store", str(tmp_path / "store"), "--episodes", "1"]
    res = CliRunner().invoke(app, [*args, "--weights", str(tmp_path / "run" / "weights")])
    assert res.exit_code == 0, res.output
    spec = seen[-1]
    assert spec.collect == dataclasses.replace(cfg.collect, max_steps=cfg.sim.max_steps)  # type: ignore[attr-defined]
    assert spec.switch_file == str(tmp_path / "run" / "switch.json")  # type: ignore[attr-defined]
    # --tasks replaces the run's tasks (and their weights)
    res = CliRunner().invoke(
        app, [*args, "--weights", str(tmp_path / "run" / "weights"), "--tasks", "lift-ball"]
    )
    assert res.exit_code == 0, res.output
    assert seen[-1].collect.tasks == ("lift-ball",)  # type: ignore[attr-defined]
    assert seen[-1].collect.parity_fraction == 0.95  # type: ignore[attr-defined]
    # beside a live run whose trainer has not written the switch yet: the path still goes
    # to the robots, which re-read it (it used to be dropped: no task ever at parity)
    (tmp_path / "run" / "switch.json").unlink()
    res = CliRunner().invoke(app, [*args, "--weights", str(tmp_path / "run" / "weights")])
    assert res.exit_code == 0, res.output
    assert seen[-1].switch_file == str(tmp_path / "run" / "switch.json")  # type: ignore[attr-defined]


def test_collect_with_a_runs_weights_collects_the_runs_own_tasks(tmp_path: Path) -> None:
    """`mtopt collect --weights RUN/weights` for a run with a task of its own: the robots
    know the task (and the network's 14 inputs); it used to fail on the built-in 13."""
    import json

    from mtopt.config import save_config
    from mtopt.qtopt.learner import Learner
    from mtopt.qtopt.networks import QNetConfig
    from mtopt.runtime.config import RunConfig
    from mtopt.sim.cell import SimConfig

    task = {"name": "place-can-on-plate", "kind": "place", "fixtures": ["plate"], "category": "can"}
    cfg = RunConfig(  # a cell of its own: the weights act in it (they took 64 pixels)
        qnet=QNetConfig(
            num_tasks=14, image_size=32, tower_channels=8, head_channels=8, fc_units=16
        ),
        sim=SimConfig(image_size=32, max_steps=4),
        extra_tasks=(task,),
    )
    save_config(cfg, tmp_path / "run" / "config.json")
    Learner(cfg.qnet).publish(tmp_path / "run" / "weights")
    args = ["collect", "--store", str(tmp_path / "store"), "--robots", "1", "--episodes", "2"]
    args += ["--tasks", "place-can-on-plate", "--weights", str(tmp_path / "run" / "weights")]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    rows = EpisodeReader(tmp_path / "store").metadata()
    assert [r["task"] for r in rows] == ["place-can-on-plate"] * 2
    eps = list(EpisodeReader(tmp_path / "store").episodes())
    assert all(e.final_image.shape == (32, 32, 3) and e.num_steps <= 4 for e in eps)
    res = CliRunner().invoke(app, [*args[:7], "--tasks", "place-can-on-plate"])  # no run
    assert res.exit_code == 2 and "unknown task 'place-can-on-plate'" in res.output
    assert json.loads((tmp_path / "run" / "config.json").read_text())["extra_tasks"] == [task]
    # the run folder instead of its weights, or no folder: refused (it collected scripted)
    for where, says in ((tmp_path / "run", "is a run folder"), (tmp_path / "x", "no such folder")):
        res = CliRunner().invoke(app, [*args[:-1], str(where)])
        assert res.exit_code == 2 and says in res.output, res.output


def test_collect_weights_that_are_a_file_say_so(tmp_path: Path) -> None:
    """A file for --weights was called "no such folder"."""
    (tmp_path / "q.safetensors").write_bytes(b"")
    args = ["collect", "--store", str(tmp_path / "store"), "--robots", "1", "--episodes", "1"]
    res = CliRunner().invoke(app, [*args, "--weights", str(tmp_path / "q.safetensors")])
    assert res.exit_code == 2 and "is a file, not a folder" in res.output, res.output
    assert not (tmp_path / "store").exists()


class NoSeedRobot(FakeRobot):
    """A real cell has no scene seed: its description says None."""

    def scene_description(self) -> dict:
        return {"seed": None, "site": "lab-2"}


class WildPolicy:
    """A policy gone wrong: NaN in its action."""

    name, version = "wild", 0

    def reset(self, task: str, rng: np.random.Generator) -> None:
        pass

    def act(self, obs: Observation) -> np.ndarray:
        return np.array([0.0, 0.0, np.nan, 0.0, -1.0, -1.0], np.float32)


def test_a_real_cell_without_seeds_and_a_policy_gone_wrong(tmp_path: Path) -> None:
    """A scene description whose seed is None stores seed -1 (it raised after the episode
    had run); an action with NaN is refused before it reaches the robot."""
    from mtopt.robots.action import InvalidActionError
    from mtopt.sim.runner import run_episode

    reg = DEFAULT_REGISTRY.subset(["lift-any"])
    with EpisodeWriter(tmp_path, "fake", flush_every=100) as w:
        loop = CollectLoop(NoSeedRobot(), reg, w, scripted_policy_for, CollectConfig(), seed=1)
        ep = loop.run_one()
    assert ep.seed == -1 and ep.scene["site"] == "lab-2"
    robot = FakeRobot()
    sent: list[np.ndarray] = []
    robot.act = lambda a: sent.append(a)  # type: ignore[method-assign,assignment,func-returns-value]
    with pytest.raises(InvalidActionError, match="non-finite"):
        run_episode(robot, WildPolicy(), reg.get("lift-any"), np.random.default_rng(0), 5)
    assert sent == []


class DeafRobot(FakeRobot):
    """Ignores TERMINATE: the episode would run on past its end."""

    def act(self, action: np.ndarray) -> StepResult:
        return StepResult(super().act(action).observation, False)


class BigCameraRobot(FakeRobot):
    """Says 8 pixels, sends 16 from its second observation on."""

    def act(self, action: np.ndarray) -> StepResult:
        super().act(action)
        return StepResult(
            Observation(np.zeros((16, 16, 3), np.uint8), np.zeros(2, np.float32)), False
        )


class NaNRobot(FakeRobot):
    def observe(self) -> Observation:
        return Observation(np.zeros((8, 8, 3), np.uint8), np.array([0.0, np.nan], np.float32))


class MillimetreRobot(FakeRobot):
    def observe(self) -> Observation:
        return Observation(np.zeros((8, 8, 3), np.uint8), np.array([0.0, 150.0], np.float32))


class DegreesRobot(FakeRobot):
    def observe(self) -> Observation:
        state, pose = np.array([1.0, 0.15], np.float32), np.array([0, 0.1, 0.15, 90.0])
        return Observation(np.zeros((8, 8, 3), np.uint8), state, pose.astype(np.float32))


class GymStyleRobot(FakeRobot):
    def act(self, action: np.ndarray) -> StepResult:
        r = super().act(action)
        return (r.observation, 0.0, r.terminated, False, {})  # type: ignore[return-value]


class ForgetfulRobot(FakeRobot):
    def prepare_for_task(self, starts_holding: bool) -> bool:
        super().prepare_for_task(starts_holding)  # and no return
        return None  # type: ignore[return-value]


class TextSeedRobot(FakeRobot):
    def scene_description(self) -> dict:
        return {"seed": "cell-a/2026-12-05T10:00", "site": "lab-2"}


@pytest.mark.parametrize(
    ("robot", "says"),
    [
        (DeafRobot(), "sent TERMINATE at step 1 and returned terminated=False"),
        (BigCameraRobot(), r"act\(\) at step 1 gave a \(16, 16, 3\) image; its image_size 8"),
        (NaNRobot(), r"observe\(\) gave a state that is not finite"),
        (MillimetreRobot(), r"gripper_height 150 is outside \[-0.1, 2\] \(metres above"),
        (DegreesRobot(), r"pose yaw 90 is outside \[-6.28, 6.28\] \(radians, not degrees\)"),
        (GymStyleRobot(), "must return a StepResult"),
        (ForgetfulRobot(), "prepare_for_task must return True or False, got None"),
    ],
)
def test_a_robot_that_breaks_the_protocol_is_named_at_once(robot: FakeRobot, says: str) -> None:
    """Each of these used to be stored (TERMINATE mid-episode, other image sizes, NaN) or
    to fail far away (a bare numpy or attribute error)."""
    from mtopt.robots.action import make_action
    from mtopt.sim.runner import RobotContractError, run_episode

    class Terminate:
        name, version = "t", 0

        def reset(self, task: str, rng: np.random.Generator) -> None:
            pass

        def act(self, obs: Observation) -> np.ndarray:
            return make_action(terminate=True)

    task = DEFAULT_REGISTRY.get("lift-any")
    with pytest.raises(RobotContractError, match=f"robot fake: .*{says}"):
        run_episode(robot, Terminate(), task, np.random.default_rng(0), 5)


def test_a_text_scene_seed_is_stored_as_unknown(tmp_path: Path) -> None:
    from mtopt.collect.loop import stored_seed

    reg = DEFAULT_REGISTRY.subset(["lift-any"])
    with EpisodeWriter(tmp_path, "fake", flush_every=100) as w:
        loop = CollectLoop(TextSeedRobot(), reg, w, scripted_policy_for, CollectConfig(), seed=1)
        ep = loop.run_one()
    assert ep.seed == -1 and ep.scene["seed"] == "cell-a/2026-12-05T10:00"
    assert [stored_seed(v) for v in (7, np.int64(7), True, 2**63, 7.0, None)] == [
        7,
        7,
        -1,
        -1,
        -1,
        -1,
    ]


def test_replay_leaves_out_episodes_a_q_network_cannot_take(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Another camera size or NaN from a driver: left out with a count (they stopped
    ingestion, and with it the run, at the success detector's stack)."""
    import dataclasses

    from tests.test_store import make_episode

    from mtopt.qtopt.networks import QNetConfig
    from mtopt.replay.source import replay_items

    good = make_episode(0, size=8)
    big = make_episode(1, size=16)
    nan = dataclasses.replace(make_episode(2, size=8), states=np.full((4, 2), np.nan, np.float32))
    with caplog.at_level("WARNING"):
        items = replay_items([good, big, nan], QNetConfig(image_size=8, merge_size=2))
    assert [ep.episode_id for ep, _ in items] == [good.episode_id]
    assert "left out 2 episodes whose images are not 8x8 pixels" in caplog.text


def test_observations_from_plain_lists() -> None:
    """A robot driver's lists become arrays; what does not fit is a clear ValueError."""
    o = Observation([[[0, 255, 3]]], [0.5, 0.1], [0.0, 0.1, 0.2, 0.3])
    assert o.image.dtype == np.uint8 and o.image.shape == (1, 1, 3)
    assert o.state.dtype.kind == "f" and o.pose is not None and o.pose.shape == (4,)
    with pytest.raises(ValueError, match=r"0\.\.255"):
        Observation([[[0, 256, 3]]], [0.5, 0.1])
    with pytest.raises(ValueError, match=r"Observation\.state"):
        Observation([[[0, 1, 3]]], [1, 0])  # ints: not a float state
    with pytest.raises(ValueError, match="pose must be numeric"):
        Observation([[[0, 1, 3]]], [0.5, 0.1], ["a", "b", "c", "d"])


def test_a_robot_that_keeps_failing_is_reported_and_collect_exits_non_zero(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A robot process that fails at every start (here: a cell setting it cannot take) is
    given up after its restarts and named in the summary; `mtopt collect` then exits 1
    (it printed a summary of nothing and exited 0). A negative seed is refused up front."""
    from mtopt.collect import fleet

    spec = fleet.FleetSpec(
        store=str(tmp_path / "s"),
        robots=1,
        episodes_per_robot=2,
        collect=CollectConfig(),
        sim={"object_split": "nowhere"},  # the robot's SimConfig.validate raises
        seed=0,
    )
    summary = fleet.run_fleet(spec, max_restarts=1)
    assert summary["failed"] == [0] and summary["restarts"] == {0: 1}
    assert summary["written"] == {}
    # deaths further apart than the window are occasional faults: they do not add up
    # (they used to use up a robot's restarts for good over a long run)
    assert fleet.recent_deaths([0.0, 100.0], 650.0, 600.0) == [100.0, 650.0]
    assert fleet.recent_deaths([0.0, 100.0], 1000.0, 600.0) == [1000.0]
    assert fleet.recent_deaths([], 5.0, 600.0) == [5.0]
    res = CliRunner().invoke(app, ["collect", "--store", str(tmp_path / "t"), "--seed", "-1"])
    assert res.exit_code == 2 and "greater than or equal to 0" in res.output
    real = fleet.run_fleet
    monkeypatch.setattr(
        fleet,
        "run_fleet",
        lambda s, cb=None: real(dataclasses.replace(s, sim=spec.sim), cb, None, 1),
    )
    res = CliRunner().invoke(
        app, ["collect", "--store", str(tmp_path / "u"), "--robots", "1", "--episodes", "1"]
    )
    assert res.exit_code == 1 and "gave up" in res.output


def test_the_readmes_real_robot_snippet_runs_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's "A real robot" code, with the simulated cell as ``MyArm`` and two
    episodes instead of ``while True``: its names, arguments and order must work."""
    import re

    from mtopt.config import save_config
    from mtopt.robots.sim_robot import SimRobot
    from mtopt.runtime.config import preset
    from mtopt.sim.config import SimConfig

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme[readme.index("## A real robot") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)  # type: ignore[union-attr]
    assert "while True:" in code
    code = code.replace("while True:", "for _ in range(2):")
    monkeypatch.chdir(tmp_path)
    save_config(preset("tiny"), tmp_path / "runs" / "cell-a" / "config.json")

    def my_arm(robot_id: str) -> SimRobot:
        return SimRobot(SimConfig(image_size=preset("tiny").sim.image_size), robot_id)

    exec(compile(code, "README.md", "exec"), {"MyArm": my_arm})
    episodes = list(EpisodeReader(tmp_path / "runs" / "cell-a" / "store").episodes())
    assert len(episodes) >= 2 and {e.robot_id for e in episodes} == {"arm-1"}
    assert {e.task for e in episodes} <= {"lift-any", "place-any"}


def test_robot_factory_specs_are_checked_with_clear_errors() -> None:
    from mtopt.robots.factory import check_factory_spec, load_robot_factory, make_robot
    from mtopt.robots.sim_robot import SimRobot
    from mtopt.sim.cell import SimConfig
    from mtopt.sim.runner import RobotContractError

    for bad in ("tests.robot_factories", "a:b:c", ":make_arm", "my arms:make", "x:1y"):
        with pytest.raises(ValueError, match="MODULE:NAME"):
            check_factory_spec(bad)
    assert check_factory_spec("") == "" and check_factory_spec("a.b:C.d") == "a.b:C.d"
    with pytest.raises(ValueError, match="cannot import 'no_such_arms_module'"):
        load_robot_factory("no_such_arms_module:make")
    with pytest.raises(ValueError, match="has no 'make_leg'"):
        load_robot_factory("tests.robot_factories:make_leg")
    with pytest.raises(ValueError, match="is a int, not callable"):
        load_robot_factory("tests.robot_factories:NOT_CALLABLE")
    # a module that fails as it is imported (a missing driver): a one-line error too
    with pytest.raises(ValueError, match=r"importing 'tests\.arms_without_driver' failed: Runtime"):
        load_robot_factory("tests.arms_without_driver:make_arm")
    sim = SimConfig()
    default = make_robot("", sim, "robot-03", seed=1)
    assert isinstance(default, SimRobot) and default.robot_id == "robot-03"
    default.close()
    arm = make_robot("tests.robot_factories:make_arm", sim, "robot-01", seed=1)
    assert type(arm).__name__ == "ArmWithoutTruth" and arm.robot_id == "robot-01"
    arm.close()
    from mtopt.robots.factory import gripper_status_mismatch

    class Reading:  # a wrapper keeping its current reading under that name: no declaration
        gripper_status = 0.0

    assert gripper_status_mismatch(Reading(), sim) is None
    Reading.gripper_status = "binary"  # type: ignore[assignment]
    assert "none of closure, command" in str(gripper_status_mismatch(Reading(), sim))
    binary = make_robot(  # a run whose cell reads the binary status: accepted
        "tests.robot_factories:make_binary_gripper_arm",
        dataclasses.replace(sim, gripper_status="command"),
        "robot-01",
        seed=1,
    )
    binary.close()
    for name, match in (
        ("make_misnamed_arm", "asked for robot 'robot-01' and made one whose robot_id is 'arm-7'"),
        ("make_small_camera_arm", f"image_size {sim.image_size // 2}; the run's networks take"),
        ("make_half_arm", "without the Robot method\\(s\\) reset_scene, start_episode"),
        ("make_binary_gripper_arm", "whose gripper status is 'command', where the run's"),
    ):
        with pytest.raises(RobotContractError, match=match):
            make_robot(f"tests.robot_factories:{name}", sim, "robot-01", seed=1)


def test_collect_takes_the_gripper_status_a_binary_gripper_reports(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from mtopt.cli import app

    args = ["collect", "--store", str(tmp_path / "s"), "--robots", "1", "--episodes", "1"]
    args += ["--robot-factory", "tests.robot_factories:make_binary_gripper_arm"]
    res = CliRunner().invoke(app, [*args, "--gripper-status", "binary"])
    assert res.exit_code == 2 and "closure or command" in res.output
    res = CliRunner().invoke(app, [*args, "--gripper-status", "command", "--tasks", "lift-any"])
    assert res.exit_code == 0, res.output
    assert len(EpisodeReader(tmp_path / "s").metadata()) == 1


def test_a_fleet_of_a_users_own_robots_fills_the_store(tmp_path: Path) -> None:
    """``robot_factory``: the fleet's processes drive the robots the factory makes (here
    a stand-in for a real arm, with no ground truth), under the fleet's robot ids; the
    collect command takes the same factory and reports no ground truth it does not have."""
    from mtopt.collect.fleet import FleetSpec, run_fleet

    spec = FleetSpec(
        store=str(tmp_path / "a"),
        robots=2,
        episodes_per_robot=3,
        collect=CollectConfig(tasks=("lift-any",), flush_every=2, flush_seconds=60),
        sim={},
        seed=5,
        robot_factory="tests.robot_factories:make_arm",
    )
    summary = run_fleet(spec)
    assert summary["written"] == {"robot-00": 3, "robot-01": 3} and not summary["failed"]
    rows = EpisodeReader(tmp_path / "a").metadata()
    assert len(rows) == 6 and all(r["gt_success"] is None for r in rows)  # no scene_state
    assert all(r["seed"] == -1 for r in rows)  # a real cell's scene id is no int seed
    with pytest.raises(ValueError, match="cannot import 'no_such_arms_module'"):
        run_fleet(dataclasses.replace(spec, robot_factory="no_such_arms_module:make"))

    args = ["collect", "--store", str(tmp_path / "b"), "--robots", "1", "--episodes", "2"]
    res = CliRunner().invoke(app, [*args, "--robot-factory", "tests.robot_factories:make_arm"])
    assert res.exit_code == 0, res.output
    assert "ground-truth success    n/a" in res.output
    res = CliRunner().invoke(app, [*args, "--robot-factory", "tests.robot_factories:make_leg"])
    assert res.exit_code == 2 and "has no 'make_leg'" in res.output


def test_a_robot_the_runs_checks_refuse_is_not_restarted(tmp_path: Path) -> None:
    """A robot that does not fit the run (a 32-pixel camera on a 64-pixel run) fails the
    same way every time: it was restarted five times, connecting and closing a real arm
    each time with a traceback, and ended with "kept failing"."""
    from mtopt.collect.fleet import FleetSpec, run_fleet

    spec = FleetSpec(
        store=str(tmp_path / "a"),
        robots=1,
        episodes_per_robot=2,
        collect=CollectConfig(tasks=("lift-any",)),
        sim={},
        seed=5,
        robot_factory="tests.robot_factories:make_small_camera_arm",
    )
    summary = run_fleet(spec)
    assert summary["failed"] == [0] and summary["restarts"] == {0: 0}
    assert "image_size 32" in summary["refused"]["robot-00"]
    args = ["collect", "--store", str(tmp_path / "b"), "--robots", "1", "--episodes", "1"]
    args += ["--robot-factory", "tests.robot_factories:make_small_camera_arm"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2, res.output
    assert "error: robot robot-00 does not fit this collection: " in res.output


def test_collect_refuses_a_store_of_another_image_size(tmp_path: Path) -> None:
    """64-pixel episodes appended to a store of 8-pixel ones made a store that the
    success detector's tools and LogReplay could not read as one."""
    from mtopt.store import EpisodeWriter
    from mtopt.store.reader import stored_image_size
    from test_store import make_episode

    assert stored_image_size(tmp_path) is None
    with EpisodeWriter(tmp_path, "r0") as w:
        w.write(make_episode(0, size=8))
    assert stored_image_size(tmp_path) == (8, 8)
    res = CliRunner().invoke(app, ["collect", "--store", str(tmp_path), "--episodes", "1"])
    assert res.exit_code == 2 and "holds 8x8-pixel episodes; these robots give 64x64" in (
        res.output
    ), res.output
    assert len(EpisodeReader(tmp_path).metadata()) == 1


def test_a_robot_that_refills_one_frame_buffer_is_stored_frame_by_frame(tmp_path: Path) -> None:
    """Many camera and driver stacks hand out one preallocated array, refilled each frame:
    every stored frame (and state) was the last one written, without a word."""

    class OneBuffer(FakeRobot):
        def __init__(self) -> None:
            super().__init__()
            self.frames = 0
            self.img = np.zeros((8, 8, 3), np.uint8)
            self.state = np.zeros(2, np.float32)

        def _obs(self) -> Observation:
            self.frames += 1
            self.img[...] = self.frames
            self.state[:] = (self.closed, self.h)
            return Observation(self.img, self.state, None)

        def final_image(self) -> np.ndarray:
            self.img[...] = 255
            return self.img

    robot = OneBuffer()
    reg = DEFAULT_REGISTRY.subset(["lift-any"])
    with EpisodeWriter(tmp_path, "fake", flush_every=100) as w:
        loop = CollectLoop(robot, reg, w, scripted_policy_for, CollectConfig(), seed=1)
        eps = [loop.run_one() for _ in range(2)]
    (first, _), stored = eps, EpisodeReader(tmp_path).poll()
    frames = [int(im[0, 0, 0]) for im in stored[0].images]
    assert frames == list(range(frames[0], frames[0] + len(frames)))  # each its own frame
    heights = stored[0].states[:, 1]
    assert len(set(heights.round(4).tolist())) > 1  # the scripted pick moves down and up
    assert int(stored[0].final_image[0, 0, 0]) == 255
    assert np.array_equal(stored[0].images, first.images)


def test_a_task_of_weight_0_is_not_collected_where_the_others_cannot_be_set_up(
    tmp_path: Path,
) -> None:
    """A task of weight 0 was drawn (uniformly) on every scene where no task of positive
    weight could be set up: a place-ball-in-bowl robot gave half its episodes to
    place-any."""

    class NoBall(FakeRobot):
        def prepare_for_task(self, starts_holding: bool, category: str | None = None) -> bool:
            if category is not None:
                return False  # no object of that category in this scene
            return super().prepare_for_task(starts_holding)

    reg = DEFAULT_REGISTRY.subset(["place-ball-in-bowl", "place-any"])
    cfg = CollectConfig(task_weights=(1.0, 0.0))
    with EpisodeWriter(tmp_path, "fake", flush_every=100) as w:
        loop = CollectLoop(NoBall(), reg, w, scripted_policy_for, cfg, seed=1)
        with pytest.raises(RuntimeError, match="could not set up any enabled task"):
            loop.run_one()
    assert not EpisodeReader(tmp_path, must_exist=False).metadata()
