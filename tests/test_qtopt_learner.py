"""Learner: exact resume, weights publishing, architecture errors, a bandit that must be learned."""

import dataclasses
import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from mtopt.policies.cem_policy import CEMPolicy
from mtopt.qtopt.bellman import TrainBatch, cem_argmax
from mtopt.qtopt.cem import CEMConfig
from mtopt.qtopt.learner import Learner, LearnerConfig, load_network
from mtopt.qtopt.networks import QNetConfig
from mtopt.qtopt.weights import WeightsError, load_latest, load_version
from mtopt.robots.base import Observation
from qtopt_fixtures import SMALL, batch

torch.set_num_threads(1)


def test_resume_is_exact(tmp_path: Path) -> None:
    cfg = LearnerConfig(target_period=3, image_shift=4)  # the augmentation stream resumes too
    a = Learner(SMALL, cfg)
    for i in range(4):
        a.train_step(batch(i))
    a.save_checkpoint(tmp_path / "ck.pt")
    for i in range(4, 8):
        a.train_step(batch(i))
    a.train_step(batch(100 + int(torch.randint(0, 5, (1,)))))  # uses the torch RNG stream
    b, _ = Learner.resume(tmp_path / "ck.pt", cfg)
    for i in range(4, 8):
        b.train_step(batch(i))
    b.train_step(batch(100 + int(torch.randint(0, 5, (1,)))))
    for pa, pb in zip(a.online.parameters(), b.online.parameters(), strict=True):
        assert torch.equal(pa, pb)
    for ta, tb in zip([*a.targets, a.acting], [*b.targets, b.acting], strict=True):
        for pa, pb in zip(ta.parameters(), tb.parameters(), strict=True):
            assert torch.equal(pa, pb)
    assert a.step == b.step == 9
    assert b.origin == a.origin and b.meta()["origin"] == a.origin  # same initial networks
    assert Learner(SMALL, cfg).origin == a.origin  # the seed's initial networks again
    assert Learner(SMALL, dataclasses.replace(cfg, seed=1)).origin != a.origin
    # numpy's global stream, its normal sampler's cached second value included (a resume
    # used to drop it)
    np.random.seed(0)
    np.random.normal()  # draws a pair, keeps one
    a.save_checkpoint(tmp_path / "ck2.pt")
    want = [np.random.normal(), np.random.normal()]
    Learner.resume(tmp_path / "ck2.pt", cfg)
    assert [np.random.normal(), np.random.normal()] == want


def test_a_resume_without_a_config_continues_with_the_checkpoints_settings(
    tmp_path: Path,
) -> None:
    """``Learner.resume(path)`` used to fall back to ``LearnerConfig()``: another lr,
    periodic targets, no image shift, another gamma, under a docstring that promised
    the same run. It takes the checkpoint's settings, and continues exactly."""
    cfg = LearnerConfig(lr=1e-4, target_update="polyak", image_shift=2, gamma=0.5)
    a = Learner(SMALL, cfg)
    a.train_step(batch(0))
    a.save_checkpoint(tmp_path / "ck.pt")
    b, _ = Learner.resume(tmp_path / "ck.pt")
    assert b.cfg == cfg and [g["lr"] for g in b.optimizer.param_groups] == [1e-4]
    a.train_step(batch(1))
    b.train_step(batch(1))
    for pa, pb in zip(a.online.parameters(), b.online.parameters(), strict=True):
        assert torch.equal(pa, pb)
    # saved on a GPU, resumed on a machine without one: the settings, on this machine
    if not torch.cuda.is_available():
        ck = torch.load(tmp_path / "ck.pt", weights_only=True)
        ck["learner"]["device"] = "cuda"
        torch.save(ck, tmp_path / "gpu.pt")
        c, _ = Learner.resume(tmp_path / "gpu.pt")
        assert c.device.type == "cpu" and c.cfg.lr == 1e-4
    # one from a newer mtopt, with a setting this one does not know: a clear error
    ck = torch.load(tmp_path / "ck.pt", weights_only=True)
    ck["learner"]["warp_drive"] = True
    torch.save(ck, tmp_path / "newer.pt")
    with pytest.raises(WeightsError, match="learner setting this mtopt does not know"):
        Learner.resume(tmp_path / "newer.pt")
    # published weights likewise (load_network used to raise a bare TypeError)
    a.publish(tmp_path / "w")
    _, tensors, meta = load_latest(tmp_path / "w")
    meta["qnet"]["warp_drive"] = True
    with pytest.raises(WeightsError, match="Q-network setting this mtopt does not know"):
        load_network(tensors, meta)


