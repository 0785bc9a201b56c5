"""The whole loop on the tiny config, through the same code path as `mtopt run`; then resume."""

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from mtopt.cli import app
from mtopt.qtopt.weights import load_source
from mtopt.replay.buffers import TaskBuffers
from mtopt.runtime.local import pooled_success, same_scenes, sd_round_due, switch_table
from mtopt.store import EpisodeReader
from mtopt.success.network import SuccessDetector
from mtopt.tasks import DEFAULT_REGISTRY


def test_switch_table_parity_and_proxies() -> None:
    t = switch_table(
        {"lift-any": 0.3, "place-any": 0.4},
        {"lift-any": 0.1, "place-any": 0.47},
        DEFAULT_REGISTRY,
        0.0,
    )
    assert t["learned"] == ["lift-any"]
    assert t["proxy"]["lift-ball"] == "lift-any" and "place-in-bowl" not in t["proxy"]
    # learned over scripted: 0.3 / 0.1 and 0.4 / 0.47; tasks the evaluation does not
    # cover take their skill's generic task's ratio
    assert t["ratio"]["lift-any"] == pytest.approx(3.0)
    assert t["ratio"]["place-any"] == pytest.approx(0.8511, abs=1e-4)
    assert t["ratio"]["lift-ball"] == t["ratio"]["lift-large"] == pytest.approx(3.0)
    assert t["ratio"]["place-in-bowl"] == pytest.approx(0.8511, abs=1e-4)
    assert set(t["ratio"]) == set(DEFAULT_REGISTRY.names)
    # a task whose scripted rate is 0 (or unknown) has no ratio of its own
    t = switch_table(
        {"lift-ball": 0.1, "lift-any": 0.05},
        {"lift-ball": 0.0, "lift-any": 0.1},
        DEFAULT_REGISTRY,
        0.0,
    )
    assert t["ratio"]["lift-ball"] == pytest.approx(0.5)  # lift-any's


def test_sd_rounds_grow_geometrically() -> None:
    # first round after 2000 episodes, then 4000, then 8000
    assert not sd_round_due(1999, 2000, 2.0, 0) and sd_round_due(2000, 2000, 2.0, 0)
    assert not sd_round_due(3999, 2000, 2.0, 1) and sd_round_due(4000, 2000, 2.0, 1)
    assert not sd_round_due(7999, 2000, 2.0, 2) and sd_round_due(8000, 2000, 2.0, 2)
    assert sd_round_due(2000, 2000, 1.0, 5)  # growth 1: a fixed interval
    assert not sd_round_due(10**9, 0, 2.0, 0)  # 0: never


def test_parity_switch_has_hysteresis() -> None:
    scripted = {"lift-any": 0.10, "place-any": 0.50}
    # not yet switched: 0.08 is below the bar of 0.10
    assert (
        switch_table({"lift-any": 0.08}, scripted, DEFAULT_REGISTRY, 0.0, (), 0.04)["learned"] == []
    )
    # already switched: it keeps its policy down to 0.10 - 0.04 = 0.06 ...
    kept = switch_table(
        {"lift-any": 0.08, "place-any": 0.47}, scripted, DEFAULT_REGISTRY, 0.0, ["lift-any"], 0.04
    )
    assert kept["learned"] == ["lift-any"] and kept["proxy"]["lift-ball"] == "lift-any"
    # ... and not below it; the margin moves both bars
    assert (
        switch_table({"lift-any": 0.05}, scripted, DEFAULT_REGISTRY, 0.0, ["lift-any"], 0.04)[
            "learned"
        ]
        == []
    )
    # margin 0.05: switch at 0.15, keep down to 0.11
    assert switch_table({"lift-any": 0.12}, scripted, DEFAULT_REGISTRY, 0.05, ["lift-any"], 0.04)[
        "learned"
    ] == ["lift-any"]
    assert (
        switch_table({"lift-any": 0.12}, scripted, DEFAULT_REGISTRY, 0.05, (), 0.04)["learned"]
        == []
    )


def test_parity_pools_recent_evaluations_by_hand() -> None:
    history = [
        {"success": {"lift-any": 0.50}, "episodes_per_task": 20},  # old: outside the window
        {"success": {"lift-any": 0.00}, "episodes_per_task": 20},
        {"success": {"lift-any": 0.05}, "episodes_per_task": 20},
        {"success": {"lift-any": 0.10}, "episodes_per_task": 40},  # the lucky one
    ]
    pooled = pooled_success(history, 3)
    # (0 * 20 + 0.05 * 20 + 0.10 * 40) / 80 = 5 / 80
    assert pooled["lift-any"] == pytest.approx(0.0625)
    # the latest evaluation alone (0.10) would reach the scripted 0.10; pooled it does not
    assert switch_table({"lift-any": 0.10}, {"lift-any": 0.10}, DEFAULT_REGISTRY, 0.0)[
        "learned"
    ] == ["lift-any"]
    assert switch_table(pooled, {"lift-any": 0.10}, DEFAULT_REGISTRY, 0.0)["learned"] == []
    assert pooled_success([], 3) == {}
    assert pooled_success(history, 0)["lift-any"] == pytest.approx((10 + 1 + 4) / 100)


