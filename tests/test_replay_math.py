"""Hand-computed cases for impersonation and re-balancing, plus property tests."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mtopt.replay.impersonation import expansion_counts, impersonate, impersonation_targets
from mtopt.replay.rebalance import allocate, uniform_allocate, weighted_shares
from mtopt.tasks import DEFAULT_REGISTRY, TaskRegistry, UnknownTaskError

REG = DEFAULT_REGISTRY.subset(["lift-any", "lift-ball", "place-on-plate", "place-in-bowl"])
REWARDS = {"lift-any": 1.0, "lift-ball": 0.0, "place-on-plate": 0.0, "place-in-bowl": 0.0}


def test_impersonation_hand_computed() -> None:
    # An episode collected for lift-any that lifted a can: success for lift-any, failure for lift-ball.
    assert impersonate("lift-any", REWARDS, REG, "orig") == [("lift-any", 1.0)]
    assert impersonate("lift-any", REWARDS, REG, "skill") == [("lift-any", 1.0), ("lift-ball", 0.0)]
    assert impersonate("lift-any", REWARDS, REG, "all") == [
        ("lift-any", 1.0),
        ("lift-ball", 0.0),
        ("place-on-plate", 0.0),
        ("place-in-bowl", 0.0),
    ]
    # skill impersonation of a placing episode stays inside the place skill
    placed = {"lift-any": 0.0, "lift-ball": 0.0, "place-on-plate": 1.0, "place-in-bowl": 0.0}
    assert impersonate("place-in-bowl", placed, REG, "skill") == [
        ("place-on-plate", 1.0),
        ("place-in-bowl", 0.0),
    ]
    # a missing SD score is skipped, not guessed
    assert impersonate("lift-any", {"lift-any": 1.0}, REG, "skill") == [("lift-any", 1.0)]


def test_impersonation_errors() -> None:
    with pytest.raises(UnknownTaskError):
        impersonation_targets("fly", REG, "skill")
    with pytest.raises(ValueError, match="unknown impersonation mode"):
        impersonation_targets("lift-any", REG, "some")  # type: ignore[arg-type]


def test_expansion_counts() -> None:
    eps = [("lift-any", REWARDS), ("lift-any", {**REWARDS, "lift-ball": 1.0})]
    c = expansion_counts(eps, REG, "skill")
    both = {"original": 2, "original_successes": 2, "impersonated": 2, "successes": 2}
    assert c["lift-any"] == both
    assert c["lift-ball"] == {
        "original": 0,
        "original_successes": 0,
        "impersonated": 2,
        "successes": 1,
    }
    assert set(c["place-in-bowl"].values()) == {0}


def test_expansion_counts_names_an_unknown_task() -> None:
    with pytest.raises(UnknownTaskError, match="unknown task 'lift-anyy'; valid tasks: lift-any"):
        expansion_counts([("lift-anyy", REWARDS)], REG, "skill")


def test_sampling_an_empty_or_odd_batch_is_a_clear_error() -> None:
    from mtopt.replay.buffers import ReplayEpisode, TaskBuffers

    buffers = TaskBuffers(["lift-any"])
    ep = ReplayEpisode(
        "e0",
        "lift-any",
        np.zeros((3, 8, 8, 3), np.uint8),
        np.zeros((3, 2), np.float32),
        np.zeros((2, 6), np.float32),
    )
    buffers.add(ep, [("lift-any", 1.0)])
    rng = np.random.default_rng(0)
    assert len(buffers.sample(2, rng).rewards) == 2
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        buffers.sample(0, rng)
    with pytest.raises(TypeError, match=r"batch_size must be an int, got 2\.0"):
        buffers.sample(2.0, rng)  # type: ignore[arg-type]


@settings(max_examples=50, deadline=None)
@given(
    st.sampled_from(list(DEFAULT_REGISTRY.names)),
    st.dictionaries(st.sampled_from(list(DEFAULT_REGISTRY.names)), st.sampled_from([0.0, 1.0])),
)
def test_impersonation_invariants(task: str, rewards: dict[str, float]) -> None:
    reg: TaskRegistry = DEFAULT_REGISTRY
    orig = impersonate(task, rewards, reg, "orig")
    skill = impersonate(task, rewards, reg, "skill")
    every = impersonate(task, rewards, reg, "all")
    # orig ⊆ skill ⊆ all; rewards are carried unchanged; skill stays inside the skill
    assert set(orig) <= set(skill) <= set(every)
    assert all(rewards[t] == r for t, r in every)
    assert {reg.get(t).skill for t, _ in skill} <= {reg.get(task).skill}


def test_allocate_hand_computed() -> None:
    rng = np.random.default_rng(0)
    # 2 tasks with data, batch 8 -> 4 each; ratio 0.5 -> 2 successes + 2 failures each.
    out = allocate({"a": (100, 1), "b": (1, 100), "c": (0, 0)}, 8, 0.5, rng)
    assert out == {"a": (2, 2), "b": (2, 2), "c": (0, 0)}
    # a task with only failures fills its share with failures
    out = allocate({"a": (0, 5), "b": (3, 3)}, 4, 0.25, rng)
    assert out["a"] == (0, 2)
    assert sum(out["b"]) == 2
    # nothing available
    assert allocate({"a": (0, 0)}, 8, 0.5, rng) == {"a": (0, 0)}


@settings(max_examples=100, deadline=None)
@given(
    st.dictionaries(
        st.text(min_size=1, max_size=4),
        st.tuples(st.integers(0, 50), st.integers(0, 50)),
        min_size=1,
        max_size=8,
    ),
    st.integers(0, 256),
    st.floats(0.0, 1.0),
    st.integers(0, 2**31),
)
def test_allocate_properties(
    sizes: dict[str, tuple[int, int]], batch: int, ratio: float, seed: int
) -> None:
    out = allocate(sizes, batch, ratio, np.random.default_rng(seed))
    with_data = [t for t, (s, f) in sizes.items() if s + f > 0]
    total = sum(s + f for s, f in out.values())
    assert total == (batch if with_data else 0)
    for t, (s, f) in out.items():
        if t not in with_data:
            assert (s, f) == (0, 0)
            continue
        share = s + f
        assert batch // len(with_data) <= share <= batch // len(with_data) + 1  # equal shares
        if sizes[t][0] == 0:
            assert s == 0
        if sizes[t][1] == 0:
            assert f == 0
        if sizes[t][0] and sizes[t][1]:
            assert abs(s - share * ratio) < 1.0  # success ratio kept up to rounding


def test_allocate_with_task_weights_hand_computed() -> None:
    rng = np.random.default_rng(0)
    # weights 3 : 1 (b unnamed) over batch 8 -> 6 and 2, each split by the ratio 0.5
    out = allocate({"a": (10, 10), "b": (10, 10)}, 8, 0.5, rng, {"a": 3.0})
    assert out == {"a": (3, 3), "b": (1, 1)}
    # a named task without data gives its share away: b alone takes the batch
    out = allocate({"a": (0, 0), "b": (4, 4)}, 8, 0.5, rng, {"a": 3.0})
    assert out == {"a": (0, 0), "b": (4, 4)}
    # equal weights draw exactly as no weights do (runs without task_shares unchanged)
    sizes = {"a": (1, 1), "b": (1, 1), "c": (1, 1)}
    r1, r2 = np.random.default_rng(5), np.random.default_rng(5)
    for _ in range(20):
        assert allocate(sizes, 10, 0.3, r1) == allocate(
            sizes, 10, 0.3, r2, {"a": 2, "b": 2, "c": 2}
        )
    with pytest.raises(ValueError, match="finite and > 0"):
        allocate(sizes, 8, 0.5, rng, {"a": 0.0})


def test_weighted_shares_hand_computed() -> None:
    # 10 x (2, 1, 1) / 4 = (5, 2.5, 2.5): 5 always; one of the 2.5s gets the last item
    seen = set()
    rng = np.random.default_rng(0)
    for _ in range(50):
        s = weighted_shares(np.array([2.0, 1.0, 1.0]), 10, rng)
        assert s.sum() == 10 and s[0] == 5 and sorted(s[1:]) == [2, 3]
        seen.add(tuple(s))
    assert seen == {(5, 3, 2), (5, 2, 3)}
    # exact: no draw at all
    assert list(weighted_shares(np.array([1.0, 3.0]), 8, rng)) == [2, 6]


def test_weighted_shares_are_right_in_expectation() -> None:
    w = np.array([0.7, 1.0, 3.0, 1.3])
    rng = np.random.default_rng(3)
    tot = np.zeros(4)
    for _ in range(4000):
        tot += weighted_shares(w, 7, rng)
    expected = 7 * w / w.sum()
    assert np.allclose(tot / 4000, expected, atol=0.03)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.floats(0.01, 100.0), min_size=1, max_size=13),
    st.integers(0, 256),
    st.integers(0, 2**31),
)
def test_weighted_shares_properties(weights: list[float], total: int, seed: int) -> None:
    w = np.array(weights)
    s = weighted_shares(w, total, np.random.default_rng(seed))
    assert s.sum() == total and np.all(s >= 0)
    assert np.all(np.abs(s - total * w / w.sum()) < 1.0 + 1e-9)  # floor or floor + 1


def test_allocate_ratio_in_expectation() -> None:
    rng = np.random.default_rng(1)
    n_s = 0
    for _ in range(2000):
        n_s += allocate({"a": (5, 5)}, 3, 0.3, rng)["a"][0]
    assert abs(n_s / (2000 * 3) - 0.3) < 0.02


def test_uniform_allocate_follows_data() -> None:
    rng = np.random.default_rng(2)
    tot = np.zeros(2)
    for _ in range(200):
        out = uniform_allocate({"a": (90, 0), "b": (0, 10)}, 10, rng)
        tot += [out["a"][0], out["b"][1]]
    assert abs(tot[0] / tot.sum() - 0.9) < 0.03


def test_skill_tasks_of_a_known_and_an_unknown_task() -> None:
    from mtopt.replay.impersonation import skill_tasks

    assert skill_tasks("place-any", DEFAULT_REGISTRY) == DEFAULT_REGISTRY.skills["place"]
    assert "lift-ball" in skill_tasks("lift-any", DEFAULT_REGISTRY)
    assert skill_tasks("wipe-table", DEFAULT_REGISTRY) == ("wipe-table",)
