"""`mtopt store subset`: a store's episodes of some tasks copied into a new store."""

import dataclasses
import json
import os
import shutil
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
    t = bad.stat().st_mtime - 120  # torn long ago (a fresh one may still be being written)
    os.utime(bad, (t, t))
    counts = subset_store(tmp_path / "src", tmp_path / "dst", ["lift-ball"])
    # the torn shard held r0's first 4 episodes (k = 0..3; lift-ball: 1)
    assert counts["lift-ball"] == 9
    assert (tmp_path / "src" / "quarantine" / "r0" / bad.name).exists()


def test_subset_refuses_to_pass_a_shard_it_could_not_read_as_a_full_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shard the reader cannot open for the machine's reasons (no permission, EIO):
    the copy used to be reported as done without its episodes. The CLI says so in a line."""
    import mtopt.store.reader as reader_module

    _store(tmp_path / "src")
    bad = sorted((tmp_path / "src" / "shards" / "r1").glob("*.parquet"))[1]
    real = reader_module.pq.ParquetFile

    def unreadable(path: object, *args: object, **kwargs: object) -> object:
        if Path(str(path)) == bad:
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(reader_module.pq, "ParquetFile", unreadable)
    with pytest.raises(OSError, match=r"could not read 1 shard\(s\).*nothing copied"):
        subset_store(tmp_path / "src", tmp_path / "dst", ["lift-ball"])
    assert bad.exists()  # left in place, not quarantined
    assert not list((tmp_path / "dst").rglob("*.parquet"))  # no copy that looks whole
    # a shard a live robot flushes during the copy is not a failure (it was named one)
    monkeypatch.setattr(reader_module.pq, "ParquetFile", real)
    grow = reader_module.EpisodeReader.drain_decoded

    def drain_while_a_robot_writes(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        yield from grow(self, *args, **kwargs)
        with EpisodeWriter(tmp_path / "src", "r2") as w:
            w.write(make_episode(99))

    monkeypatch.setattr(reader_module.EpisodeReader, "drain_decoded", drain_while_a_robot_writes)
    assert subset_store(tmp_path / "src", tmp_path / "d3", ["lift-ball"])["lift-ball"] == 10
    monkeypatch.undo()
    monkeypatch.setattr(reader_module.pq, "ParquetFile", unreadable)
    r = CliRunner().invoke(
        app,
        ["store", "subset", str(tmp_path / "src"), str(tmp_path / "d2"), "--tasks", "lift-ball"],
    )
    assert r.exit_code == 2 and "could not read 1 shard" in r.output
    assert "Traceback" not in r.output


def test_a_copy_that_fails_part_way_is_taken_back(tmp_path: Path) -> None:
    """A newer writer's shard after good ones: the copy stopped with the version error
    and left the shards it had written, a store that looked whole (and blocked the
    retry: "already holds shards")."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mtopt.store.schema import ARROW_SCHEMA, SCHEMA_KEY, UnknownSchemaVersionError

    _store(tmp_path / "src")
    newer = tmp_path / "src" / "shards" / "r1" / "99999999999999999999-000000.parquet"
    row = {**make_episode(99).to_row(), "schema_version": 2, "task": "lift-ball"}
    schema = ARROW_SCHEMA.with_metadata({SCHEMA_KEY: b"2"})
    pq.write_table(pa.Table.from_pylist([row], schema=schema), newer)
    dst = tmp_path / "dst"
    with pytest.raises(UnknownSchemaVersionError, match="unknown schema version 2"):
        subset_store(tmp_path / "src", dst, ["lift-ball"], shards_per_read=2)
    assert not list(dst.rglob("*.parquet"))  # r0's shards were copied before it, then removed
    newer.unlink()
    assert subset_store(tmp_path / "src", dst, ["lift-ball"])["lift-ball"] == 10


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


