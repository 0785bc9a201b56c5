"""Where the learner trains: device choice, clear errors, and (on a GPU machine) a CUDA
learner + Bellman updater whose weights and checkpoints CPU-only robots load unchanged.

The CUDA tests skip where PyTorch sees no GPU (CI); they ran on an H100 (see README).
"""

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from mtopt.qtopt import cem
from mtopt.qtopt.cem import CEMConfig, resolve_device, use_bf16
from mtopt.qtopt.learner import Learner, LearnerConfig, load_network
from mtopt.qtopt.updater import BellmanUpdater
from mtopt.qtopt.weights import load_latest
from mtopt.replay.buffers import ReplayEpisode, TaskBuffers
from qtopt_fixtures import SMALL, batch

torch.set_num_threads(1)
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_device_names_resolve_or_fail_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match="no CUDA GPU"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="no CUDA GPU"):
        Learner(SMALL, LearnerConfig(device="cuda:0"))
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("gpu please")
    with pytest.raises(ValueError, match="only cpu and cuda"):
        resolve_device("meta")
    # "auto" precision on a CPU without AMX stays fp32; asking is always honoured
    assert use_bf16("bf16", "cpu") and not use_bf16("fp32", "cuda")


FakeCpu = Callable[[bool, bool], None]


@pytest.fixture
def fake_cpu(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeCpu]:
    """Fake the CPU's AMX and AVX-512 BF16 probes (cached in ``cem``), so precision tests
    mean the same on every machine; the caches are cleared again afterwards."""

    def fake(amx: bool, avx512_bf16: bool) -> None:
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
        cem.has_fast_bf16.cache_clear()
        cem.has_native_bf16.cache_clear()

    yield fake
    cem.has_fast_bf16.cache_clear()
    cem.has_native_bf16.cache_clear()


@pytest.mark.parametrize(
    ("amx", "avx512_bf16", "auto", "native"),
    [(False, False, False, False), (False, True, False, True), (True, True, True, True)],
)
def test_auto_and_native_precision_follow_the_cpu(
    fake_cpu: FakeCpu, amx: bool, avx512_bf16: bool, auto: bool, native: bool
) -> None:
    """'auto' is bf16 only with AMX; 'native' also with AVX-512 BF16; neither on a GPU."""
    fake_cpu(amx, avx512_bf16)
    assert use_bf16("auto", "cpu") is auto
    assert use_bf16("native", "cpu") is native
    assert not use_bf16("native", "cuda") and not use_bf16("auto", "cuda")
    assert use_bf16("bf16", "cpu") and not use_bf16("fp32", "cpu")
    with pytest.raises(ValueError, match="'native'"):
        CEMConfig(precision="fast").validate()  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'native'"):
        LearnerConfig(precision="fast")  # type: ignore[arg-type]


def test_native_learner_trains_under_bf16_autocast(fake_cpu: FakeCpu) -> None:
    """precision='native' on a CPU with AVX-512 BF16 (no AMX) runs the forward pass in
    bf16 (the loss still fp32 and finite); without native bf16 it is the fp32 step
    exactly."""
    b = batch(3)
    steps = {}
    for native in (False, True):
        fake_cpu(False, native)
        for precision in ("fp32", "native"):
            learner = Learner(SMALL, LearnerConfig(precision=precision, seed=1))
            steps[native, precision] = learner.train_step(b)["loss"]
    assert steps[False, "native"] == steps[False, "fp32"]
    assert np.isfinite(steps[True, "native"]) and steps[True, "native"] != steps[True, "fp32"]


def _buffers() -> TaskBuffers:
    rng = np.random.default_rng(0)
    buf = TaskBuffers(["a", "b"], capacity_per_bucket=10)
    for i in range(6):
        t = 3
        ep = ReplayEpisode(
            f"e{i}",
            "ab"[i % 2],
            rng.integers(0, 255, (t + 1, 32, 32, 3), dtype=np.uint8),
            rng.random((t + 1, 2), dtype=np.float32),
            rng.uniform(-1, 1, (t, 6)).astype(np.float32),
        )
        buf.add(ep, [("a", float(i % 3 == 0)), ("b", float(i % 3 == 1))])
    return buf


