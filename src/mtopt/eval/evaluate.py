"""Evaluation on held-out seeds and held-out object instances (simulator ground truth)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from mtopt.policies.base import Policy
from mtopt.robots.sim_robot import SimRobot
from mtopt.sim.cell import SimConfig
from mtopt.sim.runner import EpisodeRecord, run_episode
from mtopt.sim.seeds import EVAL_MAX_EPISODES, EVAL_MAX_TASKS, EVAL_SEEDS, is_reserved_seed
from mtopt.tasks.registry import TaskRegistry, TaskSpec
from mtopt.tasks.scene import SceneState

EVAL_SEED_OFFSET = 7_000_000  # evaluation scenes: below mtopt.sim.seeds.COLLECTION_SEED_LOW
SETUP_TRIES = 5
"""Scenes tried for one evaluation episode of a task the robot must set up (a place task's
object put in the gripper): a scene where that fails is replaced by the next; a slot with
no such scene among them is scored as a failure. A category placing task needs an object
of its category in the right bin, which about half the scenes lack: with 3 tries (until
2026-12-06) 11% of its slots were failures whatever the policy, with 5 about 2.5%. Other
tasks are set up in the first scene, so their scenes are the same either way."""
EVAL_SCENES_VERSION = 2
"""Which scenes a held-out evaluation meets, recorded with results (files without it: 1).
2 (2026-12-07): a lift task's scene without an object it may lift (a category or size
lift, ``Lifted.possible``: about half the scenes have no ball) is replaced like a place
task's, where the slot was a failure whatever the policy (lift-ball could not pass ~51%).
lift-any and the place tasks meet the same scenes in both."""
SETUP_RETRY_STRIDE = 50_000_000
MAX_EVAL_SEED = EVAL_SEEDS - 1
"""Largest ``seed`` of ``eval_scene_seed``: the blocks of two seeds (replacements
included, ``SETUP_RETRY_STRIDE`` apart) never overlap, and all stay below the collection
range."""


def eval_scene_seed(seed: int, task_index: int, episode: int, attempt: int = 0) -> int:
    """The held-out scene of evaluation episode ``episode`` of the ``task_index``-th task;
    ``attempt`` > 0: its replacement when the task cannot be set up in the scene before.

    Every evaluation seed lies below ``COLLECTION_SEED_LOW``, a range collection never
    draws from (``mtopt.sim.seeds``); arguments that would leave it are refused."""
    if not (
        0 <= seed <= MAX_EVAL_SEED
        and 0 <= task_index < EVAL_MAX_TASKS
        and 0 <= episode < EVAL_MAX_EPISODES
    ):
        raise ValueError(
            f"evaluation seed {seed}, task {task_index}, episode {episode} out of range "
            f"(seed 0..{MAX_EVAL_SEED}, task 0..{EVAL_MAX_TASKS - 1}, "
            f"episode 0..{EVAL_MAX_EPISODES - 1})"
        )
    if not 0 <= attempt < SETUP_TRIES:
        raise ValueError(f"attempt {attempt} out of range (0..{SETUP_TRIES - 1})")
    value = (
        EVAL_SEED_OFFSET
        + seed * 100_000
        + task_index * 1000
        + episode
        + SETUP_RETRY_STRIDE * attempt
    )
    assert is_reserved_seed(value), value
    return value


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for k successes in n trials (95% for z = 1.96)."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (max(0.0, c - h), min(1.0, c + h))


def rate_with_ci(rate: float, n: int) -> dict[str, object]:
    """{"success": rate, "ci95": [lo, hi]} for a success rate measured over n episodes."""
    lo, hi = wilson_interval(round(rate * n), n)
    return {"success": round(rate, 4), "ci95": [round(lo, 4), round(hi, 4)]}


def evaluate_outcomes(
    policy_for: Callable[[TaskSpec], Policy],
    registry: TaskRegistry,
    tasks: Sequence[str],
    episodes_per_task: int,
    sim: SimConfig,
    seed: int = 0,
    robot: SimRobot | None = None,
) -> dict[str, list[bool]]:
    """Ground-truth success of each episode, per task, on fixed held-out scenes: episode k
    of task ``tasks[i]`` is the same scene in every call with the same ``seed`` and ``i``,
    so two policies' outcomes pair up scene by scene (``paired_comparison``). A scene where
    the robot cannot set up the task (``prepare_for_task``: False) is replaced by the next
    of ``SETUP_TRIES`` (``eval_scene_seed``); the policy is not charged for the setup.

    robot: evaluate on this robot (built from ``sim`` by the caller, who closes it), for
    policies that need it, such as the privileged ``mtopt.sim.oracle.OraclePolicy``."""
    if episodes_per_task > 0 and tasks:  # the scenes exist: clear error before any work
        eval_scene_seed(seed, len(tasks) - 1, episodes_per_task - 1, SETUP_TRIES - 1)
    own = robot is None
    if robot is None:
        robot = SimRobot(sim, robot_id="eval", seed=seed)
    out: dict[str, list[bool]] = {}
    try:
        for ti, name in enumerate(tasks):
            spec = registry.get(name)
            wins: list[bool] = []
            for k in range(episodes_per_task):
                rec = run_held_out_episode(robot, policy_for, spec, seed, ti, k, sim.max_steps)
                # a scene that is set up depends only on its seed, so two policies still
                # meet the same scenes; no scene in SETUP_TRIES: a failure, as before
                wins.append(rec.prepared and bool(spec.succeeded(robot.scene_state())))
            out[name] = wins
    finally:
        if own:
            robot.close()
    return out


def run_held_out_episode(
    robot: SimRobot,
    policy_for: Callable[[TaskSpec], Policy],
    spec: TaskSpec,
    seed: int,
    task_index: int,
    episode: int,
    max_steps: int,
) -> EpisodeRecord:
    """Episode ``episode`` of the ``task_index``-th task on its held-out scene
    (``eval_scene_seed``), or on the next of ``SETUP_TRIES`` where the robot cannot set
    the task up there, or where a lift task has no object it may lift
    (``EVAL_SCENES_VERSION`` 2); the record of the last try (``prepared`` False when none
    could be set up; a lift's last try runs whatever the scene holds)."""
    for attempt in range(SETUP_TRIES):
        scene_seed = eval_scene_seed(seed, task_index, episode, attempt)
        robot.reset_scene(scene_seed)
        if nothing_to_lift(spec, robot, attempt):
            continue
        rng = np.random.default_rng(scene_seed)
        rec = run_episode(robot, policy_for(spec), spec, rng, max_steps, skip_unprepared=True)
        if rec.prepared:
            break
    return rec


def nothing_to_lift(spec: TaskSpec, robot: object, attempt: int) -> bool:
    """Whether the held-out scene just reset is passed over for the slot's next one: a
    lift task with no object it may lift in it (``Lifted.possible``,
    ``EVAL_SCENES_VERSION`` 2). The slot's last try runs whatever the scene holds, as
    before; a robot that reports no ``scene_state`` (a real one) is never judged so."""
    scene_state = getattr(robot, "scene_state", None)
    if attempt >= SETUP_TRIES - 1 or not callable(scene_state):
        return False
    scene = scene_state()
    return isinstance(scene, SceneState) and not spec.possible(scene)


def evaluate_policy(
    policy_for: Callable[[TaskSpec], Policy],
    registry: TaskRegistry,
    tasks: Sequence[str],
    episodes_per_task: int,
    sim: SimConfig,
    seed: int = 0,
    robot: SimRobot | None = None,
) -> dict[str, float]:
    """Ground-truth success rate per task on fixed held-out scenes (same scenes every call);
    the rates of ``evaluate_outcomes``."""
    return success_rates(
        evaluate_outcomes(policy_for, registry, tasks, episodes_per_task, sim, seed, robot)
    )


def success_rate(wins: Sequence[bool]) -> float:
    """The share of successful episodes (0 for no episodes)."""
    return sum(wins) / max(1, len(wins))


def success_rates(outcomes: dict[str, list[bool]]) -> dict[str, float]:
    """The success rate per task of episode outcomes (``success_rate``)."""
    return {name: success_rate(wins) for name, wins in outcomes.items()}


def encode_outcomes(wins: Sequence[bool]) -> str:
    """Episode outcomes as a compact string for JSON results: "1" success, "0" failure."""
    return "".join("1" if w else "0" for w in wins)


def decode_outcomes(text: str) -> list[bool]:
    """The inverse of ``encode_outcomes``; anything but "0" and "1" is a ValueError."""
    if set(text) - {"0", "1"}:
        raise ValueError(f"episode outcomes are a string of 0 and 1, got {text[:40]!r}")
    return [c == "1" for c in text]


@dataclass(frozen=True)
class PairedComparison:
    """Policy B against policy A on the same n scenes.

    only_a / only_b: scenes that only A / only B solved (the discordant pairs);
    diff: B's success rate minus A's, (only_b - only_a) / n; ci95: the exact conditional
    interval for it (``paired_comparison``), which excludes 0 exactly when p_value is
    below 0.05; p_value: McNemar's exact two-sided test (a binomial test of only_b
    against only_a + only_b at one half)."""

    n: int
    a_rate: float
    b_rate: float
    only_a: int
    only_b: int
    diff: float
    ci95: tuple[float, float]
    p_value: float
    ci95_score: tuple[float, float] = (0.0, 0.0)
    """Newcombe's hybrid score interval for the difference (``newcombe_paired``): not
    conditional on the number of discordant scenes, so it keeps close to its coverage
    where one policy wins nearly every discordant scene of few (``ci95`` is then too
    narrow: over 100 scenes where only B ever wins, 10% of them, it covered the true
    difference 57% of the time); it need not agree with ``p_value`` at 0.05."""

    def as_dict(self) -> dict[str, object]:
        return {
            "n": self.n,
            "a": round(self.a_rate, 4),
            "b": round(self.b_rate, 4),
            "only_a": self.only_a,
            "only_b": self.only_b,
            "b_minus_a": round(self.diff, 4),
            "ci95": [round(self.ci95[0], 4), round(self.ci95[1], 4)],
            "ci95_method": "exact-conditional",
            "ci95_score": [round(self.ci95_score[0], 4), round(self.ci95_score[1], 4)],
            "mcnemar_p": round(self.p_value, 4),
        }


def paired_comparison(a: Sequence[bool], b: Sequence[bool], z: float = 1.96) -> PairedComparison:
    """Compare two policies' outcomes on the same scenes (``a[k]`` and ``b[k]`` are scene k).

    Pairing removes the scene-to-scene variance that unpaired intervals carry. The
    interval is the exact test's, inverted: given the m = only_a + only_b discordant
    scenes, only_b is binomial in m with the share theta = P(only B | discordant), and
    the difference is (2 theta - 1) m / n; the Clopper-Pearson interval of theta
    (``clopper_pearson``) mapped so is the difference's. It excludes 0 exactly when
    McNemar's exact p (``sign_test_p``) is below 1 - confidence. With no discordant scene
    it is +-u, u the upper Clopper-Pearson bound of a discordant share of 0 of n.
    Agresti and Min's interval (until 2026-12-07) excluded 0 at p = 0.0625 (0 against 5
    of 10) and 0.125 (0 against 4 of 12); the plain Wald interval before it was [0, 0]
    with no discordant scene. Being conditional on m, the interval is too narrow for the
    difference of the rates where one policy wins nearly all of few discordant scenes:
    ``ci95_score`` (Newcombe's) is the one for that."""
    if len(a) != len(b):
        raise ValueError(f"paired outcomes need the same scenes: {len(a)} against {len(b)}")
    n = len(a)
    if n == 0:
        raise ValueError("paired comparison of zero scenes")
    only_a = sum(1 for x, y in zip(a, b, strict=True) if x and not y)
    only_b = sum(1 for x, y in zip(a, b, strict=True) if y and not x)
    diff = (only_b - only_a) / n
    alpha = math.erfc(z / math.sqrt(2.0))  # 0.05 for z = 1.96
    m = only_a + only_b
    if m == 0:
        u = clopper_pearson(0, n, alpha)[1]
        lo, hi = -u, u
    else:
        t_lo, t_hi = clopper_pearson(only_b, m, alpha)
        lo, hi = (2 * t_lo - 1) * m / n, (2 * t_hi - 1) * m / n
    return PairedComparison(
        n=n,
        a_rate=sum(a) / n,
        b_rate=sum(b) / n,
        only_a=only_a,
        only_b=only_b,
        diff=diff,
        ci95=(lo, hi),
        p_value=sign_test_p(only_a, only_b),
        ci95_score=newcombe_paired(
            sum(1 for x, y in zip(a, b, strict=True) if x and y), only_b, only_a, n, z
        ),
    )


def newcombe_paired(
    both: int, only_first: int, only_second: int, n: int, z: float = 1.96
) -> tuple[float, float]:
    """Newcombe's hybrid score interval (1998, method 10) for p1 - p2, the first
    policy's success rate minus the second's, on the same n scenes: ``both`` solved by
    both, ``only_first`` / ``only_second`` by one of them (the rest by neither).

    Each rate gets its Wilson interval (l_i, u_i); with phi the correlation of the 2x2
    table ((ad - bc) / sqrt of its four margins' product; 0 when a margin is 0), the
    difference d = p1 - p2 has d - sqrt((p1-l1)^2 - 2 phi (p1-l1)(u2-p2) + (u2-p2)^2)
    and d + sqrt((u1-p1)^2 - 2 phi (u1-p1)(p2-l2) + (p2-l2)^2) as its bounds."""
    neither = n - both - only_first - only_second
    if n <= 0 or min(both, only_first, only_second, neither) < 0:
        raise ValueError(
            f"not a 2x2 table of n={n} scenes: {both}, {only_first}, {only_second}, {neither}"
        )
    p1, p2 = (both + only_first) / n, (both + only_second) / n
    l1, u1 = wilson_interval(both + only_first, n, z)
    l2, u2 = wilson_interval(both + only_second, n, z)
    margins = (
        (both + only_first)
        * (only_second + neither)
        * (both + only_second)
        * (only_first + neither)
    )
    phi = (both * neither - only_first * only_second) / math.sqrt(margins) if margins else 0.0
    d = p1 - p2
    lo = d - math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    hi = d + math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    return (max(-1.0, lo), min(1.0, hi))


def _binomial_sum(lo: int, hi: int, m: int, p: float) -> float:
    """P(lo <= X <= hi) for X ~ Binomial(m, p), 0 < p < 1, summed in log space."""
    lp, lq = math.log(p), math.log1p(-p)
    logs = [
        math.lgamma(m + 1) - math.lgamma(i + 1) - math.lgamma(m - i + 1) + i * lp + (m - i) * lq
        for i in range(lo, hi + 1)
    ]
    top = max(logs)
    return min(1.0, math.exp(top) * sum(math.exp(v - top) for v in logs))


def binomial_cdf(k: int, m: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(m, p), summed in log space (no overflow at large m)."""
    if k < 0:
        return 0.0
    if k >= m or p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0
    return _binomial_sum(0, k, m, p)


def binomial_sf(k: int, m: int, p: float) -> float:
    """P(X >= k), summed directly (1 - cdf loses the tail below ~1e-16)."""
    if k <= 0:
        return 1.0
    if k > m or p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    return _binomial_sum(k, m, m, p)


def clopper_pearson(k: int, m: int, alpha: float = 0.05) -> tuple[float, float]:
    """The exact (Clopper-Pearson) interval of a binomial share from k of m: the lower
    bound is where P(X >= k) = alpha / 2, the upper where P(X <= k) = alpha / 2 (by
    bisection). 0 of m: upper 1 - (alpha / 2) ** (1 / m); m of m: lower (alpha / 2) ** (1 / m)."""
    if not 0 <= k <= m or m < 1:
        raise ValueError(f"clopper_pearson needs 0 <= k <= m, m >= 1; got k={k}, m={m}")

    def root(f: Callable[[float], float]) -> float:  # f rises from < 0 to > 0 on [0, 1]
        lo, hi = 0.0, 1.0
        for _ in range(80):
            mid = (lo + hi) / 2
            if f(mid) < 0:
                lo = mid
            else:
                hi = mid
        return (lo + hi) / 2

    lower = 0.0 if k == 0 else root(lambda p: binomial_sf(k, m, p) - alpha / 2)
    upper = 1.0 if k == m else root(lambda p: alpha / 2 - binomial_cdf(k, m, p))
    return lower, upper


def sign_test_p(k_a: int, k_b: int) -> float:
    """Exact two-sided sign test: the chance, at one half each, of a split of the k_a + k_b
    untied pairs at least as uneven as k_a against k_b (McNemar's exact test on the
    discordant pairs). 0 against 4: 2 * 1/16 = 0.125; 0 against 0: 1."""
    if k_a < 0 or k_b < 0:
        raise ValueError(f"sign test of negative counts: {k_a}, {k_b}")
    m = k_a + k_b
    # exact in integers (2.0**m overflows a float from 1024 pairs on)
    tail = float(Fraction(sum(math.comb(m, i) for i in range(min(k_a, k_b) + 1)), 1 << m))
    return min(1.0, 2.0 * tail)
