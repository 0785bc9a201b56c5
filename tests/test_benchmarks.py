"""The benchmark scripts: their shared result writer, and that every script starts."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

from _results import write_result  # noqa: E402


def test_write_result_writes_json_and_shows_a_part(tmp_path: Path, capsys) -> None:
    out = {"a": 1, "summary": {"ratio": 0.5}}
    path = write_result(tmp_path / "deep" / "r.json", out, show=out["summary"])
    assert json.loads(path.read_text()) == out
    assert json.loads(capsys.readouterr().out) == {"ratio": 0.5}
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]  # no temp file left


def test_write_result_refusing_nan_keeps_the_old_file(tmp_path: Path) -> None:
    path = write_result(tmp_path / "r.json", {"auc": 0.7}, echo=False)
    with pytest.raises(ValueError):
        write_result(path, {"auc": math.nan}, allow_nan=False, echo=False)
    assert json.loads(path.read_text()) == {"auc": 0.7}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


@pytest.mark.parametrize("script", sorted(p.name for p in BENCH.glob("[!_]*.py")))
def test_every_benchmark_script_starts(script: str) -> None:
    """Imports resolve and the arguments parse (``--help``): a renamed function or a
    broken import in a benchmark fails here, not after an hour of measuring."""
    r = subprocess.run(
        [sys.executable, str(BENCH / script), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "--json" in r.stdout


def test_spearman_of_the_q_landscape_probe_by_hand() -> None:
    from q_landscape_probe import spearman

    # ranks (0, 1, 2, 3) and (0, 2, 1, 3): 1 - 6 * sum(d^2) / (n (n^2 - 1)) = 1 - 12 / 60
    assert spearman(np.array([1.0, 2, 3, 4]), np.array([10.0, 30, 20, 40])) == pytest.approx(0.8)
    assert spearman(np.array([1.0, 2, 3]), np.array([5.0, 4, 1])) == pytest.approx(-1.0)
    # tied x: ranks (0, 1.5, 1.5, 3) against (0, 1, 2, 3): 4.5 / sqrt(4.5 * 5)
    assert spearman(np.array([1.0, 2, 2, 3]), np.array([1.0, 2, 3, 4])) == pytest.approx(
        4.5 / math.sqrt(22.5)
    )
    assert math.isnan(spearman(np.array([1.0, 2, 3]), np.array([2.0, 2, 2])))


def test_grasp_precision_summary_by_hand() -> None:
    from grasp_precision_probe import summarize

    def row(ok: bool, held: bool, closes: int, offset: float | None) -> dict:
        last = None if offset is None else {"offset_cm": offset, "yaw_error_rad": offset / 10}
        first = None if offset is None else {"offset_cm": offset + 1, "height_m": 0.1}
        return {
            "success": ok,
            "held_before_present": held,
            "closes": closes,
            "first_close": first,
            "last_close": last,
        }

    rows = [
        row(True, True, 1, 0.5),
        row(False, True, 2, 1.5),  # held, lost on the lift
        row(False, False, 3, 2.5),
        row(True, True, 2, 4.0),
        row(False, False, 0, None),  # never closed
    ]
    s = summarize(rows)
    assert s["episodes"] == 5
    assert s["success"]["success"] == 0.4
    assert s["never_closed"] == 1
    assert s["held_before_present"] == 0.6
    assert s["held_but_lost_on_lift"] == round(1 / 3, 3)
    assert s["closes_per_episode"] == 1.6
    # last offsets 0.5, 1.5, 2.5, 4.0: medians of all (2.0), successes (2.25), failures
    # (2.0); the first closes were 1 cm further out
    assert s["last_close_offset_cm_median"] == {"all": 2.0, "successes": 2.25, "failures": 2.0}
    assert s["first_close_offset_cm_median"] == 3.0
    assert s["last_close_within_1cm"] == 0.25
    # yaw errors a tenth of the offsets: successes 0.05, 0.4 (median 0.225, rounded to
    # two places); failures 0.15, 0.25 (0.2)
    yaw = s["last_close_yaw_error_rad_median"]
    assert yaw == pytest.approx({"successes": 0.225, "failures": 0.2}, abs=0.0051)
    by = s["success_by_last_close_offset"]
    assert by["0-1 cm"] == {"episodes": 1, "success": 1.0}
    assert by["1-2 cm"] == {"episodes": 1, "success": 0.0}
    assert by["3-5 cm"] == {"episodes": 1, "success": 1.0}
    assert by["5-100 cm"] == {"episodes": 0, "success": None}


def test_learning_benchmark_counts_and_resumes_its_arms(tmp_path: Path, monkeypatch) -> None:
    """An arm's age over its invocations, and ``--resume`` asking ``mtopt run`` only for
    what is left of the budget (an arm that ran its budget is not run again)."""
    import learning

    arm = tmp_path / "multitask"
    assert learning.arm_minutes(arm) is None
    arm.mkdir()
    (arm / "config.json").write_text("{}")
    assert learning.arm_minutes(arm) == 0.0  # killed during the SD staging
    # killed after an evaluation at 40 minutes; the summary is from a 30-minute first part
    (arm / "summary.json").write_text(
        json.dumps({"wall_minutes": 30.0, "total_wall_minutes": 30.0})
    )
    (arm / "history.json").write_text(json.dumps([{"wall_s": 600.0}, {"wall_s": 2400.0}]))
    assert learning.arm_minutes(arm) == 40.0

    calls: list[list[str]] = []

    def fake_run(cmd: list[str], check: bool) -> None:
        calls.append(cmd)
        (arm / "summary.json").write_text(
            json.dumps({"wall_minutes": 60.0, "total_wall_minutes": 100.0})
        )

    monkeypatch.setattr(learning.subprocess, "run", fake_run)
    with pytest.raises(SystemExit, match="--resume"):
        learning.run_arm(arm, 100.0, [])
    summary = learning.run_arm(arm, 100.0, ["learner.mc_mix=0.5"], "tuned", resume=True)
    assert calls[0][calls[0].index("--minutes") + 1] == "60.0"
    assert "--resume" in calls[0] and calls[0][calls[0].index("--config") + 1] == "tuned"
    assert calls[0][-2:] == ["--set", "learner.mc_mix=0.5"]
    assert summary["bench_wall_minutes"] == 100.0
    learning.run_arm(arm, 100.0, [], resume=True)  # its budget is spent: nothing runs
    assert len(calls) == 1
    # killed at 99.8 minutes, after an evaluation the 100-minute summary does not hold
    (arm / "summary.json").write_text(
        json.dumps({"wall_minutes": 50.0, "total_wall_minutes": 90.0})
    )
    (arm / "history.json").write_text(json.dumps([{"wall_s": 5400.0}, {"wall_s": 5988.0}]))
    assert learning.summary_is_stale(arm)
    learning.run_arm(arm, 100.0, [], resume=True)  # runs again to write a summary
    assert len(calls) == 2 and calls[1][calls[1].index("--minutes") + 1] == "0.5"
    assert not learning.summary_is_stale(arm)  # fake_run wrote a 100-minute one


def test_learning_benchmark_held_out_summary_and_pairing_by_hand() -> None:
    import learning

    # 4 scenes: the multi-task arm wins scenes 0, 1, 2; the single-task arm 2 and 3
    multi = {"acting": [True, True, True, False], "scripted": [True, False, False, False]}
    single = {"acting": [False, False, True, True], "scripted": [True, False, False, False]}
    s = learning.held_out_summary({"lift-ball": multi})["lift-ball"]
    assert s["learned"]["success"] == 0.75 and s["scripted"]["success"] == 0.25
    assert s["learned_over_scripted"] == 3.0 and s["episodes"] == 4
    assert s["outcomes"] == {"acting": "1110", "scripted": "1000"}
    none = learning.held_out_summary({"t": {"acting": [True], "scripted": [False]}})["t"]
    assert none["learned_over_scripted"] is None  # scripted 0: no ratio
    d = learning.single_minus_multi(multi, single)
    # only multi: scenes 0 and 1; only single: scene 3; b - a = (1 - 2) / 4
    assert (d["only_a"], d["only_b"], d["n"]) == (2, 1, 4)
    assert d["b_minus_a"] == pytest.approx(-0.25)
    assert d["mcnemar_p"] == pytest.approx(1.0)  # 1 of 3 discordant: two-sided p = 1


def test_learning_benchmark_evaluates_each_seed_on_its_own_scenes(tmp_path: Path) -> None:
    """The held-out evaluation of an arm: the seeds' scenes one after the other, each
    the scenes ``evaluate_run.py`` gives for that seed (scripted: deterministic here)."""
    import shutil

    import learning
    from evaluate_run import one

    policy = tmp_path / "tuned-r34"  # a copy: the evaluation is kept in the folder
    shutil.copytree(Path(__file__).parents[1] / "policies" / "tuned-r34", policy)
    got = learning.held_out_outcomes(policy, ["place-any"], 2, [5, 6], 1)["place-any"]
    assert len(got["acting"]) == len(got["scripted"]) == 4
    search = {"iterations": 2, "samples": 64, "elites": 6, "pick": "best"}
    search |= {"gripper": "joint", "close_margin": 0.0}
    for i, seed in enumerate((5, 6)):
        job = (str(policy), "place-any", "scripted", 2, seed, search, "test")
        assert one(job)[2] == got["scripted"][2 * i : 2 * i + 2]
    # kept for these weights and arguments: asked again, it is read, not run
    kept = json.loads((policy / "held_out.json").read_text())
    kept["outcomes"]["place-any"]["acting"] = "1111"
    (policy / "held_out.json").write_text(json.dumps(kept))
    again = learning.held_out_outcomes(policy, ["place-any"], 2, [5, 6], 1)
    assert again["place-any"]["acting"] == [True] * 4
    other = learning.held_out_outcomes(policy, ["place-any"], 1, [5], 1)  # other arguments
    assert len(other["place-any"]["acting"]) == 1


def test_evaluate_run_refuses_the_runs_own_in_run_scenes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run of seed 5 chose its collection policies (the parity switch) on the scenes
    of evaluation seed 5: `evaluate_run --seed 5` of it would report on them."""
    import shutil

    import evaluate_run

    policy = tmp_path / "seed5"
    shutil.copytree(Path(__file__).parents[1] / "policies" / "tuned-r34", policy)
    cfg = json.loads((policy / "config.json").read_text())
    (policy / "config.json").write_text(json.dumps({**cfg, "seed": 5}))
    argv = ["evaluate_run.py", "--run", str(policy), "--json", str(tmp_path / "o.json")]
    monkeypatch.setattr(sys, "argv", [*argv, "--seed", "5", "--episodes", "1"])
    with pytest.raises(SystemExit):
        evaluate_run.main()
    assert "is the in-run evaluation block of" in capsys.readouterr().err
    assert not (tmp_path / "o.json").exists()
    # a run judged on its robots' episodes (eval.on='fleet') never used those scenes
    from mtopt.config import override

    own = evaluate_run.own_config(policy)
    assert own is not None and evaluate_run.in_run_seed(policy, own, 5)
    assert evaluate_run.in_run_seed(policy, override(own, ["eval.on=fleet"]), 5) is None
    import learning  # the learning benchmark's held-out evaluation of an arm refuses it too

    with pytest.raises(SystemExit, match="in-run evaluation block"):
        learning.held_out_outcomes(policy, ["place-any"], 1, [6, 5], 1)


