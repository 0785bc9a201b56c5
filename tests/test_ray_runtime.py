"""Ray runtime: the tiny config on a local Ray (num_cpus=2) with actors killed by SIGKILL."""

import json
import os
import signal
from pathlib import Path

import pytest
import torch

from mtopt.config import override
from mtopt.runtime.config import preset
from mtopt.store import EpisodeReader

if os.environ.get("CI"):  # CI installs ray: a failed import there is a failure, not a skip
    import ray
else:
    ray = pytest.importorskip("ray")
pytestmark = pytest.mark.ray


@pytest.mark.timeout(600)
def test_ray_run_survives_killed_actors(tmp_path: Path) -> None:
    from mtopt.runtime.ray_runtime import run_ray

    # the robots are a user's own (robot_factory: a stand-in for a real arm, with no
    # ground truth), made again by the factory when an actor is restarted; evaluated in
    # the simulated cell (eval.on=sim), where the end-of-run average is evaluated too
    factory = "robot_factory=tests.robot_factories:make_arm"
    settings = ["robots=2", "max_learner_steps=40", "max_episodes=0", "budget_minutes=6"]
    cfg = override(preset("tiny"), [*settings, factory, "eval.on=sim"])
    killed: dict[str, int] = {}

    def kill(robots: list, replays: list, step: int) -> None:  # type: ignore[type-arg]
        if step >= 8 and "robot" not in killed:
            pid = ray.get(robots[0].pid.remote())
            os.kill(pid, signal.SIGKILL)
            killed["robot"] = pid
        if step >= 16 and "replay" not in killed:
            pid = ray.get(replays[0].pid.remote())
            os.kill(pid, signal.SIGKILL)
            killed["replay"] = pid

    summary = run_ray(cfg, tmp_path / "run", kill_hook=kill)
    assert set(killed) == {"robot", "replay"}
    assert summary["learner_steps"] >= 40  # training went on after both kills
    reader = EpisodeReader(tmp_path / "run" / "store")
    ids = [e.episode_id for e in reader.episodes()]
    assert reader.quarantined == []  # every shard that exists is complete
    assert len(ids) == len(set(ids)) > 0  # no episode duplicated
    robots = {r["robot_id"] for r in reader.metadata()}
    assert robots == {"robot-00", "robot-01"}
    assert all(r["gt_success"] is None for r in reader.metadata())  # the factory's arms
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["runtime"] == "ray"
    # its config says so, though the preset said 'local': a resume goes on on Ray
    assert json.loads((tmp_path / "run" / "config.json").read_text())["runtime"] == "ray"
    # the count of episodes never goes down, though the killed replay actor re-read its part
    counts = [p["episodes"] for p in json.loads((tmp_path / "run" / "history.json").read_text())]
    assert counts == sorted(counts) and summary["episodes"] >= counts[-1]
    # the tiny preset ends by averaging the latest weights with the last snapshots
    sources = summary["averaged"]["averaged"]["sources"]
    assert sources[0]["step"] == summary["learner_steps"] and len(sources) >= 2
    assert (tmp_path / "run" / "policy-averaged" / "evaluation.json").exists()


