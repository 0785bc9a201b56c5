import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mtopt.replay.buffers import ReplayEpisode, TaskBuffers


def episode(eid: str, task: str = "a", steps: int = 3, mark: int = 0) -> ReplayEpisode:
    images = np.zeros((steps + 1, 4, 4, 3), np.uint8)
    images[:, 0, 0, 0] = np.arange(steps + 1)  # frame index, to check s -> s' pairing
    images[:, 0, 0, 1] = mark
    states = np.zeros((steps + 1, 2), np.float32)
    states[:, 1] = np.arange(steps + 1)
    actions = np.zeros((steps, 6), np.float32)
    actions[:, 0] = np.arange(steps) / 10
    return ReplayEpisode(eid, task, images, states, actions)


def test_transitions_pair_s_and_next_s_with_sparse_terminal_reward() -> None:
    buf = TaskBuffers(["a"], capacity_per_bucket=10)
    buf.add(episode("e1"), [("a", 1.0)])
    tr = buf.sample(200, np.random.default_rng(0))
    t = tr.images[:, 0, 0, 0].astype(int)
    assert np.all(tr.next_images[:, 0, 0, 0] == t + 1)
    assert np.allclose(tr.actions[:, 0], t / 10)
    assert np.all(tr.dones == (t == 2))
    assert np.all(tr.rewards == (t == 2))  # reward only at the last step
    assert np.all(tr.final_rewards == 1.0) and np.all(tr.steps_to_go == 2 - t)
    assert set(np.unique(t)) == {0, 1, 2}


def test_impersonated_copies_share_storage_and_evict_fifo() -> None:
    buf = TaskBuffers(["a", "b"], capacity_per_bucket=2)
    buf.add(episode("e1"), [("a", 1.0), ("b", 0.0)])
    assert len(buf) == 1 and buf.sizes() == {"a": (1, 0), "b": (0, 1)}
    buf.add(episode("e2"), [("a", 1.0)])
    buf.add(episode("e3"), [("a", 1.0)])  # evicts e1 from a/success; e1 still in b/failure
    assert buf.sizes()["a"] == (2, 0)
    assert "e1" in buf and buf.labels("e1") == {"b": 0.0}
    buf.add(episode("e4"), [("b", 0.0)])
    buf.add(episode("e5"), [("b", 0.0)])  # evicts e1 from b: no bucket left -> dropped
    assert "e1" not in buf and len(buf) == 4


def test_relabel_moves_episode_between_buckets() -> None:
    buf = TaskBuffers(["a"], capacity_per_bucket=5)
    buf.add(episode("e1"), [("a", 0.0)])
    buf.add(episode("e1"), [("a", 1.0)])  # a new SD version says success
    assert buf.sizes() == {"a": (1, 0)}


def test_a_new_detectors_swaps_are_refiled_at_once_and_lose_nothing() -> None:
    """Buckets of 2: e1, e2 successes, e3, e4 failures; a new detector says e1 failed
    and e3 succeeded. Refiled one at a time, e1's move into the full failure bucket
    evicted its oldest, e3, which was about to leave it: e3 was lost. At once, all four
    fit: success [e2, e3], failure [e4, e1]."""
    buf = TaskBuffers(["a"], capacity_per_bucket=2)
    for eid, r in (("e1", 1.0), ("e2", 1.0), ("e3", 0.0), ("e4", 0.0)):
        buf.add(episode(eid), [("a", r)])
    buf.refile_many([("e1", [("a", 0.0)]), ("e2", [("a", 1.0)]), ("e3", [("a", 1.0)]),
                     ("e4", [("a", 0.0)])])  # fmt: skip
    assert buf.sizes() == {"a": (2, 2)} and len(buf) == 4
    assert buf.labels("e3") == {"a": 1.0} and buf.labels("e1") == {"a": 0.0}
    # the moved ones joined as the newest of their buckets: the next add evicts the stayer
    buf.add(episode("e5"), [("a", 0.0)])
    assert "e4" not in buf and "e1" in buf and "e5" in buf
    buf.add(episode("e6"), [("a", 1.0)])
    assert "e2" not in buf and "e3" in buf


