"""Episode store: round trip, schema versions, atomicity under SIGKILL, quarantine."""

import json
import multiprocessing as mp
import os
import re
import signal
import time
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mtopt.store import Episode, EpisodeReader, EpisodeWriter, SchemaError, StoreNotFoundError
from mtopt.store.reader import shard_paths
from mtopt.store.schema import ARROW_SCHEMA, SCHEMA_KEY


def make_episode(i: int, steps: int = 3, size: int = 8) -> Episode:
    rng = np.random.default_rng(i)
    return Episode(
        episode_id=f"ep{i:05d}",
        robot_id="r0",
        task="lift-any",
        policy="scripted-pick",
        policy_version=0,
        seed=i,
        images=rng.integers(0, 255, (steps + 1, size, size, 3), dtype=np.uint8),
        states=rng.random((steps + 1, 2), dtype=np.float32),
        actions=rng.uniform(-1, 1, (steps, 6)).astype(np.float32),
        final_image=rng.integers(0, 255, (size, size, 3), dtype=np.uint8),
        scene={"seed": i, "objects": [{"category": "ball"}]},
        chain_index=1,
        prev_episode_id="ep-prev",
        started_at=1.5,
        ended_at=2.5,
        terminated=True,
        gt_success=bool(i % 2),
        gt_success_by_task={"lift-any": bool(i % 2), "lift-ball": False},
    )


def test_round_trip_every_field(tmp_path: Path) -> None:
    eps = [make_episode(i) for i in range(5)]
    with EpisodeWriter(tmp_path, "r0", flush_every=100) as w:
        for e in eps:
            w.write(e)
    back = EpisodeReader(tmp_path).poll()
    assert len(back) == 5
    for a, b in zip(eps, back, strict=True):
        for f in a.__dataclass_fields__:
            va, vb = getattr(a, f), getattr(b, f)
            if isinstance(va, np.ndarray):
                assert np.array_equal(va, vb) and va.dtype == vb.dtype, f
            else:
                assert va == vb, f


def test_poll_tails_new_shards_only(tmp_path: Path) -> None:
    w = EpisodeWriter(tmp_path, "r0", flush_every=2)
    r = EpisodeReader(tmp_path)
    for i in range(4):
        w.write(make_episode(i))
    assert [e.episode_id for e in r.poll()] == ["ep00000", "ep00001", "ep00002", "ep00003"]
    assert r.poll() == []
    w.write(make_episode(9))
    w.flush()
    assert [e.episode_id for e in r.poll()] == ["ep00009"]


def test_poll_reads_a_bounded_number_of_shards_oldest_first(tmp_path: Path) -> None:
    w = EpisodeWriter(tmp_path, "r0", flush_every=2)
    for i in range(7):  # shards of 2, 2, 2 and 1 episodes
        w.write(make_episode(i))
    w.flush()
    r = EpisodeReader(tmp_path, shards_per_poll=3)
    assert [e.episode_id for e in r.poll()] == [f"ep{i:05d}" for i in range(6)]
    assert r.behind == 1
    assert [e.episode_id for e in r.poll(max_shards=5)] == ["ep00006"]  # an explicit limit
    assert r.behind == 0 and r.poll() == [] and r.behind == 0
    with pytest.raises(ValueError, match="shards_per_poll"):
        EpisodeReader(tmp_path, shards_per_poll=0)


def test_skip_starts_from_the_newest_shards(tmp_path: Path) -> None:
    w = EpisodeWriter(tmp_path, "r0", flush_every=2)
    for i in range(6):
        w.write(make_episode(i))
    shards = shard_paths(tmp_path)
    assert len(shards) == 3
    r = EpisodeReader(tmp_path)
    r.skip(shards[:2])
    assert r.new_shards() == shards[2:]
    assert [e.episode_id for e in r.poll()] == ["ep00004", "ep00005"]
    assert len(list(r.episodes())) == 6  # skip only affects poll


def test_readable_by_ordinary_tools(tmp_path: Path) -> None:
    with EpisodeWriter(tmp_path, "r0") as w:
        for i in range(3):
            w.write(make_episode(i))
    glob = str(tmp_path / "shards" / "*" / "*.parquet")
    assert ds.dataset(str(tmp_path / "shards"), format="parquet").count_rows() == 3
    df = pd.concat(pd.read_parquet(p) for p in shard_paths(tmp_path))
    assert list(df["task"]) == ["lift-any"] * 3
    n = duckdb.sql(f"select count(*) from read_parquet('{glob}') where gt_success").fetchall()
    assert n == [(1,)]


def test_shards_get_the_mode_any_new_file_gets(tmp_path: Path) -> None:
    """Other users (an analyst, a labeler) read the store: the shards were 0o600
    (mkstemp's), whatever the umask; now they are what ``open()`` makes (0o644 under 022)."""
    import stat

    old = os.umask(0o022)
    try:
        (tmp_path / "plain").write_bytes(b"")
        with EpisodeWriter(tmp_path / "store", "r0") as w:
            w.write(make_episode(0))
    finally:
        os.umask(old)
    want = stat.S_IMODE((tmp_path / "plain").stat().st_mode)
    (shard,) = shard_paths(tmp_path / "store")
    assert want == 0o644 and stat.S_IMODE(shard.stat().st_mode) == want


def test_unknown_schema_version_is_a_clear_error(tmp_path: Path) -> None:
    row = make_episode(0).to_row()
    row["schema_version"] = 99
    with pytest.raises(SchemaError, match="unknown schema version 99"):
        Episode.from_row(row)
    schema = ARROW_SCHEMA.with_metadata({SCHEMA_KEY: b"7"})
    path = tmp_path / "shards" / "r0" / "x.parquet"
    path.parent.mkdir(parents=True)
    import pyarrow as pa

    newer = {**make_episode(0).to_row(), "schema_version": 7}  # a newer writer's rows
    pq.write_table(pa.Table.from_pylist([newer], schema=schema), path)
    with pytest.raises(SchemaError, match="unknown schema version 7"):
        EpisodeReader(tmp_path).poll()
    assert path.exists()  # not moved: it may be a newer mtopt's
    with pytest.raises(StoreNotFoundError, match="no episode store"):
        EpisodeReader(tmp_path / "missing")


def test_bad_episode_shapes_rejected() -> None:
    e = make_episode(0)
    with pytest.raises(SchemaError, match="images must be"):
        Episode(**{**e.__dict__, "images": e.images[:2]})


def _writer_forever(store: str, ready: "mp.synchronize.Event") -> None:  # type: ignore[name-defined]
    w = EpisodeWriter(store, "victim", flush_every=1)
    i = 0
    while True:
        w.write(make_episode(i, steps=5, size=32))
        i += 1
        if i == 3:
            ready.set()


def test_sigkill_mid_write_leaves_only_complete_shards(tmp_path: Path) -> None:
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    p = ctx.Process(target=_writer_forever, args=(str(tmp_path), ready))
    p.start()
    assert ready.wait(60)
    time.sleep(0.3)
    os.kill(p.pid, signal.SIGKILL)
    p.join()
    shards = shard_paths(tmp_path)
    assert len(shards) >= 3
    reader = EpisodeReader(tmp_path)
    eps = reader.poll()
    assert reader.quarantined == []  # no partial shard is ever visible
    ids = [e.episode_id for e in eps]
    assert ids[:3] == ["ep00000", "ep00001", "ep00002"]  # everything flushed before the kill
    assert ids == [f"ep{i:05d}" for i in range(len(ids))]


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.floats(0.0, 0.999))
def test_truncated_shard_is_quarantined_not_fatal(tmp_path: Path, frac: float) -> None:
    import uuid

    store = tmp_path / uuid.uuid4().hex
    with EpisodeWriter(store, "r0", flush_every=2) as w:
        for i in range(4):
            w.write(make_episode(i))
    first, _second = shard_paths(store)
    data = first.read_bytes()
    first.write_bytes(data[: int(len(data) * frac)])
    _age(first, 120.0)  # found torn long after (a fresh one may still be being written)
    reader = EpisodeReader(store)
    eps = reader.poll()
    assert [e.episode_id for e in eps] == ["ep00002", "ep00003"]
    assert len(reader.quarantined) == 1 and reader.quarantined[0].exists()
    assert not first.exists()


def _age(path: Path, seconds: float) -> None:
    t = path.stat().st_mtime - seconds
    os.utime(path, (t, t))


