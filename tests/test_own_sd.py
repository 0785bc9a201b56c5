"""A run's success detector from your own labeled images: ``mtopt sd export`` of a
person's labels, and ``sd.examples_file`` / ``sd.validation_file`` / ``sd.weights``,
which replace the examples a run would stage in the simulated cell."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from mtopt.cli import app
from mtopt.config import ConfigError
from mtopt.runtime.config import preset, resume_config, with_sd_sources
from mtopt.runtime.local import LocalRun
from mtopt.success.data import LabeledSet, examples_for, held_out_rows, label_counts
from mtopt.success.network import SDNetConfig, SuccessDetector, SuccessNet, view_meta
from mtopt.tasks import DEFAULT_REGISTRY

TASKS = DEFAULT_REGISTRY.names


def labeled_set(
    n: int, size: int = 64, tasks: tuple[str, ...] = TASKS, seed: int = 0, prefix: str = "ep"
) -> LabeledSet:
    """``n`` random images, each labeled for the first two tasks only (as a person labels
    a task at a time): even rows successes, odd rows failures."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((n, len(tasks)), np.float32)
    labels[::2, :2] = 1.0
    mask = np.zeros((n, len(tasks)), bool)
    mask[:, :2] = True
    return LabeledSet(
        tasks,
        rng.integers(0, 255, (n, size, size, 3), dtype=np.uint8),
        labels,
        mask,
        np.array([f"{prefix}-{i}" for i in range(n)]),
        np.array(["human"] * n),
        np.zeros(n, bool),
    )


def test_held_out_rows_by_hand() -> None:
    # SHA-1("a") = 86f7e437faa5a7fc...: 0x86f7e437faa5a / 16**13 = 0.5272;
    # SHA-1("b") = e9d71f5ee7c92d6d...: 0.9134
    assert held_out_rows(["a", "b"], 0.55).tolist() == [True, False]
    assert held_out_rows(["b", "a"], 0.55).tolist() == [False, True]  # by id, not by row
    assert held_out_rows(["a", "b"], 0.95).tolist() == [True, True]  # small sets: callers
    assert held_out_rows(["a", "b"], 0.2).tolist() == [False, False]  # say so
    big = [f"ep-{i}" for i in range(400)]
    held = held_out_rows(big, 0.2)
    assert 50 < held.sum() < 110  # about a fifth
    # a row added later never moves an old one across, small sets included
    assert (held_out_rows([*big, "new-1", "new-2"], 0.2)[:400] == held).all()
    assert held_out_rows(["a"], 0.55).tolist() == held_out_rows(["a", "b", "c"], 0.55)[:1].tolist()
    with pytest.raises(ValueError, match="share"):
        held_out_rows(big, 1.0)


def test_label_counts_and_examples_for_checks(tmp_path: Path) -> None:
    data = labeled_set(5, tasks=TASKS[:3])
    assert label_counts(data) == {TASKS[0]: (3, 2), TASKS[1]: (3, 2), TASKS[2]: (0, 0)}
    data.save(tmp_path / "ex.npz")
    # a set made before tasks were added: their labels unknown
    grown = examples_for(tmp_path / "ex.npz", TASKS, 64)
    assert grown.tasks == TASKS and not grown.mask[:, 3:].any()
    with pytest.raises(ValueError, match="holds 64x64 images, the run's camera gives 96x96"):
        examples_for(tmp_path / "ex.npz", TASKS, 96)
    with pytest.raises(ValueError, match="does not start with"):
        examples_for(tmp_path / "ex.npz", TASKS[1:], 64)
    LabeledSet.empty(TASKS).save(tmp_path / "empty.npz")
    with pytest.raises(ValueError, match="no labeled examples"):
        examples_for(tmp_path / "empty.npz", TASKS, 64)


