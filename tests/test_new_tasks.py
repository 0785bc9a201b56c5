"""Learning new tasks from a trained multi-task network (the paper's proactive
adaptation): the network grows by a task that starts as an old one."""

import dataclasses
from pathlib import Path

import pytest
import torch

from mtopt.qtopt.networks import QNetwork, with_more_tasks
from qtopt_fixtures import SMALL, batch


@pytest.mark.parametrize("head_type", ["onehot", "multihead"])
def test_a_grown_network_keeps_old_tasks_and_starts_new_ones_as_their_like(
    head_type: str,
) -> None:
    torch.manual_seed(0)
    net = QNetwork(dataclasses.replace(SMALL, head_type=head_type)).eval()
    grown = with_more_tasks(net, [1, 0]).eval()  # task 2 starts as task 1, task 3 as 0
    assert grown.cfg.num_tasks == 4 and not grown.training
    b = batch(0)
    with torch.no_grad():
        for old, new in ((0, 0), (1, 1), (1, 2), (0, 3)):
            t_old = torch.full((8,), old)
            t_new = torch.full((8,), new)
            a = net.logits(b.images, b.states, b.actions, t_old)
            g = grown.logits(b.images, b.states, b.actions, t_new)
            torch.testing.assert_close(g, a, rtol=1e-5, atol=1e-5)
    # the copy is a copy: training the new task leaves the old one's parameters alone
    before = net.state_dict()["embed.0.weight"].clone()
    with torch.no_grad():
        grown.embed[0].weight.add_(1.0)
    torch.testing.assert_close(net.state_dict()["embed.0.weight"], before)
    with pytest.raises(ValueError, match="like"):
        with_more_tasks(net, [2])


def test_a_fresh_run_starts_from_a_trained_network_grown_by_its_new_tasks(
    tmp_path: Path,
) -> None:
    from mtopt.qtopt.learner import Learner
    from mtopt.qtopt.weights import WeightsError
    from mtopt.runtime.config import RunConfig
    from mtopt.runtime.local import RunPaths, new_learner
    from mtopt.tasks import DEFAULT_REGISTRY

    torch.manual_seed(0)
    trained = Learner(SMALL)  # 2 tasks: lift-any, then a lift task
    trained.publish(tmp_path / "old")
    cfg = RunConfig(qnet=dataclasses.replace(SMALL, num_tasks=3), init_from=str(tmp_path / "old"))
    learner, line = new_learner(RunPaths(tmp_path / "new"), cfg, DEFAULT_REGISTRY)
    assert "new tasks start as" in line and learner.online.cfg.num_tasks == 3
    assert learner.origin == trained.origin  # fine-tuned from its networks: averages with it
    b = batch(1)
    with torch.no_grad():
        for net, old in (
            (learner.online, trained.online),
            (learner.acting, trained.acting),
            (learner.targets[1], trained.targets[1]),
        ):
            net.eval(), old.eval()
            for t_new, t_old in ((0, 0), (1, 1), (2, 0)):  # task 2 (a lift task) as lift-any
                got = net.logits(b.images, b.states, b.actions, torch.full((8,), t_new))
                want = old.logits(b.images, b.states, b.actions, torch.full((8,), t_old))
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    wider = RunConfig(
        qnet=dataclasses.replace(SMALL, num_tasks=3, fc_units=32), init_from=str(tmp_path / "old")
    )
    with pytest.raises(WeightsError, match="fc_units"):
        new_learner(RunPaths(tmp_path / "new2"), wider, DEFAULT_REGISTRY)


