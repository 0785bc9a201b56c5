"""ReplayService (the Ray runtime's replay actor, without Ray): a store larger than one
poll is read in parts, and no batches come from its oldest part meanwhile."""

from pathlib import Path

import torch

from mtopt.config import override
from mtopt.runtime.config import preset
from mtopt.runtime.ray_runtime import ReplayService
from mtopt.store import EpisodeReader, EpisodeWriter
from mtopt.success.network import SDNetConfig, SuccessDetector, SuccessNet
from mtopt.tasks import DEFAULT_REGISTRY
from test_store import make_episode


def _write(store: Path, first: int, n: int) -> None:
    with EpisodeWriter(store, f"r{first}", flush_every=2) as w:  # a shard every 2 episodes
        for i in range(first, first + n):
            w.write(make_episode(i, steps=3, size=64))


def test_reads_a_large_store_in_parts_before_giving_batches(tmp_path: Path) -> None:
    root = tmp_path / "run"
    _write(root / "store", 0, 8)  # 4 shards
    SuccessDetector(SuccessNet(SDNetConfig()), DEFAULT_REGISTRY.names).publish(root / "sd", 1)
    cfg = override(preset("tiny"), ["replay.read_shards_per_poll=1", "replay.min_episodes=2"])
    threads = torch.get_num_threads()
    try:
        svc = ReplayService(cfg, str(root), seed=0)
        held, counts = [], []
        for _ in range(4):
            out = svc.step(2)
            held.append(out["episodes_held"])
            counts.append(len(out["batches"]))
        # one shard (2 episodes) a step; batches only once the last part is in, although
        # the buffers held min_episodes after the first
        assert held == [2, 4, 6, 8] and counts == [0, 0, 0, 2]
        assert svc.reader.behind == 0 and svc.ingested == 8
        b = out["batches"][0]
        assert b["images"].shape[0] == cfg.replay.batch_size
        assert set(b) == {"images", "states", "actions", "task_idx", "targets"}
        assert out["composition"]["lift-any"]["original"] == 8

        # what robots write later is read on the next step, and batches go on
        _write(root / "store", 100, 2)
        out = svc.step(1)
        assert out["episodes_held"] == 10 and len(out["batches"]) == 1

        # a shard it cannot read (being written in place by another tool, no permission)
        # is retried at every step and holds no batches back (it stopped them for good)
        half = root / "store" / "shards" / "pd" / "00000000000000000000-000000.parquet"
        half.parent.mkdir()
        half.write_bytes(b"PAR1 and no footer yet")
        out = svc.step(1)
        assert svc.reader.behind == 1 == svc.reader.retrying and len(out["batches"]) == 1
        half.unlink()

        # a restarted actor (Ray restarts a killed one) rebuilds from the whole store
        again = ReplayService(cfg, str(root), seed=1)
        counts = [len(again.step(1)["batches"]) for _ in range(5)]
        assert counts == [0, 0, 0, 0, 1] and again.ingested == 10
    finally:
        torch.set_num_threads(threads)


def test_workers_of_parts_hold_disjoint_episodes_that_add_up_to_the_store(
    tmp_path: Path,
) -> None:
    from mtopt.runtime.ray_runtime import merged_progress

    root = tmp_path / "run"
    with EpisodeWriter(root / "store", "r0", flush_every=1) as w:  # a shard per episode
        for i in range(10):
            w.write(make_episode(i, steps=3, size=64))
    SuccessDetector(SuccessNet(SDNetConfig()), DEFAULT_REGISTRY.names).publish(root / "sd", 1)
    cfg = override(preset("tiny"), ["replay.min_episodes=4"])
    threads = torch.get_num_threads()
    try:
        svcs = [ReplayService(cfg, str(root), seed=i, part=(i, 2)) for i in range(2)]
        outs = [s.step(1) for s in svcs]
    finally:
        torch.set_num_threads(threads)
    assert [s.min_episodes for s in svcs] == [2, 2]  # each worker's share of 4
    every = [e.episode_id for e in EpisodeReader(root / "store").episodes()]
    holders = [[i for i, s in enumerate(svcs) if eid in s.buffers] for eid in every]
    assert len(every) == 10 and all(len(h) == 1 for h in holders)  # each held once
    # the driver's word overrides a worker's own share: the workers together may hold
    # enough while one's part is small, or too few while one's part is large
    assert len(svcs[0].step(1, ready=False)["batches"]) == 0
    assert len(svcs[0].step(1, ready=True)["batches"]) == 1
    ingested, comp = merged_progress(outs)
    assert ingested == 10 and comp["lift-any"]["original"] == 10


def test_merged_progress_sums_workers_by_hand() -> None:
    from mtopt.runtime.ray_runtime import merged_progress

    a = {"ingested": 3, "composition": {"t": {"original": 2, "impersonated": 5, "successes": 1}}}
    b = {"ingested": 4, "composition": {"t": {"original": 1, "impersonated": 0, "successes": 2}}}
    assert merged_progress([a, b]) == (
        7,
        {"t": {"original": 3, "impersonated": 5, "successes": 3}},
    )