def test_resume_takes_a_changed_learning_rate(tmp_path: Path) -> None:
    """The optimizer's saved state must not bring back the old lr: after a resume with
    lr 1e-4 one Adam step moves each weight by at most ~1e-4 (Adam's step is bounded by
    lr), where lr 3e-2 moves some by ~3e-2."""
    a = Learner(SMALL, LearnerConfig(lr=3e-2))
    a.train_step(batch(0))
    a.save_checkpoint(tmp_path / "ck.pt")
    steps = {}
    for lr in (3e-2, 1e-4):
        b, _ = Learner.resume(tmp_path / "ck.pt", LearnerConfig(lr=lr))
        assert [g["lr"] for g in b.optimizer.param_groups] == [lr]
        before = [p.detach().clone() for p in b.online.parameters()]
        b.train_step(batch(1))
        steps[lr] = max(
            float((p.detach() - q).abs().max())
            for p, q in zip(b.online.parameters(), before, strict=True)
        )
    assert steps[1e-4] <= 1.5e-4
    assert steps[3e-2] > 1e-2


def test_acting_weights_are_a_moving_average_of_the_online_weights(tmp_path: Path) -> None:
    """acting <- acting + tau * (online_after_step - acting), checked by hand for two steps."""
    tau = 0.25
    learner = Learner(SMALL, LearnerConfig(acting_tau=tau))
    w0 = [p.detach().clone() for p in learner.online.parameters()]
    for p, q in zip(learner.acting.parameters(), w0, strict=True):
        assert torch.equal(p, q)  # starts at the online weights
    learner.train_step(batch(0))
    w1 = [p.detach().clone() for p in learner.online.parameters()]
    learner.train_step(batch(1))
    w2 = [p.detach().clone() for p in learner.online.parameters()]
    moved = 0
    for pa, a0, a1, a2 in zip(learner.acting.parameters(), w0, w1, w2, strict=True):
        e1 = 0.75 * a0 + 0.25 * a1
        e2 = 0.75 * e1 + 0.25 * a2
        torch.testing.assert_close(pa, e2, rtol=1e-5, atol=1e-6)
        moved += int(not torch.equal(a2, a0))
    assert moved > 0
    # the acting net is what robots load by default; older publications fall back to online
    learner.publish(tmp_path)
    _, tensors, meta = load_latest(tmp_path)
    acting = load_network(tensors, meta, "acting")
    for pa, pb in zip(acting.parameters(), learner.acting.parameters(), strict=True):
        assert torch.equal(pa, pb)
    only_online = {k: v for k, v in tensors.items() if k.startswith("online.")}
    fallback = load_network(only_online, meta, "acting")
    for pa, pb in zip(fallback.parameters(), learner.online.parameters(), strict=True):
        assert torch.equal(pa, pb)
    # tau = 0: act with the online weights
    plain = Learner(SMALL, LearnerConfig(acting_tau=0.0))
    plain.train_step(batch(0))
    for pa, pb in zip(plain.acting.parameters(), plain.online.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_publish_versions_and_arch_mismatch(tmp_path: Path) -> None:
    learner = Learner(SMALL)
    assert learner.publish(tmp_path) == 1
    assert learner.publish(tmp_path) == 2
    version, tensors, meta = load_latest(tmp_path)
    assert version == 2
    net = load_network(tensors, meta, "target1")
    assert net.cfg == SMALL
    other = QNetConfig(**{**SMALL.to_dict(), "tower_channels": 16})
    with pytest.raises(WeightsError, match="tower_channels: weights have 8, model wants 16"):
        load_network(tensors, meta, expected=other)
    with pytest.raises(WeightsError, match="no published"):
        load_latest(tmp_path / "nothing")
    # a truncated weights file or a malformed pointer is a WeightsError, not a raw
    # SafetensorError / KeyError
    broken = tmp_path / "broken"
    broken.mkdir()
    latest = json.loads((tmp_path / "q-latest.json").read_text())
    data = (tmp_path / latest["file"]).read_bytes()
    (broken / latest["file"]).write_bytes(data[: len(data) // 3])
    (broken / "q-latest.json").write_text(json.dumps(latest))
    with pytest.raises(WeightsError, match="cannot read weights"):
        load_latest(broken)
    with pytest.raises(WeightsError, match="cannot read weights"):
        load_version(broken, latest["version"])
    (broken / "q-latest.json").write_text(json.dumps({"version": 3}))
    with pytest.raises(WeightsError, match=r"malformed q-latest\.json"):
        load_latest(broken)
    ck = tmp_path / "ck.pt"
    Learner(other).save_checkpoint(ck)
    with pytest.raises(WeightsError, match="different architecture"):
        Learner(SMALL).load_state(torch.load(ck, weights_only=True))
    # a checkpoint written before a config field existed loads with that field's default
    Learner(SMALL).save_checkpoint(ck)
    old = torch.load(ck, weights_only=True)
    del old["qnet"]["stem"]
    Learner(SMALL).load_state(old)


def test_cem_policy_reloads_newer_weights(tmp_path: Path) -> None:
    learner = Learner(SMALL)
    learner.publish(tmp_path)
    pol = CEMPolicy(["a", "b"], weights_dir=tmp_path, cem=CEMConfig(samples=16, elites=4))
    assert pol.version == 1 and not pol.maybe_reload()
    learner.publish(tmp_path)
    assert pol.maybe_reload() and pol.version == 2
    pol.reset("b", np.random.default_rng(0))
    a = pol.act(Observation(np.zeros((32, 32, 3), np.uint8), np.zeros(2, np.float32)))
    assert a.shape == (6,) and np.all(np.abs(a) <= 1)
    with pytest.raises(ValueError, match="no task"):
        pol.reset("c", np.random.default_rng(0))
    # newer weights that cannot be read (pruned or cut short between the two reads): the
    # policy acts on with the weights it holds (a robot process used to die of it)
    learner.publish(tmp_path)
    (tmp_path / "q-00000003.safetensors").write_bytes(b"cut short")
    assert not pol.maybe_reload() and pol.version == 2
    learner.publish(tmp_path)
    assert pol.maybe_reload() and pol.version == 4
    # a policy with no weights yet still fails loudly
    (tmp_path / "q-00000004.safetensors").write_bytes(b"cut short")
    with pytest.raises(WeightsError, match="cannot read weights"):
        CEMPolicy(["a", "b"], weights_dir=tmp_path)


def test_contextual_bandit_is_learned() -> None:
    """Reward 1 iff sign(dx) matches the task (task 0: dx > 0, task 1: dx < 0) and the
    image's brightness says whether dz should be up or down. CEM must recover it."""
    torch.manual_seed(0)
    cfg = QNetConfig(
        num_tasks=2, image_size=32, tower_channels=16, merge_size=8, head_channels=16, fc_units=64
    )
    learner = Learner(cfg, LearnerConfig(lr=1e-3))
    g = torch.Generator().manual_seed(0)
    for _ in range(800):
        n = 64
        bright = torch.randint(0, 2, (n,), generator=g)
        imgs = (bright[:, None, None, None] * 200 + 20).expand(n, 32, 32, 3).to(torch.uint8)
        task = torch.randint(0, 2, (n,), generator=g)
        a = torch.rand(n, 6, generator=g) * 2 - 1
        want_dx = torch.where(task == 0, 1.0, -1.0)
        want_dz = torch.where(bright == 1, 1.0, -1.0)
        r = ((a[:, 0] * want_dx > 0) & (a[:, 2] * want_dz > 0)).float()
        learner.train_step(TrainBatch(imgs, torch.zeros(n, 2), a, task, r))
    net = learner.online.eval()
    for task, bright, precision in itertools.product((0, 1), (0, 1), ("fp32", "bf16")):
        img = torch.full((1, 32, 32, 3), bright * 200 + 20, dtype=torch.uint8)
        best, q_cem = cem_argmax(
            net,
            img,
            torch.zeros(1, 2),
            torch.tensor([task]),
            CEMConfig(precision=precision),  # type: ignore[arg-type]
            torch.Generator().manual_seed(0),
        )
        assert best[0, 0].item() * (1 if task == 0 else -1) > 0
        assert best[0, 2].item() * (1 if bright else -1) > 0
        if precision == "fp32":
            q = net(img, torch.zeros(1, 2), best, torch.tensor([task]))
            assert q.item() == pytest.approx(q_cem.item(), abs=1e-5)
            worst = best.clone()
            worst[0, 0] = -worst[0, 0]
            q_worst = net(img, torch.zeros(1, 2), worst, torch.tensor([task]))
            assert q.item() > 0.5 and q.item() - q_worst.item() > 0.3


def test_tensorboard_scalars_and_batch_checks(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    learner = Learner(SMALL, LearnerConfig(log_every=2), logdir=tmp_path / "tb")
    for i in range(4):
        learner.train_step(batch(i), ("lift", "place"))
    learner.close()
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"learner/loss", "learner/q_mean", "q_per_task/lift", "q_per_task/place"} <= tags
    assert [e.step for e in acc.Scalars("learner/loss")] == [2, 4]
    bad = batch(0)
    with pytest.raises(ValueError, match=r"targets must be .* in \[0, 1\]"):
        learner.train_step(
            TrainBatch(bad.images, bad.states, bad.actions, bad.task_idx, bad.targets * 3)
        )
    with pytest.raises(ValueError, match=r"task_idx must lie in \[0, 2\)"):
        learner.train_step(
            TrainBatch(bad.images, bad.states, bad.actions, bad.task_idx + 5, bad.targets)
        )


def test_a_resume_replaces_the_tensorboard_steps_logged_after_its_checkpoint(
    tmp_path: Path,
) -> None:
    """Steps 3-5 were logged after the checkpoint at step 2, then the run was killed; the
    resumed learner logs steps 3 and 4 anew. The curves used to show both trainings at
    those steps (loss steps 1, 2, 3, 4, 5, 3, 4)."""
    cfg, tb = LearnerConfig(log_every=1), tmp_path / "tb"
    a = Learner(SMALL, cfg, logdir=tb)
    for i in range(2):
        a.train_step(batch(i))
    a.save_checkpoint(tmp_path / "ck.pt")
    for i in range(2, 5):
        a.train_step(batch(i))
    a._writer.flush()  # what the killed run's writer had written
    killed = {e.step: e.value for e in _scalars(tb, "learner/loss")}
    import time

    time.sleep(1.1)  # event files sort by their second: the resumed process's is later
    b, _ = Learner.resume(tmp_path / "ck.pt", dataclasses.replace(cfg, log_every=2), logdir=tb)
    for i in range(2):
        b.train_step(batch(100 + i))
    b.close()
    got = {e.step: e.value for e in _scalars(tb, "learner/loss")}
    # steps 3 and 5 of the killed run are gone although the resumed one logs only step 4
    assert sorted(got) == [1, 2, 4] and got[1] == killed[1] and got[4] != killed[4]


def _scalars(logdir: Path, tag: str) -> list[Any]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir))
    acc.Reload()
    return list(acc.Scalars(tag))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "cannot read checkpoint"),
        (b"not a checkpoint at all", "cannot read checkpoint"),
        (None, "unknown checkpoint format 'Tensor'"),
    ],
)
def test_a_damaged_checkpoint_is_a_clear_error(
    tmp_path: Path, content: bytes | None, message: str
) -> None:
    ck = tmp_path / "learner.pt"
    if content is None:
        torch.save(torch.zeros(3), ck)  # a file torch reads, but no checkpoint
    else:
        ck.write_bytes(content)
    with pytest.raises(WeightsError, match=message):
        Learner.resume(ck)


