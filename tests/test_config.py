import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mtopt.config import (
    ConfigError,
    changed_fields,
    describe_changes,
    from_dict,
    override,
    save_config,
    to_dict,
)
from mtopt.qtopt.learner import LearnerConfig
from mtopt.runtime.config import load_run_config


@dataclass(frozen=True)
class Inner:
    lr: float = 1e-4
    """learning rate"""
    tasks: tuple[str, ...] = ("a", "b")


@dataclass(frozen=True)
class Outer:
    name: str = "x"
    steps: int = 10
    fast: bool = False
    inner: Inner = field(default_factory=Inner)


def test_override_nested_and_roundtrip() -> None:
    cfg = override(Outer(), ["steps=20", "inner.lr=0.5", "fast=true", "inner.tasks=c,d"])
    assert cfg.steps == 20 and cfg.inner.lr == 0.5 and cfg.fast and cfg.inner.tasks == ("c", "d")
    assert from_dict(Outer, to_dict(cfg)) == cfg


def test_override_errors_are_clear() -> None:
    with pytest.raises(ConfigError, match="unknown config field 'stepz'"):
        override(Outer(), ["stepz=1"])
    with pytest.raises(ConfigError, match="expected int"):
        override(Outer(), ["steps=many"])
    with pytest.raises(ConfigError, match="field=value"):
        override(Outer(), ["steps"])


def test_resume_continues_the_runs_own_config(tmp_path) -> None:
    """``mtopt run --resume`` starts from the run's config.json, not the preset: a run
    started with overrides (seed, Q-network inputs) continues with them."""
    import json

    from mtopt.config import save_config
    from mtopt.runtime.config import load_run_config, preset, resume_config

    started = override(preset("local"), ["seed=3", "qnet.gripper_xy=true", "budget_minutes=50"])
    path = save_config(started, tmp_path / "config.json")
    saved = load_run_config(path)
    assert saved == started
    cfg = resume_config(saved, None, ["budget_minutes=90"], tmp_path)
    assert cfg.seed == 3 and cfg.qnet.gripper_xy and cfg.budget_minutes == 90
    assert resume_config(saved, "local", [], tmp_path) == saved  # naming its own preset is fine
    with pytest.raises(ConfigError, match="started with --config local, not tiny"):
        resume_config(saved, "tiny", [], tmp_path)
    with pytest.raises(ConfigError, match=r"qnet.gripper_xy: True -> False"):
        resume_config(saved, None, ["qnet.gripper_xy=false"], tmp_path)
    # a config.json from before a field existed: the field takes its current default
    data = json.loads(path.read_text())
    del data["qnet"]["coord_channels"], data["bellman_prefetch"]
    (tmp_path / "old.json").write_text(json.dumps(data))
    old = load_run_config(tmp_path / "old.json")
    assert old.qnet.gripper_xy and not old.qnet.coord_channels and old.bellman_prefetch == 2
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="cannot read the run's config"):
        load_run_config(tmp_path / "bad.json")