def test_a_shard_another_tool_is_still_writing_in_place_is_read_once_complete(
    tmp_path: Path,
) -> None:
    """pandas / DuckDB write a shard in place: a tailing reader met it without its footer
    and quarantined it while it was being written (the finished file then lay in
    quarantine, never read). A fresh unopenable shard is retried; once complete it is
    read; still unopenable past ``FRESH_SHARD_S`` it is quarantined."""
    from mtopt.store import reader as reader_module

    src = tmp_path / "src"
    with EpisodeWriter(src, "r0", flush_every=3) as w:
        for i in range(3):
            w.write(make_episode(i))
    (done,) = shard_paths(src)
    data = done.read_bytes()
    store = tmp_path / "store"
    with EpisodeWriter(store, "r1", flush_every=1) as w:
        w.write(make_episode(9))
    live = store / "shards" / "pd" / "00000000000000000000-000000.parquet"
    live.parent.mkdir()
    live.write_bytes(data[: len(data) // 2])  # the header and half the rows, no footer
    reader = EpisodeReader(store)
    assert [e.episode_id for e in reader.poll()] == ["ep00009"]
    assert live.exists() and reader.quarantined == [] and reader.behind == 1
    # one-shot reads skip it (not in the store yet), with a warning
    assert [r["episode_id"] for r in EpisodeReader(store).metadata()] == ["ep00009"]
    live.write_bytes(data)  # the writer finished
    assert [e.episode_id for e in reader.poll()] == ["ep00000", "ep00001", "ep00002"]
    assert reader.quarantined == [] and reader.behind == 0
    # a torn one that stays torn is quarantined once FRESH_SHARD_S old
    torn = live.with_name("00000000000000000001-000000.parquet")
    torn.write_bytes(data[:100])
    assert reader.poll() == [] and torn.exists()
    _age(torn, reader_module.FRESH_SHARD_S + 1)
    assert reader.poll() == [] and not torn.exists() and len(reader.quarantined) == 1
    # a clock ahead of ours (a future mtime) holds a torn shard back for at most
    # FRESH_SHARD_S of this reader's time, not until the clock catches up
    ahead = live.with_name("00000000000000000002-000000.parquet")
    ahead.write_bytes(data[:100])
    _age(ahead, -3600.0)
    assert reader.poll() == [] and not ahead.exists() and len(reader.quarantined) == 2
    skewed = live.with_name("00000000000000000003-000000.parquet")
    skewed.write_bytes(data[:100])
    _age(skewed, -10.0)  # a few seconds ahead: still taken to be being written
    assert reader.poll() == [] and skewed.exists() and reader.retrying == 1
    reader._fresh_since[skewed] -= reader_module.FRESH_SHARD_S  # a minute of retries on
    assert reader.poll() == [] and not skewed.exists() and len(reader.quarantined) == 3


def test_collection_minutes_clip_the_gaps() -> None:
    from mtopt.store.stats import collection_minutes

    # 30 s, then a 2-hour stop (counts as 60 s), then 90 s (counts as 60 s)
    got = collection_minutes([100.0, 130.0, 7330.0, 7420.0], max_gap_s=60.0)
    np.testing.assert_allclose(got, [0.0, 0.5, 1.5, 2.5])
    assert collection_minutes([]).size == 0


def test_success_over_time_by_policy_and_bin() -> None:
    """Hand-computed: bins of 1 collection minute, lift-* episodes judged at lift-any;
    a place episode and an episode without ground truth are left out."""
    from mtopt.store.stats import success_over_time

    def row(t: float, task: str, policy: str, ok: bool | None) -> dict:
        gt = None if ok is None else json.dumps({"lift-any": ok, "place-any": False})
        eid = f"{policy}@{t}"
        return {
            "episode_id": eid,
            "started_at": t,
            "task": task,
            "policy": policy,
            "gt_success_by_task": gt,
        }

    rows = [
        row(30.0, "lift-ball", "cem", True),  # minute 0.5
        row(0.0, "lift-any", "scripted-pick", False),  # minute 0 (rows come unsorted)
        row(50.0, "lift-any", "cem", False),  # 0.83
        row(80.0, "place-any", "cem", True),  # 1.33, not a lift episode
        row(90.0, "lift-any", "cem", True),  # 1.5
        row(100.0, "lift-any", "scripted-pick", True),  # 1.67
        row(110.0, "lift-any", "cem", None),  # 1.83, no ground truth
    ]
    tl = success_over_time(rows, "lift-any", {"lift-any", "lift-ball"}, bin_minutes=1.0)
    assert tl["policies"] == {
        "cem": [
            {"start": 0.0, "episodes": 2, "successes": 1, "rate": 0.5},
            {"start": 1.0, "episodes": 1, "successes": 1, "rate": 1.0},
        ],
        "scripted-pick": [
            {"start": 0.0, "episodes": 1, "successes": 0, "rate": 0.0},
            {"start": 1.0, "episodes": 1, "successes": 1, "rate": 1.0},
        ],
    }
    assert tl["minutes"] == pytest.approx(110.0 / 60.0)
    # an episode written twice (a client's retry) counts once, as in `store stats`
    again = success_over_time([*rows, rows[0], rows[4]], "lift-any", {"lift-any", "lift-ball"}, 1.0)
    assert again == tl
    with pytest.raises(ValueError, match="bin_minutes"):
        success_over_time(rows, "lift-any", {"lift-any"}, bin_minutes=0)
    # a NaN time (a shard another tool wrote) is left out and counted, not a crash
    nan = {**rows[1], "episode_id": "nan", "started_at": float("nan")}
    with_nan = success_over_time([*rows, nan], "lift-any", {"lift-any", "lift-ball"}, 1.0)
    assert with_nan == {**tl, "untimed": 1} and tl["untimed"] == 0


def test_an_episode_without_a_finite_time_is_refused_at_write(tmp_path: Path) -> None:
    import dataclasses

    for name, value in (("started_at", float("nan")), ("ended_at", float("inf"))):
        bad = dataclasses.replace(make_episode(1), **{name: value})
        with EpisodeWriter(tmp_path / name, "r0") as w:
            with pytest.raises(SchemaError, match=f"{name} must be a finite time"):
                w.write(bad)
            w.write(make_episode(2))
        assert [e.episode_id for e in EpisodeReader(tmp_path / name).episodes()] == ["ep00002"]


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_an_episode_with_a_non_finite_action_is_refused_at_write(
    tmp_path: Path, value: float
) -> None:
    """A robot executes only finite actions; a NaN one reached LogReplay's batches (it
    leaves out episodes with NaN states and poses, not actions)."""
    import dataclasses

    actions = make_episode(1).actions.copy()
    actions[1, 2] = value
    bad = dataclasses.replace(make_episode(1), actions=actions)
    with EpisodeWriter(tmp_path, "r0") as w:
        with pytest.raises(SchemaError, match="actions must be finite"):
            w.write(bad)
        w.write(make_episode(2))
    assert [e.episode_id for e in EpisodeReader(tmp_path).episodes()] == ["ep00002"]


def test_writers_whose_clocks_read_the_same_time_keep_every_shard(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A coarse clock (16 ms steps on some systems) gave two writers of one robot id
    the same shard name, and the second rename replaced the first writer's shard."""
    import mtopt.store.writer as writer_module

    monkeypatch.setattr(writer_module.time, "time_ns", lambda: 1_700_000_000_000_000_000)
    for i in range(4):  # a writer per episode, as a client that opens one each time
        with EpisodeWriter(tmp_path, "r0", flush_every=1) as w:
            w.write(make_episode(i))
    assert len(shard_paths(tmp_path)) == 4
    assert sorted(e.episode_id for e in EpisodeReader(tmp_path).episodes()) == [
        f"ep{i:05d}" for i in range(4)
    ]


def test_decimal_times_another_tool_wrote_are_times_to_stats_and_the_timeline(
    tmp_path: Path,
) -> None:
    """DuckDB writes such numbers as decimals; the reader took them, but ``metadata``
    gave ``Decimal``s, which the timeline counted as untimed."""
    import pyarrow as pa

    from mtopt.store.stats import store_stats, success_over_time

    with EpisodeWriter(tmp_path, "r0", flush_every=100) as w:
        for i in range(4):
            w.write(make_episode(i))
    (path,) = shard_paths(tmp_path)
    table = pq.read_table(path)
    for name in ("started_at", "ended_at"):
        i = table.schema.get_field_index(name)
        table = table.set_column(i, name, table.column(i).cast(pa.decimal128(12, 3)))
    pq.write_table(table, path)
    rows = EpisodeReader(tmp_path).metadata()
    assert [type(r["started_at"]) for r in rows] == [float] * 4
    assert rows[0]["started_at"] == 1.5 and rows[0]["ended_at"] == 2.5
    timeline = success_over_time(rows, "lift-any", {"lift-any"}, bin_minutes=1.0)
    assert timeline["untimed"] == 0
    assert sum(b["episodes"] for bins in timeline["policies"].values() for b in bins) == 4
    # a folder named like a shard is no shard, to the reader or to the count
    (tmp_path / "shards" / "r0" / "x.parquet").mkdir()
    stats = store_stats(tmp_path)
    assert stats["episodes"] == 4 and stats["shards"] == 1


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("terminated", "no", "terminated must be a bool"),
        ("terminated", 1, "terminated must be a bool"),
        ("gt_success", "yes", "gt_success must be a bool or None"),
        ("gt_success_by_task", {"lift-any": "maybe"}, "gt_success_by_task must be a dict"),
        ("gt_success_by_task", [True], "gt_success_by_task must be a dict"),
        ("gt_success_by_task", {1: True}, "gt_success_by_task must be a dict"),
    ],
)
def test_flags_that_are_not_bools_are_refused_at_write(
    tmp_path: Path, name: str, value: object, message: str
) -> None:
    """bool("no") is True: a flag of another type is refused, not stored as a guess (a
    truth "maybe" would pay reward 1 under replay.reward="truth"); NumPy bools are fine."""
    import dataclasses

    bad = dataclasses.replace(make_episode(1), **{name: value})
    good = dataclasses.replace(
        make_episode(2),
        terminated=np.bool_(True),
        gt_success=np.bool_(False),
        gt_success_by_task={"lift-any": np.bool_(False), "lift-ball": True},
    )
    with EpisodeWriter(tmp_path, "r0") as w:
        with pytest.raises(SchemaError, match=message):
            w.write(bad)
        w.write(good)
    (got,) = EpisodeReader(tmp_path).episodes()
    assert got.terminated is True and got.gt_success is False
    assert got.gt_success_by_task == {"lift-any": False, "lift-ball": True}


def test_timeline_command_on_a_store(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from mtopt.cli import app

    with EpisodeWriter(tmp_path / "store", "r0") as w:
        for i in range(6):
            w.write(make_episode(i))
    out = tmp_path / "tl.json"
    res = CliRunner().invoke(
        app,
        ["store", "timeline", str(tmp_path / "store"), "--task", "lift-any", "--json", str(out)],
    )
    assert res.exit_code == 0, res.output
    tl = json.loads(out.read_text())
    assert tl["policies"]["scripted-pick"] == [
        {"start": 0.0, "episodes": 6, "successes": 3, "rate": 0.5}
    ]
    assert (tmp_path / "store" / "timeline-lift-any.png").exists()
    res = CliRunner().invoke(
        app, ["store", "timeline", str(tmp_path / "store"), "--task", "place-any"]
    )
    assert res.exit_code == 2 and "no episodes" in res.output
    # output paths are checked before the store is read (a folder failed after the work,
    # naming no option)
    (tmp_path / "adir").mkdir()
    for cmd in (
        ["store", "timeline", str(tmp_path / "store"), "--task", "lift-any", "--json"],
        ["store", "timeline", str(tmp_path / "store"), "--task", "lift-any", "--plot"],
        ["store", "stats", str(tmp_path / "store"), "--plot"],
    ):
        res = CliRunner().invoke(app, [*cmd, str(tmp_path / "adir")])
        assert res.exit_code == 2 and "is a directory; give a file" in res.output, res.output
    res = CliRunner().invoke(
        app, ["store", "timeline", str(tmp_path / "store"), "--task", "lift-nope"]
    )
    assert res.exit_code == 2 and "unknown task 'lift-nope'" in res.output
    # why there is nothing to show: a real robot's episodes (no ground truth at all), or
    # ground truth written before the judged task existed
    import dataclasses

    with EpisodeWriter(tmp_path / "real", "arm") as w:
        for i in range(3):
            w.write(dataclasses.replace(make_episode(i), gt_success=None, gt_success_by_task=None))
    with EpisodeWriter(tmp_path / "old", "r0") as w:
        w.write(dataclasses.replace(make_episode(0), gt_success_by_task={"lift-ball": False}))
    for store, says in (
        ("real", "3 of them, none with ground truth"),
        ("old", "does not judge lift-any"),
    ):
        res = CliRunner().invoke(
            app, ["store", "timeline", str(tmp_path / store), "--task", "lift-any"]
        )
        assert res.exit_code == 2 and says in res.output, res.output


def test_timeline_checks_its_bin_and_episode_tasks_and_tells_fractional_bins_apart(
    tmp_path: Path,
) -> None:
    """`--bin nan|inf` passed the "> 0" check (rows of "nan+", or a traceback-like
    "cannot convert float NaN"); `--episodes-of nope` said no episodes were judged
    instead of naming an unknown task; bins of 0.1 minutes all read "0+"."""
    import dataclasses

    from typer.testing import CliRunner

    from mtopt.cli import app

    store = tmp_path / "store"
    with EpisodeWriter(store, "r0") as w:
        for i, t in enumerate([0.0, 9.0, 15.0, 18.0]):  # minutes 0, 0.15, 0.25, 0.3
            w.write(dataclasses.replace(make_episode(i), started_at=t, ended_at=t + 1.0))
    args = ["store", "timeline", str(store), "--task", "lift-any"]
    args += ["--plot", str(tmp_path / "p.png")]
    for bad in ("nan", "inf", "-inf", "0", "-1"):
        res = CliRunner().invoke(app, [*args, "--bin", bad])
        assert res.exit_code == 2 and "--bin must be a finite number" in res.output, res.output
        assert len(res.output.strip().splitlines()) == 1
    res = CliRunner().invoke(app, [*args, "--episodes-of", "lift-any,nope"])
    assert res.exit_code == 2 and "unknown task 'nope'" in res.output, res.output
    assert "no episodes" not in res.output
    res = CliRunner().invoke(app, [*args, "--bin", "0.1"])
    assert res.exit_code == 0, res.output
    labels = [line.split("+")[0] for line in res.output.splitlines() if "+" in line]
    assert [x.split()[-1] for x in labels] == ["0.0", "0.1", "0.2"], res.output
    assert "0.3 collection minutes" in res.output


def _write_raw_shard(store: Path, name: str, rows: list[dict]) -> Path:
    """A shard written around the writer's checks (what a buggy or foreign writer makes)."""
    import pyarrow as pa

    path = store / "shards" / "r0" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=ARROW_SCHEMA), path)
    return path