def test_evaluate_run_acts_with_the_folders_own_search_unless_told() -> None:
    """A policy folder exported with `--act gripper=split --act release_margin=0.1` is
    evaluated with that search (it was evaluated with QT-Opt's joint one whatever its
    config said); each --cem-* flag given still wins."""
    import argparse

    import evaluate_run
    from mtopt.config import override
    from mtopt.runtime.config import preset

    none = dict.fromkeys(
        ["cem_iterations", "cem_samples", "cem_elites", "cem_pick", "cem_gripper"], None
    )
    flags = argparse.Namespace(**none, close_margin=None, release_margin=None)
    margin = override(preset("tuned"), ["cem_act.gripper=split", "cem_act.release_margin=0.1"])
    search = evaluate_run.acting_search(margin, flags)
    assert (search["gripper"], search["release_margin"], search["samples"]) == ("split", 0.1, 64)
    assert "precision" not in search  # (fp32 wherever it acts here)
    told = argparse.Namespace(**{**vars(flags), "cem_gripper": "joint"})
    joint = evaluate_run.acting_search(margin, told)  # (the folder's margin goes with it)
    assert (joint["gripper"], joint["release_margin"], joint["close_margin"]) == ("joint", 0, 0)
    assert evaluate_run.acting_search(None, flags)["samples"] == 64  # CEMConfig's defaults
    assert evaluate_run.acting_search(preset("tiny"), flags)["samples"] == 16