def test_a_config_from_before_move_from_keeps_the_moves_its_run_had(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Runs saved before ``sim.move_from`` existed moved from the command: loading one
    pins that, whatever the field's default becomes (a shipped policy would otherwise
    be evaluated in another cell than it learned in)."""
    import mtopt.runtime.config as rc
    from mtopt.config import save_config

    path = save_config(override(rc.preset("tiny"), ["sim.move_from=measured"]), tmp_path / "c.json")
    assert rc.load_run_config(path).sim.move_from == "measured"  # a saved value is kept
    data = json.loads(path.read_text())
    del data["sim"]["move_from"]
    (tmp_path / "old.json").write_text(json.dumps(data))
    assert rc._BEFORE_THE_FIELD[("sim", "move_from")] == "command"
    assert rc.load_run_config(tmp_path / "old.json").sim.move_from == "command"
    # the pinned value is what is used, not the current default
    monkeypatch.setitem(rc._BEFORE_THE_FIELD, ("sim", "move_from"), "measured")
    assert rc.load_run_config(tmp_path / "old.json").sim.move_from == "measured"
    monkeypatch.undo()
    shipped = list(Path(__file__).parents[1].glob("policies/*/config.json"))
    assert shipped and all(rc.load_run_config(c).sim.move_from == "command" for c in shipped)


def test_the_outcome_view_is_pinned_for_old_runs_and_kept_by_a_resume(tmp_path: Path) -> None:
    """Runs saved before sim.outcome_fixtures_share had equal panes; a resume cannot
    change the view its detector, examples and stored episodes have; a pane of fewer
    than 8 rows is refused."""
    import mtopt.runtime.config as rc
    from mtopt.config import save_config
    from mtopt.sim.cell import SimConfig

    path = save_config(rc.preset("tiny"), tmp_path / "c.json")
    data = json.loads(path.read_text())
    del data["sim"]["outcome_fixtures_share"]
    (tmp_path / "old.json").write_text(json.dumps(data))
    assert rc.load_run_config(tmp_path / "old.json").sim.outcome_fixtures_share == 0.5
    with pytest.raises(ConfigError, match=r"cannot change sim\.outcome_fixtures_share"):
        rc.resume_config(rc.preset("tiny"), None, ["sim.outcome_fixtures_share=0.75"])
    assert rc.resume_config(rc.preset("tiny"), None, ["sim.outcome_fixtures_share=0.5"])
    SimConfig(image_size=32, outcome_fixtures_share=0.75).validate()  # 24 and 8 rows
    with pytest.raises(ValueError, match="fewer than 8 rows at image_size 24"):
        SimConfig(image_size=24, outcome_fixtures_share=0.75).validate()
    SimConfig(image_size=16).validate()  # the default halves at any size


def test_a_config_from_before_spawn_keeps_the_scenes_its_run_had(tmp_path: Path) -> None:
    """Runs saved before ``sim.spawn`` existed put their objects down 'sampled'."""
    import mtopt.runtime.config as rc
    from mtopt.config import save_config

    path = save_config(override(rc.preset("tiny"), ["sim.spawn=clear"]), tmp_path / "c.json")
    assert rc.load_run_config(path).sim.spawn == "clear"
    data = json.loads(path.read_text())
    del data["sim"]["spawn"]
    (tmp_path / "old.json").write_text(json.dumps(data))
    assert rc.load_run_config(tmp_path / "old.json").sim.spawn == "sampled"
    # and, with a robot factory, evaluated in the simulated cell, as it was (eval.on)
    arm = override(rc.preset("tiny"), ["robot_factory=tests.robot_factories:make_arm"])
    data = json.loads(save_config(arm, tmp_path / "arm.json").read_text())
    assert rc.load_run_config(tmp_path / "arm.json").eval_on == "fleet"
    del data["eval"]["on"]
    (tmp_path / "old_arm.json").write_text(json.dumps(data))
    assert rc.load_run_config(tmp_path / "old_arm.json").eval_on == "sim"
    with pytest.raises(ConfigError, match="spawn"):
        override(rc.preset("tiny"), ["sim.spawn=heap"])


def test_resume_refuses_a_checkpoint_of_another_network(tmp_path) -> None:
    """The last guard (a config.json edited by hand): the checkpoint's Q-network must be
    the one the config describes, or LogReplay would feed it the wrong inputs."""
    import dataclasses

    from mtopt.qtopt.learner import Learner, LearnerConfig
    from mtopt.qtopt.networks import QNetConfig
    from mtopt.runtime.config import preset
    from mtopt.runtime.local import RunPaths, resume_learner

    cfg = preset("tiny")
    paths = RunPaths(tmp_path)
    paths.checkpoint.parent.mkdir(parents=True, exist_ok=True)
    Learner(cfg.qnet, LearnerConfig()).save_checkpoint(paths.checkpoint, {"sd_labels": 3})
    learner, extra = resume_learner(paths, cfg)
    assert learner.qnet_cfg == cfg.qnet and extra["sd_labels"] == 3
    other = dataclasses.replace(cfg, qnet=dataclasses.replace(cfg.qnet, gripper_xy=True))
    with pytest.raises(ConfigError, match=r"qnet.gripper_xy: False -> True"):
        resume_learner(paths, other)
    assert describe_changes(QNetConfig(), QNetConfig()) == ""


def test_resume_after_a_kill_counts_on_from_the_newest_published_weights(tmp_path) -> None:
    """A run killed between checkpoints has published weights newer than its checkpoint;
    the resumed learner must publish past them, not fail on its first publish."""
    from mtopt.qtopt.learner import Learner, LearnerConfig
    from mtopt.qtopt.weights import read_latest
    from mtopt.runtime.config import preset
    from mtopt.runtime.local import RunPaths, resume_learner

    cfg = preset("tiny")
    paths = RunPaths(tmp_path)
    paths.checkpoint.parent.mkdir(parents=True, exist_ok=True)
    learner = Learner(cfg.qnet, LearnerConfig())
    assert learner.publish(paths.weights) == 1
    learner.save_checkpoint(paths.checkpoint)
    assert learner.publish(paths.weights) == 2  # after the checkpoint, then the kill
    assert learner.publish(paths.weights) == 3
    resumed, _ = resume_learner(paths, cfg)
    assert resumed.version == 3
    assert resumed.publish(paths.weights) == 4
    assert read_latest(paths.weights)["version"] == 4  # type: ignore[index]
    # a clean stop (checkpoint after the last publish) keeps its own version
    resumed.save_checkpoint(paths.checkpoint)
    assert resume_learner(paths, cfg)[0].version == 4


def test_describe_changes_names_nested_fields() -> None:
    from mtopt.runtime.config import preset

    a = preset("local")
    b = override(a, ["learner.lr=0.5", "budget_minutes=7"])
    assert set(describe_changes(a, b).split(", ")) == {
        f"budget_minutes: {a.budget_minutes!r} -> 7.0",
        f"learner.lr: {a.learner.lr!r} -> 0.5",
    }
    assert changed_fields(a, b) == {
        "budget_minutes": (a.budget_minutes, 7.0),
        "learner.lr": (a.learner.lr, 0.5),
    }
    assert changed_fields(a, a) == {}


def test_local_run_resume_keeps_its_config_and_records_changes(tmp_path) -> None:
    """A Python caller resuming a run: ``LocalRun.resume_from`` continues with the run's
    own config; an explicit cfg may change settings (recorded in config_changes.json and
    config.json) but not the Q-network."""
    from mtopt.runtime.config import preset
    from mtopt.runtime.local import LocalRun

    out = tmp_path / "run"
    started = override(preset("tiny"), ["seed=3", "qnet.gripper_xy=true"])
    LocalRun(started, out)  # writes config.json; nothing runs
    assert not (out / "config_changes.json").exists()

    run = LocalRun.resume_from(out)
    assert run.cfg == started  # not the preset's seed 0, not without gripper_xy
    assert not (out / "config_changes.json").exists()

    run = LocalRun.resume_from(out, ["budget_minutes=9"])
    assert run.cfg.seed == 3 and run.cfg.budget_minutes == 9.0
    log = json.loads((out / "config_changes.json").read_text())
    assert [entry["changes"] for entry in log] == [
        {"budget_minutes": [started.budget_minutes, 9.0]}
    ]
    assert load_run_config(out / "config.json").budget_minutes == 9.0
    # settings only a start uses say so once what they made exists (they were listed
    # as changed, and did nothing)
    run = LocalRun.resume_from(out, ["learner.seed=9"])
    assert not any("no effect" in line for line in run.log_lines)  # no checkpoint: it acts
    run.paths.checkpoint.parent.mkdir(parents=True, exist_ok=True)
    run.paths.checkpoint.write_bytes(b"")  # (only its presence counts here)
    run = LocalRun.resume_from(out, ["learner.seed=10"])
    assert any("learner.seed has no effect on this resume" in ln for ln in run.log_lines)
    run.paths.checkpoint.unlink()

    with pytest.raises(ConfigError, match=r"qnet.gripper_xy: True -> False"):
        LocalRun(preset("tiny"), out, resume=True)  # the preset lacks gripper_xy
    assert load_run_config(out / "config.json").qnet.gripper_xy  # left as it was
    with pytest.raises(ConfigError, match="no run to resume"):
        LocalRun.resume_from(tmp_path / "empty")

    # the seed made its evaluation scenes, where the parity switch judged: kept (a
    # report on them was refused for the new seed's block only)
    with pytest.raises(ConfigError, match=r"cannot change seed \(3 -> 4\)"):
        LocalRun(override(run.cfg, ["seed=4"]), out, resume=True)
    with pytest.raises(ConfigError, match=r"--resume cannot change seed \(3 -> 4\)"):
        LocalRun.resume_from(out, ["seed=4"])
    (out / "config_changes.json").write_text("{not json")
    LocalRun(override(run.cfg, ["eval.every_steps=77"]), out, resume=True)
    log = json.loads((out / "config_changes.json").read_text())
    assert log[0]["changes"] == {"eval.every_steps": [run.cfg.eval.every_steps, 77]}
    assert len(list(out.glob("config_changes.json.corrupt-*"))) == 1

    # an unreadable config.json: set aside, the caller's config is the run's from now on
    (out / "config.json").write_text('{"seed": ')
    LocalRun(override(run.cfg, ["seed=5"]), out, resume=True)
    assert load_run_config(out / "config.json").seed == 5
    assert len(list(out.glob("config.json.corrupt-*"))) == 1


def test_report_lists_settings_changed_on_resume(tmp_path) -> None:
    from mtopt.runtime.report import _resume_lines

    path = tmp_path / "config_changes.json"
    assert _resume_lines(path) == []
    changes = {"budget_minutes": [50.0, 40.0], "learner.lr": [0.0003, 1e-4], "tasks": [["a"], None]}
    path.write_text(json.dumps([{"time": "T1", "changes": changes}]))
    lines = _resume_lines(path)
    assert lines[0] == "## Settings changed on resume"
    assert any("T1" in ln and "budget_minutes" in ln and "50.0" in ln for ln in lines)
    # exact values: the table's two decimals printed the learning rates as 0.00
    assert "| T1 | learner.lr | 0.0003 | 0.0001 |" in lines[2].splitlines()
    assert '| T1 | tasks | ["a"] | null |' in lines[2].splitlines()
    path.write_text("[{broken")
    assert _resume_lines(path) == []


def test_the_tuned_preset_is_local_plus_the_measured_changes() -> None:
    """``--config tuned`` differs from ``local`` in exactly the thirteen settings the README
    measures, and an unknown preset names the valid ones."""
    from mtopt.runtime.config import PRESETS, preset

    assert changed_fields(preset("local"), preset("tuned")) == {
        "name": ("local", "tuned"),
        "qnet.gripper_xy": (False, True),
        "qnet.coord_channels": (False, True),
        "qnet.gripper_crop": (0, 16),
        "qnet.action_crop_step_m": (0.0, 0.05),
        "qnet.stem": ("conv5", "s2d4"),
        "qnet.head_channels": (16, 8),
        "learner.mc_mix": (0.0, 0.5),
        "learner.precision": ("auto", "native"),
        "cem_bellman.precision": ("auto", "native"),
        "replay.batch_size": (64, 32),
        "collect.parity_fraction": (0.75, 0.95),
        "epsilon": (0.2, 0.1),
        "noise_std": (0.15, 0.05),
    }
    with pytest.raises(ValueError, match="local, tuned, tiny, bench"):
        preset("fast")
    assert all(preset(name).name == name for name in PRESETS)


def test_post_move_view_must_use_the_robots_step() -> None:
    from mtopt.runtime.config import preset

    tuned = preset("tuned")
    assert tuned.qnet.action_crop_step_m == tuned.sim.max_step_m == 0.05
    assert override(tuned, ["qnet.action_crop_step_m=0"]).qnet.action_crop_step_m == 0
    with pytest.raises((ValueError, ConfigError), match=r"sim\.max_step_m"):
        override(tuned, ["sim.max_step_m=0.04"])


@pytest.mark.parametrize(
    "setting, message",
    [
        ("publish_every=0", "publish_every must be >= 1"),
        ("checkpoint_every=0", "checkpoint_every must be >= 1"),
        ("replay_workers=0", "replay_workers must be >= 1"),
        ("replay.success_ratio=1.5", "success_ratio must be in"),
        ("replay.batch_size=0", "batch_size must be >= 1"),
        ("eval.tasks=lift-any,lift-anyy", "unknown task 'lift-anyy'"),
        ("eval.tasks=", "eval.tasks: at least one task"),
        ("eval.tasks=lift-any,place-any,lift-any", r"\['lift-any'\] given twice"),
        ("eval.split=val", "eval.split must be train or test"),
        ("eval.every_steps=0", "every_steps must be >= 1"),
        ("sim.num_objects=0", "num_objects"),
        ("cem_act.elites=100", "cem_act: need 1 <= elites <= samples"),
        ("cem_bellman.iterations=0", "cem_bellman: iterations must be >= 1"),
        ("cem_act.min_prob=0.6", "min_prob must be in"),
        ("cem_act.init_std=0", "init_std must be > 0"),
        ("cem_bellman.min_std=-1", "min_std must be >= 0"),
        ("epsilon=1.5", "epsilon must be in"),
        ("budget_minutes=0", "budget_minutes must be a finite number of minutes > 0"),
        ("budget_minutes=inf", "budget_minutes must be a finite number of minutes > 0"),
        ("learner.gamma=1.5", "gamma must be in"),
        ('learner.task_gamma={"plac": 0.96}', "'plac' is neither a task nor a skill"),
        ('learner.task_gamma={"place": 1.5}', r"task_gamma\['place'\] must be a number in"),
        ('learner.task_gamma={"lift-any": true}', r"task_gamma\['lift-any'\] must be a number"),
        ('replay.task_shares={"lift-anyy": 3}', "'lift-anyy' is not a task of this run"),
        ('replay.task_shares={"lift-any": 0}', r"task_shares\['lift-any'\] must be a number > 0"),
        ('replay.task_shares={"lift-any": "3"}', r"task_shares\['lift-any'\] must be a number"),
        ("collect.tasks=lift-any,lift-bal", "collect.tasks: unknown task 'lift-bal'"),
        ("collect.task_weights=1,2", "task_weights has 2 values for 13 enabled tasks"),
        # the buffers may never hold that many: it collected all budget long, never trained
        ("replay.capacity_per_bucket=7", r"replay.min_episodes \(200\) is more than the buffers"),
    ],
)
def test_a_bad_setting_fails_before_the_run_starts(setting: str, message: str) -> None:
    """Each of these used to pass `--set` and fail minutes later, after the success
    detector was staged and trained (a ZeroDivisionError, a KeyError from a thread...)."""
    from mtopt.runtime.config import preset

    cfg = override(preset("local"), [setting])
    with pytest.raises(ValueError, match=message):
        cfg.validate()


def test_a_registry_with_more_tasks_than_the_network_is_a_clear_error() -> None:
    """A task added to the registry (``with_extra``) used to fail at the learner's first
    step ("task_idx must lie in [0, 13)"), after the success detector was trained."""
    from mtopt.runtime.config import preset
    from mtopt.tasks import DEFAULT_REGISTRY

    extra = DEFAULT_REGISTRY.with_extra(
        [{"name": "place-can-on-plate", "kind": "place", "fixtures": ["plate"], "category": "can"}]
    )
    with pytest.raises(ValueError, match=r"set qnet\.num_tasks=14"):
        preset("local").validate(extra)
    assert override(preset("local"), ["qnet.num_tasks=14"]).validate(extra)
    # spare inputs past the tasks: refused at once (the robots' policies refused the
    # first published weights, and the fleet gave up after its restarts)
    with pytest.raises(ValueError, match="spare task inputs are not supported"):
        override(preset("local"), ["qnet.num_tasks=16"]).validate(extra)


@pytest.mark.parametrize("name", ["local", "tuned", "tiny", "bench"])
def test_every_preset_validates(name: str) -> None:
    from mtopt.runtime.config import preset

    assert preset(name).validate() == preset(name)


def test_the_cli_refuses_a_bad_setting_at_once(tmp_path) -> None:
    from typer.testing import CliRunner

    from mtopt.cli import app

    r = CliRunner().invoke(
        app, ["run", "--config", "tiny", "--out", str(tmp_path / "r"), "--set", "publish_every=0"]
    )
    assert r.exit_code == 2 and "publish_every must be >= 1" in r.output
    assert not (tmp_path / "r" / "sd").exists()  # nothing was staged


def test_new_tasks_from_the_command_line_and_a_resume_that_would_change_them(tmp_path) -> None:
    """``--set extra_tasks=[...]`` (a JSON list) used to raise a TypeError from isinstance;
    a tasks file's errors name it; a resume cannot change what the network's task inputs
    mean."""
    from mtopt.runtime.config import preset, resume_config, with_new_tasks

    task = {"name": "place-can-on-plate", "kind": "place", "fixtures": ["plate"], "category": "can"}
    cfg = override(preset("local"), ["extra_tasks=" + json.dumps([task])])
    assert cfg.extra_tasks == (task,)
    cfg = with_new_tasks(cfg, None, None)  # what every fresh run goes through
    assert cfg.qnet.num_tasks == 14 and cfg.validate().registry().names[-1] == task["name"]
    with pytest.raises(ConfigError, match="--resume cannot change extra_tasks"):
        resume_config(cfg, None, ["extra_tasks=[]"])
    with pytest.raises(ConfigError, match="--resume cannot change init_from"):
        resume_config(cfg, None, [f"init_from={tmp_path}"])
    bad = tmp_path / "tasks.json"
    bad.write_text(json.dumps([{**task, "fixture": ["bowl"]}]))
    with pytest.raises(ConfigError, match=r"tasks file .*tasks.json: .*unknown key.*'fixture'"):
        with_new_tasks(preset("local"), bad, None)
    # a lift task no object of the cell can satisfy: its SD would stage no positive
    huge = {"name": "lift-huge-ball", "kind": "lift", "category": "ball", "min_size": 0.035}
    bad.write_text(json.dumps([huge]))
    with pytest.raises(ConfigError, match=r"no ball of the cell's train objects .* 0\.030 m"):
        with_new_tasks(preset("local"), bad, None)
    # possible on the training objects only (the held-out balls are at most 0.027 m)
    bad.write_text(json.dumps([{**huge, "min_size": 0.028}]))
    with pytest.raises(ConfigError, match="cell's test objects"):
        with_new_tasks(preset("local"), bad, None)
    bad.write_text(json.dumps([{**huge, "min_size": 0.02}]))
    assert with_new_tasks(preset("local"), bad, None).extra_tasks[-1]["min_size"] == 0.02
    # a cell without balls has none that size (the run's sim.categories)
    boxes = override(preset("local"), ["sim.categories=box,can"])
    with pytest.raises(ConfigError, match="no ball of the cell's train objects"):
        with_new_tasks(boxes, bad, None)
    # --set extra_tasks goes through the name rule too
    spaced = override(preset("local"), ["extra_tasks=" + json.dumps([{**huge, "name": "a b"}])])
    with pytest.raises(ConfigError, match="extra_tasks: task name 'a b'"):
        with_new_tasks(spaced, None, None)
    (tmp_path / "src").mkdir()
    rel = with_new_tasks(preset("local"), None, tmp_path / "src" / ".." / "src")
    assert rel.init_from and rel.init_from.startswith("/")


def test_any_run_seed_has_held_out_scenes_and_evaluation_limits_are_checked_up_front() -> None:
    from mtopt.runtime.config import preset

    base = preset("tiny")
    assert override(base, ["seed=3"]).eval_seed == 3
    assert override(base, ["seed=503"]).eval_seed == 3  # seeds 500 apart share scenes
    assert override(base, ["seed=12345"]).validate().eval_seed == 345
    for bad, match in (
        ("eval.episodes_per_task=1001", "eval.episodes_per_task must be <= 1000"),
        ("eval.scripted_episodes=2000", "eval.scripted_episodes must be <= 1000"),
        ("seed=-1", r"seed must be in \[0, 2\*\*32\)"),
        ("seed=4294967296", r"seed must be in \[0, 2\*\*32\)"),
    ):
        with pytest.raises(ValueError, match=match):
            override(base, [bad]).validate()


def test_a_run_is_evaluated_in_the_cell_it_learned_in(tmp_path) -> None:
    from mtopt.config import save_config
    from mtopt.runtime.config import preset, run_sim_config
    from mtopt.sim.config import SimConfig

    cfg = override(preset("tiny"), ["sim.move_from=measured", "sim.image_size=48"])
    save_config(cfg, tmp_path / "config.json")
    sim = run_sim_config(tmp_path, "test")
    assert (sim.move_from, sim.image_size, sim.object_split) == ("measured", 48, "test")
    assert run_sim_config(tmp_path / "no-run", "train") == SimConfig(object_split="train")


def test_learner_settings_that_would_fail_at_the_first_step_are_refused_up_front() -> None:
    from mtopt.runtime.config import preset

    for bad, match in (
        ("learner.log_every=0", "learner.log_every must be >= 1"),
        ("learner.target_period=0", "learner.target_period must be >= 1"),
        ("learner.lr=-1", "learner.lr must be a finite number > 0"),
        ("learner.polyak_tau=0", "learner.polyak_tau"),
        ("learner.acting_tau=2", "learner.acting_tau"),
    ):
        with pytest.raises(ValueError, match=match):
            override(preset("tiny"), [bad]).validate()


def test_settings_that_were_ignored_or_failed_late_are_refused_by_validate() -> None:
    """Each of these used to pass validate(): ignored (collect.max_steps: the cell's
    sim.max_steps rules), run as the other mode (a target_update typo ran Polyak), or
    failed minutes later in a robot, the learner's first step or a forward pass."""
    import dataclasses

    from mtopt.runtime.config import preset

    for bad, match in (
        ("collect.max_steps=5", "set that instead"),
        ("collect.scripted_epsilon=1.5", "collect.scripted_epsilon must be a probability"),
        ("collect.scripted_early_terminate=-0.1", "scripted_early_terminate"),
        ("collect.max_chain=0", "collect.max_chain must be >= 1"),
        ("collect.flush_every=0", "collect.flush_every must be >= 1"),
        ("collect.flush_seconds=0", "collect.flush_seconds must be > 0"),
        ("learner.image_shift=-3", "learner.image_shift must be >= 0"),
        ("sim.object_split=test", "sim.object_split must be 'train' for a run"),
        ("sim.image_size=32", "must be qnet.image_size 64"),  # episodes dropped, then a crash
        ("learner.lr=inf", "learner.lr must be a finite number > 0"),
        ("parity_hysteresis=-1", "parity_hysteresis >= 0"),
        ("parity_margin=nan", "parity_margin must be finite"),
        ("qnet.head_stride=3", "head_stride 3 must divide merge_size"),
        ("qnet.head_stride=16", "head_stride 16 must divide merge_size"),
        ("qnet.fc_units=0", "fc_units must be an integer >= 1"),
        ("qnet.merge_size=0", "merge_size must be an integer >= 1"),
        ("qnet.head_channels=-1", "head_channels must be an integer >= 1"),
    ):
        with pytest.raises(ValueError, match=match):
            override(preset("tiny"), [bad]).validate()
    tiny = preset("tiny")
    weights = dataclasses.replace(tiny.collect, task_weights=(1.0,) * 12 + (-1.0,))
    with pytest.raises(ValueError, match="task_weights must be >= 0 with a positive sum"):
        dataclasses.replace(tiny, collect=weights).validate()
    # a Learner made from Python is checked too (a typo ran Polyak, a period of 0 divided
    # by zero at the first step)
    for learner_bad in (dict(target_update="periodc"), dict(target_period=0), dict(polyak_tau=0.0)):
        with pytest.raises(ValueError, match=next(iter(learner_bad))):
            dataclasses.replace(tiny.learner, **learner_bad)  # type: ignore[arg-type]
    # the gripper crop is cut where the gripper is in the unshifted image
    with pytest.raises(ValueError, match=r"image_shift must be 0 with qnet\.gripper_crop"):
        override(preset("tuned"), ["learner.image_shift=2"]).validate()
    no_crop = ["qnet.gripper_crop=0", "qnet.action_crop_step_m=0"]
    override(preset("tuned"), ["learner.image_shift=2", *no_crop]).validate()
    for changed, match in (
        (dict(replay=dataclasses.replace(tiny.replay, impersonation="sill")), "impersonation"),
        (dict(replay=dataclasses.replace(tiny.replay, rebalance="no")), "replay.rebalance"),
        (dict(replay=dataclasses.replace(tiny.replay, reward="soft")), "replay.reward"),
    ):
        with pytest.raises(ValueError, match=match):
            dataclasses.replace(tiny, **changed).validate()  # type: ignore[arg-type]
    # the cell's episode length, said where it is set, is fine
    override(tiny, ["sim.max_steps=20", "collect.max_steps=20"]).validate()
    override(tiny, ["sim.max_steps=20"]).validate()