def test_a_shard_whose_rows_do_not_decode_is_quarantined_and_nothing_else_is_lost(
    tmp_path: Path,
) -> None:
    """Valid Parquet with a bad row (actions of width 5): the shard goes to quarantine,
    the good shards before and after it are read in the same poll, and every later poll
    goes on."""
    with EpisodeWriter(tmp_path, "r0", flush_every=1) as w:
        w.write(make_episode(0))
        w.write(make_episode(1))
    bad = make_episode(2).to_row()
    bad["actions"] = [[0.0] * 5] * 3
    bad_path = _write_raw_shard(tmp_path, "99999999999999999998-000000.parquet", [bad])
    with EpisodeWriter(tmp_path, "r0", flush_every=1) as w:
        w.write(make_episode(3))
    reader = EpisodeReader(tmp_path)
    assert [e.episode_id for e in reader.poll()] == ["ep00000", "ep00001", "ep00003"]
    assert not bad_path.exists() and len(reader.quarantined) == 1
    with EpisodeWriter(tmp_path, "r0", flush_every=1) as w:
        w.write(make_episode(4))
    assert [e.episode_id for e in reader.poll()] == ["ep00004"]
    assert [e.episode_id for e in EpisodeReader(tmp_path).episodes()] == [
        "ep00000",
        "ep00001",
        "ep00003",
        "ep00004",
    ]


def test_a_parquet_file_that_is_not_an_mtopt_shard_is_quarantined(tmp_path: Path) -> None:
    import pyarrow as pa

    with EpisodeWriter(tmp_path, "r0") as w:
        w.write(make_episode(0))
    foreign = tmp_path / "shards" / "r0" / "notes.parquet"
    pq.write_table(pa.table({"x": [1, 2]}), foreign)
    reader = EpisodeReader(tmp_path)
    assert [e.episode_id for e in reader.poll()] == ["ep00000"]
    assert not foreign.exists()
    assert len(reader.quarantined) == 1


def _shard_that_fails_to_open(
    store: Path, monkeypatch: pytest.MonkeyPatch, which: int, error: OSError
) -> tuple[Path, dict[str, bool]]:
    """Three one-episode shards in ``store``; opening shard ``which`` raises ``error``
    while the returned switch's "on" is True. Returns (that shard, the switch)."""
    import mtopt.store.reader as reader_mod

    with EpisodeWriter(store, "r0", flush_every=1) as w:
        for i in range(3):
            w.write(make_episode(i))
    bad = shard_paths(store)[which]
    real = reader_mod.pq.ParquetFile
    fail = {"on": True}

    def parquet_file(path, *a, **k):  # type: ignore[no-untyped-def]
        if fail["on"] and Path(path) == bad:
            raise error
        return real(path, *a, **k)

    monkeypatch.setattr(reader_mod.pq, "ParquetFile", parquet_file)
    return bad, fail