@pytest.mark.timeout(300)
def test_sd_export_turns_a_persons_labels_into_disjoint_example_sets(tmp_path: Path) -> None:
    from mtopt.store import EpisodeReader, EpisodeWriter
    from mtopt.success.labels import LabelStore

    r = CliRunner()
    sim_store, store = tmp_path / "sim-store", tmp_path / "store"
    res = r.invoke(app, ["collect", "--store", str(sim_store), "--robots", "1", "--episodes", "8"])
    assert res.exit_code == 0, res.output
    # a real arm's: no ground truth; ids whose hashes are known (ep-0: 0.934, ep-2: 0.323,
    # ep-3: 0.588, ep-4: 0.316, ep-5: 0.256 as fractions of SHA-1's first 13 hex digits)
    eps = [
        dataclasses.replace(e, episode_id=f"ep-{i}", gt_success=None, gt_success_by_task=None)
        for i, e in enumerate(EpisodeReader(sim_store).episodes())
    ]
    with EpisodeWriter(store, "arm-1") as writer:
        for e in eps:
            writer.write(e)
    labels = LabelStore(store / "labels.jsonl")
    for i, e in enumerate(eps[:6]):  # two episodes left unlabeled
        labels.add(e.episode_id, "lift-any", i % 2 == 0)
    labels.add(eps[0].episode_id, "place-any", False)
    labels.retract(eps[1].episode_id, "lift-any")  # taken back: unknown
    out, val = tmp_path / "ex.npz", tmp_path / "val.npz"
    args = ["sd", "export", "--store", str(store), "--out", str(out)]
    res = r.invoke(app, [*args, "--validation-out", str(val), "--validation-share", "0.3"])
    assert res.exit_code == 0, res.output
    train, held = LabeledSet.load(out), LabeledSet.load(val)
    labeled = {e.episode_id for e in eps[:6]} - {eps[1].episode_id}
    assert sorted(held.ids) == ["ep-5"] and sorted(train.ids) == ["ep-0", "ep-2", "ep-3", "ep-4"]
    both = train.concat(held)
    by_id = {e.episode_id: e for e in eps}
    lift, place = TASKS.index("lift-any"), TASKS.index("place-any")
    for i, eid in enumerate(both.ids):
        k = [e.episode_id for e in eps].index(eid)
        assert both.mask[i, lift] and both.labels[i, lift] == float(k % 2 == 0)
        assert both.mask[i, place] == (k == 0) and both.mask[i].sum() == 1 + (k == 0)
        assert (both.images[i] == by_id[eid].final_image).all()
    assert set(both.sources) == {"human"}
    assert f"{len(train)} labeled episodes in {out}" in res.output
    # the same episodes are held out on every export
    res = r.invoke(app, [*args, "--validation-out", str(val), "--validation-share", "0.3"])
    assert res.exit_code == 0 and sorted(LabeledSet.load(val).ids) == sorted(held.ids)
    res = r.invoke(app, args)  # all in one set
    assert res.exit_code == 0 and len(LabeledSet.load(out)) == len(labeled)
    # bad inputs: one line each, nothing written
    res = r.invoke(app, [*args, "--validation-out", str(out)])
    assert res.exit_code == 2 and "another file than --out" in res.output
    res = r.invoke(app, [*args, "--validation-out", str(val), "--validation-share", "0.1"])
    assert res.exit_code == 2 and "none of the 5 labeled episodes fell in" in res.output
    res = r.invoke(app, [*args, "--labels", str(tmp_path / "none.jsonl")])
    assert res.exit_code == 2 and "no labels in" in res.output
    foreign = LabelStore(tmp_path / "foreign.jsonl")
    foreign.add("deadbeef", "lift-any", True)
    res = r.invoke(app, [*args, "--labels", str(foreign.path)])
    assert res.exit_code == 2 and "none of the 1 labels" in res.output


def tiny_cfg(tmp_path: Path, **sd: str) -> LocalRun:
    cfg = preset("tiny")
    return LocalRun(dataclasses.replace(cfg, sd=dataclasses.replace(cfg.sd, **sd)), tmp_path)