def test_the_scripted_baselines_key_of_a_default_cell_is_the_one_kept_before_spawn() -> None:
    """Runs saved before ``sim.spawn`` kept ``scripted_eval.key.json`` without it: a
    resume must find its key unchanged (not measure the scripted baseline again)."""
    import dataclasses

    from mtopt.runtime.local import _sim_key
    from mtopt.sim.config import SimConfig

    added = ("spawn", "outcome_fixtures_share")  # (the outcome view: no outcome changes)
    before = {k: v for k, v in dataclasses.asdict(SimConfig()).items() if k not in added}
    assert _sim_key(SimConfig()) == before
    assert _sim_key(SimConfig(outcome_fixtures_share=0.75)) == before
    assert _sim_key(SimConfig(spawn="clear"))["spawn"] == "clear"


def test_task_gamma_from_the_command_line_discounts_tasks_by_name_then_skill(
    tmp_path: Path,
) -> None:
    """`--set 'learner.task_gamma={...}'`: a task's own entry wins over its skill's, the
    other tasks keep learner.gamma; the setting survives config.json (a resume's)."""
    from mtopt.runtime.config import preset
    from mtopt.tasks import DEFAULT_REGISTRY as REG

    cfg = override(
        preset("local"),
        ['learner.task_gamma={"place": 0.96, "place-in-bowl": 0.5}', "learner.gamma=0.8"],
    ).validate()
    got = cfg.discounts(REG)
    assert isinstance(got, tuple) and len(got) == len(REG)
    want = {"lift-any": 0.8, "lift-ball": 0.8, "place-any": 0.96, "place-on-plate": 0.96}
    want |= {"place-in-bowl": 0.5, "place-in-left-bin": 0.96, "lift-large": 0.8}
    for name, g in want.items():
        assert got[REG.index(name)] == g, name
    assert preset("local").discounts(REG) == 0.9  # none: the one number, as before
    with pytest.raises(ConfigError, match="expected a JSON object"):
        override(cfg, ["learner.task_gamma=[0.9]"])
    with pytest.raises(ValueError, match="must map task or skill names"):  # a config.json's
        dataclasses.replace(cfg, learner=LearnerConfig(task_gamma=[0.9])).validate()  # type: ignore[arg-type]
    save_config(cfg, tmp_path / "config.json")
    again = load_run_config(tmp_path / "config.json")
    assert again.learner.task_gamma == {"place": 0.96, "place-in-bowl": 0.5}
    assert again.discounts(REG) == got