def _machine_errors() -> list[BaseException]:
    import errno

    import pyarrow as pa

    return [
        OSError(errno.EIO, "Input/output error"),  # a flaky disk, NFS
        # pyarrow under a process or address-space limit (EAGAIN): no errno, no kind
        pa.ArrowException("Unknown error: Failed to launch worker thread: Resource temp"),
    ]


@pytest.mark.parametrize("error", _machine_errors(), ids=["EIO", "arrow-thread"])
def test_an_os_error_while_reading_keeps_the_shard_and_retries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: BaseException
) -> None:
    """The machine's errors are not corruption: nothing is quarantined, the shard is
    read on the next poll, and the shards that did read are returned at once."""
    flaky, fail = _shard_that_fails_to_open(tmp_path, monkeypatch, 1, error)  # type: ignore[arg-type]
    reader = EpisodeReader(tmp_path)
    assert [e.episode_id for e in reader.poll()] == ["ep00000", "ep00002"]
    assert reader.behind == 1 and reader.quarantined == [] and flaky.exists()
    with pytest.raises(type(error), match=re.escape(str(error))):
        list(reader.episodes())  # a one-shot read says so instead of skipping
    fail["on"] = False
    assert [e.episode_id for e in reader.poll()] == ["ep00001"]
    assert reader.behind == 0