def test_a_checkpoint_from_newer_code_is_a_clear_error(tmp_path: Path) -> None:
    ck = tmp_path / "learner.pt"
    Learner(SMALL).save_checkpoint(ck)
    state = torch.load(ck, weights_only=True)
    state["qnet"]["hyper_drive"] = True
    torch.save(state, ck)
    with pytest.raises(WeightsError, match="newer version"):
        Learner.resume(ck)


def test_two_publishers_take_turns_and_the_second_same_version_is_refused(
    tmp_path: Path,
) -> None:
    """A publish waits while another holder (here: this test, on its own open file of the
    lock, as another process would) holds the folder's publish lock, and then sees the
    other's version: one with the same number is refused instead of overwriting it."""
    import threading

    from mtopt.qtopt.weights import publish, publish_lock

    tensors = {"w": torch.zeros(2)}
    errors: list[Exception] = []

    starting = threading.Event()

    def second() -> None:
        starting.set()
        try:
            publish(tmp_path, tensors, 1, {"who": "second"}, prefix="sd")
        except WeightsError as exc:
            errors.append(exc)

    with publish_lock(tmp_path, "sd"):
        t = threading.Thread(target=second)
        t.start()
        assert starting.wait(30)
        t.join(0.5)
        assert t.is_alive()  # waiting for the lock
        assert not (tmp_path / "sd-latest.json").exists()  # and wrote nothing
        publish_first = {"w": torch.ones(2)}
        from mtopt.qtopt.weights import atomic_write_bytes, atomic_write_json, save

        # the first publisher's writes, made while it holds the lock
        atomic_write_bytes(tmp_path / "sd-00000001.safetensors", save(publish_first))
        atomic_write_json(
            tmp_path / "sd-latest.json",
            {"version": 1, "file": "sd-00000001.safetensors", "meta": {"who": "first"}},
        )
    t.join(10)
    assert not t.is_alive()
    assert len(errors) == 1 and "not newer" in str(errors[0])
    version, got, meta = load_latest(tmp_path, "sd")
    assert version == 1 and meta["who"] == "first" and torch.equal(got["w"], torch.ones(2))
