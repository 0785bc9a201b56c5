"""``mtopt sim demo``: the scripted policy, or a run's learned policy with --run."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from mtopt.cli import app
from mtopt.config import override, save_config
from mtopt.policies.cem_policy import load_policy
from mtopt.qtopt.learner import Learner
from mtopt.qtopt.weights import WeightsError, load_latest
from mtopt.runtime.config import preset
from mtopt.tasks import DEFAULT_REGISTRY
from qtopt_fixtures import SMALL


def demo(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(app, ["sim", "demo", "--episodes", "1", *args])
    return res.exit_code, res.output


def test_scripted_demo_writes_gif_and_strip(tmp_path: Path) -> None:
    code, out = demo("--task", "lift-any", "--size", "32", "--out", str(tmp_path))
    assert code == 0, out
    assert (tmp_path / "lift-any.gif").read_bytes()[:3] == b"GIF"
    assert (tmp_path / "lift-any.png").read_bytes()[:4] == b"\x89PNG"
    assert "episodes of scripted" in out and "lift-any" in out


def test_learned_demo_acts_with_the_runs_latest_weights(tmp_path: Path) -> None:
    run = tmp_path / "run"
    cfg = override(preset("local"), ["sim.image_size=32", "cem_act.samples=16"])
    save_config(cfg, run / "config.json")
    net = dataclasses.replace(SMALL, num_tasks=len(DEFAULT_REGISTRY.names))
    Learner(net).publish(run / "weights")
    code, out = demo("--run", str(run), "--task", "place-any", "--out", str(tmp_path / "o"))
    assert code == 0, out
    assert "acting Q weights (CEM) for place-any" in out
    assert (tmp_path / "o" / "place-any.gif").exists()
    # the run's image size is the network's: another one is refused, as is a non-run
    code, out = demo("--run", str(run), "--size", "64", "--out", str(tmp_path / "o"))
    assert code == 2 and "32-pixel images, not 64" in out
    code, out = demo("--run", str(tmp_path), "--out", str(tmp_path / "o"))
    assert code == 2 and "not a run or policy folder" in out
    code, out = demo("--run", str(run), "--part", "target", "--out", str(tmp_path / "o"))
    assert code == 2 and "'acting' or 'online'" in out
    code, out = demo("--part", "online", "--out", str(tmp_path / "o"))  # ran scripted
    assert code == 2 and "give --run too" in out
    code, out = demo("--act", "gripper=split", "--out", str(tmp_path / "o"))
    assert code == 2 and "give --run too" in out
    act = ["--act", "gripper=split", "--act", "release_margin=0.1", "--episodes", "1"]
    code, out = demo("--run", str(run), *act, "--out", str(tmp_path / "o"))
    assert code == 0, out
    code, out = demo("--run", str(run), "--act", "precision=bf16", "--out", str(tmp_path / "o"))
    assert code == 2 and "acts in fp32" in out


def test_exported_policy_acts_like_its_run(tmp_path: Path) -> None:
    run = tmp_path / "run"
    save_config(override(preset("local"), ["sim.image_size=32"]), run / "config.json")
    learner = Learner(dataclasses.replace(SMALL, num_tasks=len(DEFAULT_REGISTRY.names)))
    for _ in range(2):
        learner.publish(run / "weights")
    exp = tmp_path / "exp"
    res = CliRunner().invoke(app, ["export", str(run), str(exp), "--parts", "acting"])
    assert res.exit_code == 0, res.output
    version, tensors, meta = load_latest(exp / "weights")
    assert version == 2 and {k.split(".")[0] for k in tensors} == {"acting"}
    _, full, full_meta = load_latest(run / "weights")
    assert meta == full_meta
    assert all(torch.equal(v, full[k]) for k, v in tensors.items())
    assert json.loads((exp / "exported.json").read_text())["version"] == 2
    code, out = demo("--run", str(exp), "--task", "lift-any", "--out", str(tmp_path / "o"))
    assert code == 0, out
    code, out = demo("--run", str(exp), "--part", "online", "--out", str(tmp_path / "o"))
    assert code == 2 and "no 'online' network" in out  # it was not exported
    assert "ships only the 'acting' network" in out and len(out.strip().splitlines()) == 1
    # a folder of the online network only does not act with it as if it were the acting
    # one (the loader's fallback is for weights published before the acting network)
    online = tmp_path / "online"
    res = CliRunner().invoke(app, ["export", str(run), str(online), "--parts", "online"])
    assert res.exit_code == 0, res.output
    with pytest.raises(WeightsError, match="no 'acting' network: it ships only the 'online'"):
        load_policy(online)
    assert load_policy(online, part="online")[0].part == "online"
    assert json.loads((online / "exported.json").read_text())["from"] == str(run.resolve())
    # --act: the folder acts with another search, recorded; the run's config is untouched
    act = ["--act", "gripper=split", "--act", "cem_act.release_margin=0.1"]
    res = CliRunner().invoke(app, ["export", str(run), str(tmp_path / "margin"), *act])
    assert res.exit_code == 0, res.output
    policy, _, _ = load_policy(tmp_path / "margin")
    assert (policy.cem.gripper, policy.cem.release_margin) == ("split", 0.1)
    record = json.loads((tmp_path / "margin" / "exported.json").read_text())["acting_search"]
    assert record["changed"] == {"gripper": "split", "release_margin": 0.1}
    assert record["run"]["gripper"] == "joint" and load_policy(run)[0].cem.gripper == "joint"
    assert "acting_search" not in json.loads((exp / "exported.json").read_text())
    # exported again, the folder still says the search is not the run's
    res = CliRunner().invoke(app, ["export", str(tmp_path / "margin"), str(tmp_path / "again")])
    assert res.exit_code == 0, res.output
    again = json.loads((tmp_path / "again" / "exported.json").read_text())["acting_search"]
    assert again == record
    res = CliRunner().invoke(app, ["average", str(tmp_path / "avg"), str(run), *act])
    assert res.exit_code == 0, res.output
    assert load_policy(tmp_path / "avg")[0].cem.release_margin == 0.1
    # an average exported again still says it is one
    res = CliRunner().invoke(
        app, ["export", str(tmp_path / "avg"), str(tmp_path / "avg2"), "--parts", "acting"]
    )
    assert res.exit_code == 0, res.output
    averaged = json.loads((tmp_path / "avg" / "exported.json").read_text())["averaged"]
    assert json.loads((tmp_path / "avg2" / "exported.json").read_text())["averaged"] == averaged
    # an output folder that cannot be made: one line, exit 2 (export, average: a traceback)
    code, out = demo("--run", str(exp), "--out", "/proc/no-such-folder/demo")
    assert code == 2 and "cannot write to /proc/no-such-folder/demo" in out, out
    dst = "/proc/no-such-folder/policy"
    for args in (["export", str(run), dst], ["average", dst, str(run)]):
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 2 and f"cannot write to {dst}" in res.output, res.output
    # only the acting search, and only a valid one
    for bad, says in (
        (["--act", "release_margin=0.1"], "release_margin needs gripper='split'"),
        (["--act", "learner.lr=1"], "unknown config field 'cem_act.learner"),
        (["--act", "samples"], "must look like field=value"),
    ):
        res = CliRunner().invoke(app, ["export", str(run), str(tmp_path / "bad"), *bad])
        assert res.exit_code == 2 and says in res.output, res.output
        assert not (tmp_path / "bad").exists()
    # a second export into the same folder, or of a network the run never had, is refused
    res = CliRunner().invoke(app, ["export", str(run), str(exp)])
    assert res.exit_code == 2 and "already holds published weights" in res.output
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "config.json").write_text("{}")  # someone's: not overwritten
    res = CliRunner().invoke(app, ["export", str(run), str(tmp_path / "mine")])
    assert res.exit_code == 2 and "already holds a config.json" in res.output
    assert (tmp_path / "mine" / "config.json").read_text() == "{}"
    res = CliRunner().invoke(app, ["export", str(run), str(tmp_path / "e2"), "--parts", "acting,x"])
    assert res.exit_code == 2 and "no ['x'] network" in res.output
    res = CliRunner().invoke(app, ["export", str(run), str(tmp_path / "e3"), "--parts", "target0"])
    assert res.exit_code == 2 and "needs acting or online" in res.output
    # into the run's own weights folder (which then no longer read as one), or the run
    for inside in (run / "weights", run, run / "weights" / "x"):
        res = CliRunner().invoke(app, ["export", str(run), str(inside)])
        assert res.exit_code == 2 and "or one of its folders" in res.output, res.output
    res = CliRunner().invoke(app, ["average", str(run / "store" / "avg"), str(run)])
    assert res.exit_code == 2 and "or one of its folders" in res.output, res.output
    # sources given as the run's weights folder (no config.json of its own) likewise
    res = CliRunner().invoke(
        app, ["average", str(run / "weights" / "avg"), str(run / "weights"), "--config", str(run)]
    )
    assert res.exit_code == 2 and "or one of its folders" in res.output, res.output
    assert not (run / "weights" / "config.json").exists() and load_latest(run / "weights")[0] == 2


def test_a_part_a_shipped_policy_lacks_is_a_one_line_error(tmp_path: Path) -> None:
    """An averaged policy folder's exported.json spans many lines: the error used to
    print all of it; it names the networks the folder ships instead."""
    folder = Path(__file__).resolve().parents[1] / "policies" / "tuned-r34-swa"
    code, out = demo("--run", str(folder), "--part", "online", "--out", str(tmp_path / "o"))
    assert code == 2 and "ships only the 'acting' network" in out, out
    assert len(out.strip().splitlines()) == 1 and "averaged" not in out


def test_a_new_task_of_a_tasks_file_runs_scripted_in_the_demo_and_collection(
    tmp_path: Path,
) -> None:
    """A task of one's own can be looked at (`sim demo`) and collected for (`collect`)
    before any run: both knew only the built-in tasks and a run's."""
    from mtopt.store import EpisodeReader

    tasks = tmp_path / "tasks.json"
    task = {"name": "place-can-on-plate", "kind": "place", "fixtures": ["plate"], "category": "can"}
    tasks.write_text(json.dumps([task]))
    args = ("--task", "place-can-on-plate", "--size", "32", "--out", str(tmp_path / "d"))
    code, out = demo(*args, "--tasks-file", str(tasks))
    assert code == 0 and (tmp_path / "d" / "place-can-on-plate.gif").exists(), out
    code, out = demo(*args)
    assert code == 2 and "unknown task 'place-can-on-plate'" in out
    code, out = demo(*args, "--tasks-file", str(tasks), "--run", str(tmp_path))
    assert code == 2 and "a --run brings its own tasks" in out
    store = tmp_path / "store"
    collect = ["collect", "--store", str(store), "--robots", "1", "--episodes", "1"]
    res = CliRunner().invoke(
        app, [*collect, "--tasks", "place-can-on-plate", "--tasks-file", str(tasks)]
    )
    assert res.exit_code == 0, res.output
    (ep,) = EpisodeReader(store).poll()
    assert ep.task == "place-can-on-plate" and "place-can-on-plate" in ep.gt_success_by_task
    # a run's weights bring the run's tasks: a tasks file of other tasks is refused
    run = tmp_path / "run"
    save_config(preset("local"), run / "config.json")
    Learner(dataclasses.replace(SMALL, num_tasks=len(DEFAULT_REGISTRY))).publish(run / "weights")
    res = CliRunner().invoke(
        app, [*collect, "--weights", str(run / "weights"), "--tasks-file", str(tasks)]
    )
    assert res.exit_code == 2 and "does not describe the tasks of the run" in res.output
    # weights alone (no run's config.json beside them) that name their tasks
    bare = Learner(dataclasses.replace(SMALL, num_tasks=len(DEFAULT_REGISTRY) + 1))
    bare.task_names = (*DEFAULT_REGISTRY.names, "lift-small-ball")
    bare.publish(tmp_path / "bare")
    res = CliRunner().invoke(
        app, [*collect, "--weights", str(tmp_path / "bare"), "--tasks-file", str(tasks)]
    )
    assert res.exit_code == 2 and "were trained on the tasks" in res.output


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda latest: [1, 2], "a JSON list, not an object"),
        (lambda latest: {k: v for k, v in latest.items() if k != "version"}, "version None"),
        (lambda latest: {**latest, "version": "abc"}, "version 'abc' is not an integer"),
        (lambda latest: {k: v for k, v in latest.items() if k != "meta"}, "no Q-network settings"),
        (
            lambda latest: {
                **latest,
                "meta": {**latest["meta"], "qnet": {**latest["meta"]["qnet"], "fc_units": 7}},
            },
            "do not fit the Q-network their settings",
        ),
    ],
)
def test_a_damaged_latest_file_is_a_clear_error(tmp_path: Path, edit: object, message: str) -> None:
    """q-latest.json edited or damaged: a WeightsError that says what (and one line from
    the CLI), not a KeyError or PyTorch's size-mismatch dump."""
    run = tmp_path / "run"
    save_config(override(preset("local"), ["sim.image_size=32"]), run / "config.json")
    Learner(dataclasses.replace(SMALL, num_tasks=len(DEFAULT_REGISTRY.names))).publish(
        run / "weights"
    )
    path = run / "weights" / "q-latest.json"
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))  # type: ignore[operator]
    with pytest.raises(WeightsError, match=message):
        load_policy(run)
    code, out = demo("--run", str(run), "--out", str(tmp_path / "o"))
    said = "malformed" if "version" in message or "JSON list" in message else message
    assert code == 2 and said in out and len(out.strip().splitlines()) == 1, out