def test_a_folder_that_cannot_be_listed_is_listed_again_on_the_next_poll(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """EMFILE while listing the shards (a tailing reader in a busy process): the poll
    returns nothing and does not raise; the next one reads every shard."""
    import errno

    import mtopt.store.reader as reader_mod

    with EpisodeWriter(tmp_path, "r0", flush_every=1) as w:
        for i in range(3):
            w.write(make_episode(i))
    real = reader_mod.shard_paths
    fail = {"on": True}

    def listing(store: Path, skip_unlistable: bool = False) -> list[Path]:
        if fail["on"]:
            raise OSError(errno.EMFILE, "Too many open files", str(store))
        return real(store, skip_unlistable)

    monkeypatch.setattr(reader_mod, "shard_paths", listing)
    reader = EpisodeReader(tmp_path)
    assert reader.poll() == [] and reader.behind == 0
    assert list(reader.drain_decoded(lambda t: t.num_rows, ["episode_id"])) == []
    fail["on"] = False
    assert [e.episode_id for e in reader.poll()] == ["ep00000", "ep00001", "ep00002"]
    assert reader.quarantined == []


def test_a_full_disk_names_the_shard_it_could_not_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    import mtopt.store.writer as writer_mod

    def full(path: Path, data: bytes) -> Path:
        raise OSError(errno.EFBIG, "File too large")

    w = EpisodeWriter(tmp_path, "r0", flush_every=10)
    w.write(make_episode(0))
    monkeypatch.setattr(writer_mod, "atomic_write_bytes", full)
    with pytest.raises(OSError, match="File too large") as info:
        w.flush()
    notes = getattr(info.value, "__notes__", [])
    assert any("while writing the shard" in n and str(tmp_path) in n for n in notes), notes
    assert w.pending == 1  # kept for a retry
    monkeypatch.undo()
    w.close()
    assert [e.episode_id for e in EpisodeReader(tmp_path).poll()] == ["ep00000"]


def test_an_unknown_version_stops_a_poll_without_losing_the_shards_before_it(
    tmp_path: Path,
) -> None:
    import pyarrow as pa

    with EpisodeWriter(tmp_path, "r0", flush_every=1) as w:
        w.write(make_episode(0))
    newer = tmp_path / "shards" / "r0" / "99999999999999999999-000000.parquet"
    schema = ARROW_SCHEMA.with_metadata({SCHEMA_KEY: b"2"})
    row = {**make_episode(1).to_row(), "schema_version": 2}
    pq.write_table(pa.Table.from_pylist([row], schema=schema), newer)
    reader = EpisodeReader(tmp_path)
    with pytest.raises(SchemaError, match="unknown schema version 2"):
        reader.poll()
    newer.unlink()  # the operator upgrades mtopt, or moves the shard away
    assert [e.episode_id for e in reader.poll()] == ["ep00000"]


def test_an_episode_that_cannot_be_stored_fails_alone_at_write(tmp_path: Path) -> None:
    """The bad episode raises from write() and is not buffered; the good ones around it
    are flushed. Numpy numbers in a scene description are stored as plain JSON."""
    good = make_episode(0)
    numpy_scene = Episode(**{**make_episode(1).__dict__, "scene": {"mass": np.float32(0.25)}})
    bad = Episode(**{**make_episode(2).__dict__, "scene": {"fixture": object()}})
    with EpisodeWriter(tmp_path, "r0", flush_every=100) as w:
        w.write(good)
        w.write(numpy_scene)
        with pytest.raises(SchemaError, match=r"ep00002.*cannot be stored"):
            w.write(bad)
        assert w.pending == 2
        w.write(make_episode(3))
    back = EpisodeReader(tmp_path).poll()
    assert [e.episode_id for e in back] == ["ep00000", "ep00001", "ep00003"]
    assert back[1].scene == {"mass": 0.25}


def test_bad_actions_and_image_types_are_rejected_when_the_episode_is_made() -> None:
    e = make_episode(0)
    with pytest.raises(SchemaError, match=r"actions must be \(T, 6\)"):
        Episode(**{**e.__dict__, "actions": e.actions[:, :5]})
    with pytest.raises(SchemaError, match="images must be a uint8 array"):
        Episode(**{**e.__dict__, "images": e.images.astype(np.float32) / 255})
    with pytest.raises(SchemaError, match="final_image must be a uint8 array"):
        Episode(**{**e.__dict__, "final_image": e.final_image.astype(np.int64)})
    # states and actions as lists (a real robot's logger) are taken, as float32
    listed = Episode(**{**e.__dict__, "states": e.states.tolist(), "actions": e.actions.tolist()})
    assert listed.actions.dtype == np.float32 and np.array_equal(listed.states, e.states)
    with pytest.raises(SchemaError, match="states must be an array of numbers"):
        Episode(**{**e.__dict__, "states": [["open", 0.1]] * 4})


@pytest.mark.parametrize("robot_id", [".", "..", ".hidden", "-x", "a/b", "", "_cell", "r0\n"])
def test_robot_ids_that_would_hide_shards_are_refused(tmp_path: Path, robot_id: str) -> None:
    """Hidden or escaping folders, "_" first (pyarrow.dataset and pandas skip those) and a
    trailing newline (a regex "$" let it through)."""
    with pytest.raises(ValueError, match="robot_id"):
        EpisodeWriter(tmp_path, robot_id)


def test_another_robots_episode_is_stored_with_one_warning_per_robot(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A writer of robot "r1" given episodes of "r0" (a client that made one writer for
    a whole fleet) stores them as they are and warns once per foreign robot id."""
    with (
        caplog.at_level("WARNING", logger="mtopt.store.writer"),
        EpisodeWriter(tmp_path, "r1", flush_every=100) as w,
    ):
        for i in range(3):
            w.write(make_episode(i))
        w.write(Episode(**{**make_episode(3).__dict__, "robot_id": "r1"}))
    warned = [r.getMessage() for r in caplog.records if "robot 'r0'" in r.getMessage()]
    assert len(warned) == 1 and "'r1'" in warned[0] and "ep00000" in warned[0]
    back = EpisodeReader(tmp_path).poll()
    assert [e.robot_id for e in back] == ["r0", "r0", "r0", "r1"]


def test_a_flipped_bit_in_a_shard_is_found_and_quarantined(tmp_path: Path) -> None:
    """Page checksums: a bit flipped on disk inside an image used to read back silently
    as a different image."""
    episode = make_episode(0, size=32)
    with EpisodeWriter(tmp_path, "r0") as w:
        w.write(episode)
    (shard,) = shard_paths(tmp_path)
    data = bytearray(shard.read_bytes())
    raw = episode.images.tobytes()
    # no compression gain on random pixels: zstd keeps them raw, so the bytes are findable
    at = bytes(data).find(raw[100:164])
    assert at > 0
    data[at + 10] ^= 0x04
    shard.write_bytes(bytes(data))
    reader = EpisodeReader(tmp_path)
    assert reader.poll() == [] and len(reader.quarantined) == 1


def test_store_verify_finds_a_damaged_image_page_that_stats_do_not_read(tmp_path: Path) -> None:
    """``store stats`` reads metadata only, so a flipped bit in an image counts until a
    full read; ``store verify`` reads every page: --dry-run lists it and changes nothing,
    a plain verify quarantines it, and a verify of the healthy store exits 0."""
    from typer.testing import CliRunner

    from mtopt.cli import app

    store = tmp_path / "store"
    episodes = [make_episode(i, size=32) for i in range(3)]
    with EpisodeWriter(store, "r0", flush_every=1) as w:
        for e in episodes:
            w.write(e)
    shards = shard_paths(store)
    assert len(shards) == 3
    data = bytearray(shards[1].read_bytes())
    at = bytes(data).find(episodes[1].images.tobytes()[100:164])
    assert at > 0
    data[at + 10] ^= 0x04
    shards[1].write_bytes(bytes(data))
    _age(shards[1], 120.0)
    before = sorted(p.name for p in store.rglob("*") if p.is_file())

    res = CliRunner().invoke(app, ["store", "stats", str(store), "--plot", str(tmp_path / "s.png")])
    assert res.exit_code == 0 and "3 episodes in 3 shards (0 in quarantine/)" in res.output

    out = tmp_path / "v.json"
    res = CliRunner().invoke(app, ["store", "verify", str(store), "--dry-run", "--json", str(out)])
    assert res.exit_code == 1, res.output
    assert "2 shards read whole: 2 episodes, 6 steps" in res.output
    assert f"corrupt: {shards[1]} (left in place)" in res.output
    found = json.loads(out.read_text())
    assert found["shards_ok"] == 2 and found["episodes"] == 2 and found["dry_run"] is True
    assert [c["shard"] for c in found["corrupt"]] == [str(shards[1])]
    assert found["corrupt"][0]["moved_to"] is None and "checksum" in found["corrupt"][0]["reason"]
    assert sorted(p.name for p in store.rglob("*") if p.is_file()) == before  # unchanged

    res = CliRunner().invoke(app, ["store", "verify", str(store)])
    assert res.exit_code == 1 and "moved to" in res.output, res.output
    assert not shards[1].exists() and (store / "quarantine" / "r0" / shards[1].name).exists()

    res = CliRunner().invoke(app, ["store", "verify", str(store)])
    assert res.exit_code == 0 and "2 shards read whole: 2 episodes" in res.output, res.output
    assert [e.episode_id for e in EpisodeReader(store).episodes()] == ["ep00000", "ep00002"]

    res = CliRunner().invoke(app, ["store", "verify", str(tmp_path / "nowhere")])
    assert res.exit_code == 2 and "no episode store" in res.output


def test_verify_counts_rows_that_repeat_an_episode_id(tmp_path: Path) -> None:
    with EpisodeWriter(tmp_path, "r0", flush_every=1) as w:
        w.write(make_episode(0))
        w.write(make_episode(1))
    with EpisodeWriter(tmp_path, "r1", flush_every=1) as w:
        w.write(Episode(**{**make_episode(0).__dict__, "robot_id": "r1"}))
    seen: list[Path] = []
    report = EpisodeReader(tmp_path).verify(progress=seen.append)
    assert (report.shards, report.episodes, report.steps, report.duplicates) == (3, 3, 9, 1)
    assert report.ok and seen == shard_paths(tmp_path)


def test_episode_fields_a_store_needs_are_checked_at_write(tmp_path: Path) -> None:
    e = make_episode(0)
    bad = {
        "episode_id": "",
        "task": None,
        "robot_id": "",
        "policy_version": 1.7,
        "seed": "7",
        "scene": "{}",
    }
    with EpisodeWriter(tmp_path, "r0", flush_every=100) as w:
        for key, value in bad.items():
            with pytest.raises(SchemaError, match=key):
                w.write(Episode(**{**e.__dict__, key: value}))
        assert w.pending == 0
        w.write(Episode(**{**e.__dict__, "policy_version": np.int64(3)}))
    assert EpisodeReader(tmp_path).poll()[0].policy_version == 3
    import torch

    with pytest.raises(SchemaError, match=r"NumPy uint8 array.*torch\.Tensor"):
        Episode(**{**e.__dict__, "images": torch.from_numpy(e.images)})


def test_an_episode_whose_write_fails_is_not_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk in the flush that write() starts: the caller is told, and a retry
    stores the episode once (it used to stay buffered, and the retry stored it twice)."""
    import mtopt.store.writer as writer_module

    real = writer_module.write_shard
    full = [True]

    def disk(path: Path, table: object) -> Path:
        if full[0]:
            raise OSError(28, "No space left on device", str(path))
        return real(path, table)  # type: ignore[arg-type]

    monkeypatch.setattr(writer_module, "write_shard", disk)
    with EpisodeWriter(tmp_path, "r0", flush_every=2) as w:
        w.write(make_episode(0))
        with pytest.raises(OSError, match="No space"):
            w.write(make_episode(1))
        assert w.pending == 1  # the one written before stays
        full[0] = False
        w.write(make_episode(1))
    ids = [e.episode_id for e in EpisodeReader(tmp_path).poll()]
    assert ids == ["ep00000", "ep00001"]
    # Ctrl-C in that flush: the episode stays buffered and the with block writes it
    stop = [True]

    def interrupted(path: Path, table: object) -> Path:
        if stop[0]:
            stop[0] = False
            raise KeyboardInterrupt
        return real(path, table)  # type: ignore[arg-type]

    monkeypatch.setattr(writer_module, "write_shard", interrupted)
    with pytest.raises(KeyboardInterrupt), EpisodeWriter(tmp_path / "b", "r0", flush_every=2) as w:
        w.write(make_episode(5))
        w.write(make_episode(6))
    assert [e.episode_id for e in EpisodeReader(tmp_path / "b").poll()] == ["ep00005", "ep00006"]


def test_a_dead_writers_complete_temp_shard_is_put_in_place(tmp_path: Path) -> None:
    """Killed between the temp file's fsync and the rename: the next writer on the robot
    folder puts the shard in place (its episodes were nowhere else); a half-written temp
    file is removed; a fresh one (another live process's) is left alone."""
    import io

    from mtopt.store.schema import episodes_to_table

    folder = tmp_path / "shards" / "r0"
    folder.mkdir(parents=True)
    buf = io.BytesIO()
    pq.write_table(episodes_to_table([make_episode(0), make_episode(1)]), buf)
    complete = folder / ".00000000000000000001-000000.parquet.abc123.tmp"
    complete.write_bytes(buf.getvalue())
    half = folder / ".00000000000000000002-000000.parquet.def456.tmp"
    half.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    fresh = folder / ".00000000000000000003-000000.parquet.ghi789.tmp"
    fresh.write_bytes(buf.getvalue())
    old = time.time() - 3600
    for f in (complete, half):
        os.utime(f, (old, old))
    assert EpisodeReader(tmp_path).poll() == []  # temp files are never read
    # a live writer that stalled (it holds its temp file's lock): left alone, however old
    import fcntl

    stalled = folder / ".00000000000000000004-000000.parquet.jkl012.tmp"
    stalled.write_bytes(buf.getvalue())
    os.utime(stalled, (old, old))
    # a newer writer's complete shard: not ours to judge, left for a newer mtopt
    import pyarrow as pa

    newer_buf = io.BytesIO()
    pq.write_table(pa.table({"x": [1]}).replace_schema_metadata({SCHEMA_KEY: b"2"}), newer_buf)
    newer = folder / ".00000000000000000005-000000.parquet.mno345.tmp"
    newer.write_bytes(newer_buf.getvalue())
    os.utime(newer, (old, old))
    # pyarrow failing for the machine's reasons (no worker thread): nothing is judged,
    # every temp file stays for the next writer
    import mtopt.store.writer as writer_mod

    real_file = writer_mod.pq.ParquetFile

    def no_thread(*a, **k):  # type: ignore[no-untyped-def]
        raise pa.ArrowException("Unknown error: Failed to launch worker thread")

    writer_mod.pq.ParquetFile = no_thread  # type: ignore[misc]
    try:
        assert writer_mod.recover_temp_shards(folder) == []
    finally:
        writer_mod.pq.ParquetFile = real_file  # type: ignore[misc]
    assert complete.exists() and half.exists() and not (tmp_path / "quarantine").exists()
    with open(stalled, "rb") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        w = EpisodeWriter(tmp_path, "r0")
    assert w.recovered == [folder / "00000000000000000001-000000.parquet"]
    assert not complete.exists() and fresh.exists() and stalled.exists() and newer.exists()
    assert not half.exists() and (tmp_path / "quarantine" / "r0" / half.name).exists()
    reader = EpisodeReader(tmp_path)
    assert [e.episode_id for e in reader.poll()] == ["ep00000", "ep00001"]
    assert reader.quarantined == []
    # its lock gone (the process died): the next writer takes it
    assert EpisodeWriter(tmp_path, "r0").recovered == [
        folder / "00000000000000000004-000000.parquet"
    ]


def test_a_shard_written_by_pandas_from_the_documented_columns_reads(tmp_path: Path) -> None:
    """pandas and DuckDB keep no ``mtopt.schema_version`` key: the schema_version column
    says the version (such a shard was quarantined as not an mtopt shard)."""
    from mtopt.store.schema import episodes_to_table

    frame = episodes_to_table([make_episode(0), make_episode(1)]).to_pandas()
    folder = tmp_path / "shards" / "cell"
    folder.mkdir(parents=True)
    frame.to_parquet(folder / "00000000000000000001-000000.parquet")
    assert SCHEMA_KEY not in (
        pq.read_schema(folder / "00000000000000000001-000000.parquet").metadata or {}
    )
    reader = EpisodeReader(tmp_path)
    back = reader.poll()
    assert [e.episode_id for e in back] == ["ep00000", "ep00001"] and reader.quarantined == []
    assert np.array_equal(back[1].images, make_episode(1).images)
    frame["schema_version"] = 2  # a newer version is an error, as with the key
    frame.to_parquet(folder / "00000000000000000002-000000.parquet")
    from mtopt.store.schema import UnknownSchemaVersionError

    with pytest.raises(UnknownSchemaVersionError):
        EpisodeReader(tmp_path).poll()


def test_a_column_of_another_kind_is_quarantined_and_other_widths_read(tmp_path: Path) -> None:
    """A flipped footer bit made episode_id binary: it read back as bytes (which match no
    label) instead of being quarantined. Other tools' widths and encodings still read."""
    import pyarrow as pa

    from mtopt.store.schema import episodes_to_table

    table = episodes_to_table([make_episode(0), make_episode(1)])
    folder = tmp_path / "shards" / "cell"
    folder.mkdir(parents=True)
    wide = table.cast(
        pa.schema(
            [
                pa.field(f.name, pa.large_string())
                if f.type == pa.string()
                else pa.field(f.name, pa.int64())
                if pa.types.is_integer(f.type)
                else f
                for f in table.schema
            ],
            metadata=table.schema.metadata,
        )
    )
    wide = wide.set_column(
        wide.schema.get_field_index("task"), "task", wide["task"].dictionary_encode()
    )
    pq.write_table(wide, folder / "00000000000000000001-000000.parquet")
    ids = table["episode_id"].cast(pa.binary())
    as_bytes = table.set_column(table.schema.get_field_index("episode_id"), "episode_id", ids)
    pq.write_table(as_bytes, folder / "00000000000000000002-000000.parquet")
    reader = EpisodeReader(tmp_path)
    back = reader.poll()
    assert [(e.episode_id, e.task) for e in back] == [
        ("ep00000", "lift-any"),
        ("ep00001", "lift-any"),
    ]
    assert [q.name for q in reader.quarantined] == ["00000000000000000002-000000.parquet"]


def test_a_newer_shard_without_a_column_asked_for_is_not_quarantined(tmp_path: Path) -> None:
    """Reading only some columns (metadata(), the labeling index) of a newer writer's shard
    that renamed one: a clear version error, and the shard stays (it used to be moved to
    quarantine as corrupt, because the missing column failed before the version check)."""
    import pyarrow as pa

    newer = tmp_path / "shards" / "r0" / "0.parquet"
    newer.parent.mkdir(parents=True)
    row = {**make_episode(1).to_row(), "schema_version": 2}
    row["episode_uid"] = row.pop("episode_id")
    table = pa.Table.from_pylist([row]).replace_schema_metadata({SCHEMA_KEY: b"2"})
    pq.write_table(table, newer)
    with pytest.raises(SchemaError, match="unknown schema version 2"):
        EpisodeReader(tmp_path).metadata()
    assert newer.exists() and not (tmp_path / "quarantine").exists()


def test_readers_of_parts_read_every_shard_once_between_them(tmp_path: Path) -> None:
    with EpisodeWriter(tmp_path, "r0", flush_every=1) as w:  # a shard per episode
        for i in range(12):
            w.write(make_episode(i, steps=1, size=8))
    every = {e.episode_id for e in EpisodeReader(tmp_path).episodes()}
    parts = [{e.episode_id for e in EpisodeReader(tmp_path, part=(i, 3)).poll()} for i in range(3)]
    assert set().union(*parts) == every and sum(len(p) for p in parts) == len(every) == 12
    # the same split in another reader (another process, another run)
    assert {e.episode_id for e in EpisodeReader(tmp_path, part=(1, 3)).poll()} == parts[1]
    for bad in [(3, 3), (-1, 2), (0, 0)]:
        with pytest.raises(ValueError, match="part"):
            EpisodeReader(tmp_path, part=bad)


def test_shard_parts_are_a_stable_spread_of_shard_names() -> None:
    from mtopt.store.reader import shard_part

    names = [
        Path(f"shards/r{i % 3}/{1_700_000_000_000_000_000 + i:020d}-000000.parquet")
        for i in range(40)
    ]
    parts = [shard_part(p, 3) for p in names]
    assert set(parts) == {0, 1, 2} and max(parts.count(k) for k in range(3)) < 25
    assert parts == [shard_part(p, 3) for p in names]  # the same in every reader


def test_final_views_are_the_episodes_without_their_frames(tmp_path: Path) -> None:
    with EpisodeWriter(tmp_path, "r0", flush_every=2) as w:
        for i in range(5):
            w.write(make_episode(i, steps=2, size=8))
    full = {e.episode_id: e for e in EpisodeReader(tmp_path).episodes()}
    views = EpisodeReader(tmp_path).poll_final_views()
    assert sorted(v.episode_id for v in views) == sorted(full)
    for v in views:
        e = full[v.episode_id]
        assert v.task == e.task and v.scene == e.scene
        assert v.gt_success_by_task == e.gt_success_by_task
        np.testing.assert_array_equal(v.final_image, e.final_image)


def test_a_callers_decoder_that_fails_leaves_the_shard_alone(tmp_path: Path) -> None:
    """A bug in the caller's decoder (here a column name typed wrong, which pyarrow would
    drop silently) is not a corrupt shard: the error propagates, nothing is quarantined,
    and the next poll reads the shards again."""
    with EpisodeWriter(tmp_path, "r0", flush_every=1) as w:
        for i in range(3):
            w.write(make_episode(i))
    reader = EpisodeReader(tmp_path)
    with pytest.raises(ValueError, match=r"unknown column.*'taks'"):
        reader.poll_decoded(lambda t: t["taks"].to_pylist(), ["episode_id", "taks"])

    def crash(table: object) -> list[str]:
        raise KeyError("the caller's bug")

    with pytest.raises(KeyError, match="the caller's bug"):
        reader.poll_decoded(crash, ["episode_id"])
    assert reader.quarantined == [] and not (tmp_path / "quarantine").exists()
    got = reader.poll_decoded(lambda t: t["episode_id"].to_pylist(), ["episode_id"])
    assert [ids for _, ids in got] == [["ep00000"], ["ep00001"], ["ep00002"]]


def test_read_episode_reads_only_the_stores_own_shards(tmp_path: Path) -> None:
    with EpisodeWriter(tmp_path / "store", "r0") as w:
        w.write(make_episode(0))
    elsewhere = tmp_path / "mine.parquet"
    elsewhere.write_bytes(b"a user's own file")
    reader = EpisodeReader(tmp_path / "store")
    with pytest.raises(ValueError, match="not a shard of the store"):
        reader.read_episode(elsewhere, "ep00000")
    assert elsewhere.read_bytes() == b"a user's own file"  # not moved to quarantine
    (row,) = reader.metadata()
    ep = reader.read_episode(row["shard"], row["episode_id"])
    assert ep is not None and ep.episode_id == "ep00000"


def test_one_shot_reads_by_task_and_by_part(tmp_path: Path) -> None:
    with EpisodeWriter(tmp_path, "r0", flush_every=1) as w:  # a shard per episode
        for i in range(9):
            ep = make_episode(i, steps=1)
            ep.task = ("lift-any", "lift-ball", "place-any")[i % 3]
            w.write(ep)
    reader = EpisodeReader(tmp_path)
    picked = [e.episode_id for e in reader.episodes(tasks=["lift-ball", "place-any"])]
    assert picked == [f"ep{i:05d}" for i in range(9) if i % 3]
    assert [r["episode_id"] for r in reader.metadata(tasks=["lift-ball"])] == [
        "ep00001",
        "ep00004",
        "ep00007",
    ]
    # one name is one task (it used to be read as its letters, and matched nothing)
    assert [e.episode_id for e in reader.episodes(tasks="lift-ball")] == [
        "ep00001",
        "ep00004",
        "ep00007",
    ]
    assert len(reader.metadata(tasks="place-any")) == 3
    parts = [EpisodeReader(tmp_path, part=(i, 2)) for i in range(2)]
    ids = [{e.episode_id for e in r.episodes()} for r in parts]
    assert ids[0].isdisjoint(ids[1]) and len(ids[0] | ids[1]) == 9
    assert {r["episode_id"] for r in parts[0].metadata()} == ids[0]


def test_a_callers_wrong_argument_type_is_an_error_not_a_corrupt_shard(tmp_path: Path) -> None:
    """A TaskSpec for a task name, or an id that is not a str: a TypeError, and every
    shard stays (the filter failed inside the shard's read and looked like corruption)."""
    from mtopt.tasks import DEFAULT_REGISTRY

    with EpisodeWriter(tmp_path, "r0", flush_every=1) as w:
        for i in range(2):
            w.write(make_episode(i))
    reader = EpisodeReader(tmp_path)
    with pytest.raises(TypeError, match=r"task names \(str\).*use its .name"):
        list(reader.episodes(tasks=[DEFAULT_REGISTRY.get("lift-any")]))
    with pytest.raises(TypeError, match="task names"):
        reader.metadata(tasks=[1])  # type: ignore[list-item]
    shard = shard_paths(tmp_path)[0]
    with pytest.raises(TypeError, match="episode_id"):
        reader.read_episode(shard, 7)  # type: ignore[arg-type]
    assert reader.quarantined == [] and len(shard_paths(tmp_path)) == 2
    assert len(reader.metadata(tasks="lift-any")) == len(reader.metadata(tasks=["lift-any"]))


def test_a_termination_just_after_the_rename_does_not_store_the_episodes_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C (or the fleet's terminate) in the folder's fsync after the shard was renamed
    into place: the episodes are stored, and close() must not write them again."""
    import mtopt._io as io_mod

    real = io_mod.fsync_dir
    hits = {"n": 0}

    def interrupted(path):  # type: ignore[no-untyped-def]
        hits["n"] += 1
        if hits["n"] == 1:
            raise KeyboardInterrupt
        return real(path)

    w = EpisodeWriter(tmp_path, "r0", flush_every=2)
    monkeypatch.setattr(io_mod, "fsync_dir", interrupted)
    with pytest.raises(KeyboardInterrupt), w:
        w.write(make_episode(0))
        w.write(make_episode(1))  # flushes: interrupted after the rename
    ids = [r["episode_id"] for r in EpisodeReader(tmp_path).metadata()]
    assert ids == ["ep00000", "ep00001"] and w.written == 2 and w.pending == 0


def test_a_writer_puts_a_temp_shard_in_place_that_was_too_young_at_its_start(
    tmp_path: Path,
) -> None:
    """A robot restarted at once meets its dead predecessor's temp shard younger than
    STALE_TEMP_S and leaves it; it looks again as it flushes later."""
    import io

    from mtopt.store.schema import episodes_to_table

    folder = tmp_path / "shards" / "r0"
    folder.mkdir(parents=True)
    buf = io.BytesIO()
    pq.write_table(episodes_to_table([make_episode(7)]), buf)
    temp = folder / ".00000000000000000001-000000.parquet.abc123.tmp"
    temp.write_bytes(buf.getvalue())
    w = EpisodeWriter(tmp_path, "r0", flush_every=1)
    assert w.recovered == [] and temp.exists()  # young: left
    old = time.time() - 3600  # ... time passes
    os.utime(temp, (old, old))
    w.write(make_episode(0))  # not yet time to look again
    assert temp.exists()
    w._next_recovery = time.monotonic()  # STALE_TEMP_S later
    w.write(make_episode(1))
    assert not temp.exists() and w.recovered == [folder / "00000000000000000001-000000.parquet"]
    assert sorted(r["episode_id"] for r in EpisodeReader(tmp_path).metadata()) == [
        "ep00000",
        "ep00001",
        "ep00007",
    ]


def test_shards_an_os_error_keeps_from_being_read_do_not_hold_back_newer_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One poll reads one shard; the oldest cannot be opened (EACCES, a writer's umask):
    the newer shards are read on the next polls, and the old one once it can be."""
    import errno

    _, fail = _shard_that_fails_to_open(
        tmp_path, monkeypatch, 0, PermissionError(errno.EACCES, "Permission denied")
    )
    reader = EpisodeReader(tmp_path, shards_per_poll=1)
    got = [[e.episode_id for e in reader.poll()] for _ in range(3)]
    assert got == [[], ["ep00001"], ["ep00002"]]
    fail["on"] = False
    assert [e.episode_id for e in reader.poll()] == ["ep00000"] and reader.behind == 0
    assert reader.quarantined == []


def test_drain_reads_every_readable_shard_past_the_ones_that_fail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two shards a poll, the oldest cannot be opened: a drain used to stop after the
    first poll got through nothing, leaving the readable shards unread (and a subset
    copy naming all of them as unreadable)."""
    import errno

    _, fail = _shard_that_fails_to_open(
        tmp_path, monkeypatch, 0, PermissionError(errno.EACCES, "Permission denied")
    )
    reader = EpisodeReader(tmp_path, shards_per_poll=1)
    drained = list(reader.drain_decoded(lambda t: t["episode_id"].to_pylist(), ["episode_id"]))
    assert [ids for _, ids in drained] == [["ep00001"], ["ep00002"]]
    assert reader.behind == 1 and reader.quarantined == []
    fail["on"] = False
    assert [ids for _, ids in reader.drain_decoded(lambda t: t["episode_id"].to_pylist(),
                                                   ["episode_id"])] == [["ep00000"]]  # fmt: skip


def test_a_robot_folder_that_cannot_be_listed_is_an_error_not_a_shorter_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """(Path.glob skipped such a folder without a word: one-shot reads, stats and
    subsets came back short.) A tailing poll reads the rest, logs it and lists again."""
    import errno

    for robot in ("r0", "r1"):
        with EpisodeWriter(tmp_path, robot, flush_every=1) as w:
            w.write(make_episode(0 if robot == "r0" else 1))
    real = os.scandir
    locked = str(tmp_path / "shards" / "r1")

    def scandir(path):  # type: ignore[no-untyped-def]
        if str(path) == locked:
            raise PermissionError(errno.EACCES, "Permission denied", locked)
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    reader = EpisodeReader(tmp_path)
    with pytest.raises(PermissionError):
        reader.metadata()
    with pytest.raises(PermissionError):
        list(reader.episodes())
    # a tailing poll reads the other robots' shards (one folder must not stop them all),
    # says so in the log, and lists the folder again next time
    assert [e.episode_id for e in reader.poll()] == ["ep00000"]
    monkeypatch.setattr(os, "scandir", real)
    assert [e.episode_id for e in reader.poll()] == ["ep00001"]


def test_parquet_files_outside_robot_folders_are_named_not_read(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with EpisodeWriter(tmp_path, "r0", flush_every=1) as w:
        w.write(make_episode(0))
    shard = shard_paths(tmp_path)[0]
    stray = tmp_path / "shards" / "imported.parquet"
    nested = tmp_path / "shards" / "r0" / "2026" / "x.parquet"
    nested.parent.mkdir()
    stray.write_bytes(shard.read_bytes())
    nested.write_bytes(shard.read_bytes())
    with caplog.at_level("WARNING", logger="mtopt.store.reader"):
        assert shard_paths(tmp_path) == [shard]
    assert "imported.parquet is not read" in caplog.text and "2026 is not read" in caplog.text


def test_a_folder_named_parquet_in_a_robot_folder_is_named_not_quarantined(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """pandas' ``to_parquet(partition_cols=...)`` and Spark write a folder called
    ``x.parquet``: not a shard, so a poll (even long after it was written) warns of it
    and leaves it where it is, readable by pyarrow.dataset."""
    with EpisodeWriter(tmp_path, "r0", flush_every=1) as w:
        w.write(make_episode(0))
    shard = shard_paths(tmp_path)[0]
    folder = tmp_path / "shards" / "r0" / "extra.parquet"
    pd.DataFrame({"task": ["a", "b"], "x": [1, 2]}).to_parquet(folder, partition_cols=["task"])
    old = time.time() - 600
    os.utime(folder, (old, old))
    with caplog.at_level("WARNING", logger="mtopt.store.reader"):
        assert shard_paths(tmp_path) == [shard]
        reader = EpisodeReader(tmp_path)
        assert [e.episode_id for e in reader.poll()] == ["ep00000"]
    assert "extra.parquet is not read" in caplog.text
    assert folder.is_dir() and not reader.quarantined
    assert not (tmp_path / "quarantine").exists()
    assert ds.dataset(folder, partitioning="hive").to_table().num_rows == 2


def test_quarantine_keeps_an_earlier_file_of_the_same_name(tmp_path: Path) -> None:
    """Two bad files quarantined under one name (another tool's data_0.parquet written
    twice): both are kept, the second as data_0.1.parquet."""
    robot = tmp_path / "shards" / "r0"
    robot.mkdir(parents=True)
    old = time.time() - 600
    for content in (b"first bad bytes", b"second bad bytes"):
        bad = robot / "data_0.parquet"
        bad.write_bytes(content)
        os.utime(bad, (old, old))
        reader = EpisodeReader(tmp_path)  # a later run's reader
        assert reader.poll() == [] and len(reader.quarantined) == 1
    kept = tmp_path / "quarantine" / "r0"
    assert (kept / "data_0.parquet").read_bytes() == b"first bad bytes"
    assert (kept / "data_0.1.parquet").read_bytes() == b"second bad bytes"


def test_read_episode_through_a_robot_folder_that_is_a_link(tmp_path: Path) -> None:
    store, disk2 = tmp_path / "store", tmp_path / "disk2"
    with EpisodeWriter(disk2, "r1", flush_every=1) as w:
        w.write(make_episode(3))
    (store / "shards").mkdir(parents=True)
    (store / "shards" / "r1").symlink_to(disk2 / "shards" / "r1")
    reader = EpisodeReader(store)
    (row,) = reader.metadata()
    got = reader.read_episode(row["shard"], "ep00003")
    assert got is not None and got.episode_id == "ep00003"
    with pytest.raises(ValueError, match="is not a shard of the store"):
        reader.read_episode(disk2 / "shards" / "r1" / Path(row["shard"]).name, "ep00003")


def test_a_writer_refuses_an_episode_id_it_already_took(tmp_path: Path) -> None:
    """Readers count an episode id once: a second episode under an id this writer took
    (buffered or written) would have vanished from every reader without a word."""
    import dataclasses

    with EpisodeWriter(tmp_path, "r0", flush_every=2) as w:
        w.write(make_episode(0))
        with pytest.raises(ValueError, match="ep00000 was already written"):
            w.write(dataclasses.replace(make_episode(1), episode_id="ep00000"))  # buffered
        w.write(make_episode(1))  # flushes both
        with pytest.raises(ValueError, match="ep00001 was already written"):
            w.write(make_episode(1))  # on disk
        assert w.pending == 0
        w.write(make_episode(2))
    ids = [e.episode_id for e in EpisodeReader(tmp_path).poll()]
    assert ids == ["ep00000", "ep00001", "ep00002"]


def test_an_episode_changed_after_it_was_made_fails_at_write_alone(tmp_path: Path) -> None:
    """Shapes are checked again at write: a cropped frame used to be stored, and the
    shard then failed to decode, quarantining the good episodes with it."""
    with EpisodeWriter(tmp_path, "r0", flush_every=4) as w:
        for i in range(3):
            w.write(make_episode(i))
        cropped = make_episode(9)
        cropped.images = cropped.images[:, 1:-1, 1:-1]
        with pytest.raises(SchemaError, match="final_image"):
            w.write(cropped)
        scaled = make_episode(10)
        scaled.images = scaled.images.astype(np.float32) / 255
        with pytest.raises(SchemaError, match="uint8"):
            w.write(scaled)
    reader = EpisodeReader(tmp_path)
    assert [e.episode_id for e in reader.poll()] == ["ep00000", "ep00001", "ep00002"]
    assert reader.quarantined == []


def test_scene_descriptions_are_stored_as_standard_json(tmp_path: Path) -> None:
    e = make_episode(0)
    e.scene = {
        3: "cube",  # an int key beside str keys (the sorted dump used to fail)
        "n": np.int64(2),
        np.int64(4): [np.float32(0.5), (1, 2)],
        True: None,
        "offset": float("nan"),
        "far": np.inf,
    }
    e.gt_success_by_task = {"lift-any": np.bool_(True)}
    with EpisodeWriter(tmp_path, "r0") as w:
        w.write(e)
    (row,) = EpisodeReader(tmp_path).metadata()
    text = row["scene"]
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {
        "3": "cube", "n": 2, "4": [0.5, [1, 2]], "true": None, "offset": None, "far": None,
    }  # fmt: skip
    (back,) = EpisodeReader(tmp_path).poll()
    assert back.scene == json.loads(text) and back.gt_success_by_task == {"lift-any": True}
    for scene in ({(1, 2): "tuple key"}, {1: "a", "1": "b"}):
        bad = make_episode(1)
        bad.scene = scene
        with EpisodeWriter(tmp_path, "r0") as w, pytest.raises(SchemaError, match="not JSON"):
            w.write(bad)


def test_a_writer_never_closed_writes_its_buffer_when_dropped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import gc

    w = EpisodeWriter(tmp_path, "r0", flush_every=100)
    for i in range(5):
        w.write(make_episode(i))
    with caplog.at_level("WARNING", logger="mtopt.store.writer"):
        del w
        gc.collect()
    assert len(EpisodeReader(tmp_path).poll()) == 5
    assert "was not closed" in caplog.text


def _write_and_exit(store: str) -> None:
    w = EpisodeWriter(store, "r0", flush_every=100)
    for i in range(4):
        w.write(make_episode(i))
    _write_and_exit.keep = w  # type: ignore[attr-defined]  # alive at exit


def test_a_writer_still_open_at_exit_writes_its_buffer(tmp_path: Path) -> None:
    import subprocess
    import sys

    code = (
        "import sys; sys.path.insert(0, '.'); from tests.test_store import _write_and_exit; "
        f"_write_and_exit({str(tmp_path)!r})"
    )
    root = Path(__file__).resolve().parents[1]  # wherever pytest runs from
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120, cwd=root)
    assert [e.episode_id for e in EpisodeReader(tmp_path).poll()] == [
        f"ep{i:05d}" for i in range(4)
    ]


def test_a_damaged_footer_is_a_corrupt_shard_not_a_newer_one(tmp_path: Path) -> None:
    """Parquet's footer has no checksum. A footer whose version key disagrees with its
    rows' (checksummed) version, or that names a column no writer writes (a flipped bit
    in "poses"), is corrupt: quarantined, and the other shards read."""
    import pyarrow as pa

    with EpisodeWriter(tmp_path, "r0", flush_every=1) as w:
        w.write(make_episode(0))
    folder = tmp_path / "shards" / "r0"
    rows = [make_episode(1).to_row()]
    pq.write_table(
        pa.Table.from_pylist(rows, schema=ARROW_SCHEMA.with_metadata({SCHEMA_KEY: b"2"})),
        folder / "99999999999999999998-000000.parquet",
    )
    renamed = ARROW_SCHEMA.set(
        ARROW_SCHEMA.get_field_index("poses"), ARROW_SCHEMA.field("poses").with_name("qoses")
    )
    pq.write_table(
        pa.Table.from_pylist([{**make_episode(2).to_row(), "qoses": None}], schema=renamed),
        folder / "99999999999999999999-000000.parquet",
    )
    reader = EpisodeReader(tmp_path)
    assert [e.episode_id for e in reader.poll()] == ["ep00000"]
    assert len(reader.quarantined) == 2
    # a newer writer's column beside every known one (as poses once came): read past
    wider = ARROW_SCHEMA.append(pa.field("camera_serial", pa.string()))
    pq.write_table(
        pa.Table.from_pylist([{**make_episode(3).to_row(), "camera_serial": "c1"}], schema=wider),
        folder / "99999999999999999999-000001.parquet",
    )
    assert [e.episode_id for e in reader.poll()] == ["ep00003"] and len(reader.quarantined) == 2


def test_a_forked_childs_copy_of_a_writer_does_not_write_the_parents_buffer(
    tmp_path: Path,
) -> None:
    w = EpisodeWriter(tmp_path, "r0", flush_every=100)
    w.write(make_episode(0))
    ctx = mp.get_context("fork")
    child = ctx.Process(target=_drop_writers_and_exit)
    child.start()
    child.join(60)
    assert child.exitcode == 0 and shard_paths(tmp_path) == []
    w.close()
    assert [e.episode_id for e in EpisodeReader(tmp_path).poll()] == ["ep00000"]


def _drop_writers_and_exit() -> None:
    import gc

    from mtopt.store import writer

    for copy in list(writer._open_writers):
        writer._flush_unclosed(copy)  # as at the child's exit or when its copy is dropped
    gc.collect()


def test_a_writer_refuses_flush_settings_that_would_fail_every_write(tmp_path: Path) -> None:
    """flush_every=None was taken: the first write raised TypeError yet kept the episode
    buffered (a retry was then "already written")."""
    for kw, says in (
        ({"flush_every": None}, "flush_every must be an int >= 1"),
        ({"flush_every": 0}, "flush_every must be an int >= 1"),
        ({"flush_seconds": float("nan")}, "flush_seconds must be a number >= 0"),
        ({"flush_seconds": "30"}, "flush_seconds must be a number >= 0"),
    ):
        with pytest.raises(ValueError, match=says):
            EpisodeWriter(tmp_path, "r0", **kw)  # type: ignore[arg-type]
    with EpisodeWriter(tmp_path, "r0", flush_every=np.int64(1), flush_seconds=0) as w:
        w.write(make_episode(0))
    assert len(shard_paths(tmp_path)) == 1
