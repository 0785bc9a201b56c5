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


def test_reward_model_must_cover_tasks() -> None:
    sd = FakeSD()
    sd.tasks = ("lift-any",)
    with pytest.raises(ValueError, match="no head for tasks"):
        LogReplay(REG, TaskBuffers(REG.names), sd)