def test_learning_benchmark_resume_must_repeat_the_arm_arguments(tmp_path: Path) -> None:
    import argparse

    import learning

    def args(**kw: object) -> argparse.Namespace:
        base = {"config": "tuned", "set": ["seed=1"], "single_data": "own"}
        return argparse.Namespace(**{**base, "single_task": "lift-ball", **kw})

    learning.check_same_arms(tmp_path, args(), resume=False)
    assert json.loads((tmp_path / "bench_args.json").read_text())["set"] == ["seed=1"]
    learning.check_same_arms(tmp_path, args(), resume=True)  # the same: fine
    with pytest.raises(SystemExit, match="--set \\['seed=1'\\]"):
        learning.check_same_arms(tmp_path, args(set=["seed=2"]), resume=True)
    with pytest.raises(SystemExit, match="--single-data 'own'"):
        learning.check_same_arms(tmp_path, args(single_data="multitask"), resume=True)
    # a start without --resume neither runs nor rewrites what the arms are
    with pytest.raises(SystemExit, match="already holds arms"):
        learning.check_same_arms(tmp_path, args(set=["seed=2"]), resume=False)
    assert json.loads((tmp_path / "bench_args.json").read_text())["set"] == ["seed=1"]


def test_learning_benchmark_checks_its_evaluation_scenes_before_training(tmp_path: Path) -> None:
    """A seed given twice counted its scenes twice; a seed or episode count out of range
    failed only after hours of training."""
    for bad, says in (
        (["--eval-seeds", "5,5"], "a seed twice"),
        (["--eval-seeds", "600"], "out of range"),
        (["--eval-episodes", "1001"], "out of range"),
        (["--workers", "0"], "--workers must be >= 1"),
        # the arms' own in-run evaluation block (seed 9's): it failed after the training
        (["--eval-seeds", "5", "--set", "seed=5"], "in-run evaluation block"),
    ):
        r = subprocess.run(
            [
                sys.executable,
                str(BENCH / "learning.py"),
                "--dir",
                str(tmp_path / "b"),
                "--json",
                str(tmp_path / "o.json"),
                *bad,
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 2 and says in r.stderr, r.stderr[-500:]
    assert not (tmp_path / "b").exists()


def test_learning_curves_stitch_resumed_clocks_and_average_windows(tmp_path: Path) -> None:
    from plot_learning_curves import stitched_minutes, window_means

    # second invocation restarted its clock at 0: its points follow the first's last (600 s)
    hist = [{"wall_s": 60.0}, {"wall_s": 600.0}, {"wall_s": 120.0}, {"wall_s": 240.0}]
    assert stitched_minutes(hist) == pytest.approx([1.0, 10.0, 12.0, 14.0])
    assert window_means([1.0, 10.0, 12.0, 29.0, 31.0], [0.0, 0.2, 0.4, 0.6, 1.0], 30.0) == {
        "0-30": 0.3,
        "30-60": 1.0,
    }
    run = tmp_path / "r"
    run.mkdir()
    points = [
        {"wall_s": 60.0 * i, "success": {"lift-any": i / 10}, "scripted": {"lift-any": 0.1}}
        for i in range(1, 5)
    ]
    (run / "history.json").write_text(json.dumps(points))
    out = tmp_path / "c.png"
    r = subprocess.run(
        [
            sys.executable,
            str(BENCH / "plot_learning_curves.py"),
            "--runs",
            str(run),
            "--tasks",
            "lift-any",
            "--smooth",
            "2",
            "--out",
            str(out),
            "--json",
            str(tmp_path / "c.json"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert out.read_bytes()[:4] == b"\x89PNG"
    got = json.loads((tmp_path / "c.json").read_text())["runs"]["r"]["tasks"]["lift-any"]
    assert got["smoothed"] == [0.1, 0.15, 0.25, 0.35]  # trailing mean of 2
    assert got["scripted"] == 0.1

    # the run directory is gone: its saved curve is overlaid from the first JSON
    def plot_saved(spec: str, smooth: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, str(BENCH / "plot_learning_curves.py"), "--saved", spec]
        cmd += ["--tasks", "lift-any", "--smooth", smooth, "--out", str(tmp_path / "d.png")]
        cmd += ["--json", str(tmp_path / "d.json")]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120)

    r = plot_saved(f"{tmp_path / 'c.json'}:r", "2")
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((tmp_path / "d.json").read_text())["runs"]["r"]["tasks"]["lift-any"] == got
    assert "smoothed over 2 points, not 3" in plot_saved(str(tmp_path / "c.json"), "3").stderr
    assert "no run labelled ['x']" in plot_saved(f"{tmp_path / 'c.json'}:x", "2").stderr


def test_place_precision_targets_the_bowl_for_an_object_still_held_high() -> None:
    """The held object's own lowest point (in the gripper, far above the rim) and contacts
    must not decide whether the bowl is a target."""
    from mtopt.tasks.scene import BinState, FixtureState, ObjectState, SceneState
    from place_precision_probe import target_fixtures

    bowl = FixtureState("bowl", (0.0, -0.13, 0.004), 0.04, rim_z=0.036)
    plate = FixtureState("plate", (0.06, -0.13, 0.012), 0.055)
    held = ObjectState(1, "ball", "ball/test/001", 0.02, (0.1, 0.0, 0.25), True, 0.23, frozenset())
    bins = BinState((0.0, 0.13), (0.1, 0.1), 0.0), BinState((0.0, -0.13), (0.1, 0.1), 0.0)
    scene = SceneState((held,), (plate, bowl), *bins, (0.1, 0.0, 0.25), True)
    assert [f.kind for f in target_fixtures("place-in-bowl", scene)] == ["bowl"]
    assert [f.kind for f in target_fixtures("place-any", scene)] == ["plate", "bowl"]


def test_place_precision_where_and_summary_by_hand() -> None:
    from mtopt.tasks.scene import FixtureState, ObjectState
    from place_precision_probe import summarize, where

    bowl = FixtureState("bowl", (0.0, 0.0, 0.01), 0.04)
    plate = FixtureState("plate", (0.1, 0.0, 0.012), 0.055)
    obj = ObjectState(1, "ball", "ball/test/001", 0.02, (0.03, 0.04, 0.11), True)
    # 5 cm from the bowl's centre = 1.25 of its radius, 10 cm above its surface; over
    # neither fixture (the plate's centre is sqrt(0.07^2 + 0.04^2) = 8.1 cm away)
    assert where(obj, [bowl], (bowl, plate)) == {
        "target": "bowl",
        "offset_cm": 5.0,
        "offset_radii": 1.25,
        "height_cm": 10.0,
        "over": "nothing",
    }
    over_plate = ObjectState(2, "can", "can/test/002", 0.03, (0.09, 0.01, 0.05), True)
    assert where(over_plate, [bowl], (bowl, plate))["over"] == "plate"

    def row(success: bool, release: dict | None, prepared: bool = True) -> dict:
        return {"success": success, "prepared": prepared, "release": release}

    rows = [
        row(
            True,
            {"step": 3, "offset_cm": 1.0, "offset_radii": 0.25, "height_cm": 6.0, "over": "bowl"},
        ),
        row(
            True,
            {"step": 5, "offset_cm": 3.0, "offset_radii": 0.75, "height_cm": 8.0, "over": "bowl"},
        ),
        row(
            False,
            {
                "step": 2,
                "offset_cm": 8.0,
                "offset_radii": 2.0,
                "height_cm": 20.0,
                "over": "nothing",
            },
        ),
        row(False, None),
        row(False, None, prepared=False),  # nothing to hold: not an episode of this task
    ]
    s = summarize(rows)
    assert s["episodes"] == 4 and s["success"]["success"] == 0.5
    assert s["never_released"] == 1
    assert s["released_at_step_median"] == 3.0
    assert s["release_over"] == {"bowl": 2, "nothing": 1}
    assert s["release_offset_cm_median"] == {"all": 3.0, "successes": 2.0, "failures": 8.0}
    assert s["release_height_cm_median"] == {"successes": 7.0, "failures": 20.0}
    assert s["released_within_target_radius"] == round(2 / 3, 3)
    assert s["success_by_release_offset"]["0-0.5 radii"] == {"episodes": 1, "success": 1.0}
    assert s["success_by_release_offset"]["1.5-100 radii"] == {"episodes": 1, "success": 0.0}


CAN_ON_PLATE = {
    "name": "place-can-on-plate",
    "kind": "place",
    "fixtures": ["plate"],
    "category": "can",
}


def other_cell_run(tmp_path: Path) -> Path:
    """A run folder (its config.json only) of seed 5 trained in another cell than the
    default (measured moves, 96-pixel images) with a new placing task."""
    from mtopt.config import save_config
    from mtopt.qtopt.networks import QNetConfig
    from mtopt.runtime.config import RunConfig
    from mtopt.sim.config import SimConfig

    cfg = RunConfig(
        seed=5,
        sim=SimConfig(move_from="measured", image_size=96),
        qnet=QNetConfig(num_tasks=14, image_size=96),
        extra_tasks=(CAN_ON_PLATE,),
    )
    save_config(cfg, tmp_path / "run" / "config.json")
    return tmp_path / "run"


def test_probes_of_a_run_act_in_its_cell_with_its_tasks(tmp_path: Path) -> None:
    """The precision probes and the crop probe's run scoring play in the cell the run
    learned in, with its tasks; the default cell and the built-in tasks without a run.
    A task the run lacks and the run's own in-run evaluation seed are refused."""
    from grasp_crop_probe import collection_cell
    from grasp_precision_probe import checked_cell, probe_cell
    from mtopt.sim.config import SimConfig
    from mtopt.tasks import DEFAULT_REGISTRY
    from mtopt.tasks.registry import UnknownTaskError

    run = str(other_cell_run(tmp_path))
    sim, registry = probe_cell(run)
    assert (sim.move_from, sim.image_size, sim.object_split) == ("measured", 96, "test")
    assert registry.names == (*DEFAULT_REGISTRY.names, "place-can-on-plate")
    assert probe_cell(None) == (SimConfig(object_split="test"), DEFAULT_REGISTRY)
    assert probe_cell(None, "train")[0] == collection_cell(None) == SimConfig()
    assert collection_cell(run) == SimConfig(move_from="measured", image_size=96)
    checked = checked_cell(run, 6, ["lift-any", "place-can-on-plate"])
    assert checked[0] == sim and checked[1].names == registry.names
    with pytest.raises(ValueError, match="in-run evaluation block"):
        checked_cell(run, 5, ["lift-any"])
    with pytest.raises(UnknownTaskError, match="place-can-on-plate"):
        checked_cell(None, 5, ["place-can-on-plate"])
    assert checked_cell(None, 5, []) == probe_cell(None)  # no run: no seed of its own


def test_place_precision_targets_a_runs_own_task() -> None:
    """A run's new placing task (``extra_tasks``) has target fixtures, asked of its tasks."""
    from mtopt.tasks import DEFAULT_REGISTRY
    from mtopt.tasks.registry import UnknownTaskError
    from mtopt.tasks.scene import BinState, FixtureState, ObjectState, SceneState
    from place_precision_probe import target_fixtures

    bowl = FixtureState("bowl", (0.0, -0.13, 0.004), 0.04, rim_z=0.036)
    plate = FixtureState("plate", (0.06, -0.13, 0.012), 0.055)
    held = ObjectState(1, "can", "can/test/001", 0.03, (0.1, 0.0, 0.25), True, 0.22, frozenset())
    bins = BinState((0.0, 0.13), (0.1, 0.1), 0.0), BinState((0.0, -0.13), (0.1, 0.1), 0.0)
    scene = SceneState((held,), (plate, bowl), *bins, (0.1, 0.0, 0.25), True)
    registry = DEFAULT_REGISTRY.with_extra((CAN_ON_PLATE,))
    assert [f.kind for f in target_fixtures("place-can-on-plate", scene, registry)] == ["plate"]
    with pytest.raises(UnknownTaskError):
        target_fixtures("place-can-on-plate", scene)  # not a built-in task


@pytest.mark.parametrize(
    ("script", "extra", "says"),
    [
        ("place_precision_probe", ["--seed", "5"], "in-run evaluation block"),
        ("place_precision_probe", ["--seed", "6", "--tasks", "place-on-pan"], "not one of the run"),
        ("place_precision_probe", ["--seed", "6", "--release-cm", "30"], "--release-cm must be in"),
        ("grasp_precision_probe", ["--seed", "5"], "in-run evaluation block"),
        ("q_landscape_probe", ["--seed", "5"], "in-run evaluation block"),
        ("q_landscape_probe", ["--seed", "6", "--task", "lift-pan"], "unknown task 'lift-pan'"),
    ],
)
def test_probes_refuse_a_runs_own_scenes_and_tasks_it_lacks(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    script: str,
    extra: list[str],
    says: str,
) -> None:
    """Before any work: a run of seed 5 chose its collection policies on the scenes of
    evaluation seed 5, and a task must be one of the run's."""
    import importlib

    module = importlib.import_module(script)
    run = other_cell_run(tmp_path)
    out = tmp_path / "o.json"
    monkeypatch.setattr(sys, "argv", [script, "--run", str(run), "--json", str(out), *extra])
    with pytest.raises(SystemExit):
        module.main()
    assert says in capsys.readouterr().err
    assert not out.exists()


def test_place_precision_takes_a_runs_own_placing_task(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--tasks is checked against the run's tasks: its new placing task passes the check
    (stopped here at the next one, --episodes 0), a built-in run does not have it."""
    import place_precision_probe

    run = other_cell_run(tmp_path)
    argv = ["p", "--json", str(tmp_path / "o.json"), "--tasks", "place-can-on-plate"]
    monkeypatch.setattr(sys, "argv", [*argv, "--run", str(run), "--seed", "6", "--episodes", "0"])
    with pytest.raises(SystemExit):
        place_precision_probe.main()
    assert "--episodes and --workers must be >= 1" in capsys.readouterr().err
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit):
        place_precision_probe.main()
    assert "not one of the built-in placing tasks" in capsys.readouterr().err


def test_grasp_crop_probe_auc_and_errors_by_hand() -> None:
    from grasp_crop_probe import auc, errors_summary

    # positives 0.9, 0.4 against negatives 0.6, 0.4: of 4 pairs 2 won, 1 tied: 2/4 + 1/8
    assert auc(np.array([0.9, 0.4, 0.6, 0.4]), np.array([True, True, False, False])) == 0.625
    assert auc(np.array([0.1, 0.2]), np.array([True, True])) is None
    # errors 0, 5, 3 cm: RMS sqrt(34 / 3), median 3, one of three within 1 cm; true
    # distances 0, 0, 3: near (< 1 cm) rows 0, 1 score -0, -5 against far row 2's -0:
    # one tie, one loss (0.25); lifted rows 0, 2 (scores 0, 0) beat row 1 (-5): 1.0
    pred = np.array([[0.0, 0.0], [3.0, 4.0], [0.0, 0.0]])
    true = np.array([[0.0, 0.0], [0.0, 0.0], [3.0, 0.0]])
    s = errors_summary(pred, true, np.array([1, 0, 1]))
    assert s == {
        "rms_cm": round(math.sqrt(34 / 3), 3),
        "median_cm": 3.0,
        "within_1cm": 0.333,
        "auc_within1_vs_over2": 0.25,
        "auc_lifted": 1.0,
    }


def test_compare_evals_pairs_scenes_across_files(tmp_path: Path) -> None:
    """Two evaluations on the same scenes pool per side and compare paired; files that ran
    different scenes, or predate kept outcomes, are refused with the reason."""
    from compare_evals import pooled

    def result(name: str, seed: int, per_task: dict) -> str:
        path = tmp_path / name
        path.write_text(json.dumps({"seed": seed, "episodes_per_task": 3, "per_task": per_task}))
        return str(path)

    run5 = result(
        "r5.json", 5, {"lift-any": {"acting": {"outcomes": "110"}, "online": {"outcomes": "011"}}}
    )
    run6 = result("r6.json", 6, {"lift-any": {"acting": {"outcomes": "001"}}})
    ens5 = result("e5.json", 5, {"lift-any": {"success": 0.67, "outcomes": "111"}})
    ens6 = result("e6.json", 6, {"lift-any": {"outcomes": "101"}})
    a, b = pooled([run5, run6], [ens5, ens6], None)
    assert a == {"lift-any": [True, True, False, False, False, True]}
    assert b == {"lift-any": [True, True, True, True, False, True]}
    # within one file: acting "110" against online "011" -> one scene each way
    a, b = pooled([run5], [f"{run5}:online"], ["lift-any"])
    assert (a["lift-any"], b["lift-any"]) == ([True, True, False], [False, True, True])
    with pytest.raises(SystemExit, match="not the same scenes"):
        pooled([run5], [ens6], None)
    old = result("old.json", 5, {"lift-any": {"acting": {"success": 0.5}}})
    with pytest.raises(SystemExit, match="no episode outcomes"):
        pooled([old], [run5], None)
    with pytest.raises(SystemExit, match="pair up"):
        pooled([run5, run6], [ens5], None)
    # a task only one pair has is left out (it was pooled over fewer seeds, silently)
    both = {"acting": {"outcomes": "100"}}
    a5 = result("a5.json", 5, {"lift-any": both, "place-any": both})
    b5 = result("b5.json", 5, {"lift-any": both, "place-any": both})
    a, b = pooled([a5, run6], [b5, ens6], None)
    assert set(a) == set(b) == {"lift-any"} and len(a["lift-any"]) == 6
    # a part named for a file of one policy (an ensemble's): it was read as that policy
    with pytest.raises(SystemExit, match="holds one policy's outcomes"):
        pooled([run5], [f"{ens5}:online"], None)

    def compare(a: object, b: object, out: Path) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, str(BENCH / "compare_evals.py")]
        cmd += ["--a", str(a), "--b", str(b), "--json", str(out)]
        return subprocess.run(cmd, capture_output=True, text=True, check=True)

    # files of two cell versions (no field: 1) compare with a note, and say so
    new5 = tmp_path / "new5.json"
    new5.write_text(json.dumps({**json.loads(Path(run5).read_text()), "cell_version": 2}))
    out = tmp_path / "cmp.json"
    r = compare(run5, new5, out)
    assert "cell versions [1, 2]" in r.stderr
    assert json.loads(out.read_text())["cell_versions"] == [1, 2]
    assert json.loads(out.read_text())["sim_differs"] is False  # not recorded: no claim
    # versions 2 and 3: the same scenes, another judge of the bowl
    new3 = tmp_path / "new3.json"
    new3.write_text(json.dumps({**json.loads(Path(run5).read_text()), "cell_version": 3}))
    r = compare(new5, new3, tmp_path / "c23.json")
    assert "cell versions [2, 3]: the same scenes, judged by another ground truth" in r.stderr
    # held-out scene versions 1 and 2: a category lift met other scenes, lift-any did not
    both = {
        "lift-any": {"acting": {"outcomes": "110"}},
        "lift-ball": {"acting": {"outcomes": "010"}},
    }
    v1 = result("v1.json", 5, both)
    v2 = tmp_path / "v2.json"
    v2.write_text(json.dumps({**json.loads(Path(v1).read_text()), "eval_scenes": 2}))
    r = compare(v1, v2, tmp_path / "v12.json")
    assert "scene versions [1, 2]: lift-ball met other scenes" in r.stderr
    assert json.loads((tmp_path / "v12.json").read_text())["eval_scenes_versions"] == [1, 2]
    # setup tries recorded in one file only: a category place may have met other scenes
    # (3 tries before 2026-12-06, 5 since; files before 2026-12-07 do not say)
    places = {
        "place-any": {"acting": {"outcomes": "110"}},
        "place-ball-in-bowl": {"acting": {"outcomes": "010"}},
    }
    p1 = result("p1.json", 5, places)
    p2 = tmp_path / "p2.json"
    p2.write_text(json.dumps({**json.loads(Path(p1).read_text()), "setup_tries": 5}))
    r = compare(p1, p2, tmp_path / "p12.json")
    assert "(5, not recorded;" in r.stderr and "place-ball-in-bowl may have met" in r.stderr
    (said,) = [line for line in r.stderr.splitlines() if "scenes per slot" in line]
    assert "place-any" not in said  # set up in the first scene: the same scenes
    r = compare(p2, p2, tmp_path / "p22.json")
    assert "scenes per slot" not in r.stderr
    # one seed twice on a side: the same scenes counted twice (n and p looked better)
    with pytest.raises(SystemExit, match="count the same scenes twice"):
        pooled([run5, run5], [ens5, ens5], None)
    # another object split: other scenes
    train5 = result("t5.json", 5, {"lift-any": {"acting": {"outcomes": "110"}}})
    data = json.loads(Path(train5).read_text())
    Path(train5).write_text(json.dumps({**data, "objects": "train"}))
    with pytest.raises(SystemExit, match="not the same scenes"):
        pooled([run5], [train5], None)
    # a part that only some tasks have (straight_down: pick tasks) with --tasks
    mixed = result(
        "m5.json",
        5,
        {
            "lift-any": {"acting": {"outcomes": "110"}, "straight_down": {"outcomes": "100"}},
            "place-any": {"acting": {"outcomes": "111"}},
        },
    )
    a, b = pooled([f"{mixed}:straight_down"], [mixed], ["lift-any"])
    assert (a["lift-any"], b["lift-any"]) == ([True, False, False], [True, True, False])
    # runs with other cell settings: a note, and the result says so
    sims = []
    for name, move in (("s5a.json", "command"), ("s5b.json", "measured")):
        path = tmp_path / name
        path.write_text(json.dumps({**json.loads(Path(run5).read_text()), "sim": {"m": move}}))
        sims.append(str(path))
    r = subprocess.run(
        [
            sys.executable,
            str(BENCH / "compare_evals.py"),
            "--a",
            sims[0],
            "--b",
            sims[1],
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "other cell settings" in r.stderr and json.loads(out.read_text())["sim_differs"]
    from compare_evals import sims_differ

    assert not sims_differ([{"m": 1}, {"m": 1, "added_later": 2}])
    assert sims_differ([{"m": 1}, {"m": 2, "added_later": 2}])
    # seed 5 of the held-out objects and seed 5 of the training objects: other scenes
    a, b = pooled([run5, train5], [run5, train5], None)
    assert len(a["lift-any"]) == 6


def test_learning_benchmark_gives_a_single_task_arm_the_multitask_data(tmp_path: Path) -> None:
    """--single-data multitask: the arm's store holds the multi-task arm's episodes of its
    task only, and its success detector; done once (a resume keeps it)."""
    import dataclasses

    from tests.test_store import make_episode

    import learning
    from mtopt.store import EpisodeWriter
    from mtopt.store.reader import EpisodeReader

    multi = tmp_path / "multitask"
    with EpisodeWriter(multi / "store", "robot-00", flush_every=3) as w:
        for i in range(10):
            task = "lift-ball" if i % 3 == 0 else "lift-any"
            w.write(dataclasses.replace(make_episode(i), task=task))
    (multi / "sd").mkdir()
    (multi / "sd" / "sd-latest.json").write_text('{"version": 3}')
    arm = tmp_path / "single-lift-ball-mtdata"
    assert learning.multitask_data(multi, arm, "lift-ball") == 4
    assert sorted(e.episode_id for e in EpisodeReader(arm / "store").episodes()) == [
        "ep00000",
        "ep00003",
        "ep00006",
        "ep00009",
    ]
    assert (arm / "sd" / "sd-latest.json").read_text() == '{"version": 3}'
    assert not (arm / "store.partial").exists() and not (arm / "sd.partial").exists()
    assert learning.multitask_data(multi, arm, "lift-ball") == 4  # again: nothing copied twice
    assert len(list((arm / "store" / "shards").glob("*/*.parquet"))) == 4


def test_select_snapshot_keeps_the_latest_unless_a_snapshot_beats_it_paired() -> None:
    from select_snapshot import choose

    latest = [True] * 10 + [False] * 30
    a_bit_better = [True] * 12 + [False] * 28  # +2 scenes: sign test p = 0.5
    much_better = [True] * 25 + [False] * 15  # +15 scenes, none worse: p < 0.001
    also_much = [True] * 25 + [False] * 15
    assert choose([[a_bit_better], [latest]]) == 1  # noise: keep the latest
    assert choose([[much_better], [a_bit_better], [latest]]) == 0
    assert choose([[much_better], [also_much], [latest]]) == 1  # the later of equals
    assert choose([[latest]]) == 0


def test_select_snapshot_compares_scene_by_scene_by_hand() -> None:
    """Two tasks, four scenes. Latest solves (task 0) T F F T and (task 1) F F T T: 1, 0,
    1, 2 tasks per scene; the other T T F F and T F T T: 2, 1, 1, 1. Better in scenes 0
    and 1, worse in 3, level in 2; mean success 5/8 against 4/8; sign test of 1 against 2:
    2 * (C(3,0) + C(3,1)) / 2^3 = 1, capped at 1."""
    from select_snapshot import scene_comparison

    latest = [[True, False, False, True], [False, False, True, True]]
    other = [[True, True, False, False], [True, False, True, True]]
    assert scene_comparison(latest, other) == {"better": 2, "worse": 1, "diff": 0.125, "p": 1.0}
    with pytest.raises(ValueError, match="same tasks and scenes"):
        scene_comparison(latest, [other[0]])
    with pytest.raises(ValueError, match="same number of scenes"):
        scene_comparison([[True], [True, False]], [[True], [True, True]])


def test_select_snapshot_counts_a_scene_once_and_corrects_for_several_snapshots() -> None:
    """Both tasks flip together in 6 of 40 shared scenes. Pooled as 80 independent pairs
    that is 0 against 12, p = 2 / 2^12 = 0.0005; scene by scene it is 0 against 6,
    p = 2 / 2^6 = 0.03125: enough at 0.05 for one snapshot, not at 0.05 / 3 for three."""
    from select_snapshot import choose, scene_comparison

    latest = [[False] * 40, [False] * 40]
    other = [[True] * 6 + [False] * 34, [True] * 6 + [False] * 34]
    assert scene_comparison(latest, other)["p"] == 2 / 2**6
    assert choose([other, latest]) == 0
    assert choose([latest, latest, other, latest]) == 3  # 0.03125 > 0.05 / 3: keep the latest


def test_select_snapshot_writes_the_chosen_weights_as_a_policy_folder(tmp_path: Path) -> None:
    """A candidate is a policy folder (it acts like a run) whose acting network is the
    snapshot's."""
    from mtopt.config import save_config
    from mtopt.qtopt.learner import Learner
    from mtopt.qtopt.weights import load_source, snapshot_latest
    from mtopt.runtime.config import preset
    from select_snapshot import candidate_folder

    cfg = preset("tiny")
    run = tmp_path / "run"
    save_config(cfg, run / "config.json")
    learner = Learner(cfg.qnet, cfg.learner)
    learner.publish(run / "weights")
    snap = snapshot_latest(run / "weights")
    folder = candidate_folder(run, snap, tmp_path / "work")
    version, tensors, _ = load_source(folder)
    _, snap_tensors, _ = load_source(snap)
    assert version == load_source(snap)[0]
    acting = [k for k in snap_tensors if k.startswith("acting.")]
    assert acting and all(np.array_equal(tensors[k], snap_tensors[k]) for k in acting)
    assert (folder / "config.json").exists() and (folder / "exported.json").exists()


def test_ensemble_probe_acts_in_the_members_cell_and_refuses_mixed_runs(tmp_path: Path) -> None:
    """A member's cell and tasks come from the run it belongs to (its weights folder or a
    snapshot in it too); members of runs with different cells or tasks are refused."""
    import dataclasses

    from ensemble_probe import common_cell, member_run
    from mtopt.config import save_config
    from mtopt.runtime.config import preset

    cfg = preset("tiny")
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    save_config(cfg, a / "config.json")
    save_config(
        dataclasses.replace(cfg, sim=dataclasses.replace(cfg.sim, move_from="measured")),
        b / "config.json",
    )
    (a / "weights" / "snapshots").mkdir(parents=True)
    assert member_run(f"{a}:acting") == a.resolve()
    assert member_run(f"{a / 'weights' / 'snapshots'}:online") == a.resolve()
    assert member_run(f"{c}:acting") is None
    sim, registry = common_cell([f"{a}:acting", f"{a / 'weights'}:online"])
    assert sim == dataclasses.replace(cfg.sim, object_split="test")
    assert registry.names == cfg.registry().names
    with pytest.raises(ValueError, match="another cell"):
        common_cell([f"{a}:acting", f"{b}:acting"])


POLICY = Path(__file__).resolve().parents[1] / "policies" / "tuned-r34"


@pytest.mark.parametrize(
    ("script", "args", "says"),
    [
        ("evaluate_run.py", ["--run", str(POLICY), "--tasks", "nope"], "unknown task 'nope'"),
        ("evaluate_run.py", ["--run", str(POLICY), "--tasks", " , "], "names no task"),
        ("evaluate_run.py", ["--run", "/nonexistent"], "no such run or policy folder"),
        ("evaluate_run.py", ["--run", str(POLICY), "--episodes", "0"], "at least 1"),
        ("evaluate_run.py", ["--run", "{bare}"], "no published 'q' weights"),
        ("evaluate_run.py", ["--run", f"{POLICY}-swa", "--parts", "online"], "no online network"),
        ("compare_evals.py", ["--a", "{tmp}/missing.json", "--b", "{tmp}/b.json"], "no such file"),
        ("compare_evals.py", ["--a", "{bare}/config.json:online", "--b", "{tmp}/b.json"], "--b"),
        ("select_snapshot.py", ["--run", str(POLICY), "--tasks", "nope"], "unknown task 'nope'"),
    ],
)
def test_benchmark_scripts_refuse_bad_arguments_before_any_work(
    tmp_path: Path, script: str, args: list[str], says: str
) -> None:
    """Errors of the command line: a usage line and exit 2 (they were tracebacks, from a
    worker for a missing run; `--episodes 0` wrote a success rate of 0.0), before any
    evaluation, so nothing is written."""
    bare = tmp_path / "bare"  # a run folder without published weights
    bare.mkdir()
    (bare / "config.json").write_text((POLICY / "config.json").read_text())
    (tmp_path / "b.json").write_text("{")
    args = [a.format(tmp=tmp_path, bare=bare) for a in args]
    out = tmp_path / "out.json"
    r = subprocess.run(
        [sys.executable, str(BENCH / script), *args, "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and says in r.stderr, r.stderr[-2000:]
    assert "Traceback" not in r.stderr and not out.exists()


def test_select_snapshot_help_describes_it_in_whole_sentences() -> None:
    r = subprocess.run(
        [sys.executable, str(BENCH / "select_snapshot.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    text = " ".join(r.stdout.split())
    assert "written as a policy folder ``RUN/policy-selected``" in text


def test_select_snapshot_never_picks_a_snapshot_worse_in_most_scenes() -> None:
    """Three tasks, 60 scenes: the snapshot solves all three in 10 scenes the latest
    fails, and one fewer task in 25 others. Its mean is higher (+5 of 180 task-scenes)
    and the two-sided sign test of 10 against 25 is p ~ 0.017 < 0.05: but it is worse
    in most scenes, so the latest stays."""
    from select_snapshot import choose, scene_comparison

    latest = [[False] * 10 + [True] * 25 + [False] * 25 for _ in range(3)]
    snap = [[True] * 10 + [t != 0] * 25 + [False] * 25 for t in range(3)]
    c = scene_comparison(latest, snap)
    assert (c["better"], c["worse"]) == (10, 25) and c["diff"] > 0 and c["p"] < 0.05
    assert choose([snap, latest]) == 1


def test_sd_store_precision_counts_by_hand() -> None:
    """Verdicts [T, T, F, T, F] against truth [T, F, F, T, T]: 2 true successes, 1
    false, 1 missed: precision 2/3, recall 2/3; no verdict of success: undefined."""
    from sd_store_precision import precision_recall

    pred = np.array([True, True, False, True, False])
    truth = np.array([True, False, False, True, True])
    assert precision_recall(pred, truth) == {
        "precision": 0.6667,
        "recall": 0.6667,
        "false_successes": 1,
    }
    none = precision_recall(np.zeros(3, bool), np.zeros(3, bool))
    assert none == {"precision": None, "recall": None, "false_successes": 0}


def test_sd_view_thresholds_by_hand() -> None:
    """Scores [0.95, 0.85, 0.6, 0.3] against truth [T, F, T, F]: at 0.5 two true
    successes and one false (precision 2/3, recall 1); at 0.7 one of each (1/2, 1/2); at
    0.9 and 0.95 only the true 0.95 (precision 1, recall 1/2)."""
    from sd_view import THRESHOLDS, pr_at

    got = pr_at(np.array([0.95, 0.85, 0.6, 0.3]), np.array([True, False, True, False]))
    assert [r["threshold"] for r in got] == list(THRESHOLDS) == [0.5, 0.7, 0.8, 0.9, 0.95]
    assert [(r["precision"], r["recall"], r["false_successes"]) for r in got] == [
        (0.6667, 1.0, 1),
        (0.5, 0.5, 1),
        (0.5, 0.5, 1),
        (1.0, 0.5, 0),
        (1.0, 0.5, 0),
    ]


def test_sd_view_shows_each_episode_in_every_view() -> None:
    """Two place-any episodes acted as a policy folder's robots would act, each shown at
    shares 0.5 (the cell's own: the episode's final image) and 0.75 (rendered again, the
    fixture bin larger); every task has a ground-truth label (a placing success is a
    place-any success); the same job gives the same episodes, policies and images."""
    from mtopt.policies.exploration import Exploring
    from mtopt.policies.scripted import ScriptedPlace
    from mtopt.runtime.config import run_registry
    from sd_view import PLACING, collect, policy_kind

    job = (str(POLICY), "test", 0, 0, 2, 11, (0.5, 0.75))
    got = collect(job)
    names = run_registry(POLICY).names
    assert got["images_0"].shape == got["images_1"].shape == (2, 64, 64, 3)
    assert not np.array_equal(got["images_0"], got["images_1"])
    assert got["labels"].shape == (2, len(names))
    assert set(got["kinds"]) <= {"scripted", "learned"}
    assert list(got["ids"]) == ["place-any/test/11/0", "place-any/test/11/1"]
    any_, bowl = names.index(PLACING[0]), names.index(PLACING[1])
    assert (got["labels"][:, any_] >= got["labels"][:, bowl]).all()
    again = collect(job)
    for k in ("images_0", "images_1", "labels", "kinds"):
        assert np.array_equal(again[k], got[k]), k
    assert policy_kind(Exploring(ScriptedPlace(), 0.1, 0.2)) == "scripted"
    assert policy_kind(ScriptedPlace()) == "scripted" and policy_kind(object()) == "learned"


def test_sd_score_spread_by_hand() -> None:
    """Scores [0.95, 0.8, 0.6, 0.3, 0.1] against truth [T, F, T, F, F]: true successes
    average 0.775, the one false success (0.8) 0.8, failures (0.8, 0.3, 0.1) 0.4; half
    the true successes and the one false one are under 0.85."""
    from sd_store_precision import score_spread

    got = score_spread(
        np.array([0.95, 0.8, 0.6, 0.3, 0.1]), np.array([True, False, True, False, False])
    )
    assert got == {
        "mean_true_success": 0.775,
        "mean_false_success": 0.8,
        "mean_failure": 0.4,
        "false_success_quartiles": [0.8, 0.8, 0.8],
        "false_successes_under_0.85": 1.0,
        "true_successes_under_0.85": 0.5,
    }


def test_sd_benchmarks_keep_their_artefacts_in_workdir_only_when_given(tmp_path: Path) -> None:
    """``work_dir``: --workdir's folder is made and kept; without one a temporary folder
    is gone when the benchmark's stack closes. ``cached``/``mark``: an artefact is
    reused only under the key it was made with."""
    import contextlib

    from sd_accuracy import cached, mark, work_dir

    with contextlib.ExitStack() as stack:
        kept = work_dir(stack, str(tmp_path / "deep" / "wd"))
        temp = work_dir(stack, "")
        assert kept.is_dir() and temp.is_dir()
    assert kept.is_dir() and not temp.exists()
    assert not cached(kept, "sd", {"steps": 1})
    mark(kept, "sd", {"steps": 1})
    assert cached(kept, "sd", {"steps": 1}) and not cached(kept, "sd", {"steps": 2})