def test_a_new_task_learned_from_an_old_runs_store_and_network(tmp_path: Path) -> None:
    """The paper's two ways to a new task, through ``mtopt run``: the old store's place
    episodes are relabeled for it (retroactive), and the old run's network, grown by
    it, is fine-tuned (proactive). No robot collects here: all its data is old."""
    import json
    import shutil

    from typer.testing import CliRunner

    from mtopt.cli import app
    from mtopt.runtime.local import LocalRun

    old, new = tmp_path / "old", tmp_path / "new"
    slack = ["--minutes", "12"]  # the caps end these runs, however slow the machine
    res = CliRunner().invoke(app, ["run", "--config", "tiny", "--out", str(old), *slack])
    assert res.exit_code == 0, res.output
    tasks = tmp_path / "tasks.json"
    task = {"name": "place-can-on-plate", "kind": "place", "fixtures": ["plate"], "category": "can"}
    tasks.write_text(json.dumps([task]))
    shutil.copytree(old / "store", new / "store")
    args = ["run", "--config", "tiny", "--out", str(new), "--tasks-file", str(tasks)]
    args += ["--init-from", str(old), "--set", "robots=0", "--set", "max_learner_steps=15"]
    args += ["--set", "eval.tasks=place-any,place-can-on-plate", *slack]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "new tasks start as: place-can-on-plate as place-any" in res.output
    summary = json.loads((new / "summary.json").read_text())
    comp = summary["composition"]["place-can-on-plate"]
    assert comp["original"] == 0 and comp["impersonated"] > 0  # old episodes, relabeled
    assert summary["learner_steps"] >= 15
    assert "place-can-on-plate" in summary["final"]["success"]
    saved = json.loads((new / "config.json").read_text())
    assert saved["extra_tasks"] == [task] and saved["qnet"]["num_tasks"] == 14
    # a resume keeps the run's tasks (from its config) and refuses new ones
    assert LocalRun.resume_from(new).registry.names[-1] == "place-can-on-plate"
    res = CliRunner().invoke(app, [*args[:5], "--resume", "--tasks-file", str(tasks)])
    assert res.exit_code == 2 and "start a new run" in res.output
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{**task, "category": "spoon"}]))
    res = CliRunner().invoke(app, ["run", "--out", str(tmp_path / "x"), "--tasks-file", str(bad)])
    assert res.exit_code == 2 and "unknown category 'spoon'" in res.output