def test_describe_changes_names_a_dict_entry_that_one_side_lacks() -> None:
    """Adding a ``learner.task_gamma`` entry on resume reads ``(no entry) -> 0.97``, not
    ``None -> 0.97``; the JSON record keeps None; a None on both sides is no change."""
    from mtopt.runtime.config import preset

    a = preset("local")
    b = override(a, ['learner.task_gamma={"place": 0.97}'])
    assert describe_changes(a, b) == "learner.task_gamma.place: (no entry) -> 0.97"
    assert describe_changes(b, a) == "learner.task_gamma.place: 0.97 -> (no entry)"
    assert changed_fields(a, b) == {"learner.task_gamma.place": (None, 0.97)}
    assert changed_fields({"x": None, "d": {}}, {"x": None, "d": {"k": None}}) == {
        "d.k": (None, None)
    }
    assert changed_fields({"x": None}, {"x": None}) == {}


def test_a_run_folder_is_held_by_one_process_at_a_time(tmp_path) -> None:
    """A second `mtopt run --resume` of a live run rewrote its config, started robots on
    its store and published into its weights until one died on a version clash; now it
    is refused. Within one process the folder may be taken again (a resume by API); a
    run killed outright lets go of it (the kernel drops the lock)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from mtopt.config import ConfigError
    from mtopt.runtime.config import preset
    from mtopt.runtime.local import RUN_LOCK, LocalRun

    out = tmp_path / "run"
    take = (
        "import sys, time\n"
        "from mtopt.runtime.config import preset\n"
        "from mtopt.runtime.local import LocalRun\n"
        "from mtopt.config import ConfigError\n"
        "try:\n"
        f"    run = LocalRun(preset('tiny'), {str(out)!r}, resume=True)\n"
        "except ConfigError as exc:\n"
        "    print(exc); sys.exit(3)\n"
        "print('taken', flush=True)\n"
        "time.sleep(float(sys.argv[1]))\n"
    )
    first = LocalRun(preset("tiny"), out)
    again = LocalRun.resume_from(out)  # the same process: allowed
    res = subprocess.run([sys.executable, "-c", take, "0"], capture_output=True, text=True)
    assert res.returncode == 3, res.stdout + res.stderr
    assert f"in use by another mtopt run (pid {os.getpid()})" in res.stdout
    first.release()
    res = subprocess.run([sys.executable, "-c", take, "0"], capture_output=True, text=True)
    assert res.returncode == 3, "one hold is left (again's)"
    again.release()
    # a LocalRun refused after taking the folder (a change of seed) lets go of it
    with pytest.raises(ConfigError, match="cannot change seed"):
        LocalRun(override(preset("tiny"), ["seed=7"]), out, resume=True)
    # free: another process takes it; killed outright, it lets go
    holder = subprocess.Popen([sys.executable, "-c", take, "60"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "taken"
        with pytest.raises(ConfigError, match=f"pid {holder.pid}"):
            LocalRun(preset("tiny"), out, resume=True)
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=30)
    time.sleep(0.1)
    LocalRun(preset("tiny"), out, resume=True).release()
    assert (out / RUN_LOCK).exists()


def test_a_policy_folder_is_not_a_run_folder(tmp_path) -> None:
    """A run with --out on an exported policy rewrote its config.json and published a
    random network as its latest weights."""
    from mtopt.config import ConfigError
    from mtopt.runtime.config import preset
    from mtopt.runtime.local import LocalRun

    (tmp_path / "pol").mkdir()
    (tmp_path / "pol" / "exported.json").write_text("{}")
    (tmp_path / "pol" / "config.json").write_text("{}")
    for resume in (False, True):
        with pytest.raises(ConfigError, match="is a policy folder"):
            LocalRun(preset("tiny"), tmp_path / "pol", resume=resume)
    assert (tmp_path / "pol" / "config.json").read_text() == "{}"


def test_weights_published_at_a_step_are_not_published_again(tmp_path) -> None:
    """A stop before the first step publishes the random network marked untrained (it
    went out unmarked, and a resumed run's robots collected with it); a resume that
    trains nothing publishes no second version of the same network."""
    from mtopt.qtopt.learner import Learner
    from mtopt.runtime.config import preset
    from mtopt.runtime.local import published_at

    w = tmp_path / "weights"
    assert not published_at(w, 0, True)  # nothing published
    learner = Learner(preset("tiny").qnet)
    learner.publish(w, untrained=True)
    assert published_at(w, 0, True)
    assert not published_at(w, 0, False)  # marked otherwise: publish it as asked
    learner.step = 7
    assert not published_at(w, 7, False)
    learner.publish(w)
    assert published_at(w, 7, False)
    (w / "q-latest.json").write_text("{not json")
    assert not published_at(w, 7, False)  # unreadable: publish


def test_a_resume_that_evaluates_nothing_keeps_the_averaged_policy(tmp_path) -> None:
    from mtopt.runtime.config import preset
    from mtopt.runtime.local import LocalRun

    run = LocalRun(preset("tiny"), tmp_path / "run")
    assert run.earlier_average(30) is None  # no summary yet
    avg = {"folder": "x", "success": {"lift-any": 0.5}}
    (tmp_path / "run" / "summary.json").write_text(
        json.dumps({"learner_steps": 30, "averaged": avg})
    )
    assert run.earlier_average(30) == avg
    assert run.earlier_average(31) is None  # other weights: that average is not theirs
    (tmp_path / "run" / "summary.json").write_text("[1, 2]")
    assert run.earlier_average(30) is None