def test_held_progress_holds_while_a_restarted_worker_rereads() -> None:
    """Worker b restarted and has re-read 1 of its 4 episodes: the run's count and
    composition stay at the 7 it had (the count dipped to 4), then move on again."""
    from mtopt.runtime.ray_runtime import held_progress

    def worker(n: int, orig: int) -> dict:
        return {"ingested": n, "composition": {"t": {"original": orig}}}

    before = {"t": {"original": 7}}
    assert held_progress([worker(3, 3), worker(1, 1)], 7, before) == (7, before)
    assert held_progress([worker(3, 3), worker(5, 5)], 7, before) == (8, {"t": {"original": 8}})


def test_merged_report_views_add_sizes_and_average_batch_shares_by_hand() -> None:
    from mtopt.runtime.ray_runtime import merged_report_views

    a = {
        "buffer_sizes": {"t": [2, 5], "u": [0, 1]},
        "batch_share": {
            "t": {"success": 0.5, "failure": 0.25},
            "u": {"success": 0.0, "failure": 0.25},
        },
    }
    b = {
        "buffer_sizes": {"t": [1, 0], "u": [3, 3]},
        "batch_share": {
            "t": {"success": 0.25, "failure": 0.25},
            "u": {"success": 0.5, "failure": 0.0},
        },
    }
    empty = {"buffer_sizes": {"t": [0, 0]}, "batch_share": {}}  # gives no batches
    sizes, share = merged_report_views([a, b, empty])
    assert sizes == {"t": [3, 5], "u": [3, 4]}
    assert share == {
        "t": {"success": 0.375, "failure": 0.25},
        "u": {"success": 0.25, "failure": 0.125},
    }
    assert merged_report_views([]) == ({}, {})


def test_a_workers_report_view_is_its_buffers_and_its_batches(tmp_path: Path) -> None:
    root = tmp_path / "run"
    with EpisodeWriter(root / "store", "r0", flush_every=1) as w:
        for i in range(6):
            w.write(make_episode(i, steps=3, size=64))
    SuccessDetector(SuccessNet(SDNetConfig()), DEFAULT_REGISTRY.names).publish(root / "sd", 1)
    cfg = override(preset("tiny"), ["replay.min_episodes=1"])
    threads = torch.get_num_threads()
    try:
        svc = ReplayService(cfg, str(root), seed=0)
        svc.step(1)
        view = svc.report_view()
    finally:
        torch.set_num_threads(threads)
    assert view["buffer_sizes"] == {t: list(v) for t, v in svc.buffers.sizes().items()}
    total = sum(v["success"] + v["failure"] for v in view["batch_share"].values())
    assert abs(total - 1.0) < 1e-9


def test_a_fresh_ray_run_gives_its_replay_workers_the_learners_targets(tmp_path: Path) -> None:
    """A fresh Ray run published its random network at step 0 for the replay workers'
    targets, and robots acted with it from their first episode (half of them); the
    targets now go to the workers directly."""
    from mtopt.qtopt.learner import Learner

    root = tmp_path / "run"
    _write(root / "store", 0, 2)
    SuccessDetector(SuccessNet(SDNetConfig()), DEFAULT_REGISTRY.names).publish(root / "sd", 1)
    cfg = preset("tiny")
    threads = torch.get_num_threads()
    try:
        learner = Learner(cfg.qnet)
        states = [net.state_dict() for net in learner.targets]
        svc = ReplayService(cfg, str(root), seed=0, targets=states)
        for mine, theirs in zip(svc.updater.target_nets, learner.targets, strict=True):
            for k, v in theirs.state_dict().items():
                assert torch.equal(mine.state_dict()[k], v)
        assert not (root / "weights").exists()  # nothing published for robots to act with
    finally:
        torch.set_num_threads(threads)


def test_the_ray_replay_actor_takes_what_the_service_takes() -> None:
    """The actor's constructor missed the targets argument the service took: Ray refused
    every replay actor of every run (checked in the driver, without a cluster)."""
    import inspect

    import pytest

    pytest.importorskip("ray")
    from mtopt.runtime.ray_runtime import _replay_actor_cls

    actor = _replay_actor_cls()
    sig = actor.__ray_metadata__.method_meta.signatures["__init__"]
    from ray._common import signature

    signature.flatten_args(sig, ("cfg", "root", 1, (0, 1), None), {})  # raised TypeError
    service = list(inspect.signature(ReplayService.__init__).parameters)[1:]  # (no self)
    assert [p.name for p in sig if p.name not in ("self", "_ray_trace_ctx")] == service


def test_the_ray_driver_keeps_the_cores_its_local_actors_leave() -> None:
    """By hand: 16 cores, 4 robots and 3 replay workers (one thread each) leave the
    learner 9; a fleet larger than the machine still leaves it one. Unset, the driver's
    OpenMP threads took every core and spun against the actors."""
    from mtopt.runtime.ray_runtime import driver_threads

    assert driver_threads(16, 4, 3) == 9
    assert driver_threads(2, 2, 1) == 1
    assert driver_threads(8, 0, 1) == 7
