import dataclasses

import numpy as np
import pytest

from mtopt.replay.buffers import ReplayEpisode, TaskBuffers
from mtopt.replay.logreplay import LogReplay
from mtopt.tasks import DEFAULT_REGISTRY

REG = DEFAULT_REGISTRY.subset(["lift-any", "lift-ball", "place-on-plate"])


class FakeSD:
    """Success iff the final image's red channel at (0, 0) encodes the task index bit."""

    def __init__(self, version: int = 1, flip: bool = False):
        self.tasks = REG.names
        self.version = version
        self.flip = flip
        self.calls = 0

    def score(self, images: np.ndarray) -> np.ndarray:
        self.calls += 1
        code = images[:, 0, 0, 0].astype(int)
        probs = np.stack([(code >> i) & 1 for i in range(len(self.tasks))], axis=1).astype(float)
        return 1.0 - probs if self.flip else probs


def ep(eid: str, task: str, code: int) -> tuple[ReplayEpisode, np.ndarray]:
    imgs = np.zeros((3, 4, 4, 3), np.uint8)
    final = np.zeros((4, 4, 3), np.uint8)
    final[0, 0, 0] = code
    return ReplayEpisode(
        eid, task, imgs, np.zeros((3, 2), np.float32), np.zeros((2, 6), np.float32)
    ), final


def test_ingest_scores_impersonates_and_counts() -> None:
    buf = TaskBuffers(REG.names)
    sd = FakeSD()
    lr = LogReplay(REG, buf, sd, mode="skill", score_batch=2)
    # e1: lift-any episode that lifted a ball (lift-any and lift-ball succeed: code 0b011)
    # e2: lift-any failure; e3: place episode, placed on plate (0b100)
    n = lr.ingest(
        [ep("e1", "lift-any", 0b011), ep("e2", "lift-any", 0), ep("e3", "place-on-plate", 0b100)]
    )
    assert n == 3 and sd.calls == 2  # batched by 2
    assert buf.sizes() == {"lift-any": (1, 1), "lift-ball": (1, 1), "place-on-plate": (1, 0)}
    assert lr.stats.collected == {"lift-any": 2, "place-on-plate": 1}
    assert lr.stats.impersonated == {"lift-any": 2, "lift-ball": 2, "place-on-plate": 1}
    assert lr.stats.impersonated_success == {"lift-any": 1, "lift-ball": 1, "place-on-plate": 1}
    # already-seen episodes are not rescored
    assert lr.ingest([ep("e1", "lift-any", 0b011)]) == 0 and sd.calls == 2


def test_new_sd_version_rescores_everything() -> None:
    buf = TaskBuffers(REG.names)
    lr = LogReplay(REG, buf, FakeSD(), mode="orig")
    lr.ingest([ep("e1", "lift-any", 0b001), ep("e2", "lift-any", 0)])
    assert buf.sizes()["lift-any"] == (1, 1)
    assert lr.set_reward_model(FakeSD(version=2, flip=True)) == 2
    assert lr.reward_version == 2
    assert lr.rewards("e1")["lift-any"] == 0.0 and lr.rewards("e2")["lift-any"] == 1.0
    assert buf.sizes()["lift-any"] == (1, 1)


def test_a_rescore_that_fails_keeps_the_old_model_and_a_retry_rescores() -> None:
    """The new model was switched in before scoring: after a failed scoring (a transient
    out-of-memory error), the retry with the same model rescored nothing and the held
    episodes kept the old detector's rewards for good."""

    class FailsOnce(FakeSD):
        def score(self, images: np.ndarray) -> np.ndarray:
            if self.calls == 0:
                self.calls += 1
                raise MemoryError("transient")
            return super().score(images)

    buf = TaskBuffers(REG.names)
    lr = LogReplay(REG, buf, FakeSD(), mode="orig")
    lr.ingest([ep("e1", "lift-any", 0b001), ep("e2", "lift-any", 0)])
    new = FailsOnce(version=2, flip=True)
    with pytest.raises(MemoryError):
        lr.set_reward_model(new)
    assert lr.reward_version == 1 and lr.rewards("e1")["lift-any"] == 1.0
    assert lr.set_reward_model(new) == 2 and lr.reward_version == 2
    assert lr.rewards("e1")["lift-any"] == 0.0 and lr.rewards("e2")["lift-any"] == 1.0


