"""The learner: SGD (Adam) on the Q-network from (s, a, task, target) batches.

Owns the online network and the two lagged target networks, logs to TensorBoard,
publishes versioned weights for robots and Bellman updaters, and checkpoints atomically
so that a resumed run continues exactly (model, targets, optimizer, step, RNG state).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import torch

from mtopt._images import random_shift
from mtopt._io import atomic_write_bytes
from mtopt._signals import deferred_interrupts
from mtopt.qtopt.bellman import TrainBatch
from mtopt.qtopt.cem import precision_context, resolve_device
from mtopt.qtopt.loss import q_loss
from mtopt.qtopt.networks import QNetConfig, QNetwork, frozen_copy
from mtopt.qtopt.weights import WeightsError, check_config, publish, split_prefixed

CHECKPOINT_FORMAT = 1


@dataclass(frozen=True)
class LearnerConfig:
    lr: float = 3e-4
    """Adam learning rate."""
    gamma: float = 0.9
    """Discount (QT-Opt: 0.9)."""
    task_gamma: dict[str, float] = field(default_factory=dict)
    """Discounts other than ``gamma`` for some tasks, by task or skill name (a task's
    own entry first, then its skill's), e.g. ``{"place": 0.96}`` (``--set
    'learner.task_gamma={"place": 0.96}'``). Each task's transitions, impersonated ones
    too, are discounted by its own: a task is its own MDP to the task-conditioned Q.
    Not in MT-Opt (one discount); empty, the default, is ``gamma`` for all. Why one
    might: at 0.9 each step costs a tenth of the value, so a policy that could lower a
    held object before releasing it (94% on the plate from 4 cm, 78% from 8-27 cm, an
    oracle's drops at its centre) drops it from where it is instead. A resume that adds
    or drops an entry logs it as ``learner.task_gamma.place: None -> 0.96`` (None: that
    name had no entry, so ``gamma``)."""
    target_update: Literal["periodic", "polyak"] = "periodic"
    """'periodic': every target_period steps target2 <- target1 <- online; 'polyak': moving averages."""
    target_period: int = 100
    """Steps between periodic target updates."""
    polyak_tau: float = 0.01
    """Polyak rate of target 1 (target 2 uses tau / 2)."""
    grad_clip: float = 10.0
    """Max gradient norm (0: off)."""
    seed: int = 0
    """Seed of the network initialisation."""
    precision: Literal["fp32", "bf16", "auto", "native"] = "fp32"
    """Forward pass under bf16 autocast ('auto': only on CPUs with AMX; 'native': on any
    CPU with native bf16 arithmetic, AMX or AVX-512 BF16, as ``CEMConfig.precision``).
    Weights, Adam state and the loss stay fp32. With the tower's GroupNorm
    (QNetConfig.norm) bf16 is no faster on CPU; without it, ~2.4x (see
    benchmarks/learner_speed.py). Run r36 (native learner and targets, ~1.4x the steps
    per hour) matched the fp32 runs' 3-hour success at 145 minutes, and at 3 hours was
    3-4 points under them (not significant; docs/learning-history.md)."""
    log_every: int = 25
    """Steps between TensorBoard scalars."""
    acting_tau: float = 0.001
    """Robots and evaluation act with an exponential moving average of the online
    weights (QT-Opt), updated by this rate every step (~1 / tau steps of memory; 0: act
    with the online weights). Successive online weights can differ a lot: in run r7 the
    in-run success of place-any swung 0.20-0.45 within a few thousand steps."""
    image_shift: int = 0
    """Random-shift augmentation of the training images: each image is translated by up
    to this many pixels (border replicated) before the Q-network sees it (DrQ; QT-Opt
    trains on random crops). 0: off, the default: run r10 (the local preset with a
    4-pixel shift) learned placing far slower than r9 without it (place-any 0.07 vs 0.30
    held-out over learner steps 5k-10.6k). The camera is fixed and the actions are in
    the robot's frame, so where a thing is in the image is information a shift blurs."""
    mc_bound: bool = False
    """Raise every Bellman target to the episode's own discounted return (R_final *
    gamma ** steps_to_go): the actions of a successful episode are worth at least what
    they achieved. Not part of QT-Opt; off by default (see qtopt.bellman)."""
    mc_mix: float = 0.0
    """Mix the episode's own discounted return into every Bellman target with this
    weight, in [0, 1] (see qtopt.bellman.mc_mix). Not part of QT-Opt; 0: off."""
    device: str = "cpu"
    """Where the networks train: "cpu", "cuda", "cuda:N" or "auto" (a GPU where PyTorch
    sees one). Batches move there; published weights and checkpoints are written from
    CPU copies, so robots and CPU-only machines load them unchanged."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.mc_mix <= 1.0:
            raise ValueError(f"learner.mc_mix must be in [0, 1], got {self.mc_mix}")
        if self.precision not in ("fp32", "bf16", "auto", "native"):
            raise ValueError(
                "learner.precision must be 'fp32', 'bf16', 'auto' or 'native', "
                f"got {self.precision!r}"
            )
        # (a Learner made from Python: RunConfig.validate checks these for a run too) a
        # typo ran Polyak averaging, a period of 0 divided by zero at the first step
        if self.target_update not in ("periodic", "polyak"):
            raise ValueError(
                f"learner.target_update must be 'periodic' or 'polyak', got {self.target_update!r}"
            )
        if not (isinstance(self.target_period, int) and self.target_period >= 1):
            raise ValueError(
                f"learner.target_period must be >= 1 (an int), got {self.target_period!r}"
            )
        if not 0.0 < self.polyak_tau <= 1.0:
            raise ValueError(f"learner.polyak_tau must be in (0, 1], got {self.polyak_tau}")


class Learner:
    def __init__(
        self,
        qnet: QNetConfig,
        cfg: LearnerConfig = LearnerConfig(),
        logdir: str | Path | None = None,
    ):
        self.qnet_cfg = qnet.validate()
        self.cfg = cfg
        self.task_names: tuple[str, ...] = ()
        """The tasks of the network's inputs, in order, when the runtime says (published
        with the weights, so a network grown from them knows what its inputs were)."""
        self.device = resolve_device(cfg.device)
        torch.manual_seed(cfg.seed)
        # initialised on the CPU, then moved: the same seed gives the same net everywhere
        self.online = QNetwork(qnet).to(self.device)
        self.targets = [frozen_copy(self.online), frozen_copy(self.online)]
        self.acting = frozen_copy(self.online)
        self.optimizer = torch.optim.Adam(self.online.parameters(), lr=cfg.lr)
        self._aug_rng = torch.Generator().manual_seed(cfg.seed)
        self.step = 0
        self.version = 0
        self.target_version = 0
        """Counts target-network updates (a background Bellman updater copies on change)."""
        self._writer: Any = None
        self._purge_step: int | None = None
        """After a checkpoint is loaded: TensorBoard points from this step on, logged by
        the run that was killed after the checkpoint, are replaced by the resumed ones."""
        self._logdir = Path(logdir) if logdir else None
        self.origin: str | None = network_digest(self.online)
        """Names the initial networks these weights were trained from (a digest of their
        parameters: one seed and network config, one origin): published with them and
        kept in checkpoints (a resume keeps it; ``init_from`` takes the source's, or the
        digest of the loaded networks). ``average_into`` refuses to average networks of
        different origins: independently trained networks do not average into a
        network. None: a learner resumed from a checkpoint written before it was kept
        (unknown, not checked)."""

    # -------------------------------------------------------------- training
    def train_step(
        self, batch: TrainBatch, task_names: tuple[str, ...] | None = None
    ) -> dict[str, float]:
        self._check(batch)
        batch = batch.to(self.device)
        self.online.train()
        images = batch.images
        if self.cfg.image_shift:
            images = random_shift(images, self.cfg.image_shift, self._aug_rng)
        with precision_context(self.cfg.precision, self.device):
            logits = self.online.logits(images, batch.states, batch.actions, batch.task_idx).float()
        loss = q_loss(logits, batch.targets)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.online.parameters(), self.cfg.grad_clip)
        # a stop (Ctrl-C, SIGTERM) waits for the whole update: a checkpoint never holds
        # some parameters stepped and others not, or a target network half copied
        with deferred_interrupts():
            self.optimizer.step()
            self.step += 1
            self._update_targets()
            self._update_acting()
        with torch.no_grad():
            q = torch.sigmoid(logits)
            values = torch.stack([loss.detach(), q.mean(), batch.targets.mean()]).tolist()
        stats = dict(zip(("loss", "q_mean", "target_mean"), values, strict=True))
        self._log(stats, q, batch, task_names)
        return stats

    def _check(self, batch: TrainBatch) -> None:
        n = len(batch)
        if n == 0:
            raise ValueError("empty training batch")
        t, y = batch.task_idx, batch.targets
        if y.shape != (n,):
            raise ValueError(f"targets must have shape ({n},), got {tuple(y.shape)}")
        # one device -> host copy for all four (each read of a GPU value waits for the GPU)
        t_lo, t_hi, y_lo, y_hi = torch.stack(
            [t.min().float(), t.max().float(), y.min().float(), y.max().float()]
        ).tolist()
        if t_lo < 0 or t_hi >= self.qnet_cfg.num_tasks:
            raise ValueError(
                f"task_idx must lie in [0, {self.qnet_cfg.num_tasks}), got {t_lo:.0f}..{t_hi:.0f}"
            )
        if not (y_lo >= 0 and y_hi <= 1):  # also catches NaN
            raise ValueError(
                f"targets must be values in [0, 1] (Q is a sigmoid), got range {y_lo:.3g}..{y_hi:.3g}"
            )

    @torch.no_grad()
    def _update_targets(self) -> None:
        if self.cfg.target_update == "periodic":
            if self.step % self.cfg.target_period == 0:
                self.targets[1].load_state_dict(self.targets[0].state_dict())
                self.targets[0].load_state_dict(self.online.state_dict())
                self.target_version += 1
        else:
            for net, tau in (
                (self.targets[0], self.cfg.polyak_tau),
                (self.targets[1], self.cfg.polyak_tau / 2),
            ):
                _polyak(net, self.online, tau)
            self.target_version += 1

    @torch.no_grad()
    def _update_acting(self) -> None:
        if self.cfg.acting_tau <= 0:
            self.acting.load_state_dict(self.online.state_dict())
        else:
            _polyak(self.acting, self.online, self.cfg.acting_tau)

    def _log(
        self,
        stats: dict[str, float],
        q: torch.Tensor,
        batch: TrainBatch,
        task_names: tuple[str, ...] | None,
    ) -> None:
        if self._logdir is None or self.step % self.cfg.log_every:
            return
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            # a resume's curves had both trainings' points at each step logged after the
            # checkpoint (the purge mark is written once, by the first writer)
            self._writer = SummaryWriter(str(self._logdir), purge_step=self._purge_step)
            self._purge_step = None
        for k, v in stats.items():
            self._writer.add_scalar(f"learner/{k}", v, self.step)
        for t in batch.task_idx.unique().tolist():
            name = task_names[t] if task_names else str(t)
            mask = batch.task_idx == t
            self._writer.add_scalar(f"q_per_task/{name}", float(q[mask].mean()), self.step)
            self._writer.add_scalar(
                f"target_per_task/{name}", float(batch.targets[mask].mean()), self.step
            )

    def close(self) -> None:
        """Flush and close the TensorBoard writer (if any)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    # -------------------------------------------------------------- weights
    def meta(self) -> dict[str, Any]:
        meta: dict[str, Any] = {"qnet": self.qnet_cfg.to_dict(), "step": self.step}
        if self.task_names:
            meta["tasks"] = list(self.task_names)
        if self.origin:
            meta["origin"] = self.origin
        return meta

    def publish(self, directory: str | Path, untrained: bool = False) -> int:
        """Publish online, acting and target weights as the next version; returns it.
        ``untrained``: networks no robot should act with (``meta["untrained"]``), which
        robots' ``PolicyProvider`` passes over: it acts scripted until the next version."""
        self.version += 1
        nets = {"online": self.online, "acting": self.acting}
        nets.update({f"target{i}": t for i, t in enumerate(self.targets)})
        tensors = {
            f"{name}.{k}": v.cpu()
            for name, net in nets.items()
            for k, v in net.state_dict().items()
        }
        meta = self.meta() | ({"untrained": True} if untrained else {})
        publish(directory, tensors, self.version, meta)
        return self.version

    # -------------------------------------------------------------- checkpoints
    def state(self) -> dict[str, Any]:
        np_state: Any = np.random.get_state()  # ("MT19937", keys, pos, has_gauss, gauss)
        return {
            "format": CHECKPOINT_FORMAT,
            "qnet": self.qnet_cfg.to_dict(),
            # its settings too: a resume without a config continues the same experiment
            "learner": dataclasses.asdict(self.cfg),
            "online": self.online.state_dict(),
            "targets": [t.state_dict() for t in self.targets],
            "acting": self.acting.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "version": self.version,
            "torch_rng": torch.get_rng_state(),
            "augment_rng": self._aug_rng.get_state(),
            "numpy_rng": np_state[1].tolist(),
            "numpy_pos": int(np_state[2]),
            # the normal sampler's cached second value (np.random.normal draws in pairs)
            "numpy_gauss": [int(np_state[3]), float(np_state[4])],
            "python_rng": repr(random.getstate()),
            "origin": self.origin or "",
        }

    def save_checkpoint(self, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
        if self._writer is not None:
            self._writer.flush()
        buf = io.BytesIO()
        torch.save({**self.state(), "extra": extra or {}}, buf)
        return atomic_write_bytes(path, buf.getvalue())

    @classmethod
    def resume(
        cls, path: str | Path, cfg: LearnerConfig | None = None, logdir: str | Path | None = None
    ) -> tuple[Learner, dict[str, Any]]:
        """Rebuild a learner from a checkpoint; returns (learner, extra). Without ``cfg``
        it takes the settings the checkpoint was saved with (``LearnerConfig()`` for a
        checkpoint from before they were kept), on this machine's device when the saved
        one is not here (a GPU checkpoint resumed on a CPU); ``cfg`` changes them
        (``mtopt run --resume --set learner.lr=...``)."""
        try:
            # tensors land on the CPU first, wherever they were saved from; load_state
            # copies them onto this learner's device
            ck = torch.load(path, weights_only=True, map_location="cpu")
        except FileNotFoundError:
            raise WeightsError(f"checkpoint not found: {path}") from None
        except Exception as exc:  # truncated, empty, foreign: pickle, EOF, zip errors
            raise WeightsError(
                f"cannot read checkpoint {path} (corrupt, or not an mtopt checkpoint): "
                f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            ) from None
        if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT:
            found = ck.get("format") if isinstance(ck, dict) else type(ck).__name__
            raise WeightsError(f"unknown checkpoint format {found!r} in {path}")
        qcfg = known_settings(QNetConfig, ck["qnet"], f"checkpoint {path}", "Q-network")
        if cfg is None:
            cfg = known_settings(
                LearnerConfig, ck.get("learner", {}), f"checkpoint {path}", "learner"
            )
            try:  # the machine's, not the experiment's: a GPU checkpoint resumes on a CPU
                resolve_device(cfg.device)
            except ValueError as exc:
                logging.getLogger(__name__).warning(
                    "%s; resuming on %s", exc, resolve_device("auto")
                )
                cfg = dataclasses.replace(cfg, device="auto")
        learner = cls(qcfg, cfg, logdir)
        learner.load_state(ck)
        return learner, dict(ck.get("extra", {}))

    def load_state(self, ck: dict[str, Any]) -> None:
        # QNetConfig(**...) fills fields added after the checkpoint was written (defaults)
        check_config(self.qnet_cfg.to_dict(), QNetConfig(**ck["qnet"]).to_dict(), "checkpoint")
        self.online.load_state_dict(ck["online"])
        for t, sd in zip(self.targets, ck["targets"], strict=True):
            t.load_state_dict(sd)
        self.target_version += 1
        # checkpoints from before acting weights existed start the average at the online net
        self.acting.load_state_dict(ck.get("acting", ck["online"]))
        self.optimizer.load_state_dict(ck["optimizer"])
        # Adam's state keeps the learning rate it was saved with; a resume with another
        # ``lr`` (``mtopt run --resume --set learner.lr=...``) means the new one
        for group in self.optimizer.param_groups:
            group["lr"] = self.cfg.lr
        self.step = int(ck["step"])
        origin = ck.get("origin")  # a checkpoint from before it was kept: unknown
        self.origin = str(origin) if origin else None
        self._purge_step = self.step + 1
        self.version = int(ck["version"])
        torch.set_rng_state(ck["torch_rng"])
        if "augment_rng" in ck:  # checkpoints from before augmentation keep the fresh seed
            self._aug_rng.set_state(ck["augment_rng"])
        has_gauss, gauss = ck.get("numpy_gauss", (0, 0.0))  # older checkpoints: none
        np.random.set_state(
            (
                "MT19937",
                np.array(ck["numpy_rng"], dtype=np.uint32),
                ck["numpy_pos"],
                int(has_gauss),
                float(gauss),
            )
        )
        import ast

        random.setstate(ast.literal_eval(ck["python_rng"]))


S = TypeVar("S")


def network_digest(net: torch.nn.Module) -> str:
    """A short digest of ``net``'s parameters and buffers (names, shapes, values)."""
    h = hashlib.sha256()
    for name, t in sorted(net.state_dict().items()):
        v = t.detach().to("cpu", torch.float32).contiguous()
        h.update(f"{name}:{tuple(v.shape)};".encode())
        h.update(v.numpy().tobytes())
    return h.hexdigest()[:16]


def known_settings(cls: Callable[..., S], values: dict[str, Any], where: str, kind: str) -> S:
    """``cls(**values)``, or a ``WeightsError`` when ``values`` has a field this mtopt
    does not know (a newer version wrote it)."""
    try:
        return cls(**values)
    except TypeError as exc:
        raise WeightsError(
            f"{where} has a {kind} setting this mtopt does not know ({exc}); was it written "
            "by a newer version?"
        ) from None


@torch.no_grad()
def _polyak(dst: torch.nn.Module, src: torch.nn.Module, tau: float) -> None:
    """dst <- dst + tau * (src - dst), parameter by parameter."""
    for pd, ps in zip(dst.parameters(), src.parameters(), strict=True):
        pd.lerp_(ps, tau)


def load_network(
    tensors: dict[str, torch.Tensor],
    meta: dict[str, Any],
    part: str = "online",
    expected: QNetConfig | None = None,
) -> QNetwork:
    """Build a QNetwork from published tensors (``part``: online, acting, target0 or
    target1; ``acting`` falls back to ``online`` for weights published before it existed)."""
    if not isinstance(meta.get("qnet"), dict):
        raise WeightsError("published weights have no Q-network settings (meta 'qnet')")
    cfg = known_settings(QNetConfig, meta["qnet"], "published weights", "Q-network")
    if expected is not None:
        check_config(expected.to_dict(), cfg.to_dict(), "published weights")
    net = QNetwork(cfg)
    sd = split_prefixed(tensors, part)
    if not sd and part == "acting":
        sd = split_prefixed(tensors, "online")
    if not sd:
        raise WeightsError(f"published weights have no '{part}' network")
    try:
        net.load_state_dict(sd)
    except RuntimeError as exc:  # missing keys, shapes: the settings do not fit the tensors
        first = str(exc).strip().splitlines()[:3]
        raise WeightsError(
            "published weights do not fit the Q-network their settings (meta 'qnet') "
            f"describe: {' '.join(s.strip() for s in first)}"
        ) from None
    net.eval()
    return net