def test_a_run_trains_its_first_sd_on_your_examples_and_stages_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mtopt.runtime.local as local

    def no_staging(*a: object, **k: object) -> None:
        raise AssertionError("staged examples in the simulated cell")

    monkeypatch.setattr(local, "stage_examples", no_staging)
    own = labeled_set(40)
    own.save(tmp_path / "own.npz")
    run = tiny_cfg(tmp_path / "run", examples_file=str(tmp_path / "own.npz"))
    sd = run.init_sd()
    assert sd.version == 1 and SuccessDetector.latest_version(run.paths.sd / "initial") == 1
    train = LabeledSet.load(run.paths.sd / "examples.npz")
    val = LabeledSet.load(run.paths.sd / "validation.npz")
    held = held_out_rows(own.ids.tolist(), 0.2)
    assert list(val.ids) == list(own.ids[held]) and list(train.ids) == list(own.ids[~held])
    quality = json.loads((run.paths.sd / "quality.json").read_text())
    assert len(quality) == 1 and quality[0]["version"] == 1
    assert any("held out to measure" in line for line in run.log_lines)
    # tasks without labels are named: their rewards are guesses
    assert any("no positive or no negative labels for" in line for line in run.log_lines)
    key = json.loads((run.paths.sd / "tasks.key.json").read_text())
    assert key["sd_sources"] == {"examples_file": str(tmp_path / "own.npz")}

    # a validation file of its own: all examples train
    other = labeled_set(6, seed=1, prefix="val")
    other.save(tmp_path / "val.npz")
    run = tiny_cfg(
        tmp_path / "run2",
        examples_file=str(tmp_path / "own.npz"),
        validation_file=str(tmp_path / "val.npz"),
    )
    run.init_sd()
    assert len(LabeledSet.load(run.paths.sd / "examples.npz")) == 40
    assert list(LabeledSet.load(run.paths.sd / "validation.npz").ids) == list(other.ids)

    # examples in both files, or a set too small to hold any out: refused before training
    labeled_set(6).save(tmp_path / "overlap.npz")
    run = tiny_cfg(
        tmp_path / "run3",
        examples_file=str(tmp_path / "own.npz"),
        validation_file=str(tmp_path / "overlap.npz"),
    )
    with pytest.raises(ConfigError, match="share 6 examples"):
        run.init_sd()
    labeled_set(2).save(tmp_path / "two.npz")  # ep-0, ep-1: hashes 0.934, 0.951
    run = tiny_cfg(tmp_path / "run4", examples_file=str(tmp_path / "two.npz"))
    with pytest.raises(ConfigError, match=r"none of the 2 examples .* fell in the held-out share"):
        run.init_sd()
    assert SuccessDetector.latest_version(run.paths.sd) == 0

    # a start that died after copying the examples, the file exported anew, a new start:
    # the new file's examples, not the dead start's copy
    labeled_set(40).save(tmp_path / "again.npz")
    dead = tiny_cfg(tmp_path / "run5", examples_file=str(tmp_path / "again.npz"))
    dead._sd_train_set()
    labeled_set(40, seed=7).save(tmp_path / "again.npz")
    tiny_cfg(tmp_path / "run5", examples_file=str(tmp_path / "again.npz")).init_sd()
    kept = LabeledSet.load(tmp_path / "run5" / "sd" / "examples.npz")
    fresh = labeled_set(40, seed=7)
    assert (kept.images == fresh.images[~held_out_rows(fresh.ids.tolist(), 0.2)]).all()

    # the same folder started again with other sd files: its SD is not theirs
    run = tiny_cfg(tmp_path / "run2", examples_file=str(tmp_path / "val.npz"))
    with pytest.raises(ConfigError, match="from other sd"):
        run.init_sd()