def test_reward_model_must_cover_tasks() -> None:
    sd = FakeSD()
    sd.tasks = ("lift-any",)
    with pytest.raises(ValueError, match="no head for tasks"):
        LogReplay(REG, TaskBuffers(REG.names), sd)


def test_an_episode_of_a_task_outside_the_registry_is_skipped_and_counted() -> None:
    """A store with more tasks than the run's registry (a subset registry, a task added
    later): those episodes are skipped; they used to raise UnknownTaskError from the
    ingest thread and stop the run."""
    buf = TaskBuffers(REG.names)
    lr = LogReplay(REG, buf, FakeSD(), mode="skill")
    n = lr.ingest(
        [ep("e1", "lift-any", 0b001), ep("x1", "place-in-bowl", 0), ep("x2", "place-in-bowl", 0)]
    )
    assert n == 1 and "x1" not in buf and "e1" in buf
    assert lr.stats.unknown_task == {"place-in-bowl": 2}
    assert lr.stats.collected == {"lift-any": 1}


def test_the_same_reward_model_again_rescores_nothing() -> None:
    """A relabel round that labeled nothing new hands back the detector in use: no rescore
    (it used to rescore every held episode, with ingestion paused)."""
    sd = FakeSD()
    lr = LogReplay(REG, TaskBuffers(REG.names), sd, mode="orig")
    lr.ingest([ep("e1", "lift-any", 0b001), ep("e2", "lift-any", 0)])
    calls = sd.calls
    assert lr.set_reward_model(sd) == 0 and sd.calls == calls and lr.stats.rescored == 0


def test_success_counts_follow_a_rescore() -> None:
    """After a new detector, the composition counts (the report's Fig. 12 numbers) are
    those of the rewards the buffers train on, not of the detector at ingest time."""
    buf = TaskBuffers(REG.names)
    lr = LogReplay(REG, buf, FakeSD(), mode="skill")
    # e1: lift-any success and lift-ball failure; e2: both fail; e3 placed on the plate
    lr.ingest(
        [ep("e1", "lift-any", 0b001), ep("e2", "lift-any", 0), ep("e3", "place-on-plate", 0b100)]
    )
    assert lr.stats.collected_success == {"lift-any": 1, "place-on-plate": 1}
    assert lr.stats.impersonated_success == {"lift-any": 1, "lift-ball": 0, "place-on-plate": 1}
    lr.set_reward_model(FakeSD(version=2, flip=True))  # every reward flips
    # e1: lift-any 0, lift-ball 1; e2: both 1; e3: plate 0
    assert lr.stats.collected_success == {"lift-any": 1, "place-on-plate": 0}
    assert lr.stats.impersonated_success == {"lift-any": 1, "lift-ball": 2, "place-on-plate": 0}
    assert lr.stats.collected == {"lift-any": 2, "place-on-plate": 1}  # unchanged
    for task, (succ, _) in buf.sizes().items():
        assert lr.stats.impersonated_success[task] == succ


def test_replay_stats_composition_by_hand() -> None:
    from mtopt.replay.logreplay import ReplayStats

    s = ReplayStats(
        collected={"a": 3},
        collected_success={"a": 2},
        impersonated={"a": 5, "b": 2},
        impersonated_success={"a": 2, "b": 1},
        no_verdict={"c": 4},
    )
    truth = {"gt_known": 0, "gt_successes": 0, "sd_successes_with_truth": 0}
    truth["sd_true_positives"] = 0
    assert s.composition(["a", "b", "c"]) == {
        "a": {"original": 3, "original_successes": 2, "impersonated": 5, "successes": 2, **truth,
              "no_verdict": 0},
        "b": {"original": 0, "original_successes": 0, "impersonated": 2, "successes": 1, **truth,
              "no_verdict": 0},
        "c": {"original": 0, "original_successes": 0, "impersonated": 0, "successes": 0, **truth,
              "no_verdict": 4},
    }  # fmt: skip