def test_rebalanced_batch_has_equal_task_shares() -> None:
    buf = TaskBuffers(["a", "b"], capacity_per_bucket=1000)
    for i in range(100):
        buf.add(episode(f"a{i}", "a", mark=1), [("a", float(i < 5))])
    buf.add(episode("b0", "b", mark=2), [("b", 0.0)])
    rng = np.random.default_rng(0)
    tr = buf.sample(64, rng, success_ratio=0.5)
    assert np.sum(tr.task_idx == 0) == 32 and np.sum(tr.task_idx == 1) == 32
    # within task a, half the episodes come from the 5 successes (oversampled)
    succ = tr.task_idx == 0
    # all a-transitions come from a-episodes; label is success for half (by episode)
    assert np.all(tr.images[succ, 0, 0, 1] == 1)
    tr_u = buf.sample(6400, rng, rebalance=False)
    assert abs(np.mean(tr_u.task_idx == 1) - 1 / 101) < 0.01
    # replay.task_shares: b weighs 3 -> 48 of 64, a (unnamed) 16, 8 of them successes
    tr_w = buf.sample(64, rng, success_ratio=0.5, task_weights={"b": 3.0})
    assert np.sum(tr_w.task_idx == 1) == 48 and np.sum(tr_w.task_idx == 0) == 16
    assert np.sum(tr_w.final_rewards[tr_w.task_idx == 0] == 1.0) == 8


def test_empty_and_bad_inputs() -> None:
    buf = TaskBuffers(["a"])
    with pytest.raises(ValueError, match="empty"):
        buf.sample(4, np.random.default_rng(0))
    with pytest.raises(ValueError, match="T\\+1"):
        ReplayEpisode(
            "x", "a", np.zeros((2, 4, 4, 3), np.uint8), np.zeros((3, 2)), np.zeros((2, 6))
        )


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 30), st.sampled_from(["a", "b", "c"]), st.booleans()), max_size=60
    ),
    st.integers(1, 5),
)
def test_buffer_bounds_and_consistency(ops: list[tuple[int, str, bool]], cap: int) -> None:
    buf = TaskBuffers(["a", "b", "c"], capacity_per_bucket=cap)
    for i, task, succ in ops:
        buf.add(episode(f"e{i}", task), [(task, float(succ))])
    for s, f in buf.sizes().values():
        assert s <= cap and f <= cap
    referenced = sum(s + f for s, f in buf.sizes().values())
    assert len(buf) == referenced  # every stored episode is in exactly one bucket here


def test_a_rescore_keeps_fifo_order_and_does_not_refill_evicted_buckets() -> None:
    """Re-filing an episode (a new success detector) used to put it back into every bucket
    of its labels, as the newest: into buckets that had evicted it (evicting a newer one
    instead) and ahead of episodes ingested after it."""
    buf = TaskBuffers(["a", "b"], capacity_per_bucket=2)
    buf.add(episode("e1"), [("a", 1.0), ("b", 0.0)])
    buf.add(episode("e2"), [("a", 1.0), ("b", 1.0)])
    buf.add(episode("e3"), [("a", 1.0), ("b", 1.0)])  # a/success evicts e1
    assert buf.labels("e1") == {"b": 0.0}
    buf.add(episode("e1"), [("a", 1.0), ("b", 0.0)])  # the same labels again
    assert buf.sizes() == {"a": (2, 0), "b": (2, 1)}
    assert "e2" in buf and buf.labels("e2") == {"a": 1.0, "b": 1.0}
    assert buf.labels("e1") == {"b": 0.0}
    # a changed outcome moves it to the other bucket of that task
    buf.add(episode("e1"), [("a", 0.0), ("b", 1.0)])
    assert buf.labels("e1") == {"b": 1.0} and buf.sizes()["b"] == (2, 0)
    assert "e2" not in buf._buckets["b"][0]  # b/success held e2, e3: e1 joins, e2 leaves
    # the next new episode evicts the oldest of a/success (e2), not e3
    buf.add(episode("e4"), [("a", 1.0)])
    assert "e3" in buf._buckets["a"][0] and "e2" not in buf._buckets["a"][0]


def test_an_episode_that_moves_back_is_evicted_by_its_latest_add() -> None:
    """A bucket kept the stale queue entry of an episode that left it: when the episode
    came back (its outcome flipped back), the stale entry evicted it first, as the
    oldest, instead of the oldest episode held."""
    buf = TaskBuffers(["a"], capacity_per_bucket=3)
    buf.add(episode("e1"), [("a", 1.0)])
    buf.add(episode("e1"), [("a", 0.0)])  # to the failures
    buf.add(episode("e2"), [("a", 1.0)])
    buf.add(episode("e3"), [("a", 1.0)])
    buf.add(episode("e1"), [("a", 1.0)])  # back to the successes, as the newest
    buf.add(episode("e4"), [("a", 1.0)])  # evicts the oldest held: e2
    success = buf._buckets["a"][0]
    assert "e1" in success and "e2" not in success and "e3" in success and "e4" in success