def test_init_from_weights_that_do_not_fit_fail_before_the_sd_is_staged(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from mtopt.cli import app
    from mtopt.qtopt.learner import Learner

    Learner(SMALL).publish(tmp_path / "other" / "weights")  # not the tiny preset's network
    out = tmp_path / "run"
    args = ["run", "--config", "tiny", "--out", str(out), "--init-from", str(tmp_path / "other")]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2 and "different architecture" in res.output
    assert not (out / "sd").exists()  # it used to stage and train the SD first
    # and no config.json that a later --resume would take for a run's
    assert not (out / "config.json").exists()
    # a resume (no checkpoint yet) whose init_from is gone keeps the run's config.json
    import dataclasses

    from mtopt.config import save_config
    from mtopt.runtime.config import preset

    gone = tmp_path / "gone"
    save_config(dataclasses.replace(preset("tiny"), init_from=str(gone)), gone / "config.json")
    res = CliRunner().invoke(app, ["run", "--resume", "--out", str(gone)])
    assert res.exit_code == 2 and (gone / "config.json").exists(), res.output


def test_init_from_weights_unlike_their_settings_say_so(tmp_path: Path) -> None:
    """Tensors that do not fit the network their settings describe: the error says that
    (it read "no Q-network in its weights", the next part tried in its place)."""
    import json

    from typer.testing import CliRunner

    from mtopt.cli import app
    from mtopt.qtopt.learner import Learner
    from mtopt.runtime.config import preset

    Learner(SMALL).publish(tmp_path / "other" / "weights")
    latest = tmp_path / "other" / "weights" / "q-latest.json"
    data = json.loads(latest.read_text())
    data["meta"]["qnet"] = preset("tiny").qnet.to_dict()  # settings of another network
    latest.write_text(json.dumps(data))
    out = tmp_path / "run"
    args = ["run", "--config", "tiny", "--out", str(out), "--init-from", str(tmp_path / "other")]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2 and "do not fit the Q-network" in res.output, res.output


def test_init_from_refuses_a_run_whose_tasks_are_not_the_sources(tmp_path: Path) -> None:
    """A task must keep the network input it was trained on: a tasks file that replaces
    or reorders the source run's own extra tasks used to give a new task an old task's
    input without a word (the sizes matched)."""
    from mtopt.config import save_config
    from mtopt.qtopt.learner import Learner
    from mtopt.qtopt.weights import WeightsError
    from mtopt.runtime.config import RunConfig
    from mtopt.runtime.local import RunPaths, new_learner
    from mtopt.tasks import DEFAULT_REGISTRY

    a = {"name": "place-can-on-plate", "kind": "place", "fixtures": ["plate"], "category": "can"}
    b = {"name": "lift-small-ball", "kind": "lift", "category": "ball", "min_size": 0.02}
    n = len(DEFAULT_REGISTRY)
    old_cfg = RunConfig(qnet=dataclasses.replace(SMALL, num_tasks=n + 1), extra_tasks=(a,))
    Learner(old_cfg.qnet).publish(tmp_path / "old" / "weights")
    save_config(old_cfg, tmp_path / "old" / "config.json")

    def start(extra: tuple[dict, ...], out: str, source: Path = tmp_path / "old") -> str:  # type: ignore[type-arg]
        cfg = RunConfig(
            qnet=dataclasses.replace(SMALL, num_tasks=n + len(extra)),
            extra_tasks=extra,
            init_from=str(source),
        )
        return new_learner(RunPaths(tmp_path / out), cfg, cfg.registry())[1]

    with pytest.raises(WeightsError, match=r"trained on the tasks \[.*place-can-on-plate\]"):
        start((b,), "swapped")
    with pytest.raises(WeightsError, match="trained on the tasks"):
        start((b, a), "reordered")
    line = start((a, b), "grown")  # the source's task first, the new one after
    assert "lift-small-ball as lift-any" in line
    # a weights file of the source run: its config.json is found above it
    (weights_file,) = (tmp_path / "old" / "weights").glob("q-*.safetensors")
    assert "lift-small-ball as lift-any" in start((a, b), "from-file", weights_file)
    # weights alone, with more inputs than the built-in tasks: nothing says what they are
    Learner(old_cfg.qnet).publish(tmp_path / "bare")
    with pytest.raises(WeightsError, match=r"no config\.json"):
        start((a, b), "bare", tmp_path / "bare")
    # a source kept inside the new run's folder: the new run's own config.json (written
    # before the learner) is not the source's (it passed a swapped order without a word)
    import shutil

    inside = tmp_path / "inside"
    shutil.copytree(tmp_path / "old" / "weights", inside / "init-weights")
    swapped = RunConfig(
        qnet=dataclasses.replace(SMALL, num_tasks=n + 2),
        extra_tasks=(b, a),
        init_from=str(inside / "init-weights"),
    )
    save_config(swapped, inside / "config.json")
    with pytest.raises(WeightsError, match=r"no config\.json"):
        new_learner(RunPaths(inside), swapped, swapped.registry())
    # weights published by a run say their tasks themselves, wherever they are copied
    own = Learner(old_cfg.qnet)
    own.task_names = old_cfg.registry().names
    own.publish(tmp_path / "said" / "weights")
    assert "lift-small-ball as lift-any" in start((a, b), "said-ok", tmp_path / "said")
    with pytest.raises(WeightsError, match=r"trained on the tasks \[.*place-can-on-plate\]"):
        start((b,), "said-swapped", tmp_path / "said")
    # a source with more task inputs than the run: name its tasks, say what to do
    with pytest.raises(WeightsError, match=r"list the source.s tasks .*place-can-on-plate"):
        start((), "fewer", tmp_path / "said")
    # the source's task under its name but defined anew: it took the old trained input
    anew = {**a, "fixtures": ["bowl"], "category": "ball"}
    with pytest.raises(WeightsError, match=r"task 'place-can-on-plate' is place Placed\(fixtures"):
        start((anew, b), "defined-anew")
    described = {**a, "description": "The can on the plate, please."}  # the words only
    assert "lift-small-ball as lift-any" in start((described, b), "described")


def test_init_from_given_by_set_is_kept_absolute_and_a_resume_reads_tuples_as_saved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--set init_from=REL was saved relative (a resume from another folder lost it);
    a resume of a config whose task has fixtures ("plate",) was refused as a change."""
    from mtopt.runtime.config import RunConfig, check_same_task_inputs, with_new_tasks

    (tmp_path / "old").mkdir()
    monkeypatch.chdir(tmp_path)
    cfg = with_new_tasks(RunConfig(init_from="old"), None, None)  # --set init_from=old
    assert cfg.init_from == str(tmp_path / "old")
    task = {"name": "place-can-on-plate", "kind": "place", "fixtures": ("plate",)}
    import json

    with_tuple = RunConfig(extra_tasks=(task,))
    as_saved = RunConfig(extra_tasks=tuple(json.loads(json.dumps([task]))))
    check_same_task_inputs(as_saved, with_tuple, "--resume")


def test_a_new_task_of_a_new_skill_starts_as_a_task_that_starts_as_it_does() -> None:
    from mtopt.runtime.local import first_of_skill
    from mtopt.tasks import DEFAULT_REGISTRY

    n = len(DEFAULT_REGISTRY)
    reg = DEFAULT_REGISTRY.with_extra(
        [
            {"name": "stack-on-plate", "kind": "place", "skill": "stack", "fixtures": ["plate"]},
            {"name": "nudge", "kind": "lift", "skill": "push"},
            {"name": "place-can-in-bowl", "kind": "place", "fixtures": ["bowl"], "category": "can"},
        ]
    )
    place_any = reg.index("place-any")
    assert [first_of_skill(reg, i, n) for i in range(n, n + 3)] == [place_any, 0, place_any]
    assert first_of_skill(reg, n + 5, n) == 0  # a spare slot past the registry


def test_a_fresh_learner_counts_on_from_weights_published_before_a_first_checkpoint(
    tmp_path: Path,
) -> None:
    """A run stopped after it published but before its first checkpoint could not be
    resumed: its fresh learner started at version 0 and publish() refused to go back."""
    from mtopt.collect.loop import PolicyProvider
    from mtopt.qtopt.learner import Learner
    from mtopt.qtopt.weights import load_latest, read_latest
    from mtopt.runtime.config import RunConfig
    from mtopt.runtime.local import RunPaths, new_learner
    from mtopt.tasks import DEFAULT_REGISTRY

    paths = RunPaths(tmp_path / "run")
    every = dataclasses.replace(SMALL, num_tasks=len(DEFAULT_REGISTRY))  # robots' tasks
    first = Learner(every)
    with torch.no_grad():  # trained a little: not the fresh learner's networks
        for param in first.acting.parameters():
            param.add_(0.5)
    for _ in range(3):
        first.publish(paths.weights)
    # robots act with the latest weights: the lost run's, before this learner publishes
    robots = PolicyProvider(DEFAULT_REGISTRY, paths.weights, learned_fraction=1.0)
    assert robots(DEFAULT_REGISTRY.get("lift-any")).name.startswith("cem")
    cfg = RunConfig(qnet=every)
    learner, _ = new_learner(paths, cfg, DEFAULT_REGISTRY)
    # its own networks are published over the lost run's at once, marked untrained:
    # robots act scripted until it has trained, as in a fresh folder
    assert learner.version == first.version + 1
    version, tensors, meta = load_latest(paths.weights)
    assert version == learner.version and meta["untrained"] is True
    assert meta["tasks"] == list(DEFAULT_REGISTRY.names)
    assert meta["qnet"] == every.to_dict()
    for k, v in learner.acting.state_dict().items():
        assert torch.equal(tensors[f"acting.{k}"], v)
    assert not all(
        torch.equal(tensors[f"acting.{k}"], v) for k, v in first.acting.state_dict().items()
    )
    robots = PolicyProvider(DEFAULT_REGISTRY, paths.weights, learned_fraction=1.0)
    assert robots(DEFAULT_REGISTRY.get("lift-any")).name == "scripted-pick"
    learner.publish(paths.weights)  # the next version, not an error; trained: acted with
    assert "untrained" not in load_latest(paths.weights)[2]
    robots = PolicyProvider(DEFAULT_REGISTRY, paths.weights, learned_fraction=1.0)
    assert robots(DEFAULT_REGISTRY.get("lift-any")).name.startswith("cem")

    # a fresh folder publishes nothing before training: robots act scripted until then
    fresh, _ = new_learner(RunPaths(tmp_path / "other"), cfg, DEFAULT_REGISTRY)
    assert fresh.version == 0 and read_latest(tmp_path / "other" / "weights") is None

    # an init_from run over a lost run's weights publishes the source's networks, to act
    # with at once
    source = Learner(every)
    with torch.no_grad():
        for param in source.acting.parameters():
            param.sub_(0.25)
    source.publish(tmp_path / "source")
    lost = RunPaths(tmp_path / "again")
    first.version = 0
    first.publish(lost.weights)
    copied, _ = new_learner(
        lost, dataclasses.replace(cfg, init_from=str(tmp_path / "source")), DEFAULT_REGISTRY
    )
    version, tensors, meta = load_latest(lost.weights)
    assert version == copied.version == 2 and "untrained" not in meta
    for k, v in source.acting.state_dict().items():
        assert torch.equal(tensors[f"acting.{k}"], v)


def test_sd_and_store_commands_take_the_tasks_of_the_run_whose_store_they_get(
    tmp_path: Path,
) -> None:
    """`mtopt sd improve|label` on a grown run's store used the built-in tasks unless
    given --tasks-file (an architecture error for its SD); they read the run's
    config.json beside the store, as the store commands do."""
    from mtopt._cli import registry_for
    from mtopt.config import save_config
    from mtopt.runtime.config import RunConfig
    from mtopt.tasks import DEFAULT_REGISTRY

    task = {"name": "place-can-on-plate", "kind": "place", "fixtures": ["plate"], "category": "can"}
    cfg = RunConfig(extra_tasks=(task,))
    save_config(cfg, tmp_path / "run" / "config.json")
    assert registry_for(tmp_path / "run" / "store", None).names[-1] == "place-can-on-plate"
    assert registry_for(tmp_path / "elsewhere" / "store", None) is DEFAULT_REGISTRY
    assert registry_for(None, None) is DEFAULT_REGISTRY


def test_a_fresh_start_with_other_tasks_stages_the_sd_examples_again(tmp_path: Path) -> None:
    """A start stopped after staging, restarted into the same folder with its tasks file
    mended (a task redefined under the same count of tasks): the staged examples of the
    old tasks are set aside, not trained into the new task's output; a published SD of
    the other tasks is refused with a line that says what to do."""
    import json

    from mtopt.config import ConfigError
    from mtopt.runtime.config import preset
    from mtopt.runtime.local import LocalRun
    from mtopt.success.network import SDNetConfig, SuccessDetector, SuccessNet

    can = {"name": "place-new", "kind": "place", "fixtures": ["plate"], "category": "can"}
    bottle = {"name": "place-new", "kind": "place", "fixtures": ["bowl"], "category": "bottle"}
    base = preset("tiny")

    def run(task: dict) -> LocalRun:  # type: ignore[type-arg]
        n = base.qnet.num_tasks + 1
        cfg = dataclasses.replace(
            base, extra_tasks=(task,), qnet=dataclasses.replace(base.qnet, num_tasks=n)
        )
        return LocalRun(cfg, tmp_path)

    first = run(can)
    first._check_sd_tasks()
    (first.paths.sd / "examples.npz").write_bytes(b"staged for the can")
    first._check_sd_tasks()  # the same tasks: kept
    assert (first.paths.sd / "examples.npz").exists()
    (first.paths.sd / "episode_labels.npz").write_bytes(b"labels of the can task")
    second = run(bottle)
    second._check_sd_tasks()
    assert not (second.paths.sd / "examples.npz").exists()
    moved = sorted(p.name.split(".other-tasks")[0] for p in second.paths.sd.glob("*.other-tasks-*"))
    assert moved == ["episode_labels.npz", "examples.npz"]
    net = SuccessNet(SDNetConfig(num_tasks=len(second.registry), image_size=16))
    SuccessDetector(net, second.registry.names).publish(second.paths.sd)
    with pytest.raises(ConfigError, match="trained for other tasks"):
        run(can)._check_sd_tasks()
    run(bottle)._check_sd_tasks()  # its own SD
    # a folder from before the key: its staged examples say their tasks
    from mtopt.success.data import LabeledSet

    old = tmp_path / "old"
    LabeledSet.empty(("lift-any",)).save(old / "sd" / "examples.npz")
    LocalRun(base, old)._check_sd_tasks()
    assert not (old / "sd" / "examples.npz").exists()
    mine = tmp_path / "mine"  # ... and those of the run's own tasks are kept
    LabeledSet.empty(base.registry().names).save(mine / "sd" / "examples.npz")
    LocalRun(base, mine)._check_sd_tasks()
    assert (mine / "sd" / "examples.npz").exists()
    # the key's first form (a list of task dicts, for some hours of 2026-12-05)
    key = mine / "sd" / "tasks.key.json"
    key.write_text(json.dumps([{"name": n, "skill": "?"} for n in base.registry().names]))
    LocalRun(base, mine)._check_sd_tasks()
    assert (mine / "sd" / "examples.npz").exists() and json.loads(key.read_text())["names"]


def test_sd_versions_of_sd_improve_in_a_runs_folder_are_not_its_rounds(tmp_path: Path) -> None:
    """The run's relabel rounds come after ever more episodes (improve_growth), counted by
    the rounds it made: quality.json has a line for its first SD and one a round. The
    SD's version counted versions `mtopt sd improve` published there too."""
    import json

    from mtopt.runtime.config import preset
    from mtopt.runtime.local import LocalRun
    from mtopt.success.network import SDNetConfig, SuccessDetector, SuccessNet

    run = LocalRun(preset("tiny"), tmp_path)
    sd = SuccessDetector(
        SuccessNet(SDNetConfig(num_tasks=len(run.registry), image_size=16)), run.registry.names, 7
    )
    assert run._sd_rounds_done(sd) == 6  # a run from before quality.json: its versions
    run.paths.sd.mkdir(parents=True, exist_ok=True)
    (run.paths.sd / "quality.json").write_text(
        json.dumps([{"version": 1}, {"version": 2}, {"version": 5}])
    )
    assert run._sd_rounds_done(sd) == 2


def test_a_resume_writes_the_quality_line_a_kill_left_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kill between publishing a round's SD and its quality.json line: the resume adds
    the line (with the labels the SD was published with), so the rounds count stays
    right; SDs of `sd improve` (another origin) get none, and a line is never doubled."""
    import json

    from mtopt.runtime.config import preset
    from mtopt.runtime.local import RUN_SD_ORIGIN, LocalRun
    from mtopt.success.data import LabeledSet
    from mtopt.success.network import SDNetConfig, SuccessDetector, SuccessNet

    run = LocalRun(preset("tiny"), tmp_path)
    monkeypatch.setattr(run, "_sd_val_set", lambda: LabeledSet.empty(run.registry.names, 16))
    quality = run.paths.sd / "quality.json"

    def publish(origin: str, labels: int) -> None:
        net = SuccessNet(SDNetConfig(num_tasks=len(run.registry), image_size=16))
        SuccessDetector(net, run.registry.names).publish(
            run.paths.sd, extra_meta={"origin": origin, "episode_labels": labels}
        )

    run.paths.sd.mkdir(parents=True)
    publish(RUN_SD_ORIGIN, 0)
    quality.write_text(json.dumps([{"version": 1, "episode_labels": 0}]))
    publish(RUN_SD_ORIGIN, 40)  # a round's SD; killed before its line
    sd = run.init_sd()
    rows = json.loads(quality.read_text())
    assert [(r["version"], r["episode_labels"]) for r in rows] == [(1, 0), (2, 40)]
    assert run._sd_rounds_done(sd) == 1
    run.init_sd()  # again: nothing doubled
    assert len(json.loads(quality.read_text())) == 2
    publish("sd improve", 0)  # not the run's own
    assert run.init_sd().version == 3 and len(json.loads(quality.read_text())) == 2


def test_a_resume_counts_the_episode_labels_the_sd_rounds_kept(tmp_path: Path) -> None:
    """A kill after a round saved its labels and before the next checkpoint: the labels
    are in sd/episode_labels.npz, the checkpoint's count is short of them."""
    import numpy as np

    from mtopt.runtime.config import preset
    from mtopt.runtime.local import LocalRun
    from mtopt.success.data import LabeledSet

    run = LocalRun(preset("tiny"), tmp_path)
    assert run.episode_labels_kept(7) == 7  # no file: the checkpoint's count
    n, t = 12, len(run.registry)
    rows = LabeledSet(
        run.registry.names,
        np.zeros((n, 16, 16, 3), np.uint8),
        np.zeros((n, t), np.float32),
        np.ones((n, t), bool),
        np.array([f"e{i}" for i in range(n)]),
        np.array(["oracle"] * n),
        np.zeros(n, bool),
    )
    rows.save(run.paths.sd / "episode_labels.npz")
    assert run.episode_labels_kept(7) == 12
    assert run.episode_labels_kept(20) == 20


def test_a_local_run_takes_no_registry_other_than_its_configs(tmp_path: Path) -> None:
    from mtopt.runtime.config import RunConfig
    from mtopt.runtime.local import LocalRun
    from mtopt.tasks import DEFAULT_REGISTRY

    more = DEFAULT_REGISTRY.with_extra([{"name": "lift-tiny", "kind": "lift", "min_size": 0.01}])
    with pytest.raises(ValueError, match=r"give new tasks in cfg\.extra_tasks"):
        LocalRun(RunConfig(), tmp_path / "run", registry=more)
    assert not (tmp_path / "run").exists()