@pytest.mark.timeout(600)
def test_ray_run_relabels_and_retrains_the_sd_and_ingests_the_last_episodes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SD relabel rounds on Ray as on the local runtime (they used to be local only), and
    the summary counts every stored episode once: two replay workers, each reading its
    part of the store, and the episodes the last robot calls flushed. The run has a task
    of its own (``--tasks-file``): its robots and replay workers use the run's registry."""
    from mtopt.qtopt.learner import Learner
    from mtopt.runtime.config import with_new_tasks
    from mtopt.runtime.local import LocalRun
    from mtopt.runtime.ray_runtime import driver_threads, run_ray

    task = {"name": "place-can-on-plate", "kind": "place", "fixtures": ["plate"], "category": "can"}
    tasks = tmp_path / "tasks.json"
    tasks.write_text(json.dumps([task]))
    cfg = override(
        preset("tiny"),
        [
            "robots=2",
            "max_learner_steps=120",  # time for the driver's tail to see 20 episodes
            "max_episodes=0",
            "budget_minutes=6",
            "replay_workers=2",  # each reads its part of the store
            "sd.improve_every_episodes=20",
            "sd.improve_growth=1.0",
            "checkpoint_every=1000",  # no scheduled checkpoint: only the rounds' own
            "eval.every_steps=1000",  # nor an evaluation's (each is checkpointed at once)
            "collect.flush_seconds=600",  # shards of flush_every (16), however slow the CI
        ],
    )
    # a finished round is checkpointed with its labels at once, mid-run
    saved: list[int] = []
    threads: list[int] = []  # torch's threads at each checkpoint, then at the end
    save = Learner.save_checkpoint
    monkeypatch.setattr(
        Learner,
        "save_checkpoint",
        lambda s, path, extra=None: (
            saved.append(extra["sd_labels"])
            or threads.append(torch.get_num_threads())
            or save(s, path, extra)
        ),
    )
    finish = LocalRun.finish
    monkeypatch.setattr(
        LocalRun,
        "finish",
        lambda s, *a, **k: (
            saved.append(-1) or threads.append(torch.get_num_threads()) or finish(s, *a, **k)
        ),
    )
    before = torch.get_num_threads()
    many = (os.cpu_count() or 2) + 3  # more than the 4 actors leave on any machine
    torch.set_num_threads(many)
    try:
        summary = run_ray(with_new_tasks(cfg, tasks, None), tmp_path / "run")
        # the learner ran on the cores the local actors left (the checkpoints before
        # finish); the final evaluation and its checkpoints have all again
        end = saved.index(-1)
        assert set(threads[:end]) == {driver_threads(os.cpu_count() or 2, 2, 2)}
        assert set(threads[end:]) == {many} and torch.get_num_threads() == many
    finally:
        torch.set_num_threads(before)
    assert saved.index(-1) > 0 and all(n > 0 for n in saved[: saved.index(-1)]), saved
    assert summary["sd_version"] >= 2 and summary["sd_episode_labels"] > 0
    assert (tmp_path / "run" / "sd" / "episode_labels.npz").exists()
    stored = [r for r in EpisodeReader(tmp_path / "run" / "store").metadata() if r["num_steps"]]
    assert summary["episodes"] == len(stored)  # the writers' buffers flushed before counting
    # shards as the writers' flush policy makes them (each call of 4 was one shard)
    shards = list((tmp_path / "run" / "store").rglob("*.parquet"))
    assert len(stored) / len(shards) > 4, (len(stored), len(shards))
    # the report as the local runtime's: the workers' buffers and batch composition
    # (impersonation puts an episode into every task of its skill: at most once each)
    held = [s + f for s, f in summary["buffer_sizes"].values()]
    assert sum(held) > 0 and max(held) <= len(stored)
    assert (tmp_path / "run" / "report" / "batch_composition.png").exists()
    # the new task is the Q-network's last and gets the place episodes, relabeled
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["extra_tasks"] == [task] and saved["qnet"]["num_tasks"] == 14
    assert summary["composition"]["place-can-on-plate"]["impersonated"] > 0
    assert "place-can-on-plate" in summary["buffer_sizes"]