def test_the_detectors_rewards_are_counted_against_the_ground_truth_by_hand() -> None:
    """Per impersonated task: how many episodes have ground truth, how many of those
    succeed in truth, by the detector, and by both; a rescore moves only the detector's
    counts; an episode without ground truth (a real robot's) counts in none."""
    buf = TaskBuffers(REG.names)
    lr = LogReplay(REG, buf, FakeSD(), mode="skill")

    def with_truth(eid: str, task: str, code: int, truth: dict[str, bool] | None):
        e, fin = ep(eid, task, code)
        return dataclasses.replace(e, gt_success_by_task=truth), fin

    # e1: the detector says lift-any and lift-ball (0b011); in truth only lift-any
    # e2: the detector says nothing; in truth it lifted the ball (two missed successes)
    # e3: a real robot's lift: no truth; e4: placed on the plate, by both
    lr.ingest(
        [
            with_truth("e1", "lift-any", 0b011, {"lift-any": True, "lift-ball": False}),
            with_truth("e2", "lift-any", 0, {"lift-any": True, "lift-ball": True}),
            with_truth("e3", "lift-any", 0b011, None),
            with_truth("e4", "place-on-plate", 0b100, {"place-on-plate": True}),
        ]
    )
    keys = ("gt_known", "gt_successes", "sd_successes_with_truth", "sd_true_positives")

    def truth_counts() -> dict[str, list[int]]:
        comp = lr.stats.composition(REG.names)
        return {t: [comp[t][k] for k in keys] for t in REG.names}

    assert truth_counts() == {
        "lift-any": [2, 2, 1, 1],
        "lift-ball": [2, 1, 1, 0],
        "place-on-plate": [1, 1, 1, 1],
    }
    assert lr.stats.composition(REG.names)["lift-any"]["successes"] == 2  # e1, e3 by the SD
    lr.set_reward_model(FakeSD(version=2, flip=True))  # every reward flips
    # e1: lift-any 0, lift-ball 0; e2: lift-any 1, lift-ball 1 (both true); e4: plate 0
    assert truth_counts() == {
        "lift-any": [2, 2, 1, 1],
        "lift-ball": [2, 1, 1, 1],
        "place-on-plate": [1, 1, 0, 0],
    }


def test_a_rescore_does_not_bring_back_an_episode_it_evicted() -> None:
    """One bucket each: e1 fails, e2 succeeds; a new detector says both succeed. e1 moves
    to the success bucket and evicts e2; e2's turn then used to add it again as a new
    episode (evicting e1): the rescore kept e2 and dropped e1."""

    class Both:
        tasks = REG.names
        version = 2

        def score(self, images: np.ndarray) -> np.ndarray:
            return np.ones((len(images), len(self.tasks)))

    buf = TaskBuffers(REG.names, capacity_per_bucket=1)
    lr = LogReplay(REG, buf, FakeSD(), mode="orig")
    lr.ingest([ep("e1", "lift-any", 0), ep("e2", "lift-any", 0b001)])
    assert buf.sizes()["lift-any"] == (1, 1)
    lr.set_reward_model(Both())  # type: ignore[arg-type]
    assert "e1" in buf and "e2" not in buf and buf.sizes()["lift-any"] == (1, 0)
    assert lr.rewards("e1")["lift-any"] == 1.0


def test_a_rescore_moves_only_the_counts_of_tasks_that_still_hold_the_episode() -> None:
    """Buckets of one: e2 pushes e1 out of lift-ball's failures, then a detector that flips
    every verdict arrives. e1 moves to lift-any's failures and e2 to the successes of
    both tasks (all moves at once: e1 no longer pushes e2 out of lift-any first). The
    success counts follow the buffers: lift-any 1 (e2), lift-ball 1 (e2; it read 2 once:
    e1's evicted copy was counted as flipped too)."""
    buf = TaskBuffers(REG.names, capacity_per_bucket=1)
    lr = LogReplay(REG, buf, FakeSD(), mode="skill")
    lr.ingest([ep("e1", "lift-any", 0b001), ep("e2", "lift-any", 0)])
    assert buf.labels("e1") == {"lift-any": 1.0}  # out of lift-ball's failures
    lr.set_reward_model(FakeSD(version=2, flip=True))
    assert buf.sizes()["lift-any"] == (1, 1) and buf.sizes()["lift-ball"] == (1, 0)
    assert buf.labels("e1") == {"lift-any": 0.0}
    assert buf.labels("e2") == {"lift-any": 1.0, "lift-ball": 1.0}
    assert lr.stats.impersonated_success == {"lift-any": 1, "lift-ball": 1}
    assert lr.stats.collected_success == {"lift-any": 1}