def test_the_eval_key_stays_for_cell_3_and_changes_with_the_cell_version(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``eval_key`` of `tuned` at seed 9 is the key r58 recorded in its history (under
    cell 3): adding the cell's version to the key leaves the pools of runs made under
    cell 3 whole on their resume. Another cell version plays the same scenes out
    otherwise: its key differs, so a resume onto it starts a new pool."""
    import dataclasses

    import mtopt.runtime.local as local
    from mtopt.runtime.config import preset

    cfg = dataclasses.replace(preset("tuned"), seed=9)
    assert local.eval_key(cfg) == "fe537be310de"
    assert "cell_version" not in local.eval_scenes(cfg)
    monkeypatch.setattr(local, "CELL_VERSION", 4)
    assert local.eval_scenes(cfg)["cell_version"] == 4
    assert local.eval_key(cfg) != "fe537be310de"


def test_parity_pools_only_points_of_the_latest_evaluation_scenes() -> None:
    """A resume that changes the evaluation's scenes (EVAL_SCENES_VERSION, seed, cell)
    starts a new pool: the earlier points, on other scenes, are neither pooled nor count
    towards a full window."""
    old = [{"success": {"lift-ball": 0.0}, "episodes_per_task": 20}] * 3  # no eval_key
    new = [{"success": {"lift-ball": 0.4}, "episodes_per_task": 20, "eval_key": "b"}]
    assert pooled_success(old + new, 3) == {"lift-ball": 0.4}  # not (0 + 0 + 0.4) / 3
    assert pooled_success(old + new, 3, min_points=3) == {}  # one point of the new scenes
    # a pool is the latest unbroken run of one key: an older stretch of "b" does not join
    low = [{"success": {"lift-ball": 0.0}, "episodes_per_task": 20, "eval_key": "b"}]
    again = low + old + new * 2
    assert len(same_scenes(again)) == 2
    assert pooled_success(again, 4) == {"lift-ball": pytest.approx(0.4)}  # not 0.3
    assert pooled_success(again, 4, min_points=3) == {}
    assert same_scenes([]) == [] and same_scenes(old) == old
    # the switch table across such a change: a task switched on the old scenes keeps its
    # switch until the new ones fill a window, even on a first point below the scripted
    from mtopt.runtime.config import preset
    from mtopt.runtime.local import parity_table

    cfg = preset("local")
    scripted = {"lift-ball": 0.2}
    before = [
        {**p, "success": {"lift-ball": 0.3}, "switch": {"learned": ["lift-ball"]}} for p in old
    ]
    first = {**new[0], "success": {"lift-ball": 0.1}}
    table = parity_table([*before, first], scripted, DEFAULT_REGISTRY, cfg)
    assert table["learned"] == ["lift-ball"]
    window = [first, *([{**first, "switch": table}] * (cfg.parity_window - 1))]
    assert parity_table([*before, *window], scripted, DEFAULT_REGISTRY, cfg)["learned"] == []


def test_parity_waits_for_a_full_window() -> None:
    scripted = {"lift-any": 0.10, "place-any": 0.5}
    # the run's first evaluation: a lucky 0.15 against the scripted 0.10 ...
    first = [{"success": {"lift-any": 0.15, "place-any": 0.2}, "episodes_per_task": 20}]
    assert pooled_success(first, 3) == {"lift-any": 0.15, "place-any": 0.2}
    # ... is not judged before the window holds 3 evaluations, so it cannot switch;
    # its ratio (for learned_fraction_min) is there from the first evaluation
    ready = pooled_success(first, 3, min_points=3).keys()
    assert not ready
    t = switch_table(pooled_success(first, 3), scripted, DEFAULT_REGISTRY, 0.0, ready=ready)
    assert t["learned"] == [] and t["proxy"] == {}
    assert t["ratio"]["lift-any"] == pytest.approx(1.5)
    # a task already switched (after a resume with a wider window, or onto other
    # evaluation scenes) keeps its switch until a full window judges it: one unlucky
    # point of 20 episodes does not switch it back (it did, as one lucky one switched)
    kept = switch_table({"lift-any": 0.05}, scripted, DEFAULT_REGISTRY, 0.0, ["lift-any"], ready=())
    assert kept["learned"] == ["lift-any"]
    judged = ["lift-any"]
    back = switch_table({"lift-any": 0.05}, scripted, DEFAULT_REGISTRY, 0.0, judged, ready=judged)
    assert back["learned"] == []
    # a task the later evaluations added has fewer points than the others
    history = [
        *first,
        {"success": {"lift-any": 0.10, "place-any": 0.5}, "episodes_per_task": 20},
        {"success": {"lift-any": 0.20, "place-any": 0.5, "lift-ball": 0.3}},
    ]
    full = pooled_success(history, 3, min_points=3)
    # (0.15 * 20 + 0.10 * 20 + 0.20 * 1) / 41; lift-ball has one evaluation of 3
    assert full == pytest.approx({"lift-any": 5.2 / 41, "place-any": (4 + 10 + 0.5) / 41})
    t = switch_table(
        pooled_success(history, 3),
        {**scripted, "lift-ball": 0.05},
        DEFAULT_REGISTRY,
        0.0,
        ready=full.keys(),
    )
    assert t["learned"] == ["lift-any"]  # lift-ball (0.3 > 0.05) waits for its window
    assert t["proxy"]["lift-ball"] == "lift-any"


def test_the_runs_parity_table_pools_a_full_window_and_keeps_a_switch() -> None:
    """What the run's evaluation writes to switch.json (``parity_table``), by hand:
    window 3, scripted lift-any 0.10, hysteresis 0.04."""
    from mtopt.runtime.config import RunConfig
    from mtopt.runtime.local import parity_table

    cfg = RunConfig()  # parity_window 3, margin 0, hysteresis 0.04
    scripted = {"lift-any": 0.10}

    def point(rate: float, switched: list[str] | None = None) -> dict:  # type: ignore[type-arg]
        pt = {"success": {"lift-any": rate}, "episodes_per_task": 20}
        return pt if switched is None else {**pt, "switch": {"learned": switched}}

    # a lucky first evaluation, and a second: not a full window yet
    assert parity_table([point(0.30)], scripted, DEFAULT_REGISTRY, cfg)["learned"] == []
    two = [point(0.30, []), point(0.20)]
    assert parity_table(two, scripted, DEFAULT_REGISTRY, cfg)["learned"] == []
    # the third: (0.30 + 0.20 + 0.10) / 3 = 0.20 >= 0.10
    three = [point(0.30, []), point(0.20, []), point(0.10)]
    assert parity_table(three, scripted, DEFAULT_REGISTRY, cfg)["learned"] == ["lift-any"]
    # switched at the last point: pooled (0.10 + 0.05 + 0.06) / 3 = 0.07 >= 0.10 - 0.04
    kept = [point(0.20, []), point(0.10, ["lift-any"]), point(0.05, ["lift-any"]), point(0.06)]
    assert parity_table(kept, scripted, DEFAULT_REGISTRY, cfg)["learned"] == ["lift-any"]
    # not switched before: the same pool does not switch it
    fresh = [*kept[:3], point(0.06)]
    fresh[2] = point(0.05, [])
    assert parity_table(fresh, scripted, DEFAULT_REGISTRY, cfg)["learned"] == []


@pytest.mark.timeout(900)
def test_tiny_run_then_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mtopt.qtopt.learner import Learner
    from mtopt.runtime.local import LocalRun

    out = tmp_path / "run"
    # the order of relabel rounds (SD v2 on), learner steps and checkpoints
    events: list[tuple[str, int]] = []
    publish, train_step, save = SuccessDetector.publish, Learner.train_step, Learner.save_checkpoint
    monkeypatch.setattr(
        SuccessDetector,
        "publish",
        # (the version a publish took: runs publish the next free one)
        lambda s, d, v=None, extra_meta=None: (
            publish(s, d, v, extra_meta),
            events.append(("sd", s.version * (Path(d).name == "sd"))),
        )[0],
    )
    monkeypatch.setattr(
        Learner, "train_step", lambda s, *a: events.append(("step", 0)) or train_step(s, *a)
    )
    monkeypatch.setattr(
        Learner,
        "save_checkpoint",
        lambda s, path, extra=None: (
            events.append(("ck", (extra or {}).get("sd_labels", -1))) or save(s, path, extra)
        ),
    )
    evaluate = LocalRun._evaluate
    monkeypatch.setattr(
        LocalRun,
        "_evaluate",
        lambda s, learner, *a: events.append(("eval", learner.step)) or evaluate(s, learner, *a),
    )
    # the preset's 3-minute budget can end a run on a loaded machine before it trains;
    # its step and episode caps end it here, however slow the machine
    slack = ["--minutes", "12"]
    res = CliRunner().invoke(app, ["run", "--config", "tiny", "--out", str(out), *slack])
    assert res.exit_code == 0, res.output
    # each relabel round is checkpointed with its labels before the next learner step (a
    # kill before the next scheduled checkpoint undercounted them and repeated the round)
    rounds = [i for i, (kind, v) in enumerate(events) if kind == "sd" and v >= 2]
    assert rounds
    for i in rounds:
        kind, labels = next(e for e in events[i + 1 :] if e[0] != "sd")
        assert kind == "ck" and labels > 0, events[i:]
    # each evaluation's point is checkpointed before the next learner step (only one at
    # a multiple of checkpoint_every was; a kill lost the others' points for good)
    evals = [i for i, (kind, _) in enumerate(events) if kind == "eval"]
    assert len(evals) >= 2 and all(events[i + 1][0] == "ck" for i in evals), events
    monkeypatch.undo()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["learner_steps"] >= 30 and summary["episodes"] >= 20
    assert (out / "report" / "report.md").exists() and (
        out / "report" / "success_over_time.png"
    ).exists()
    assert (out / "weights" / "q-latest.json").exists() and (out / "sd" / "sd-latest.json").exists()
    # relabel rounds ran and fine-tuned the kept staged-only SD, which they left unchanged
    assert SuccessDetector.latest_version(out / "sd") >= 2
    assert SuccessDetector.latest_version(out / "sd" / "initial") == 1
    assert json.loads((out / "config.json").read_text())["name"] == "tiny"
    comp = summary["composition"]
    # skill impersonation: lift episodes were shared with the other lift tasks
    assert comp["lift-ball"]["impersonated"] >= comp["lift-ball"]["original"]
    ids_before = {e.episode_id for e in EpisodeReader(out / "store").episodes()}
    # the checkpoint carries the episodes counted towards the next SD round: a resume
    # goes on counting from there instead of counting its re-read store as new
    extra = torch.load(out / "checkpoints" / "learner.pt", weights_only=False)["extra"]
    assert 0 <= extra["sd_since"] <= summary["episodes"]
    # the run ends by averaging its latest weights with its snapshot (step 20), evaluated
    # on the same scenes as the final acting weights, paired
    averaged = summary["averaged"]
    assert [s["step"] for s in averaged["averaged"]["sources"]] == [summary["learner_steps"], 20]
    assert (out / "policy-averaged" / "config.json").exists()
    assert json.loads((out / "policy-averaged" / "evaluation.json").read_text()) == averaged
    assert averaged["acting"] == summary["final"]["success"]
    paired = averaged["averaged_minus_acting"]["lift-any"]
    assert (
        paired["n"] == averaged["episodes_per_task"] == 2
        and paired["b"] == averaged["success"]["lift-any"]
    )
    assert "## Averaged policy" in (out / "report" / "report.md").read_text()

    # a second run into the same directory must be an explicit resume
    res = CliRunner().invoke(app, ["run", "--config", "tiny", "--out", str(out)])
    assert res.exit_code == 2 and "--resume" in res.output
    resume = ["run", "--config", "tiny", "--out", str(out), "--resume"]
    # a store's shard at a time: the resumed run re-reads its store in parts, and its
    # learner waits for the last part
    shards = len(list((out / "store" / "shards").glob("*/*.parquet")))
    one_by_one = ["--set", "replay.read_shards_per_poll=1"]
    res = CliRunner().invoke(app, [*resume, "--set", "max_learner_steps=45", *one_by_one, *slack])
    assert res.exit_code == 0, res.output
    assert f"re-read the store: {len(ids_before)} episodes from {shards} shards" in res.output
    summary2 = json.loads((out / "summary.json").read_text())
    assert summary2["learner_steps"] >= 45  # continued from the checkpoint (30), not from 0
    assert summary2["q_version"] > summary["q_version"]
    ids_after = {e.episode_id for e in EpisodeReader(out / "store").episodes()}
    assert ids_before <= ids_after  # nothing collected was lost
    history = json.loads((out / "history.json").read_text())
    assert len(history) >= 2
    # every point says which scenes it was measured on: the same ones across the resume
    assert len({point["eval_key"] for point in history}) == 1
    # the run's clock goes on across the resume: evaluation times never restart at 0
    walls = [point["wall_s"] for point in history]
    assert walls == sorted(walls) and walls[-1] >= 60 * summary["wall_minutes"]
    assert (
        summary2["total_wall_minutes"] >= summary["wall_minutes"] + summary2["wall_minutes"] - 0.02
    )
    # weights at steps 20 and 40 (snapshot_every=20) outlive publish's pruning, and
    # average with the latest into a policy
    snaps = sorted((out / "weights" / "snapshots").glob("q-*.safetensors"))
    steps = [load_source(s)[2]["step"] for s in snaps]
    assert steps == [20, 40], steps
    # weights say which task each network input is, before and after the resume (what
    # a run started from them with --init-from checks its tasks against)
    tiny_tasks = list(DEFAULT_REGISTRY.names)
    assert [load_source(s)[2].get("tasks") for s in snaps] == [tiny_tasks, tiny_tasks]
    used = [s["step"] for s in summary2["averaged"]["averaged"]["sources"]]
    assert used == [summary2["learner_steps"], 20, 40]  # the folder was replaced
    # resuming a run that is done trains no further step and evaluates nothing again
    # (the local runtime trained one more step, then evaluated the same weights twice)
    # and with its episodes collected, starts no robot (they collected while the store
    # was re-read, past max_episodes)
    cap = ["--set", f"max_episodes={len(ids_after)}"]
    res = CliRunner().invoke(app, [*resume, "--set", "max_learner_steps=45", *cap, *slack])
    assert res.exit_code == 0, res.output
    assert f"no robots: the store holds {len(ids_after)} episodes" in res.output
    assert {e.episode_id for e in EpisodeReader(out / "store").episodes()} == ids_after
    summary3 = json.loads((out / "summary.json").read_text())
    assert summary3["learner_steps"] == summary2["learner_steps"]
    assert len(json.loads((out / "history.json").read_text())) == len(history)
    res = CliRunner().invoke(app, ["average", str(tmp_path / "swa"), str(out), *map(str, snaps)])
    assert res.exit_code == 0, res.output
    report = (out / "report" / "report.md").read_text()
    assert "## Weight snapshots" in report and f"mtopt average {out / 'policy-avg'}" in report
    # the simulated cell's episodes have ground truth: the detector's rewards are checked
    assert "| task | with truth | successes (truth) | successes (SD) | SD precision |" in report


def test_a_runs_age_from_its_checkpoint_by_hand() -> None:
    from mtopt.runtime.local import elapsed_before, history_elapsed

    # three invocations of an older run, each clock from 0: 30 + 50 + 20 seconds
    old = [{"wall_s": 10.0}, {"wall_s": 30.0}, {"wall_s": 5.0}, {"wall_s": 50.0}, {"wall_s": 20.0}]
    assert history_elapsed(old) == 100.0
    assert history_elapsed([]) == 0.0
    assert history_elapsed([{"wall_s": 10.0}, {"wall_s": 40.0}]) == 40.0  # one clock
    assert elapsed_before({"history": old}) == 100.0
    assert elapsed_before({"history": old, "elapsed_s": 130.5}) == 130.5  # stored wins


@pytest.mark.timeout(600)
def test_tiny_run_with_gripper_position_inputs_and_ground_truth_rewards(tmp_path: Path) -> None:
    """The whole loop with the Q-network taking the gripper's x, y and coordinate
    channels: robots store poses, LogReplay feeds them, the learned policy acts with them.
    Its rewards are the simulator's verdicts (replay.reward=truth): every success filed
    is one in truth, and the report says whose rewards they were."""
    out = tmp_path / "run"
    args = ["run", "--config", "tiny", "--out", str(out)]
    args += ["--set", "qnet.gripper_xy=true", "--set", "qnet.coord_channels=true"]
    args += ["--set", "replay.reward=truth"]
    args += ["--set", "max_episodes=400"]  # stop at 30 learner steps, however slow they are
    args += ["--set", "replay.min_episodes=0"]  # train from the first episode (it crashed)
    args += ["--minutes", "12"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["learner_steps"] >= 30
    eps = EpisodeReader(out / "store").episodes()
    assert eps and all(e.poses is not None and e.poses.shape == (e.num_steps + 1, 4) for e in eps)
    # the evaluation's CEM policy acted with them (it raises on an observation without one)
    history = json.loads((out / "history.json").read_text())
    assert history and "lift-any" in history[-1]["success"]
    comp = summary["composition"]
    assert sum(c["original"] for c in comp.values()) > 0
    for c in comp.values():  # the rewards were the verdicts, so the "SD" counts are theirs
        assert c["gt_known"] == c["impersonated"]
        assert c["successes"] == c["gt_successes"] == c["sd_true_positives"]
    report = (out / "report" / "report.md").read_text()
    assert "The rewards were the simulator's ground truth" in report
    assert "SD precision" not in report

    # resumed without repeating the overrides, it continues with the run's own config
    # (it used to fall back to the preset: inputs without x, y for a network that takes them)
    res = CliRunner().invoke(
        app, ["run", "--out", str(out), "--resume", "--set", "qnet.gripper_xy=false"]
    )
    assert res.exit_code == 2 and "qnet.gripper_xy: True -> False" in res.output
    res = CliRunner().invoke(
        app, ["run", "--out", str(out), "--resume", "--set", "max_learner_steps=40"]
    )
    assert res.exit_code == 0, res.output
    assert json.loads((out / "summary.json").read_text())["learner_steps"] >= 40
    saved = json.loads((out / "config.json").read_text())
    assert saved["qnet"]["gripper_xy"] and saved["qnet"]["coord_channels"]
    assert saved["name"] == "tiny" and saved["max_learner_steps"] == 40
    assert saved["replay"]["reward"] == "truth"
    for c in json.loads((out / "summary.json").read_text())["composition"].values():
        assert c["successes"] == c["gt_successes"] == c["sd_true_positives"]


def test_a_run_learns_from_the_robots_its_robot_factory_makes(tmp_path: Path) -> None:
    """``--set robot_factory=MODULE:NAME``: the run's fleet drives the user's robots (a
    stand-in for a real arm with no ground truth) and learns from their episodes, with
    rewards from the success detector alone, trained on the cell's own labeled images
    (``sd.examples_file``: nothing staged in the simulated cell)."""
    import numpy as np

    from mtopt.success.data import LabeledSet
    from mtopt.tasks import DEFAULT_REGISTRY

    n, tasks = 12, DEFAULT_REGISTRY.names
    labels = np.zeros((n, len(tasks)), np.float32)
    labels[::2, 0] = 1.0  # lift-any, labeled by a person on every image
    mask = np.zeros((n, len(tasks)), bool)
    mask[:, 0] = True
    rng = np.random.default_rng(0)
    own = LabeledSet(
        tasks,
        rng.integers(0, 255, (n, 64, 64, 3), dtype=np.uint8),
        labels,
        mask,
        np.array([f"arm-ep-{i}" for i in range(n)]),
        np.array(["human"] * n),
        np.zeros(n, bool),
    )
    own.save(tmp_path / "own.npz")
    out = tmp_path / "run"
    args = ["run", "--config", "tiny", "--out", str(out), "--minutes", "12"]
    args += ["--set", "robot_factory=tests.robot_factories:make_arm"]
    args += ["--set", f"sd.examples_file={tmp_path / 'own.npz'}"]
    args += ["--set", "max_episodes=40", "--set", "max_learner_steps=10"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["learner_steps"] >= 10
    rows = EpisodeReader(out / "store").metadata()
    assert len(rows) >= 20 and {r["robot_id"] for r in rows} == {"robot-00"}
    assert all(r["gt_success"] is None for r in rows)  # the arm's, not the simulated cell's
    saved = json.loads((out / "config.json").read_text())
    assert saved["robot_factory"] == "tests.robot_factories:make_arm"
    assert "successes (truth)" not in (out / "report" / "report.md").read_text()  # none known
    assert "staging" not in res.output and f"held-out examples of {tmp_path}" in res.output
    kept = LabeledSet.load(out / "sd" / "examples.npz")
    assert set(kept.ids) < set(own.ids) and kept.tasks == tasks
    # judged on the arm's own episodes (eval.on=auto: fleet), never in the simulated cell
    history = json.loads((out / "history.json").read_text())
    assert history and all(h["evaluated_on"] == "fleet" for h in history)
    assert sum(n["learned"] + n["scripted"] for n in history[-1]["fleet_episodes"].values()) > 0
    assert not (out / "scripted_eval.json").exists()
    assert "episodes: fleet's episodes, learned (scripted): " in res.output  # the eval's line


def test_bad_run_config_is_a_clear_error(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["run", "--config", "huge", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "unknown config 'huge'" in res.output
    res = CliRunner().invoke(app, ["run", "--config", "", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "unknown config ''" in res.output  # it ran "local"
    res = CliRunner().invoke(
        app, ["run", "--config", "tiny", "--out", str(tmp_path), "--address", "auto"]
    )
    assert res.exit_code == 2 and "--address is for the ray runtime" in res.output  # ignored
    # the success detector's settings are checked before its scenes are staged (steps 0
    # trained nothing, growth 0 made a relabel round due on every check)
    for bad, says in (
        ("sd.train.steps=0", "sd.train.steps: steps must be an integer >= 1"),
        ("sd.train.lr=-1", "lr must be > 0"),
        ("sd.retrain_steps=0", "sd.retrain_steps must be >= 1"),
        ("sd.improve_growth=0.5", "sd.improve_growth must be >= 1.0"),
        ("robot_factory=arms", "robot_factory must be MODULE:NAME"),
        ("robot_factory=no_such_arms_module:make", "cannot import 'no_such_arms_module'"),
        ("robot_factory=tests.robot_factories:make_leg", "has no 'make_leg'"),
    ):
        res = CliRunner().invoke(
            app, ["run", "--config", "tiny", "--out", str(tmp_path), "--set", bad]
        )
        assert res.exit_code == 2 and says in res.output, (bad, res.output)
    res = CliRunner().invoke(
        app, ["run", "--config", "tiny", "--out", str(tmp_path), "--set", "replay.batchsize=3"]
    )
    assert res.exit_code == 2 and "unknown config field" in res.output
    res = CliRunner().invoke(
        app, ["run", "--config", "tiny", "--out", str(tmp_path), "--network", "many"]
    )
    assert res.exit_code == 2 and "head_type" in res.output
    res = CliRunner().invoke(
        app,
        [
            "run",
            "--config",
            "tiny",
            "--out",
            str(tmp_path),
            "--set",
            "collect.learned_fraction_min=0.9",
        ],
    )
    assert res.exit_code == 2 and "learned_fraction_min" in res.output
    if not torch.cuda.is_available():  # a GPU asked for where there is none: before robots start
        res = CliRunner().invoke(
            app, ["run", "--config", "tiny", "--out", str(tmp_path), "--set", "learner.device=cuda"]
        )
        assert res.exit_code == 2 and "no CUDA GPU" in res.output
        assert not (tmp_path / "store").exists()
    factory = "robot_factory=tests.robot_factories:make_arm"
    args = ["run", "--config", "tiny", "--out", str(tmp_path), "--set", "robots=0"]
    res = CliRunner().invoke(app, [*args, "--set", factory])
    assert res.exit_code == 2 and "but robots=0" in res.output
    assert not (tmp_path / "store").exists()
    assert isinstance(TaskBuffers(["a"]), TaskBuffers)


def test_a_run_without_robots_learns_from_episodes_others_write_into_its_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``robots=0``: the run starts no robot and tails its store. A stand-in for a real
    robot (the simulated cell behind the ``Robot`` protocol, driven by the CollectLoop and
    PolicyProvider a real cell would use) writes 10 episodes before the run and 14 once
    the run is up: fewer than ``min_episodes`` (20) before, so the run can only train if
    it keeps reading what is written while it runs."""
    import threading

    from mtopt.collect.loop import CollectConfig, CollectLoop, PolicyProvider
    from mtopt.robots.sim_robot import SimRobot
    from mtopt.runtime.config import preset
    from mtopt.store import EpisodeWriter

    out = tmp_path / "run"
    sim = preset("tiny").sim

    def collect(n: int, robot_id: str) -> None:
        robot = SimRobot(sim, robot_id=robot_id, seed=n)
        provider = PolicyProvider(
            DEFAULT_REGISTRY, weights_dir=out / "weights", switch_file=out / "switch.json"
        )
        cfg = CollectConfig(tasks=("lift-any", "place-any"), max_steps=sim.max_steps)
        with EpisodeWriter(out / "store", robot_id, flush_every=2) as writer:
            loop = CollectLoop(robot, DEFAULT_REGISTRY, writer, provider, cfg, seed=n)
            for _ in range(n):
                loop.run_one()
        robot.close()

    collect(10, "arm-1")

    from mtopt.runtime.local import LocalRun

    started = threading.Event()
    log = LocalRun._log

    def log_and_tell(self: LocalRun, msg: str) -> None:
        log(self, msg)
        if msg.startswith("fleet started"):
            started.set()  # the run is tailing its store from here on

    monkeypatch.setattr(LocalRun, "_log", log_and_tell)

    def later() -> None:
        if not started.wait(600):
            return
        # the run's (empty) fleet has finished: what comes now comes from elsewhere
        while any(t.name == "fleet" and t.is_alive() for t in threading.enumerate()):
            started.wait(0.05)
        collect(14, "arm-2")

    writer_thread = threading.Thread(target=later, daemon=True)
    writer_thread.start()
    args = ["run", "--config", "tiny", "--out", str(out), "--set", "robots=0"]
    res = CliRunner().invoke(app, [*args, "--minutes", "12"])
    writer_thread.join(timeout=60)
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["learner_steps"] >= 30 and summary["episodes"] == 24
    robots = {e["robot_id"] for e in EpisodeReader(out / "store").metadata()}
    assert robots == {"arm-1", "arm-2"}  # nothing collected by the run itself


@pytest.mark.timeout(600)
def test_an_interrupted_run_checkpoints_before_its_clean_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C: the run checkpoints at once, then stops its fleet and reads the last
    episodes (up to minutes). A second Ctrl-C during that clean-up used to lose every
    step since the last periodic checkpoint (`checkpoint_every`, 10 in tiny)."""
    import mtopt.runtime.local as local
    from mtopt.runtime.config import preset

    interrupted: list[int] = []
    show = local.show_progress

    def ctrl_c_once(bar: Any, *args: Any) -> None:
        show(bar, *args)
        if not interrupted and bar.n >= 13 and bar.n % 10:  # between two checkpoints
            interrupted.append(bar.n)
            raise KeyboardInterrupt

    close = local.StoreIngest.close

    def ctrl_c_again(self: Any) -> None:
        if interrupted:
            raise KeyboardInterrupt  # the second Ctrl-C, while the run cleans up
        close(self)

    monkeypatch.setattr(local, "show_progress", ctrl_c_once)
    monkeypatch.setattr(local.StoreIngest, "close", ctrl_c_again)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        # (tiny's 3-minute budget can end before a step on a loaded machine)
        local.LocalRun(dataclasses.replace(preset("tiny"), budget_minutes=12.0), out).run()
    assert interrupted
    ck = torch.load(out / "checkpoints" / "learner.pt", weights_only=False)
    assert ck["step"] == interrupted[0], (ck["step"], interrupted)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("how", ["raises", "gives up"])
def test_a_failed_fleet_stops_the_run_with_its_checkpoint_report_and_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """The fleet thread giving up (it restarts robots itself, so this is a store it cannot
    write, a process it cannot start...) used to pass for a finished fleet: the run went on
    training on what it had, or ended with exit code 0. Now it stops, still writes its
    summary and report, and the command fails with the fleet's error. A fleet whose robots
    all failed past their restarts returns without an error: that stops the run too."""
    import mtopt.runtime.local as local

    def broken_fleet(spec: object, should_stop: object = None) -> dict:
        if how == "raises":
            raise PermissionError("store is read-only")
        return {"written": {}, "restarts": {0: 6}, "interrupted": False}

    monkeypatch.setattr(local, "run_fleet", broken_fleet)
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["run", "--config", "tiny", "--out", str(out)])
    assert res.exit_code == 1, res.output
    error = (
        "PermissionError: store is read-only"
        if how == "raises"
        else "every robot process stopped (each failed more than its restarts allow)"
    )
    assert f"robot fleet failed: {error}" in res.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["fleet_error"] == error
    assert (out / "report" / "report.md").exists()


def test_the_scripted_baseline_is_measured_again_when_its_scenes_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It was read back from scripted_eval.json whatever the config said: a task added to
    eval.tasks on a resume had no baseline (it left the report, and could never reach
    parity), and a changed seed kept the other scenes' numbers."""
    import dataclasses

    import mtopt.runtime.local as local
    from mtopt.runtime.config import preset

    calls: list[tuple[str, ...]] = []

    def fake_eval(policy_for, registry, tasks, episodes, sim, seed):  # type: ignore[no-untyped-def]
        calls.append(tuple(tasks))
        return {t: 0.1 * (seed + 1) for t in tasks}

    monkeypatch.setattr(local, "evaluate_policy", fake_eval)
    cfg = preset("tiny")
    out = tmp_path / "run"
    assert local.LocalRun(cfg, out).scripted_baseline() == {t: 0.1 for t in cfg.eval.tasks}
    assert local.LocalRun(cfg, out).scripted_baseline() == {t: 0.1 for t in cfg.eval.tasks}
    assert len(calls) == 1  # kept
    more = dataclasses.replace(
        cfg, eval=dataclasses.replace(cfg.eval, tasks=(*cfg.eval.tasks, "lift-box"))
    )
    assert set(local.LocalRun(more, out).scripted_baseline()) == {*cfg.eval.tasks, "lift-box"}
    assert calls[-1] == more.eval.tasks
    reseeded = dataclasses.replace(more, seed=1)
    assert local.LocalRun(reseeded, out).scripted_baseline()["lift-box"] == pytest.approx(0.2)
    assert len(calls) == 3
    # a run from before the key was kept: its numbers stand while they cover the tasks
    (out / "scripted_eval.key.json").unlink()
    local.LocalRun(reseeded, out).scripted_baseline()
    assert len(calls) == 3
    (out / "scripted_eval.json").write_text('{"lift-any": 0.5}')
    local.LocalRun(reseeded, out).scripted_baseline()
    assert len(calls) == 4


def test_an_sd_round_waits_for_episodes_instead_of_spending_its_turn() -> None:
    """A Ray resume skips the old store: a round due at once has no recent episodes yet,
    and must wait for them rather than reset its count with nothing done."""
    from types import SimpleNamespace

    from mtopt.config import override
    from mtopt.runtime.config import preset
    from mtopt.runtime.local import LocalRun

    class Tail:
        since_mark, marked, caught_up = 50, False, True

        def recent(self) -> list:
            return []

        def mark(self) -> None:
            self.marked = True

    cfg = override(preset("tiny"), ["sd.improve_every_episodes=20"])
    tail, sd = Tail(), SimpleNamespace(version=1)
    me = SimpleNamespace(
        cfg=cfg,
        improve_sd=lambda *a: pytest.fail("no round on nothing"),
        _sd_rounds_done=lambda sd: 0,
    )
    me.sd_round_due = lambda sd, tail: LocalRun.sd_round_due(me, sd, tail)  # type: ignore[arg-type]
    assert LocalRun.sd_round(me, sd, tail, 7) == (sd, 7)  # type: ignore[arg-type]
    assert not tail.marked and tail.since_mark == 50
    tail.recent = lambda: ["an episode"]  # type: ignore[method-assign]
    assert me.sd_round_due(sd, tail)  # due once there is something to label
    # while a resume re-reads the store (oldest first): not before the newest are read
    tail.caught_up = False
    assert not me.sd_round_due(sd, tail)


def test_the_progress_bar_shows_episode_counts_in_full() -> None:
    """tqdm wrote 20000 episodes as "2e+4" in the run's postfix."""
    import io

    from mtopt.runtime.local import progress_bar, show_progress

    bar = progress_bar(5, 0)
    bar.fp = io.StringIO()
    show_progress(bar, 20000, 3, 41, {"loss": 0.5})
    assert "episodes=20000" in str(bar) and "2e+4" not in str(bar)
    bar.close()


@pytest.mark.timeout(600)
def test_sd_start_and_relabel_rounds_survive_a_crash_and_label_an_episode_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A start that died between publishing sd/initial and sd (or an SD deleted to be
    retrained) could never start again ("version 1 is not newer"); a round whose
    candidates overlap an earlier round's labeled those episodes twice."""
    import numpy as np

    from mtopt.runtime import local
    from mtopt.runtime.config import preset
    from mtopt.runtime.local import LocalRun
    from mtopt.store.reader import FinalView
    from mtopt.success.data import LabeledSet

    run = LocalRun(preset("tiny"), tmp_path / "run")
    first = run.init_sd()
    for f in run.paths.sd.glob("sd-*"):  # the run's SD gone, sd/initial kept
        f.unlink()
    sd = run.init_sd()  # retrains, and keeps the staged-only SD as the next initial
    assert sd.version == 1 and SuccessDetector.latest_version(run.paths.sd / "initial") == 2
    rng, size = np.random.default_rng(0), first.net.cfg.image_size
    recent = [
        FinalView(
            f"ep{i}",
            "lift-any",
            rng.integers(0, 255, (size, size, 3), dtype=np.uint8),
            {t: bool(i % 2) for t in run.registry.names},
            {},
        )
        for i in range(4)
    ]
    sd, labels = run.improve_sd(sd, recent, 0)
    assert labels == 4 and sd.version == 2
    again, labels = run.improve_sd(sd, [*recent, recent[0]], labels)
    assert again is sd and labels == 4  # nothing new to label: no round
    # a robot whose camera gives another size: its episodes are left out, not a crash
    big = [
        FinalView(f"big{i}", "lift-any", np.zeros((size * 2, size * 2, 3), np.uint8), {}, {})
        for i in range(3)
    ]
    again, labels = run.improve_sd(sd, big, labels)
    assert again is sd and labels == 4
    assert any("another size than the detector's" in line for line in run.log_lines)
    # an id the store holds twice (a client's retried write) is labeled once, and a round
    # fine-tuning the detector in use ("previous") leaves it as it was: it goes on scoring
    twice = [
        FinalView(f"new{i}", "lift-any", recent[i].final_image, recent[i].gt_success_by_task, {})
        for i in range(2)
    ]
    run.cfg = dataclasses.replace(
        run.cfg, sd=dataclasses.replace(run.cfg.sd, retrain_from="previous")
    )
    live = {k: v.clone() for k, v in sd.net.state_dict().items()}
    newer, labels = run.improve_sd(sd, [*twice, twice[0]], labels)
    assert labels == 6 and newer.version == 3
    assert all(torch.equal(v, sd.net.state_dict()[k]) for k, v in live.items())
    assert not all(torch.equal(v, newer.net.state_dict()[k]) for k, v in live.items())
    kept = np.load(run.paths.sd / "episode_labels.npz", allow_pickle=False)["ids"]
    assert sorted(map(str, kept)) == ["ep0", "ep1", "ep2", "ep3", "new0", "new1"]
    # an episode of the SD's validation set (an example file exported from this store)
    # is never labeled for training
    val_id = str(LabeledSet.load(run.paths.sd / "validation.npz").ids[0])
    seen = FinalView(val_id, "lift-any", recent[2].final_image, recent[2].gt_success_by_task, {})
    again, labels = run.improve_sd(newer, [seen], labels)
    assert again is newer and labels == 6
    # one labeled by an earlier version (before this rule) stays in the labels file but
    # is not trained on
    val = LabeledSet.load(run.paths.sd / "validation.npz")
    kept_file = run.paths.sd / "episode_labels.npz"
    LabeledSet.load(kept_file).concat(val.subset(np.array([0]))).save(kept_file)
    trained: list[set[str]] = []
    train = local.train_sd
    monkeypatch.setattr(
        local,
        "train_sd",
        lambda data, *a, **k: trained.append(set(map(str, data.ids))) or train(data, *a, **k),
    )
    fresh = FinalView("new9", "lift-any", recent[3].final_image, recent[3].gt_success_by_task, {})
    _, labels = run.improve_sd(newer, [fresh], labels)
    assert labels == 7 and "new9" in trained[0] and val_id not in trained[0]
    assert val_id in set(map(str, LabeledSet.load(kept_file).ids))


def test_a_resumed_run_draws_new_random_streams_for_its_bellman_updater() -> None:
    from mtopt.runtime.local import updater_seed

    assert updater_seed(3, 0) == 3  # a fresh run: its own seed, as before
    later = [updater_seed(3, s) for s in (500, 1000)]
    assert later == [updater_seed(3, 500), updater_seed(3, 1000)]  # the same history, the same
    assert len({3, *later}) == 3  # each resume its own streams (they restarted at the seed's)


def test_a_resume_counts_the_next_evaluation_from_the_runs_last_one() -> None:
    """With points at 3000 and 4000 and a checkpoint at 4500, a resume evaluates next at
    5000 (counting from the checkpoint's step, at 5500: 1.5 intervals without a point,
    which the parity switch pools, and every later point off the 1000-step grid). The
    schedule stays on the grid of multiples of the interval."""
    from mtopt.runtime.local import last_evaluated

    assert last_evaluated([{"step": 3000}, {"step": 4000}], 4500, 1000) == 4000
    # none yet (a kill at 900, resumed from the checkpoint at 500): next at 1000, not 1500
    assert last_evaluated([], 500, 1000) == 0
    assert last_evaluated([], 1500, 2000) == 0
    # a stop's final point at 12345: next at 13000, not 13345 (never a checkpoint step)
    assert last_evaluated([{"step": 12000}, {"step": 12345}], 12345, 1000) == 12000


def test_the_in_run_evaluation_searches_actions_as_the_robots_do(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """cem_act's precision "auto" made the in-run evaluation search in bf16 on AMX
    machines, while robots and evaluate_run.py search in fp32 (bf16 can flip an
    argmax): the parity switch judged another policy than the one collecting."""
    from types import SimpleNamespace

    import mtopt.runtime.local as local
    from mtopt.runtime.config import preset

    cfg = preset("tiny")
    assert cfg.cem_act.precision == "auto"
    made: list[object] = []

    class Recorder:
        def __init__(self, *args: object, cem: object, **kwargs: object) -> None:
            made.append(cem)

    monkeypatch.setattr(local, "CEMPolicy", Recorder)
    stub = SimpleNamespace(registry=DEFAULT_REGISTRY, cfg=cfg, _eval_outcomes=lambda pol: {})
    learner = SimpleNamespace(acting=None, device=torch.device("cpu"))
    local.LocalRun.learned_outcomes(stub, learner)  # type: ignore[arg-type]
    assert made == [cfg.collection_cem()] and made[0].precision == "fp32"  # type: ignore[attr-defined]


def test_a_local_run_of_a_ray_config_is_refused_and_lets_go_of_its_folder(
    tmp_path: Path,
) -> None:
    """``LocalRun(cfg).run()`` with ``runtime='ray'`` ran the loop locally, and the
    folder's config.json then sent a later ``mtopt run --resume`` to Ray; it says to use
    ``run_ray`` and holds no lock on the folder."""
    import dataclasses

    from mtopt.runtime.config import preset
    from mtopt.runtime.local import LocalRun

    cfg = dataclasses.replace(preset("tiny"), runtime="ray")
    with pytest.raises(ValueError, match="run_ray"):
        LocalRun(cfg, tmp_path / "run").run()
    LocalRun(preset("tiny"), tmp_path / "run").release()  # the folder is free again