@pytest.mark.timeout(600)
def test_an_interrupted_ray_run_counts_every_stored_episode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM (Ctrl-C alike, KeyboardInterrupt in the driver's loop): the robots' calls under way end
    and the summary counts every episode in the store (it used to skip that count and
    report the last poll's). Each mid-run evaluation is checkpointed at once (a kill
    before the next scheduled checkpoint lost its point for good). The robots collect
    while the driver evaluates: during the first evaluation the store grows by about three
    calls of every robot (they used to idle after their call under way: a dozen at most),
    and each mid-run one is at a multiple of eval.every_steps."""
    import time

    from mtopt.qtopt.learner import Learner
    from mtopt.runtime.local import LocalRun
    from mtopt.runtime.ray_runtime import run_ray

    cfg = override(
        preset("tiny"),
        [
            "robots=2",
            "max_learner_steps=400",
            "max_episodes=0",
            "budget_minutes=6",
            "checkpoint_every=1000",
            "eval.every_steps=8",
            "collect.flush_every=3",  # a buffer left at the stop: the count must flush it
        ],
    )
    events: list[tuple[str, int]] = []
    grew: list[int] = []
    save, evaluate = Learner.save_checkpoint, LocalRun._evaluate
    monkeypatch.setattr(
        Learner,
        "save_checkpoint",
        lambda s, path, extra=None: events.append(("checkpoint", s.step)) or save(s, path, extra),
    )

    def in_store() -> int:
        return sum(1 for _ in EpisodeReader(tmp_path / "run" / "store").metadata())

    def evaluating(s, learner, *a):  # type: ignore[no-untyped-def]
        events.append(("eval", learner.step))
        if not grew:  # the first: wait (bounded) for three calls of 4 episodes per robot
            start, end = in_store(), time.time() + 240  # (less what the buffers hold)
            while in_store() - start < 20 and time.time() < end:
                time.sleep(0.5)
            grew.append(in_store() - start)
        return evaluate(s, learner, *a)

    monkeypatch.setattr(LocalRun, "_evaluate", evaluating)

    from mtopt._signals import stop_on_sigterm

    def interrupt(robots: list, replays: list, step: int) -> None:  # type: ignore[type-arg]
        if step >= 20:  # SIGTERM, as `mtopt run` gets it from kill or a scheduler
            os.kill(os.getpid(), signal.SIGTERM)

    # ray.init made SIGTERM exit the driver (no checkpoint, no report); under `mtopt
    # run`'s handler it stops as Ctrl-C does
    with stop_on_sigterm():
        summary = run_ray(cfg, tmp_path / "run", kill_hook=interrupt)
    assert grew[0] >= 20, grew  # the robots went on collecting through the evaluation
    assert (tmp_path / "run" / "summary.json").exists()
    assert 20 <= summary["learner_steps"] < 400
    evals = [i for i, (what, _) in enumerate(events) if what == "eval"]
    assert len(evals) >= 2, events  # one mid-run at least, and the final one
    # mid-run at the multiples of every_steps themselves (a driver's loop trains several
    # batches: the points used to land after them, up to 4 x replay_workers - 1 past)
    assert all(events[i][1] % 8 == 0 for i in evals[:-1]), events
    for i in evals:
        assert events[i + 1] == ("checkpoint", events[i][1]), events
    stored = [r for r in EpisodeReader(tmp_path / "run" / "store").metadata() if r["num_steps"]]
    assert summary["episodes"] == len(stored) > 0
    assert (tmp_path / "run" / "checkpoints" / "learner.pt").exists()


@pytest.mark.timeout(900)
def test_a_resumed_ray_run_goes_on_with_new_scenes_and_its_counters(tmp_path: Path) -> None:
    """Resume on Ray: the learner goes on from its checkpoint, the SD round counters come
    back, and each robot goes on to new scenes (its seed follows the episodes it wrote;
    it used to add the wall clock)."""
    import torch

    from mtopt.runtime.ray_runtime import run_ray

    sets = ["robots=2", "max_episodes=0", "budget_minutes=6", "sd.improve_every_episodes=20"]
    first = run_ray(override(preset("tiny"), [*sets, "max_learner_steps=40"]), tmp_path / "run")
    extra = torch.load(tmp_path / "run" / "checkpoints" / "learner.pt", weights_only=False)["extra"]
    assert extra["sd_labels"] == first["sd_episode_labels"]
    second = run_ray(
        override(preset("tiny"), [*sets, "max_learner_steps=80"]), tmp_path / "run", resume=True
    )
    assert first["learner_steps"] == 40 and second["learner_steps"] == 80
    assert second["sd_episode_labels"] >= first["sd_episode_labels"]
    rows = EpisodeReader(tmp_path / "run" / "store").metadata()
    # a chain's later tasks share its scene: count each scene at its first task
    scenes = [(r["robot_id"], r["seed"]) for r in rows if r["chain_index"] == 0]
    assert len(scenes) == len(set(scenes)), "a robot collected a scene seed twice"
    # a resume that has nothing left to train still counts the whole store, read one
    # shard a poll (its end read one poll's worth and reported that); with max_episodes
    # already in the store it starts no robots (they collected during the re-read)
    one = "replay.read_shards_per_poll=1"
    before = len(EpisodeReader(tmp_path / "run" / "store").metadata())
    third = run_ray(
        override(preset("tiny"), [*sets, "max_learner_steps=80", one, f"max_episodes={before}"]),
        tmp_path / "run",
        resume=True,
    )
    assert len(EpisodeReader(tmp_path / "run" / "store").metadata()) == before
    stored = [r for r in EpisodeReader(tmp_path / "run" / "store").metadata() if r["num_steps"]]
    shards = list((tmp_path / "run" / "store" / "shards").glob("*/*.parquet"))
    assert third["learner_steps"] == 80 and len(shards) > 4
    assert third["episodes"] == len(stored)


@pytest.mark.timeout(300)
def test_replay_actors_that_give_no_batches_stop_the_run_with_a_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The driver used to wait for the replay actors without end (one that cannot be
    placed, or keeps dying, held the run forever): past the timeout the run stops, with
    its checkpoint, summary and the reason."""
    import mtopt.runtime.ray_runtime as ray_runtime

    monkeypatch.setattr(ray_runtime, "REPLAY_STEP_TIMEOUT_S", 0.001)
    cfg = override(preset("tiny"), ["robots=1", "max_learner_steps=50", "budget_minutes=3"])
    summary = ray_runtime.run_ray(cfg, tmp_path / "run")
    assert "gave no batches" in summary["replay_error"] and summary["learner_steps"] == 0
    assert (tmp_path / "run" / "summary.json").exists()
    assert (tmp_path / "run" / "checkpoints" / "learner.pt").exists()


@pytest.mark.timeout(300)
def test_a_replay_actor_dead_for_good_stops_the_run_with_a_report(tmp_path: Path) -> None:
    """A replay actor that raises or is dead for good (killed without restart here) used
    to end ``run_ray`` with a traceback: no summary, no report, the steps since the last
    checkpoint lost. It stops the run as the timeout does, with the reason."""
    import ray

    import mtopt.runtime.ray_runtime as ray_runtime

    def hook(robots: list, replays: list, step: int) -> None:
        if step >= 10:
            ray.kill(replays[0], no_restart=True)

    cfg = override(preset("tiny"), ["robots=1", "max_learner_steps=50", "budget_minutes=3"])
    summary = ray_runtime.run_ray(cfg, tmp_path / "run", kill_hook=hook)
    assert "a replay actor failed" in summary["replay_error"], summary["replay_error"]
    assert 10 <= summary["learner_steps"] < 50
    assert (tmp_path / "run" / "summary.json").exists()
    assert (tmp_path / "run" / "checkpoints" / "learner.pt").exists()
    report = (tmp_path / "run" / "report").glob("*.md")
    assert any("a replay actor failed" in r.read_text() for r in report)