def test_an_episode_twice_in_one_batch_is_filed_and_counted_once() -> None:
    buf = TaskBuffers(REG.names)
    lr = LogReplay(REG, buf, FakeSD(), mode="orig")
    assert lr.ingest([ep("e1", "lift-any", 1), ep("e1", "lift-any", 1)]) == 1
    assert len(buf) == 1 and lr.stats.collected == {"lift-any": 1}
    assert lr.stats.impersonated_success == {"lift-any": 1}


def test_a_rescore_counts_only_the_episodes_it_refiled() -> None:
    """One episode per bucket; the new detector flips both: they swap buckets (e0 used to
    move first and evict e1, which was lost), and both count as rescored. An episode a
    move does evict is not refiled (``test_replay_buffers``)."""
    lr = LogReplay(REG, TaskBuffers(REG.names, 1), FakeSD(), mode="orig")
    lr.ingest([ep("e0", "lift-any", 0), ep("e1", "lift-any", 0b001)])
    assert lr.set_reward_model(FakeSD(version=2, flip=True)) == 2
    assert lr.stats.rescored == 2 and "e0" in lr.buffers and "e1" in lr.buffers
    assert lr.buffers.labels("e0") == {"lift-any": 1.0}
    assert lr.stats.collected_success == {"lift-any": 1}


class ScoreSD:
    """Every task scores the final image's red value at (0, 0) over 100, plus ``add``."""

    tasks = REG.names

    def __init__(self, version: int = 1, add: float = 0.0):
        self.version, self.add = version, add

    def score(self, images: np.ndarray) -> np.ndarray:
        p = images[:, 0, 0, 0].astype(float) / 100 + self.add
        return np.repeat(p[:, None], len(self.tasks), axis=1)


def test_probability_rewards_are_the_detectors_scores() -> None:
    """Scores 0.3, 0.7 and 0.95 of three place-on-plate episodes (orig): "binary"
    rewards them 0, 1, 1; "probability" 0.3, 0.7, 0.95, with the same buckets (a
    success above 0.5), and a sampled last step carries that reward and final reward;
    an unknown kind is refused."""
    episodes = [ep(f"e{c}", "place-on-plate", c) for c in (30, 70, 95)]
    got = {}
    for kind in ("binary", "probability"):
        buf = TaskBuffers(REG.names)
        lr = LogReplay(REG, buf, ScoreSD(), mode="orig", reward=kind)
        lr.ingest(episodes)
        got[kind] = [lr.rewards(f"e{c}")["place-on-plate"] for c in (30, 70, 95)]
        assert buf.sizes()["place-on-plate"] == (2, 1)
        assert lr.stats.impersonated_success == {"place-on-plate": 2}
    assert got["binary"] == [0.0, 1.0, 1.0]
    assert got["probability"] == pytest.approx([0.3, 0.7, 0.95])
    batch = buf.sample(64, np.random.default_rng(0))  # probability's buffers
    assert sorted(set(np.round(batch.final_rewards, 4))) == [0.3, 0.7, 0.95]
    last = batch.dones == 1
    assert last.any() and np.allclose(batch.rewards[last], batch.final_rewards[last])
    assert (batch.rewards[~last] == 0).all()
    with pytest.raises(ValueError, match="reward must be"):
        LogReplay(REG, TaskBuffers(REG.names), ScoreSD(), reward="soft")  # type: ignore[arg-type]


def test_a_score_of_one_half_is_a_success_for_every_reward_kind() -> None:
    """A score of exactly 0.5 (the threshold) is a binary reward of 1 and a probability
    reward of 0.5: both file the episode as a success and count it as one (the
    probability reward filed it as a failure before: ``impersonation.is_success``)."""
    for kind in ("binary", "probability"):
        buf = TaskBuffers(REG.names)
        lr = LogReplay(REG, buf, ScoreSD(), mode="orig", reward=kind)
        lr.ingest([ep("e50", "place-on-plate", 50), ep("e49", "place-on-plate", 49)])
        assert buf.sizes()["place-on-plate"] == (1, 1), kind
        assert lr.stats.impersonated_success == {"place-on-plate": 1}, kind
        assert lr.stats.collected_success == {"place-on-plate": 1}, kind
        assert buf.labels("e50")["place-on-plate"] == (1.0 if kind == "binary" else 0.5)


