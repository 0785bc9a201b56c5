"""`mtopt store subset`: a store's episodes of some tasks copied into a new store."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from tests.test_store import make_episode
from typer.testing import CliRunner

from mtopt.cli import app
from mtopt.store import EpisodeWriter
from mtopt.store.reader import EpisodeReader
from mtopt.store.subset import subset_store

TASKS = ["lift-any", "lift-ball", "place-in-bowl"]


def _store(root: Path) -> dict[str, object]:
    """Two robots, 30 episodes: task i % 3, started at minute i."""
    eps = {}
    for robot in ("r0", "r1"):
        with EpisodeWriter(root, robot, flush_every=4) as w:
            for i in range(15):
                k = i if robot == "r0" else 15 + i
                e = dataclasses.replace(
                    make_episode(k),
                    episode_id=f"{robot}-{i}",
                    robot_id=robot,
                    task=TASKS[k % 3],
                    started_at=1000.0 + 60.0 * k,
                    ended_at=1010.0 + 60.0 * k,
                )
                w.write(e)
                eps[e.episode_id] = e
    return eps


def test_subset_copies_exactly_the_episodes_of_its_tasks(tmp_path: Path) -> None:
    eps = _store(tmp_path / "src")
    counts = subset_store(tmp_path / "src", tmp_path / "dst", ["lift-ball"])
    assert counts["lift-ball"] == 10 and counts["shards"] >= 2
    got = {e.episode_id: e for e in EpisodeReader(tmp_path / "dst").episodes()}
    want = {k: e for k, e in eps.items() if e.task == "lift-ball"}
    assert set(got) == set(want)
    for k, e in want.items():
        assert np.array_equal(got[k].images, e.images)
        assert np.array_equal(got[k].actions, e.actions)
        assert got[k].gt_success_by_task == e.gt_success_by_task
    assert {p.parent.name for p in (tmp_path / "dst" / "shards").glob("*/*.parquet")} == {
        "r0",
        "r1",
    }
    # the source is untouched
    assert len(list(EpisodeReader(tmp_path / "src").episodes())) == 30


def test_subset_by_collection_minutes(tmp_path: Path) -> None:
    _store(tmp_path / "src")
    # episodes started in the first 10 minutes: k = 0..9, of which k % 3 == 1 -> 1, 4, 7
    counts = subset_store(tmp_path / "src", tmp_path / "dst", ["lift-ball"], minutes=10)
    assert counts["lift-ball"] == 3
    ids = sorted(e.episode_id for e in EpisodeReader(tmp_path / "dst").episodes())
    assert ids == ["r0-1", "r0-4", "r0-7"]


def test_subset_refuses_a_destination_with_shards_and_bad_arguments(tmp_path: Path) -> None:
    _store(tmp_path / "src")
    subset_store(tmp_path / "src", tmp_path / "dst", ["lift-any"])
    with pytest.raises(ValueError, match="already holds shards"):
        subset_store(tmp_path / "src", tmp_path / "dst", ["lift-ball"])
    with pytest.raises(ValueError, match="at least one task"):
        subset_store(tmp_path / "src", tmp_path / "dst2", [])
    with pytest.raises(ValueError, match="minutes"):
        subset_store(tmp_path / "src", tmp_path / "dst2", ["lift-any"], minutes=0)


def test_subset_skips_a_corrupt_source_shard(tmp_path: Path) -> None:
    _store(tmp_path / "src")
    bad = sorted((tmp_path / "src" / "shards" / "r0").glob("*.parquet"))[0]
    bad.write_bytes(b"torn")
    counts = subset_store(tmp_path / "src", tmp_path / "dst", ["lift-ball"])
    # the torn shard held r0's first 4 episodes (k = 0..3; lift-ball: 1)
    assert counts["lift-ball"] == 9
    assert (tmp_path / "src" / "quarantine" / "r0" / bad.name).exists()


def test_subset_cli(tmp_path: Path) -> None:
    _store(tmp_path / "src")
    runner = CliRunner()
    r = runner.invoke(
        app,
        [
            "store",
            "subset",
            str(tmp_path / "src"),
            str(tmp_path / "dst"),
            "--tasks",
            "lift-ball,place-in-bowl",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "copied 20 episodes" in r.output and "lift-ball=10" in r.output
    r = runner.invoke(
        app, ["store", "subset", str(tmp_path / "src"), str(tmp_path / "d3"), "--tasks", "fly"]
    )
    assert r.exit_code == 2 and "fly" in r.output
    r = runner.invoke(
        app,
        ["store", "subset", str(tmp_path / "nope"), str(tmp_path / "d4"), "--tasks", "lift-ball"],
    )
    assert r.exit_code == 2 and "no episode store" in r.output