def test_store_commands_know_a_runs_own_tasks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A task of a run's --tasks-file: known from --tasks-file, or from the run's
    config.json next to its store; refused with neither, and a bad file is one error."""
    from mtopt.config import save_config
    from mtopt.runtime.config import RunConfig, with_new_tasks

    extra = [{"name": "place-can-on-plate", "kind": "place", "fixtures": ["plate"]}]
    tasks_file = tmp_path / "tasks.json"
    tasks_file.write_text(json.dumps(extra))
    run = tmp_path / "run"
    store = run / "store"
    with EpisodeWriter(store, "r0", flush_every=2) as w:
        for k, task in enumerate(["place-can-on-plate", "lift-ball", "place-can-on-plate"]):
            e = make_episode(k)
            by_task = {"place-any": True, task: True}
            w.write(
                dataclasses.replace(e, episode_id=f"e{k}", task=task, gt_success_by_task=by_task)
            )
    runner = CliRunner()

    def subset(dst: str, *more: str) -> object:
        args = ["store", "subset", str(store), str(tmp_path / dst)]
        return runner.invoke(app, [*args, "--tasks", "place-can-on-plate", *more])

    r = subset("d0")  # the store's folder has no config.json: built-in tasks only
    assert r.exit_code == 2 and "unknown task 'place-can-on-plate'" in r.output
    assert "--tasks-file" in r.output
    for not_a_run in ('{"model": "resnet"}', "[1, 2]", "3"):  # someone else's config.json
        (run / "config.json").write_text(not_a_run)
        r = subset("dx")  # a note naming it, then the built-in tasks
        assert r.exit_code == 2 and "using the built-in tasks" in r.output, r.output
        assert str(run / "config.json") in r.output and "Traceback" not in r.output
        assert "unknown task 'place-can-on-plate'" in r.output
        r = runner.invoke(
            app, ["store", "subset", str(store), str(tmp_path / "dy"), "--tasks", "lift-ball"]
        )
        assert r.exit_code == 0 and "lift-ball=1" in r.output, r.output
        shutil.rmtree(tmp_path / "dy")
    (run / "config.json").unlink()
    r = subset("d1", "--tasks-file", str(tasks_file))
    assert r.exit_code == 0 and "place-can-on-plate=2" in r.output, r.output
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    r = subset("d2", "--tasks-file", str(bad))
    assert r.exit_code == 2 and "bad.json" in r.output and "Traceback" not in r.output
    cfg = with_new_tasks(RunConfig(), tasks_file, None)
    save_config(cfg, run / "config.json")
    r = subset("d3")  # the run's own tasks
    assert r.exit_code == 0 and "place-can-on-plate=2" in r.output, r.output
    monkeypatch.chdir(store)  # the store given as "."
    r = runner.invoke(
        app, ["store", "subset", ".", str(tmp_path / "d4"), "--tasks", "place-can-on-plate"]
    )
    assert r.exit_code == 0 and "place-can-on-plate=2" in r.output, r.output
    out = tmp_path / "tl.json"
    r = runner.invoke(
        app, ["store", "timeline", str(store), "--task", "place-any", "--json", str(out)]
    )
    assert r.exit_code == 0, r.output
    assert "place-can-on-plate" in json.loads(out.read_text())["episode_tasks"]


def test_subset_minutes_do_not_count_a_stop_between_invocations(tmp_path: Path) -> None:
    """Collection stopped for an hour after minute 4 (a run resumed later): the first 10
    minutes of collection are minutes 0-4 and the 5 after the stop (gaps clip to one
    minute, as `store timeline` counts them), not minutes 0-4 alone."""
    with EpisodeWriter(tmp_path / "src", "r0", flush_every=4) as w:
        for k in range(15):
            start = 1000.0 + 60.0 * k + (3600.0 if k >= 5 else 0.0)
            w.write(
                dataclasses.replace(
                    make_episode(k),
                    episode_id=f"e{k}",
                    task=TASKS[k % 3],
                    started_at=start,
                    ended_at=start + 10.0,
                )
            )
    counts = subset_store(tmp_path / "src", tmp_path / "dst", ["lift-ball"], minutes=10)
    ids = sorted(e.episode_id for e in EpisodeReader(tmp_path / "dst").episodes())
    assert counts["lift-ball"] == 3 and ids == ["e1", "e4", "e7"]


def test_subset_cli_refuses_non_finite_minutes_a_file_for_dst_and_says_when_nothing_is_copied(
    tmp_path: Path,
) -> None:
    """`--minutes nan` passed the "> 0" check and copied everything; a file for DST was
    a raw "[Errno 20] Not a directory"; a subset without episodes said "copied 0
    episodes in 0 shards to DST" (exit 0) though DST was never created."""
    _store(tmp_path / "src")
    runner = CliRunner()

    def subset(dst: Path, *more: str) -> object:
        args = ["store", "subset", str(tmp_path / "src"), str(dst), "--tasks", "lift-ball"]
        return runner.invoke(app, [*args, *more])

    for bad in ("nan", "inf", "0", "-2"):
        r = subset(tmp_path / "d1", "--minutes", bad)
        assert r.exit_code == 2 and "--minutes must be a finite number" in r.output, r.output
        assert not (tmp_path / "d1").exists()
    with pytest.raises(ValueError, match="finite"):
        subset_store(tmp_path / "src", tmp_path / "d1", ["lift-ball"], minutes=float("nan"))
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    r = subset(a_file)
    assert r.exit_code == 2 and "is a file, not a folder" in r.output, r.output
    assert "Errno" not in r.output
    r = runner.invoke(
        app,
        ["store", "subset", str(tmp_path / "src"), str(tmp_path / "d2"), "--tasks", "place-any"],
    )
    assert r.exit_code == 1 and "nothing copied" in r.output, r.output
    assert f"{tmp_path / 'd2'} was not created" in r.output and "copied 0" not in r.output
    assert not (tmp_path / "d2").exists()
    r = subset(tmp_path / "d3", "--minutes", "0.5")  # only k = 0 (lift-any) started by then
    assert r.exit_code == 1 and "in its first 0.5 collection minutes" in r.output, r.output
