"""Checkpoint averaging: ``average_state_dicts`` by hand, snapshots that survive
``publish``'s pruning, and ``mtopt average`` end to end."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from mtopt.cli import app
from mtopt.config import override, save_config
from mtopt.qtopt.learner import Learner, LearnerConfig, load_network
from mtopt.qtopt.weights import (
    WeightsError,
    average_state_dicts,
    load_latest,
    load_source,
    publish,
    snapshot_due,
    snapshot_latest,
    split_prefixed,
)
from mtopt.runtime.config import preset
from mtopt.tasks import DEFAULT_REGISTRY
from qtopt_fixtures import SMALL


def test_average_by_hand() -> None:
    a = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(3)}
    b = {"w": torch.tensor([3.0, 6.0]), "n": torch.tensor(3)}
    c = {"w": torch.tensor([2.0, 1.0]), "n": torch.tensor(3)}
    avg = average_state_dicts([a, b, c])
    assert torch.equal(avg["w"], torch.tensor([2.0, 3.0]))  # (1+3+2)/3, (2+6+1)/3
    assert avg["w"].dtype == torch.float32 and torch.equal(avg["n"], torch.tensor(3))
    half = average_state_dicts([{"w": torch.tensor([1.0], dtype=torch.bfloat16)}] * 2)
    assert half["w"].dtype == torch.bfloat16 and half["w"].item() == 1.0
    one = average_state_dicts([a])
    assert torch.equal(one["w"], a["w"]) and one["w"] is not a["w"]  # a copy, not an alias


@pytest.mark.parametrize(
    ("other", "message"),
    [
        ({"w": torch.zeros(2)}, "other tensors"),
        ({"w": torch.zeros(3), "n": torch.tensor(3)}, "differs in shape"),
        ({"w": torch.zeros(2), "n": torch.tensor(4)}, "non-float tensor 'n' differs"),
    ],
)
def test_average_refuses_mismatched_members(other: dict[str, torch.Tensor], message: str) -> None:
    a = {"w": torch.ones(2), "n": torch.tensor(3)}
    with pytest.raises(WeightsError, match=message):
        average_state_dicts([a, other])
    with pytest.raises(WeightsError, match="nothing to average"):
        average_state_dicts([])


def test_snapshot_due_by_hand() -> None:
    # publications every 100 steps; snapshots every 250: the first at or after 250, 500, ...
    due = [s for s in range(100, 1100, 100) if snapshot_due(s, 250, 100)]
    assert due == [300, 500, 800, 1000]
    assert [s for s in range(10, 50, 10) if snapshot_due(s, 20, 10)] == [20, 40]
    assert not any(snapshot_due(s, 0, 100) for s in range(0, 1000, 100))


def test_snapshots_survive_pruning_and_load_as_sources(tmp_path: Path) -> None:
    d = tmp_path / "weights"
    for v in range(1, 9):
        publish(d, {"online.w": torch.full((2,), float(v))}, v, {"step": 10 * v}, keep=2)
        if v % 3 == 0:
            snapshot_latest(d)
    assert sorted(p.name for p in d.glob("q-*.safetensors")) == [
        "q-00000007.safetensors",
        "q-00000008.safetensors",
    ]
    snaps = sorted((d / "snapshots").glob("*.safetensors"))
    assert [p.name for p in snaps] == ["q-00000003.safetensors", "q-00000006.safetensors"]
    version, tensors, meta = load_source(snaps[0])
    assert version == 3 and meta == {"step": 30} and tensors["online.w"].tolist() == [3.0, 3.0]
    assert load_source(d)[0] == 8 and load_source(tmp_path)[0] == 8  # a folder, a run
    with pytest.raises(WeightsError, match="neither a folder nor"):
        load_source(tmp_path / "model.pt")


def test_mtopt_average_writes_the_mean_as_a_policy(tmp_path: Path) -> None:
    run = tmp_path / "run"
    save_config(override(preset("local"), ["sim.image_size=32"]), run / "config.json")
    learner = Learner(dataclasses.replace(SMALL, num_tasks=len(DEFAULT_REGISTRY.names)))
    learner.publish(run / "weights")
    snap = snapshot_latest(run / "weights")
    with torch.no_grad():
        for p in learner.online.parameters():
            p.add_(0.5)
        learner.acting.load_state_dict(learner.online.state_dict())
    learner.publish(run / "weights")
    out = tmp_path / "avg"
    res = CliRunner().invoke(app, ["average", str(out), str(run), str(snap)])
    assert res.exit_code == 0, res.output
    version, tensors, meta = load_latest(out / "weights")
    assert version == 2 and {k.split(".")[0] for k in tensors} == {"acting"}
    _, new, _ = load_latest(run / "weights")
    _, old, _ = load_source(snap)
    members = [split_prefixed(t, p) for t in (new, old) for p in ("acting", "online")]
    for k, v in split_prefixed(tensors, "acting").items():
        expected = torch.stack([m[k].double() for m in members]).mean(0).float()
        assert torch.equal(v, expected), k
    net = load_network(tensors, meta, "acting")  # loads as a policy network
    assert net.cfg == learner.online.cfg
    exported = json.loads((out / "exported.json").read_text())
    assert exported["parts"] == ["acting"] and exported["version"] == 2
    assert [s["version"] for s in exported["averaged"]["sources"]] == [2, 1]
    code = CliRunner().invoke(
        app, ["sim", "demo", "--episodes", "1", "--run", str(out), "--out", str(tmp_path / "o")]
    )
    assert code.exit_code == 0, code.output

    # a folder already holding weights, no run to take the config from, another network
    res = CliRunner().invoke(app, ["average", str(out), str(run)])
    assert res.exit_code == 2 and "already holds published weights" in res.output
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "config.json").write_text("{}")  # someone's: not overwritten
    res = CliRunner().invoke(app, ["average", str(tmp_path / "mine"), str(run)])
    assert res.exit_code == 2 and "already holds a config.json" in res.output
    assert (tmp_path / "mine" / "config.json").read_text() == "{}"
    res = CliRunner().invoke(app, ["average", str(tmp_path / "b"), str(snap)])
    assert res.exit_code == 2 and "--config" in res.output
    res = CliRunner().invoke(
        app, ["average", "--config", str(tmp_path), str(tmp_path / "b"), str(snap)]
    )
    assert res.exit_code == 2 and "no config.json in" in res.output
    # another seed's weights of the same network and tasks (other initial networks, as
    # another run's): refused, unless --across-runs, whose mean then names no origin
    alien = tmp_path / "alien"
    Learner(
        dataclasses.replace(SMALL, num_tasks=len(DEFAULT_REGISTRY.names)), LearnerConfig(seed=1)
    ).publish(alien)
    res = CliRunner().invoke(app, ["average", str(tmp_path / "h"), str(run), str(alien)])
    assert res.exit_code == 2 and "different initial networks" in res.output, res.output
    assert "--across-runs" in res.output and not (tmp_path / "h" / "weights").exists()
    res = CliRunner().invoke(
        app, ["average", "--across-runs", str(tmp_path / "h"), str(run), str(alien)]
    )
    assert res.exit_code == 0, res.output
    assert "origin" not in load_latest(tmp_path / "h" / "weights")[2]
    assert load_latest(out / "weights")[2]["origin"] == learner.origin  # one run's: kept
    other = tmp_path / "other"
    Learner(dataclasses.replace(SMALL, num_tasks=3)).publish(other)
    res = CliRunner().invoke(app, ["average", str(tmp_path / "c"), str(run), str(other)])
    assert res.exit_code == 2 and "different architecture" in res.output
    # a config whose robots render another image size than the network takes
    run64 = tmp_path / "run64"
    save_config(preset("local"), run64 / "config.json")
    res = CliRunner().invoke(
        app, ["average", "--config", str(run64), str(tmp_path / "d"), str(run), str(snap)]
    )
    assert res.exit_code == 2 and "image_size: weights have 32, model wants 64" in res.output
    assert not (tmp_path / "d" / "weights").exists()
    res = CliRunner().invoke(app, ["average", str(tmp_path / "e"), str(run), str(run)])
    assert res.exit_code == 2 and "given twice" in res.output
    # the latest weights again under another name (a snapshot of them): left out, said so
    again = snapshot_latest(run / "weights")
    res = CliRunner().invoke(app, ["average", str(tmp_path / "f"), str(run), str(snap), str(again)])
    assert res.exit_code == 0 and f"left out {again}: the same network as {run}" in res.output
    assert "averaged 2 checkpoint(s)" in res.output
    _, twice, meta = load_latest(tmp_path / "f" / "weights")
    assert meta["left_out"] == [{"source": str(again), "version": 2, "same_as": str(run)}]
    assert all(torch.equal(twice[k], tensors[k]) for k in tensors)  # the same mean as before
    # the run republishes the same network as v3 (as at its end); the snapshot of v2 listed
    # first stays, the run is left out, and the average still takes the newest version
    learner.publish(run / "weights")
    res = CliRunner().invoke(app, ["average", str(tmp_path / "g"), str(again), str(run)])
    assert res.exit_code == 0 and f"left out {run}" in res.output, res.output
    assert load_latest(tmp_path / "g" / "weights")[0] == 3


def test_a_run_averages_its_late_snapshots_into_a_replaced_folder(tmp_path: Path) -> None:
    """``average_run``: the latest weights plus the last N snapshots, a snapshot of the
    latest version not counted twice; a second call replaces the folder whole."""
    from mtopt.runtime.policy_folder import AVERAGED, average_run, late_sources

    run = tmp_path / "run"
    cfg = override(preset("local"), ["sim.image_size=32"])
    save_config(cfg, run / "config.json")
    learner = Learner(dataclasses.replace(SMALL, num_tasks=len(DEFAULT_REGISTRY.names)))
    for _ in range(4):  # versions 1..4 at steps 1..4, each snapshotted
        with torch.no_grad():
            for p in learner.online.parameters():
                p.add_(1.0)
        learner.step += 1
        learner.publish(run / "weights")
        snapshot_latest(run / "weights")
    snaps = run / "weights" / "snapshots"
    # the latest (v4) is also the last snapshot: v2 and v3 are the 2 snapshots before it
    assert late_sources(run, 2) == [
        run,
        snaps / "q-00000002.safetensors",
        snaps / "q-00000003.safetensors",
    ]
    assert late_sources(run, 0) == [run]
    assert late_sources(run, 10)[1:] == sorted(snaps.glob("q-0000000[123].safetensors"))
    folder, made = average_run(run, cfg, 2)
    assert folder == run / AVERAGED
    assert [s["version"] for s in made["averaged"]["sources"]] == [4, 2, 3]
    _, tensors, _ = load_latest(folder / "weights")
    members = [
        split_prefixed(load_source(s)[1], p)
        for s in late_sources(run, 2)
        for p in ("acting", "online")
    ]
    k = next(iter(split_prefixed(tensors, "acting")))
    expected = torch.stack([m[k] for m in members]).mean(0)
    assert torch.allclose(tensors[f"acting.{k}"], expected)
    assert json.loads((folder / "exported.json").read_text())["averaged"]["parts"] == [
        "acting",
        "online",
    ]
    # again, with one more version: the folder is replaced, no temporary folders are left
    with torch.no_grad():
        for p in learner.online.parameters():
            p.add_(1.0)
    learner.step += 1
    learner.publish(run / "weights")
    folder, made = average_run(run, cfg, 1)
    assert load_latest(folder / "weights")[0] == 5
    assert [s["version"] for s in made["averaged"]["sources"]] == [5, 4]
    assert sorted(p.name for p in run.iterdir()) == ["config.json", AVERAGED, "weights"]
    # a run publishes once more at its end, at the step of its last snapshot: that
    # snapshot is the latest network under an older version and is not counted twice
    snapshot_latest(run / "weights")  # v5, step 5
    learner.publish(run / "weights")  # v6, step 5
    assert late_sources(run, 1) == [run, snaps / "q-00000004.safetensors"]
    with pytest.raises(WeightsError, match="no published weights"):
        late_sources(tmp_path, 1)


def test_networks_of_other_tasks_are_not_averaged(tmp_path: Path) -> None:
    """Two runs' networks with one input count but different tasks behind the new input
    (place-can-on-plate in one, lift-small-ball in the other) used to average into one
    input, named after the first source's tasks."""
    from mtopt.qtopt.weights import WeightsError, average_into

    cfg = dataclasses.replace(SMALL, num_tasks=3)
    can, ball = ("x", "y", "place-can-on-plate"), ("x", "y", "lift-small-ball")
    for name, tasks in (("a", can), ("a2", can), ("b", ball)):
        learner = Learner(cfg)
        learner.task_names = tasks
        learner.origin = "one-start"  # (other initial networks are refused: tested above)
        learner.publish(tmp_path / name)
    with pytest.raises(WeightsError, match="an average needs the same tasks"):
        average_into(tmp_path / "avg", [tmp_path / "a", tmp_path / "b"])
    assert not (tmp_path / "avg" / "q-latest.json").exists()
    _, _, meta = average_into(tmp_path / "same", [tmp_path / "a", tmp_path / "a2"])
    assert meta["tasks"] == list(can)
    # the policy's config must be of the networks' tasks
    with pytest.raises(WeightsError, match="the policy's config has"):
        average_into(tmp_path / "c", [tmp_path / "a", tmp_path / "a2"], expected_tasks=ball)
    # two runs whose tasks files define a task of one name differently
    task = {"name": "place-new", "kind": "place", "fixtures": ["plate"], "category": "can"}
    for name, t in (("r1", task), ("r2", {**task, "fixtures": ["bowl"]})):
        save_config(
            dataclasses.replace(preset("local"), extra_tasks=(t,)), tmp_path / name / "config.json"
        )
    res = CliRunner().invoke(
        app, ["average", str(tmp_path / "d"), str(tmp_path / "r1"), str(tmp_path / "r2")]
    )
    assert res.exit_code == 2 and "of a run of other tasks than" in res.output
    # a source given as the run's weights folder (or a snapshot in it) is checked too
    (tmp_path / "r2" / "weights" / "snapshots").mkdir(parents=True)
    snapshot = tmp_path / "r2" / "weights" / "snapshots" / "q-00000001.safetensors"
    for src in (tmp_path / "r2" / "weights", snapshot):
        res = CliRunner().invoke(
            app, ["average", str(tmp_path / "e"), str(tmp_path / "r1"), str(src)]
        )
        assert res.exit_code == 2 and "of a run of other tasks than" in res.output, res.output


def test_an_export_of_a_source_counts_once(tmp_path: Path) -> None:
    """A run's file also holds its target networks, an export's does not: the two were
    never the same to the duplicate check, so the run's network counted twice."""
    run = tmp_path / "run"
    save_config(override(preset("local"), ["sim.image_size=32"]), run / "config.json")
    learner = Learner(dataclasses.replace(SMALL, num_tasks=len(DEFAULT_REGISTRY.names)))
    learner.publish(run / "weights")
    snapshot_latest(run / "weights")
    with torch.no_grad():
        for p in learner.online.parameters():
            p.add_(0.1)
    learner.publish(run / "weights")
    runner = CliRunner()
    res = runner.invoke(app, ["export", str(run), str(tmp_path / "exp")])
    assert res.exit_code == 0, res.output
    snap = sorted((run / "weights" / "snapshots").glob("q-*.safetensors"))[0]
    res = runner.invoke(
        app, ["average", str(tmp_path / "avg"), str(run), str(tmp_path / "exp"), str(snap)]
    )
    assert res.exit_code == 0, res.output
    meta = json.loads((tmp_path / "avg" / "exported.json").read_text())
    assert [u["source"] for u in meta["averaged"]["sources"]] == [str(run), str(snap)]
