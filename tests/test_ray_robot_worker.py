"""The Ray runtime's robot worker (the class its robot actors are), without a cluster:
an error in an episode goes to the driver, and the robot is built again by its factory,
as a local robot process that dies is restarted."""

from pathlib import Path

import pytest
import torch
from tests.robot_factories import FLAKY

from mtopt.config import override
from mtopt.runtime.config import preset
from mtopt.store import EpisodeReader


def test_a_robot_that_fails_mid_episode_is_rebuilt_by_its_factory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It used to stay as the error left it (a lost controller failed every later call,
    and the driver dropped the robot after five); now the failed arm is closed, a new one
    made on new scenes, and the episodes before the error are on disk. A factory that
    fails too is called again at the robot's next call."""
    from mtopt.runtime.ray_runtime import RobotWorker

    monkeypatch.setitem(FLAKY, "made", [])
    monkeypatch.setitem(FLAKY, "builds", 0)
    monkeypatch.setitem(FLAKY, "fail_builds", {2})  # the first rebuild fails
    factory = "robot_factory=tests.robot_factories:make_flaky_arm"
    cfg = override(preset("tiny"), [factory, "collect.flush_seconds=600"])
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # (the actor's 1)
    worker = RobotWorker(0, cfg, str(tmp_path), seed=5)
    with pytest.raises(ConnectionError, match="controller stopped answering"):
        worker.run(50)
    before_error = EpisodeReader(tmp_path / "store").metadata()
    first = FLAKY["made"][0]
    assert len(before_error) >= 1 and first.acts == FLAKY["fail_at_act"]
    # the failed arm closed; the rebuild's factory call failed, left for the next call
    assert first.closed and FLAKY["builds"] == 2 and worker.loop is None
    counts = worker.run(3)
    assert sum(counts.values()) == 3 and FLAKY["builds"] == 3 and len(FLAKY["made"]) == 2
    second = FLAKY["made"][1]
    assert not second.closed and second.seed != first.seed  # new scenes
    # buffered by the writer's policy (flush_every 16), written when the driver asks
    assert len(EpisodeReader(tmp_path / "store").metadata()) == len(before_error)
    worker.flush()
    assert len(EpisodeReader(tmp_path / "store").metadata()) == len(before_error) + 3
    worker.close()
    assert second.closed


def test_a_robot_whose_factory_fails_at_the_start_is_built_at_its_first_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The factory's error used to leave the constructor, and Ray restarts no actor whose
    constructor raised: the robot was lost for the whole run (every call failed, the
    driver dropped it). Now the worker starts without a robot and builds it at its first
    call; while the factory keeps failing, each call fails (counted by the driver)."""
    from mtopt.runtime.ray_runtime import RobotWorker

    monkeypatch.setitem(FLAKY, "made", [])
    monkeypatch.setitem(FLAKY, "builds", 0)
    monkeypatch.setitem(FLAKY, "fail_builds", {1, 2})  # at the start and the first call
    monkeypatch.setitem(FLAKY, "fail_at_act", 0)  # (no act fails)
    cfg = override(preset("tiny"), ["robot_factory=tests.robot_factories:make_flaky_arm"])
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)
    worker = RobotWorker(0, cfg, str(tmp_path), seed=5)
    assert worker.loop is None and FLAKY["builds"] == 1 and not FLAKY["made"]
    with pytest.raises(ConnectionError, match="did not answer the factory"):
        worker.run(2)
    assert FLAKY["builds"] == 2 and worker.loop is None
    counts = worker.run(2)
    assert sum(counts.values()) == 2 and FLAKY["builds"] == 3 and len(FLAKY["made"]) == 1
    worker.close()
    assert FLAKY["made"][0].closed
    assert len(EpisodeReader(tmp_path / "store").metadata()) == 2  # written at close


def test_newest_shards_holds_the_episodes_asked_for(tmp_path: Path) -> None:
    """A Ray resume's SD tail reads only the newest shards, enough for the next round's
    pool (it skipped them all: the first round labeled one poll's episodes). One row is
    one episode; a shard whose footer cannot be read counts as none."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mtopt.runtime.ray_runtime import newest_shards

    paths = []
    for i, rows in enumerate([16, 16, 5, 16, 3]):
        path = tmp_path / f"{i:03d}.parquet"
        pq.write_table(pa.table({"episode_id": [f"e{i}-{j}" for j in range(rows)]}), path)
        paths.append(path)
    assert newest_shards(paths, 0) == 0
    assert newest_shards(paths, 3) == 1  # the last shard's 3
    assert newest_shards(paths, 4) == 2  # 3 + 16
    assert newest_shards(paths, 20) == 3  # 3 + 16 + 5 = 24
    assert newest_shards(paths, 1000) == 5  # every shard, fewer episodes than asked
    paths[4].write_bytes(b"not parquet")
    assert newest_shards(paths, 3) == 2  # the unreadable one counts as none
    assert newest_shards([], 10) == 0


def test_an_address_where_no_ray_listens_fails_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`mtopt run --runtime ray --address HOST:PORT` with nothing there: a clear error in
    seconds, before the run folder is made or the detector staged (ray.init waited minutes,
    after minutes of staging)."""
    import socket

    from mtopt.runtime.config import ConfigError
    from mtopt.runtime.local import LocalRun
    from mtopt.runtime.ray_runtime import check_ray_address, run_ray

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(LocalRun, "init_sd", lambda self: pytest.fail("staged the detector"))
    with pytest.raises(ConfigError, match="no Ray cluster there"):
        run_ray(preset("tiny"), tmp_path / "run", address=f"127.0.0.1:{port}")
    assert not (tmp_path / "run").exists()
    with pytest.raises(ConfigError, match="expected HOST:PORT"):
        check_ray_address("my-head-node")
    with socket.socket() as s:  # one that listens passes; 'auto' and ray:// are Ray's
        s.bind(("127.0.0.1", 0))
        s.listen()
        check_ray_address(f"127.0.0.1:{s.getsockname()[1]}")
    check_ray_address("auto")
    check_ray_address("ray://head:10001")
    check_ray_address(None)