@cuda
def test_cuda_learner_matches_the_cpu_learner_and_publishes_cpu_weights(tmp_path: Path) -> None:
    torch.backends.cudnn.allow_tf32 = False  # compare fp32 with fp32
    torch.backends.cuda.matmul.allow_tf32 = False
    cpu = Learner(SMALL, LearnerConfig(target_period=2))
    gpu = Learner(SMALL, LearnerConfig(target_period=2, device="cuda"))
    assert next(gpu.online.parameters()).is_cuda
    for i in range(5):  # CPU batches: the learner moves them
        a, b = cpu.train_step(batch(i)), gpu.train_step(batch(i))
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-3, abs=1e-5)
    for pc, pg in zip(cpu.online.parameters(), gpu.online.parameters(), strict=True):
        torch.testing.assert_close(pc, pg.cpu(), rtol=1e-3, atol=1e-4)
    gpu.publish(tmp_path / "w")
    _, tensors, meta = load_latest(tmp_path / "w")
    assert all(t.device.type == "cpu" for t in tensors.values())
    load_network(tensors, meta, "acting")  # what a CPU robot does


@cuda
def test_cuda_checkpoint_resumes_exactly_on_cuda_and_loads_on_cpu(tmp_path: Path) -> None:
    cfg = LearnerConfig(target_period=3, image_shift=2, device="cuda")
    a = Learner(SMALL, cfg)
    for i in range(3):
        a.train_step(batch(i))
    a.save_checkpoint(tmp_path / "ck.pt")
    snap = {k: v.cpu().clone() for k, v in a.online.state_dict().items()}
    for i in range(3, 6):
        a.train_step(batch(i))
    b, _ = Learner.resume(tmp_path / "ck.pt", cfg)
    for i in range(3, 6):
        b.train_step(batch(i))
    assert b.step == 6 and next(b.online.parameters()).is_cuda
    for pa, pb in zip(a.online.parameters(), b.online.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)  # cuDNN may reorder sums
    on_cpu, _ = Learner.resume(tmp_path / "ck.pt", LearnerConfig(target_period=3))
    assert on_cpu.device.type == "cpu" and on_cpu.step == 3
    for k, v in on_cpu.online.state_dict().items():
        assert torch.equal(v, snap[k])
    on_cpu.train_step(batch(9))  # the optimizer state came over to the CPU too


@cuda
def test_bellman_updater_on_cuda_feeds_a_cuda_learner() -> None:
    learner = Learner(SMALL, LearnerConfig(device="cuda"))
    cem = CEMConfig(iterations=2, samples=16, elites=4)
    up = BellmanUpdater(_buffers(), learner.targets, cem, batch_size=8, seed=1)
    tb = up.make_batch()
    assert tb.targets.is_cuda and tb.images.is_cuda
    assert bool(((tb.targets >= 0) & (tb.targets <= 1)).all())
    stats = learner.train_step(tb)
    assert np.isfinite(stats["loss"])


@cuda
def test_a_network_moved_to_the_gpu_after_a_search_searches_there() -> None:
    """The fast path's cached weight maps were keyed by each parameter's id and version,
    which ``.to(device)`` keeps: the next search used the CPU maps and failed."""
    from mtopt.qtopt.cem import cem_argmax
    from mtopt.qtopt.networks import QNetwork

    torch.manual_seed(0)
    net = QNetwork(SMALL).eval()
    b = batch(0)
    cfg = CEMConfig(samples=16, elites=4, precision="fp32")
    with torch.no_grad():
        cem_argmax(net, b.images, b.states, b.task_idx, cfg, torch.Generator().manual_seed(0))
        net.to("cuda")
        g = torch.Generator("cuda").manual_seed(0)
        a, q = cem_argmax(net, b.images.cuda(), b.states.cuda(), b.task_idx.cuda(), cfg, g)
    assert a.device.type == "cuda" and torch.isfinite(q).all()
