"""Cross-entropy method over the action space (QT-Opt: 2 iterations, 64 samples, 6 elites).

The continuous part (dx, dy, dz, dyaw) is a diagonal Gaussian clipped to [-1, 1] with a
standard-deviation floor (the distribution can never collapse to a point); the binary
commands (gripper, terminate) are independent Bernoulli variables refitted from the
elites, with a probability floor. Everything is batched over B states x N samples: no
per-sample Python loop.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import torch

from mtopt.qtopt.networks import QNetwork
from mtopt.robots.action import ACTION_DIM, BINARY_DIMS, CONTINUOUS_DIMS, IDX_GRIPPER

N_CONT = len(CONTINUOUS_DIMS)
N_BIN = len(BINARY_DIMS)
assert tuple(CONTINUOUS_DIMS) == tuple(range(N_CONT)) and N_CONT + N_BIN == ACTION_DIM


@dataclass(frozen=True)
class CEMConfig:
    iterations: int = 2
    """CEM iterations (QT-Opt: 2)."""
    samples: int = 64
    """Candidate actions per state and iteration (QT-Opt: 64)."""
    elites: int = 6
    """Best candidates refitted each iteration (QT-Opt: 6)."""
    init_std: float = 0.6
    """Initial standard deviation of the continuous dims (mean starts at 0)."""
    min_std: float = 0.01
    """Standard-deviation floor (variance 1e-4)."""
    min_prob: float = 0.02
    """Probability floor for the binary commands."""
    pick: Literal["best", "mean"] = "best"
    """What CEM returns. 'best': the best-scoring sample seen (QT-Opt). 'mean': the last
    refit's mean for the continuous dims with each binary command set to its likelier
    value, scored by one more evaluation: where Q is noisy between nearby actions, the
    mean of the elites may be a steadier choice than the one sample that scored highest
    (on an exact quadratic, 2 x 64 samples: a median 0.73 against 0.93 cm from the
    optimum; on run r28's learned weights no better in success). For acting; Bellman
    targets want 'best' (a max)."""
    gripper: Literal["joint", "split"] = "joint"
    """How the gripper command is searched. 'joint': a Bernoulli variable sampled and
    refitted with the rest (QT-Opt). 'split': CEM runs twice per state, once with the
    gripper open and once closed (each with ``samples`` candidates), and the better
    branch wins; the close branch must beat the open one by ``close_margin``. Twice
    the candidate evaluations. On r28's weights no better than 'joint' (README)."""
    close_margin: float = 0.0
    """With gripper='split': close only where Q(best closing action) >= Q(best open
    action) + close_margin (Q in [0, 1]); > 0 makes the policy aim before it closes.
    ``cem_argmax`` applies it wherever it runs, so set it for acting (``cem_act``) only:
    a Bellman target wants the max (margin 0)."""
    release_margin: float = 0.0
    """With gripper='split': where the gripper holds something now (the state's measured
    closure, feature 0, between ``CLOSED_ABOVE`` and ``HOLDING_BELOW``), open it
    only where Q(best open action) >= Q(best closing action) + release_margin; where it
    is open, ``close_margin`` decides as before. > 0 makes a placing policy carry the
    object on until letting go clearly pays: on run r56's weights at 30k steps (800
    held-out scenes, paired) 0.1 placed 68.25% against 59.75% with the joint search
    (+8.5 [4.1, 12.9], p = 0.0002; on seed 6's 400 alone 69.75% against 57.75%, and
    60.5% split without it) and lifted 47.25% against 47.1%; applied to fingers closed
    on nothing too, it lifted 41.25% on seed 6 (slow to open for another try). On the
    same run's weights at 61.7k steps (3 hours) no gain: 67.5% against 69.4% placed (p =
    0.42). So in no preset: it helps an undertrained Q (``mtopt export --act`` picks it
    for a policy folder). For acting only, as close_margin."""
    precision: Literal["fp32", "bf16", "auto", "native"] = "auto"
    """Arithmetic of the Q evaluations: bf16 autocast is ~2-3x faster on CPUs with AMX;
    'auto' picks bf16 only where the CPU has AMX tiles, fp32 elsewhere. 'native' picks
    bf16 on any CPU with native bf16 arithmetic (AMX or AVX-512 BF16: 2.1x faster Bellman
    targets on an AVX-512 BF16 EPYC, learner_speed_avx512.json), fp32 elsewhere and on
    a GPU. bf16 keeps ~3 significant digits of a logit: small beside a Bellman
    target's noise, but an acting argmax compares candidates whose Q differ by less.
    Run r29 (bf16 targets) trained ~20% more steps per hour and learned no better than
    its fp32 twin (docs/learning-history.md), so no preset asks for 'bf16' outright; the
    default 'auto' still uses it on CPUs with AMX (where it is 2-3x faster)."""

    def validate(self) -> CEMConfig:
        if not 1 <= self.elites <= self.samples:
            raise ValueError(
                f"need 1 <= elites <= samples, got elites={self.elites}, samples={self.samples}"
            )
        if self.iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {self.iterations}")
        if not self.init_std > 0:
            raise ValueError(f"init_std must be > 0, got {self.init_std}")
        if not self.min_std >= 0:
            raise ValueError(f"min_std must be >= 0, got {self.min_std}")
        if not 0.0 <= self.min_prob <= 0.5:  # above 0.5 the floor and ceiling cross
            raise ValueError(f"min_prob must be in [0, 0.5], got {self.min_prob}")
        if self.pick not in ("best", "mean"):
            raise ValueError(f"pick must be 'best' or 'mean', got {self.pick!r}")
        if self.gripper not in ("joint", "split"):
            raise ValueError(f"gripper must be 'joint' or 'split', got {self.gripper!r}")
        if not -1.0 <= self.close_margin <= 1.0:
            raise ValueError(f"close_margin must be in [-1, 1], got {self.close_margin}")
        if not -1.0 <= self.release_margin <= 1.0:
            raise ValueError(f"release_margin must be in [-1, 1], got {self.release_margin}")
        if self.release_margin and self.gripper != "split":
            raise ValueError(
                "release_margin needs gripper='split' (the joint search has no branches)"
            )
        if self.close_margin and self.gripper != "split":
            raise ValueError(
                "close_margin needs gripper='split' (the joint search has no branches)"
            )
        if self.precision not in ("fp32", "bf16", "auto", "native"):
            raise ValueError(
                f"precision must be 'fp32', 'bf16', 'auto' or 'native', got {self.precision!r}"
            )
        return self


@functools.cache
def has_fast_bf16() -> bool:
    """True where bf16 matmuls/convs are native (x86 AMX tiles)."""
    try:
        return bool(torch.cpu._is_amx_tile_supported())
    except Exception:  # private API: absent means no
        return False


@functools.cache
def has_native_bf16() -> bool:
    """True where the CPU computes bf16 natively: AMX tiles or AVX-512 BF16 (the latter
    speeds the batched Bellman CEM 2.1x but gains less on a single acting state)."""
    try:
        return has_fast_bf16() or bool(torch.cpu._is_avx512_bf16_supported())
    except Exception:  # private API: absent means no
        return False


def use_bf16(precision: str, device: torch.device | str = "cpu") -> bool:
    """bf16 when asked; for "auto" where it is fastest (CPUs with AMX), for "native" on
    any CPU with native bf16 (AMX or AVX-512 BF16). Never by default on a GPU: the
    default network is too small to gain there (casts cost more; learner_speed.py)."""
    if precision not in ("auto", "native"):
        return precision == "bf16"
    if torch.device(device).type != "cpu":
        return False
    return has_fast_bf16() if precision == "auto" else has_native_bf16()


def resolve_device(name: str) -> torch.device:
    """A torch device from a config value: "auto" is the first GPU where there is one,
    else the CPU; a GPU that is not there is a clear error, not a crash later."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; use cpu, cuda, cuda:N or auto") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but PyTorch sees no CUDA GPU here")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device {name!r}: only {torch.cuda.device_count()} GPU(s) here")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device {name!r}: only cpu and cuda devices are supported")
    return dev


@contextlib.contextmanager
def precision_context(precision: str, device: torch.device | str = "cpu") -> Iterator[None]:
    """Autocast to bf16 when ``precision`` asks for it (see ``CEMConfig.precision``)."""
    if use_bf16(precision, device):
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
            yield
    else:
        yield


ScoreFn = Callable[[torch.Tensor], torch.Tensor]


def cem_maximize(
    score_fn: ScoreFn,
    batch_size: int,
    cfg: CEMConfig = CEMConfig(),
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Maximise ``score_fn`` over actions for ``batch_size`` independent problems.

    score_fn: (B, N, ACTION_DIM) actions -> (B, N) scores (higher is better).
    Returns the chosen action for every problem (B, ACTION_DIM) and its score (B,):
    the best sample seen, or with ``cfg.pick == "mean"`` the last refit's mean. With
    ``cfg.gripper == "split"`` the better of the open and the closed branch (no margin:
    a max, as Bellman targets want; ``cem_argmax`` applies ``close_margin``).
    """
    if cfg.gripper == "split":
        acts, scores = cem_maximize_split(score_fn, batch_size, cfg, generator, device)
        closed = scores[:, 1] >= scores[:, 0]
        rows = torch.arange(batch_size, device=acts.device)
        return acts[rows, closed.long()], scores[rows, closed.long()]
    fixed = torch.full((1, N_BIN), torch.nan, device=device)
    acts, scores = _cem_branches(score_fn, batch_size, fixed, cfg, generator, device)
    return acts[:, 0], scores[:, 0]


def cem_maximize_split(
    score_fn: ScoreFn,
    batch_size: int,
    cfg: CEMConfig = CEMConfig(),
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """CEM with the gripper held open (branch 0) and closed (branch 1), each searched
    with ``cfg.samples`` candidates, in one batched pass. Returns every branch's chosen
    action (B, 2, ACTION_DIM) and score (B, 2)."""
    fixed = torch.full((2, N_BIN), torch.nan, device=device)
    g = IDX_GRIPPER - N_CONT
    fixed[0, g], fixed[1, g] = -1.0, 1.0
    return _cem_branches(score_fn, batch_size, fixed, cfg, generator, device)


def _cem_branches(
    score_fn: ScoreFn,
    b: int,
    fixed: torch.Tensor,
    cfg: CEMConfig,
    generator: torch.Generator | None,
    device: torch.device | str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """K independent CEM searches per problem, branch k with the binary commands that
    are not NaN in ``fixed[k]`` held at that value (+1 / -1). score_fn sees all K
    branches' candidates of a problem side by side: (B, K*N, D) -> (B, K*N).
    Returns (B, K, D) actions and (B, K) scores."""
    cfg.validate()
    k, n = int(fixed.shape[0]), cfg.samples
    free = torch.isnan(fixed)  # (K, N_BIN)
    held = torch.nan_to_num(fixed)
    mean = torch.zeros(b, k, N_CONT, device=device)
    std = torch.full((b, k, N_CONT), cfg.init_std, device=device)
    prob = torch.full((b, k, N_BIN), 0.5, device=device)
    best_a = torch.zeros(b, k, ACTION_DIM, device=device)
    best_s = torch.full((b, k), -torch.inf, device=device)
    rows = torch.arange(b, device=device)[:, None, None]
    branch = torch.arange(k, device=device)[None, :, None]
    for _ in range(cfg.iterations):
        eps = torch.randn(b, k, n, N_CONT, generator=generator, device=device)
        cont = (mean[:, :, None] + std[:, :, None] * eps).clamp_(-1.0, 1.0)
        u = torch.rand(b, k, n, N_BIN, generator=generator, device=device)
        bits = (u < prob[:, :, None]).float().mul_(2.0).sub_(1.0)
        bits = torch.where(free[:, None], bits, held[:, None])
        actions = torch.cat([cont, bits], dim=3)  # (B, K, N, D)
        scores = score_fn(actions.reshape(b, k * n, ACTION_DIM)).reshape(b, k, n)
        top_s, top_i = scores.topk(cfg.elites, dim=2)
        elite = actions[rows, branch, top_i]  # (B, K, E, D)
        mean = elite[..., :N_CONT].mean(2)
        std = elite[..., :N_CONT].std(2, unbiased=False).clamp_min(cfg.min_std)
        prob = (elite[..., N_CONT:] > 0).float().mean(2).clamp(cfg.min_prob, 1 - cfg.min_prob)
        better = top_s[..., 0] > best_s
        best_s = torch.where(better, top_s[..., 0], best_s)
        best_a = torch.where(better[..., None], elite[:, :, 0], best_a)
    if cfg.pick == "mean":
        # each command at its elites' majority; an even split (3 of 6) takes the best
        # sample's (it used to close the gripper or TERMINATE on any tie)
        majority = (prob > 0.5).float().mul_(2.0).sub_(1.0)
        bits = torch.where(prob == 0.5, best_a[..., N_CONT:], majority)
        bits = torch.where(free, bits, held)
        centre = torch.cat([mean, bits], dim=2)  # (B, K, D)
        return centre, score_fn(centre).reshape(b, k)
    return best_a, best_s


def repeat_rows(x: torch.Tensor, n: int) -> torch.Tensor:
    """(B, ...) -> (B*n, ...) with every row repeated n times consecutively."""
    return x.repeat_interleave(n, dim=0)


@torch.no_grad()
def candidate_scorer(
    net: QNetwork,
    images: torch.Tensor,
    states: torch.Tensor,
    task_idx: torch.Tensor,
    feats: torch.Tensor | None = None,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The Q logits of candidate actions (B, N, 6) -> (B, N) float32 at B fixed states.

    Runs the image tower (unless ``feats`` are given), the view map and the
    action-independent part of the merge once per state, now; the returned function runs
    only the post-merge layers per candidate (``QNetwork.candidate_context``)."""
    if feats is None:
        feats = net.tower(images)
    state_in, view = net.state_and_view(images, states)  # one view map per state
    ctx = net.candidate_context(feats, state_in, task_idx, images, view)
    return lambda a: net.candidate_logits(ctx, a).float()


def cem_argmax(
    net: QNetwork,
    images: torch.Tensor,
    states: torch.Tensor,
    task_idx: torch.Tensor,
    cfg: CEMConfig = CEMConfig(),
    generator: torch.Generator | None = None,
    feats: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """a* = argmax_a Q(s, a, task) by CEM, batched over B states.

    The image tower runs once per state and the action-independent part of the merge
    once per state (``QNetwork.candidate_context``); only the post-merge layers run per
    candidate. Returns (a* (B, 6) float32, Q(s, a*) (B,) float32 in [0, 1]).
    """
    cfg.validate()
    device = images.device if feats is None else feats.device
    with precision_context(cfg.precision, device):
        score = candidate_scorer(net, images, states, task_idx, feats)
        b = int(images.shape[0])
        if cfg.gripper == "split":
            acts, logits = cem_maximize_split(score, b, cfg, generator, device=device)
            status = states[:, 0]
            closed_now = (
                (status > CLOSED_ABOVE) & (status < HOLDING_BELOW) if cfg.release_margin else None
            )
            return choose_gripper_branch(
                acts, torch.sigmoid(logits), cfg.close_margin, cfg.release_margin, closed_now
            )
        best, logit = cem_maximize(score, b, cfg, generator, device=device)
    return best, torch.sigmoid(logit)


CLOSED_ABOVE = 0.1
HOLDING_BELOW = 0.95
"""A gripper status (state feature 0, the measured closure) between these reads as
holding something for ``CEMConfig.release_margin``: fingers kept apart. Fingers that
met (closed on nothing, ~1) are not holding, nor is a robot's binary command status."""


def choose_gripper_branch(
    actions: torch.Tensor,
    q: torch.Tensor,
    close_margin: float = 0.0,
    release_margin: float = 0.0,
    closed_now: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick per state the open (branch 0) or closed (branch 1) action of a split CEM:
    close where Q_closed >= Q_open + close_margin; where ``closed_now`` (B,) bool and a
    ``release_margin`` is given, stay closed unless Q_open >= Q_closed + release_margin.
    actions (B, 2, D), q (B, 2)."""
    close = q[:, 1] >= q[:, 0] + close_margin
    if closed_now is not None and release_margin:
        close = torch.where(closed_now, q[:, 0] < q[:, 1] + release_margin, close)
    closed = close.long()
    rows = torch.arange(q.shape[0], device=q.device)
    return actions[rows, closed], q[rows, closed]


def naive_cem_argmax(
    net: QNetwork,
    images: torch.Tensor,
    states: torch.Tensor,
    task_idx: torch.Tensor,
    cfg: CEMConfig = CEMConfig(),
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference: the full network on every (state, candidate) pair. For tests/benchmarks."""
    cfg.validate()
    b, n = int(images.shape[0]), cfg.samples
    i_rep, s_rep, t_rep = repeat_rows(images, n), repeat_rows(states, n), repeat_rows(task_idx, n)
    with torch.no_grad(), precision_context(cfg.precision, images.device):
        best, logit = cem_maximize(
            lambda a: net.logits(i_rep, s_rep, a.reshape(b * n, -1), t_rep).reshape(b, n).float(),
            b,
            cfg,
            generator,
            device=images.device,
        )
    return best, torch.sigmoid(logit)