def test_export_of_a_snapshot_is_the_policy_at_that_step(tmp_path: Path) -> None:
    from mtopt.qtopt.weights import snapshot_latest

    run = tmp_path / "run"
    save_config(override(preset("local"), ["sim.image_size=32"]), run / "config.json")
    learner = Learner(dataclasses.replace(SMALL, num_tasks=len(DEFAULT_REGISTRY.names)))
    learner.publish(run / "weights")
    snapshot_latest(run / "weights")  # version 1 kept
    early = {k: v.clone() for k, v in learner.acting.state_dict().items()}
    with torch.no_grad():
        for p in learner.acting.parameters():
            p.add_(1.0)
    learner.publish(run / "weights")  # version 2: the latest, not a snapshot
    out = tmp_path / "at1"
    res = CliRunner().invoke(
        app, ["export", str(run), str(out), "--snapshot", "1", "--parts", "acting"]
    )
    assert res.exit_code == 0, res.output
    version, tensors, _ = load_latest(out / "weights")
    assert version == 1
    assert all(torch.equal(tensors[f"acting.{k}"], v) for k, v in early.items())
    assert json.loads((out / "exported.json").read_text())["version"] == 1
    assert load_policy(out)[0].part == "acting"
    res = CliRunner().invoke(app, ["export", str(run), str(tmp_path / "at2"), "--snapshot", "2"])
    assert res.exit_code == 2 and "no snapshot of version 2" in res.output
    assert "it keeps 1" in res.output and not (tmp_path / "at2" / "weights").exists()