def test_a_new_detector_moves_probability_rewards_within_a_bucket() -> None:
    """With "probability", a new detector that scores an episode 0.9 instead of 0.7
    (both successes) re-files it with the new reward, which a sampled batch carries."""
    buf = TaskBuffers(REG.names)
    lr = LogReplay(REG, buf, ScoreSD(), mode="orig", reward="probability")
    lr.ingest([ep("e70", "place-on-plate", 70)])
    lr.set_reward_model(ScoreSD(version=2, add=0.2))
    assert lr.rewards("e70")["place-on-plate"] == pytest.approx(0.9)
    assert buf.sizes()["place-on-plate"] == (1, 0)
    batch = buf.sample(8, np.random.default_rng(0))
    assert np.allclose(batch.final_rewards, 0.9)


def test_truth_rewards_are_the_simulators_verdicts_whatever_the_detector_says(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With "truth", episodes are filed by their stored ground truth: a place-on-plate
    episode the detector calls a success (code 4) but the simulator a failure is a
    failure, impersonated (skill) as no other task it has no verdict for; the detector
    still scores every episode (the same compute as a run it rewards), and a new one
    moves nothing; an episode without ground truth for its task stops ingestion with a
    clear error."""
    imgs = np.zeros((3, 4, 4, 3), np.uint8)
    states, actions = np.zeros((3, 2), np.float32), np.zeros((2, 6), np.float32)
    final = np.zeros((4, 4, 3), np.uint8)
    final[0, 0, 0] = 0b111  # the detector: a success at every task
    truths = {
        "a": {"lift-any": True, "lift-ball": False, "place-on-plate": False},
        "b": {"lift-any": False, "lift-ball": False, "place-on-plate": True},
        "c": {"lift-any": True},  # stored before lift-ball was a task
    }
    episodes = [
        (ReplayEpisode("a", "lift-any", imgs, states, actions, truths["a"]), final),
        (ReplayEpisode("b", "place-on-plate", imgs, states, actions, truths["b"]), final),
        (ReplayEpisode("c", "lift-any", imgs, states, actions, truths["c"]), final),
    ]
    buf = TaskBuffers(REG.names)
    sd = FakeSD()
    lr = LogReplay(REG, buf, sd, mode="skill", reward="truth")
    assert lr.ingest(episodes) == 3 and sd.calls == 1
    assert lr.rewards("a") == {"lift-any": 1.0, "lift-ball": 0.0, "place-on-plate": 0.0}
    assert lr.rewards("c") == {"lift-any": 1.0}
    sizes = buf.sizes()  # (successes, failures)
    assert sizes["lift-any"] == (2, 0)
    assert sizes["lift-ball"] == (0, 1)  # a's impersonation; c has no verdict for it
    assert sizes["place-on-plate"] == (1, 0)
    # c's missing verdicts are counted, and said once per task
    assert lr.no_verdict == {"lift-ball": 1, "place-on-plate": 1}
    comp = lr.stats.composition(REG.names)  # into the summary and the report
    assert {t: c["no_verdict"] for t, c in comp.items()} == {
        "lift-any": 0,
        "lift-ball": 1,
        "place-on-plate": 1,
    }
    said = [r.getMessage() for r in caplog.records if "without a verdict" in r.getMessage()]
    assert len(said) == 2 and "'lift-ball'" in said[0] + said[1]
    new_sd = FakeSD(version=2, flip=True)
    assert lr.set_reward_model(new_sd) == 0 and new_sd.calls == 1
    assert buf.sizes() == sizes and lr.rewards("b")["place-on-plate"] == 1.0
    assert lr.stats.impersonated_success == {"lift-any": 2, "lift-ball": 0, "place-on-plate": 1}
    # the detector's own rewards for the same episodes: every one a success
    binary = LogReplay(REG, TaskBuffers(REG.names), FakeSD(), mode="skill")
    binary.ingest(episodes)
    assert binary.buffers.sizes()["lift-ball"] == (2, 0)
    blind = (ReplayEpisode("d", "lift-any", imgs, states, actions), final)
    other = (ReplayEpisode("e", "lift-ball", imgs, states, actions, {"lift-any": True}), final)
    for item in (blind, other):
        with pytest.raises(ValueError, match="has no ground truth for its task"):
            lr.ingest([item])
    c2 = (ReplayEpisode("c2", "lift-any", imgs, states, actions, truths["c"]), final)
    assert lr.ingest([c2]) == 1
    assert lr.no_verdict == {"lift-ball": 2, "place-on-plate": 2}
    assert len([r for r in caplog.records if "without a verdict" in r.getMessage()]) == 2