def test_a_run_starts_from_your_sd_weights(tmp_path: Path) -> None:
    net = SuccessNet(SDNetConfig(num_tasks=len(TASKS)))
    SuccessDetector(net, TASKS).publish(tmp_path / "w")
    SuccessDetector(net, TASKS).publish(tmp_path / "w")  # v2, the latest
    labeled_set(6).save(tmp_path / "val.npz")
    run = tiny_cfg(
        tmp_path / "run", weights=str(tmp_path / "w"), validation_file=str(tmp_path / "val.npz")
    )
    sd = run.init_sd()
    assert sd.version == 1
    mine = SuccessDetector.load(run.paths.sd, TASKS)
    assert mine.meta["copied_from"] == f"{tmp_path / 'w'} v2" and mine.meta["origin"] == "run"
    for a, b in zip(mine.net.state_dict().values(), net.state_dict().values(), strict=True):
        assert (a == b).all()
    assert SuccessDetector.latest_version(run.paths.sd / "initial") == 1
    assert not (run.paths.sd / "examples.npz").exists()  # nothing staged at the start
    assert len(json.loads((run.paths.sd / "quality.json").read_text())) == 1
    # resumed, it keeps the run's copy
    again = LocalRun(run.cfg, run.paths.root, resume=True).init_sd()
    assert again.version == 1

    # a validation file that does not fit: refused before the SD is copied (found after
    # it, the folder was locked: a resume cannot change the file)
    labeled_set(4, size=128).save(tmp_path / "big.npz")
    run = tiny_cfg(
        tmp_path / "run-big", weights=str(tmp_path / "w"), validation_file=str(tmp_path / "big.npz")
    )
    with pytest.raises(ConfigError, match=r"sd\.validation_file: .*128x128"):
        run.init_sd()
    assert SuccessDetector.latest_version(run.paths.sd) == 0

    # an SD of other tasks, or of another image size: clear errors
    few = SuccessNet(SDNetConfig(num_tasks=2))
    SuccessDetector(few, TASKS[:2]).publish(tmp_path / "w2")
    with pytest.raises(ConfigError, match=r"sd\.weights: .*different architecture"):
        tiny_cfg(tmp_path / "run2", weights=str(tmp_path / "w2")).init_sd()
    big = SuccessNet(SDNetConfig(num_tasks=len(TASKS), image_size=128))
    SuccessDetector(big, TASKS).publish(tmp_path / "w3")
    with pytest.raises(ConfigError, match="judges 128-pixel images"):
        tiny_cfg(tmp_path / "run3", weights=str(tmp_path / "w3")).init_sd()
    # a copy keeps its SD's record of the view (none here: not made up); an SD published
    # with another view than the run's is refused, one of its view is copied with it
    assert mine.outcome_fixtures_share is None
    SuccessDetector(net, TASKS).publish(tmp_path / "w4", extra_meta=view_meta(0.75))
    with pytest.raises(ConfigError, match=r"outcome_fixtures_share 0\.75, the run's cell renders"):
        tiny_cfg(tmp_path / "run4", weights=str(tmp_path / "w4")).init_sd()
    SuccessDetector(net, TASKS).publish(tmp_path / "w5", extra_meta=view_meta(0.5))
    run5 = tiny_cfg(tmp_path / "run5", weights=str(tmp_path / "w5"))
    run5.init_sd()
    assert SuccessDetector.load(run5.paths.sd, TASKS).outcome_fixtures_share == 0.5
    assert SuccessDetector.load(run5.paths.sd / "initial", TASKS).outcome_fixtures_share == 0.5


def test_sd_sources_are_checked_at_the_start_and_kept_on_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = preset("tiny")
    with pytest.raises(ConfigError, match=r"sd\.examples_file: .* is not a file"):
        with_sd_sources(dataclasses.replace(cfg, sd=dataclasses.replace(cfg.sd, examples_file="x")))
    with pytest.raises(ConfigError, match=r"sd\.weights: .* is not a folder"):
        with_sd_sources(dataclasses.replace(cfg, sd=dataclasses.replace(cfg.sd, weights="nope")))
    labeled_set(4).save(tmp_path / "own.npz")
    monkeypatch.chdir(tmp_path)
    rel = dataclasses.replace(cfg, sd=dataclasses.replace(cfg.sd, examples_file="own.npz"))
    assert with_sd_sources(rel).sd.examples_file == str(tmp_path / "own.npz")
    # a run made from Python keeps the absolute path too (a resume from elsewhere finds it)
    run = LocalRun(rel, tmp_path / "run")
    saved = json.loads(run.paths.config.read_text())
    assert saved["sd"]["examples_file"] == str(tmp_path / "own.npz")
    with pytest.raises(ConfigError, match=r"cannot change sd\.examples_file"):
        resume_config(rel, None, ["sd.examples_file=other.npz"])
    assert resume_config(rel, None, ["budget_minutes=5"]).sd == rel.sd


def test_the_cli_refuses_a_missing_sd_file_before_any_work(tmp_path: Path) -> None:
    args = ["run", "--config", "tiny", "--out", str(tmp_path / "run")]
    res = CliRunner().invoke(app, [*args, "--set", f"sd.examples_file={tmp_path / 'no.npz'}"])
    assert res.exit_code == 2 and "sd.examples_file:" in res.output
    assert not (tmp_path / "run").exists()
