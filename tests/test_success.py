"""Success detector: training beats chance on held-out data, labels persist, the page's API
rejects bad requests, bad inputs give clear errors."""

import dataclasses
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from tests.test_store import _write_raw_shard, make_episode

from mtopt.qtopt.weights import WeightsError
from mtopt.store import EpisodeWriter
from mtopt.store.reader import EpisodeReader
from mtopt.success.data import LabeledSet
from mtopt.success.improve import (
    dispute_scores,
    exhaustive_parents,
    select_episodes,
    select_for_labeling,
    select_uncertain,
    task_implications,
)
from mtopt.success.labels import LabelStore
from mtopt.success.network import SDNetConfig, SuccessDetector, SuccessNet
from mtopt.success.server import create_app
from mtopt.success.train import SDTrainConfig, batch_indices, evaluate_sd, train_sd

LOCAL = "http://127.0.0.1"  # the page answers only requests addressed to this machine

torch.set_num_threads(1)
TASKS = ("bright", "red")
SMALL = SDNetConfig(
    num_tasks=2,
    image_size=16,
    tower_channels=8,
    merge_size=4,
    head_channels=8,
    head_convs=2,
    fc_units=16,
)


def synthetic(n: int, seed: int) -> LabeledSet:
    """Task 'bright': mean brightness high; task 'red': a red square somewhere."""
    rng = np.random.default_rng(seed)
    imgs = rng.integers(0, 90, (n, 16, 16, 3)).astype(np.uint8)
    bright = rng.random(n) < 0.5
    red = rng.random(n) < 0.5
    imgs[bright] += 120
    for i in np.flatnonzero(red):
        x, y = rng.integers(0, 12, 2)
        imgs[i, y : y + 4, x : x + 4] = (255, 0, 0)
    labels = np.stack([bright, red], 1).astype(np.float32)
    return LabeledSet(
        TASKS,
        imgs,
        labels,
        np.ones((n, 2), bool),
        np.array([f"x{i}" for i in range(n)]),
        np.array(["staged"] * n),
        np.zeros(n, bool),
    )


def test_training_is_seeded_and_leaves_torchs_random_state_alone() -> None:
    """The same seed trains the same detector, another seed another; torch's global
    random state is what it was (training reseeded it: a caller's later draws repeated
    themselves after every relabel round)."""
    data = synthetic(32, 0)
    cfg = SDTrainConfig(steps=3, batch_size=8, shift=1)
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = train_sd(data, cfg, net_cfg=SMALL)
    assert torch.equal(torch.random.get_rng_state(), before)
    b = train_sd(data, cfg, net_cfg=SMALL)
    c = train_sd(data, dataclasses.replace(cfg, seed=1), net_cfg=SMALL)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    assert any(
        not torch.equal(pa, pc) for pa, pc in zip(a.parameters(), c.parameters(), strict=True)
    )


def test_tiny_training_beats_chance_on_held_out() -> None:
    net = train_sd(
        synthetic(256, 0), SDTrainConfig(steps=250, batch_size=32, shift=1), net_cfg=SMALL
    )
    sd = SuccessDetector(net, TASKS)
    m = evaluate_sd(sd, synthetic(128, 1))
    assert m["bright"]["balanced_accuracy"] > 0.85
    assert m["red"]["balanced_accuracy"] > 0.7


def test_metrics_by_hand_and_balanced_accuracy_needs_both_classes(tmp_path: Path) -> None:
    """Hand-counted confusion on fixed scores. A task with no positive examples has no
    recall and no balanced accuracy: the mean of the one rate there scored a detector that
    never says "success" 1.0 (and the confusion plot showed its TPR as 0.00)."""
    from mtopt.success.plots import plot_confusion

    class Fixed:  # the same given scores on both tasks
        tasks = TASKS

        def __init__(self, *p: float) -> None:
            self.p = np.repeat(np.array(p)[:, None], 2, axis=1)

        def task_index(self, task: str) -> int:
            return TASKS.index(task)

        def score(self, images: np.ndarray) -> np.ndarray:
            return self.p

    data = synthetic(4, 0)
    data.labels[:] = np.array([[1, 0], [1, 0], [0, 0], [0, 0]], np.float32)
    m = evaluate_sd(Fixed(0.9, 0.2, 0.6, 0.1), data)  # type: ignore[arg-type]
    # bright: predicted 1, 0, 1, 0 against 1, 1, 0, 0: tp 1, fn 1, fp 1, tn 1
    assert m["bright"]["confusion"] == {"tp": 1, "fp": 1, "tn": 1, "fn": 1}
    assert m["bright"]["balanced_accuracy"] == 0.5 and m["bright"]["precision"] == 0.5
    # red: no positives; 2 of 4 negatives scored >= 0.5
    red = m["red"]
    assert red["accuracy"] == 0.5 and red["confusion"] == {"tp": 0, "fp": 2, "tn": 2, "fn": 0}
    assert np.isnan(red["recall"]) and np.isnan(red["balanced_accuracy"])
    # a detector that never says "success" on it: right on every example, still unscored
    never = evaluate_sd(Fixed(0.2, 0.1), data.subset(np.array([1, 3])))  # type: ignore[arg-type]
    assert never["red"]["accuracy"] == 1.0 and np.isnan(never["red"]["balanced_accuracy"])
    assert plot_confusion(m, tmp_path / "c.png").stat().st_size > 0


def test_returned_weights_are_the_moving_average_by_hand() -> None:
    """One fine-tuning step: EMA weights = decay * before + (1 - decay) * after the step,
    and fine-tuning uses ``finetune_lr`` (the full ``lr`` would move further)."""
    import copy

    data = synthetic(32, 3)
    torch.manual_seed(0)
    w0 = SuccessNet(SMALL)
    before = [p.detach().clone() for p in w0.parameters()]
    cfg = SDTrainConfig(steps=1, batch_size=8, ema_decay=0.0)
    w1 = [p.detach() for p in train_sd(data, cfg, init=copy.deepcopy(w0)).parameters()]
    avg = train_sd(
        data, SDTrainConfig(steps=1, batch_size=8, ema_decay=0.9), init=copy.deepcopy(w0)
    )
    for b, a, e in zip(before, w1, avg.parameters(), strict=True):
        torch.testing.assert_close(e.detach(), 0.9 * b + 0.1 * a)
    # Adam's first step moves each weight by about its learning rate
    step = max(float((a - b).abs().max()) for a, b in zip(w1, before, strict=True))
    assert step == pytest.approx(cfg.finetune_lr, rel=0.05)
    with pytest.raises(ValueError, match="ema_decay"):
        SDTrainConfig(ema_decay=1.0)


def test_publish_load_and_clear_errors(tmp_path: Path) -> None:
    sd = SuccessDetector(SuccessNet(SMALL), TASKS)
    sd.publish(tmp_path, 1)
    back = SuccessDetector.load(tmp_path)
    assert back.version == 1 and back.tasks == TASKS
    imgs = np.zeros((3, 16, 16, 3), np.uint8)
    assert np.allclose(back.score(imgs), sd.score(imgs))
    with pytest.raises(ValueError, match=r"expects uint8 images of shape \(N, 16, 16, 3\)"):
        back.score(np.zeros((3, 32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match="unknown task 'fly'"):
        back.task_index("fly")
    with pytest.raises(WeightsError, match="no success detector weights"):
        SuccessDetector.load(tmp_path / "none")
    with pytest.raises(WeightsError, match="different architecture"):
        SuccessDetector.load(tmp_path, expected_tasks=["a", "b", "c"])
    # an earlier version stays loadable after a newer one is published
    torch.manual_seed(1)
    SuccessDetector(SuccessNet(SMALL), TASKS).publish(tmp_path, 2)
    assert SuccessDetector.load(tmp_path).version == 2
    v1 = SuccessDetector.load(tmp_path, TASKS, version=1)
    assert v1.version == 1 and np.allclose(v1.score(imgs), sd.score(imgs))
    with pytest.raises(WeightsError, match="version 7 not found"):
        SuccessDetector.load(tmp_path, version=7)


def test_a_publish_without_a_version_takes_the_next_free_one(tmp_path: Path) -> None:
    """A run's SD round and `mtopt sd improve`/`sd train` publish into one folder: the
    version is picked under the folder's lock, so one published by another process in
    the meantime is counted on from, not a crash after the retraining. A refused publish
    leaves the detector's version as it was."""
    run_sd = SuccessDetector(SuccessNet(SMALL), TASKS)
    run_sd.publish(tmp_path)
    assert run_sd.version == 1
    other = SuccessDetector(SuccessNet(SMALL), TASKS)
    other.publish(tmp_path)  # another tool, between two of the run's rounds
    assert other.version == 2
    new = SuccessDetector(SuccessNet(SMALL), TASKS)
    with pytest.raises(WeightsError, match="not newer"):
        new.publish(tmp_path, run_sd.version + 1)  # what the run used to do
    assert new.version == 0
    new.publish(tmp_path)
    assert new.version == 3 and SuccessDetector.load(tmp_path).version == 3


def test_class_weights_by_hand_follow_the_batches_labeled_share() -> None:
    """Rows 0, 1 staged, rows 2, 3 labeled episodes, half of each batch from these. Row
    draw probabilities: 1/8, 1/8, 1/8 + 1/4, 3/8. Task A: only row 0 succeeds, so
    positives carry 1/8 of the draws and negatives 7/8: weights 4 and 4/7, each class
    then half the loss (the whole set's counts, 1 and 3, gave positives 0.3 of it).
    Task B, row 3 unlabeled: positives rows 1, 2 (1/2), negative row 0 (1/8)."""
    from mtopt.success.train import batch_indices, class_weights

    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 1.0], [1.0, 1.0], [1.0, 0.0]])
    labeled = torch.tensor([2, 3])
    w_pos, w_neg = class_weights(labels, mask, labeled, 0.5)
    assert w_pos.tolist() == pytest.approx([4.0, 0.625])
    assert w_neg.tolist() == pytest.approx([4 / 7, 2.5])
    # no labeled share (or every row labeled): the rows are drawn uniformly
    w_pos, w_neg = class_weights(labels, mask, labeled, 0.0)
    assert w_pos.tolist() == pytest.approx([2.0, 0.75]) and w_neg.tolist()[0] == pytest.approx(
        2 / 3
    )
    # a task with one class only: that class weighs a half, as one of two would
    w_pos, w_neg = class_weights(torch.zeros(4, 1), torch.ones(4, 1), labeled, 0.5)
    assert w_neg.tolist() == [0.5] and w_pos.tolist() == [1.0]
    # and the weights balance the classes in batches batch_indices really draws
    g = torch.Generator().manual_seed(0)
    idx = torch.cat([batch_indices(4, labeled, 8, 0.5, g) for _ in range(4000)])
    w_pos, w_neg = class_weights(labels, mask, labeled, 0.5)
    y = labels[idx, 0]
    pos_mass = float((y * w_pos[0]).sum())
    neg_mass = float(((1 - y) * w_neg[0]).sum())
    assert pos_mass / (pos_mass + neg_mass) == pytest.approx(0.5, abs=0.02)


def test_uncertainty_selection_by_hand() -> None:
    probs = np.array([[0.9, 0.5], [0.55, 0.1], [0.4, 0.45]])
    already = np.array([[False, False], [False, False], [True, False]])
    picks = select_uncertain(probs, already, 2)
    assert picks[0].tolist() == [1, 0]  # row 2 already labeled for task 0
    assert picks[1].tolist() == [0, 2]


def test_disputes_between_related_tasks_by_hand() -> None:
    """Tasks: 0 any, 1 a, 2 b, 3 other. Labels: a => any, b => any, b => other; every
    'any' success is an a or b success (exhaustive); 'other' is not explained by b."""
    rows = [[1, 1, 0, 0]] * 5 + [[1, 0, 1, 1]] * 5 + [[0, 0, 0, 1]] * 5 + [[0, 0, 0, 0]] * 5
    labels = np.array(rows, np.float32)
    mask = np.ones_like(labels, bool)
    pairs = task_implications(labels, mask)
    assert sorted(pairs) == [(1, 0), (2, 0), (2, 3)]
    assert task_implications(labels[:4], mask[:4]) == []  # under min_support: nothing
    parents = exhaustive_parents(labels, mask, pairs)
    assert parents == {0: [1, 2]}
    probs = np.array([[0.9, 0.1, 0.05, 0.5], [0.2, 0.7, 0.1, 0.1], [0.0, 0.0, 0.0, 0.8]])
    d = dispute_scores(probs, pairs, parents)
    # row 0: 'any' says yes, neither a nor b does: 0.9 - max(0.1, 0.05) = 0.8 to a and b
    # row 1: a says yes, 'any' says no: 0.7 - 0.2 = 0.5 to a and to any
    # row 2: 'other' alone says yes, which is allowed
    np.testing.assert_allclose(d, [[0, 0.8, 0.8, 0], [0.5, 0.5, 0, 0], [0, 0, 0, 0]], atol=1e-6)
    # budget 2, half disputed: task 1 takes row 0 (0.8) then the least certain other row
    picks = select_for_labeling(probs, np.zeros_like(mask[:3]), 2, d, 0.5)
    assert picks[1].tolist() == [0, 1]  # row 0 disputed; row 1 (|0.7-0.5|) before row 2
    assert picks[3].tolist() == [0, 2]  # no disputes: the two least certain
    assert select_for_labeling(probs, np.zeros_like(mask[:3]), 2)[1].tolist() == [1, 0]
    # whole episodes (the run's relabel rounds): row 0 most disputed (0.8), then the
    # least certain of the rest: row 1 (0.2 from 0.5 at task 0) before row 2 (0.3)
    assert select_episodes(probs, 2, d).tolist() == [0, 1]
    assert select_episodes(probs, 1, d, dispute_share=0.0).tolist() == [0]  # 0.5 at task 3


def test_labeled_episodes_get_their_share_of_each_batch() -> None:
    g = torch.Generator().manual_seed(0)
    labeled = torch.tensor([7, 9])  # 2 labeled episodes among 10 rows (8 staged)
    idx = batch_indices(10, labeled, 8, 0.5, g)
    assert len(idx) == 8
    assert set(idx[4:].tolist()) <= {7, 9}  # round(0.5 * 8) = 4 from the labeled rows
    # nothing labeled, or nothing but labeled rows: plain uniform sampling
    assert len(batch_indices(10, torch.tensor([], dtype=torch.long), 8, 0.5, g)) == 8
    assert len(batch_indices(2, labeled, 8, 0.5, g)) == 8
    # over many batches, 4/8 + 4/8 * 2/10 of the rows are labeled ones
    many = torch.cat([batch_indices(10, labeled, 8, 0.5, g) for _ in range(4000)])
    share = float(torch.isin(many, labeled).float().mean())
    assert abs(share - (0.5 + 0.5 * 0.2)) < 0.01
    with pytest.raises(ValueError, match="labeled_fraction"):
        SDTrainConfig(labeled_fraction=1.5)


def test_label_store_survives_restart_and_torn_lines(tmp_path: Path) -> None:
    store = LabelStore(tmp_path / "labels.jsonl")
    store.add("e1", "lift-any", True)
    store.add("e1", "lift-any", False)  # relabel: the latest wins
    with open(tmp_path / "labels.jsonl", "a") as f:
        f.write('{"episode_id": "e2", "tas')  # torn write
    again = LabelStore(tmp_path / "labels.jsonl")
    assert len(again.all()) == 2
    assert again.latest()[("e1", "lift-any")].success is False
    # the next label after a torn line is not glued onto it (it used to be lost)
    again.add("e3", "lift-any", True)
    assert [lab.episode_id for lab in LabelStore(tmp_path / "labels.jsonl").all()] == [
        "e1",
        "e1",
        "e3",
    ]
    # another program's line that is not UTF-8 spoils that line only (it raised)
    with open(tmp_path / "labels.jsonl", "ab") as f:
        f.write(b"\xff\xfe not ours\n")
    again.add("e4", "lift-any", False)
    assert [lab.episode_id for lab in again.all()] == ["e1", "e1", "e3", "e4"]


def test_label_store_skips_malformed_lines_and_ignores_new_keys(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "labels.jsonl"
    good = {"episode_id": "e1", "task": "lift-any", "success": True, "source": "human"}
    rows = [
        {**good, "episode_id": ["a"], "timestamp": 1},  # unhashable id: latest() raised
        {**good, "success": "no", "timestamp": 2},  # a string is not a boolean
        {**good, "success": 1, "timestamp": 3},
        {**good, "timestamp": True},
        {**good, "timestamp": "5"},
        ["not", "a", "label"],
        {**good, "timestamp": 7, "labeler": "ana"},  # a key a later version may add: kept
        {**good, "success": False, "timestamp": 8},
    ]
    text = "".join(json.dumps(r) + "\n" for r in rows)
    # lines json and float() refused with errors of their own: the page's queue and
    # labels answered 500, and sd export / improve --labeler human crashed
    head = '{"episode_id": "e1", "task": "lift-any", "success": true, "source": "human", '
    text += head + '"timestamp": ' + "9" * 400 + "}\n"  # too large for a float
    text += head + '"timestamp": ' + "9" * 5000 + "}\n"  # too many digits for json
    text += "[" * 100_000 + "\n"  # deeper than the parser recurses
    text += head + '"timestamp": NaN}\n'
    path.write_text(text + "\n")
    store = LabelStore(path)
    with caplog.at_level("WARNING"):
        got = store.all()
    assert [(lab.success, lab.timestamp) for lab in got] == [(True, 7.0), (False, 8.0)]
    assert "skipped 10 unreadable label line(s)" in caplog.text  # the blank line is not one
    caplog.clear()
    with caplog.at_level("WARNING"):
        store.all()  # the page asks again and again: said once
    assert "unreadable" not in caplog.text
    assert store.latest()[("e1", "lift-any")].success is False


def test_a_retraction_takes_a_label_back_until_the_next_label(tmp_path: Path) -> None:
    path = tmp_path / "labels.jsonl"
    store = LabelStore(path)
    store.add("e1", "lift-any", True)
    store.add("e2", "lift-any", False)
    store.retract("e1", "lift-any")
    store.retract("e2", "place-any")  # another task's label: none to take back, no effect
    again = LabelStore(path)
    assert set(again.latest()) == {("e2", "lift-any")}
    assert [lab.episode_id for lab in again.all()] == ["e1", "e2"]  # the history stays
    assert [type(r).__name__ for r in again.records()] == ["Label"] * 2 + ["Retraction"] * 2
    store.add("e1", "lift-any", False)  # labeled again after the undo: that label counts
    assert LabelStore(path).latest()[("e1", "lift-any")].success is False
    # a retraction line with a wrong type is unreadable, like a label's
    with open(path, "a") as f:
        f.write(json.dumps({"episode_id": "e2", "task": "lift-any", "retracted": True}) + "\n")
    assert ("e2", "lift-any") in LabelStore(path).latest()


def test_an_undo_never_takes_back_a_label_given_during_its_check(tmp_path: Path) -> None:
    """The page's undo checks the label in force and retracts it in one step: another
    page's label arriving between the two used to be the one taken back."""
    import threading

    store = LabelStore(tmp_path / "labels.jsonl")
    mine = store.add("e1", "lift-any", True)
    real = store.latest
    other: list[threading.Thread] = []

    def latest_then_another_page_labels() -> dict:
        seen = real()
        t = threading.Thread(target=store.add, args=("e1", "lift-any", False))
        t.start()
        t.join(0.3)  # it waits for the undo to finish (it went ahead of it before)
        other.append(t)
        return seen

    store.latest = latest_then_another_page_labels  # type: ignore[method-assign]
    assert type(store.retract_if_latest("e1", "lift-any", mine.timestamp)).__name__ == "Retraction"
    other[0].join(5)
    store.latest = real  # type: ignore[method-assign]
    assert store.latest()[("e1", "lift-any")].success is False  # the other page's label
    # another label in force: it is returned, nothing taken back; none: None
    assert store.retract_if_latest("e1", "lift-any", mine.timestamp).success is False  # type: ignore[union-attr]
    assert store.retract_if_latest("e9", "lift-any", None) is None
    assert store.latest()[("e1", "lift-any")].success is False


def _store(tmp_path: Path) -> Path:
    with EpisodeWriter(tmp_path / "store", "r0") as w:
        for i in range(3):
            e = make_episode(i)
            w.write(e)
    return tmp_path / "store"


def test_the_labeling_page_answers_loopback_names_only_when_it_binds_to_loopback() -> None:
    from mtopt.success.server import LOOPBACK_HOSTS, allowed_hosts_for

    for host in ("127.0.0.1", "localhost", "::1", "[::1]"):
        assert allowed_hosts_for(host) == LOOPBACK_HOSTS
    assert allowed_hosts_for("127.0.0.2") == (*LOOPBACK_HOSTS, "127.0.0.2")  # all of 127/8
    for host in ("0.0.0.0", "192.168.1.20", "::", "robot-lab.local"):
        assert allowed_hosts_for(host) == ("*",)


def test_label_api_and_bad_requests(tmp_path: Path) -> None:
    store = _store(tmp_path)
    # a request for another host name (a page elsewhere whose name points here: DNS
    # rebinding) is refused; one addressed to this machine is served
    app = create_app(store, tmp_path / "labels.jsonl")
    assert TestClient(app, base_url="http://evil.example").get("/api/tasks").status_code == 400
    assert TestClient(app, base_url="http://localhost:8765").get("/api/tasks").status_code == 200
    client = TestClient(create_app(store, tmp_path / "labels.jsonl"), base_url=LOCAL)
    q = client.get("/api/queue", params={"task": "lift-any"}).json()
    assert q["remaining"] == 3 and q["labeled"] == 0
    eid = q["items"][0]["episode_id"]
    assert client.get(f"/api/episodes/{eid}/final.png").content[:4] == b"\x89PNG"
    assert (
        client.post(
            "/api/labels", json={"episode_id": eid, "task": "lift-any", "success": True}
        ).status_code
        == 200
    )
    assert client.get("/api/queue", params={"task": "lift-any"}).json()["labeled"] == 1
    # undo: the label is taken back, the episode is in the queue again
    undo = {"episode_id": eid, "task": "lift-any"}
    assert client.delete("/api/labels", params=undo).json() == {"ok": True, "retracted": True}
    assert client.get("/api/queue", params={"task": "lift-any"}).json()["labeled"] == 0
    assert client.delete("/api/labels", params=undo).json()["retracted"] is False
    assert client.delete("/api/labels", params={**undo, "task": "fly"}).status_code == 400
    assert client.delete("/api/labels", params={**undo, "episode_id": "nope"}).status_code == 404
    body = {"episode_id": eid, "task": "lift-any", "success": True}
    assert client.post("/api/labels", json=body).status_code == 200
    # malformed or unknown input: clear 4xx, nothing written
    assert (
        client.post(
            "/api/labels", json={"episode_id": eid, "task": "fly", "success": True}
        ).status_code
        == 400
    )
    assert (
        client.post(
            "/api/labels", json={"episode_id": "nope", "task": "lift-any", "success": True}
        ).status_code
        == 404
    )
    assert client.post("/api/labels", json={"episode_id": eid}).status_code == 422
    assert client.post("/api/labels", content=b"{not json").status_code == 422
    assert client.get("/api/queue", params={"task": "fly"}).status_code == 400
    # nothing outside the store is served: paths are ids, traversal finds no episode
    assert client.get("/api/episodes/..%2F..%2Fetc%2Fpasswd/final.png").status_code == 404
    assert client.get("/api/episodes/../../pyproject.toml").status_code == 404
    assert len(LabelStore(tmp_path / "labels.jsonl").all()) == 2


def test_labeling_a_real_cells_episode_ids(tmp_path: Path) -> None:
    """Ids the store takes from a real cell's writer: long, with "/", "#", "%" or "?".
    Each one's images are served for its id in the query (as the page asks for them)
    and it can be labeled (a 70-character id was refused with 422, "/" had no images)."""
    import dataclasses

    ids = ["cell-a/0001", "ep#2 x", "ep%41", "ep?q=1", "arm-" + "x" * 70]
    with EpisodeWriter(tmp_path / "store", "arm-1") as w:
        for i, eid in enumerate(ids):
            w.write(dataclasses.replace(make_episode(i), episode_id=eid))
    client = TestClient(create_app(tmp_path / "store", tmp_path / "labels.jsonl"), base_url=LOCAL)
    queued = [i["episode_id"] for i in client.get("/api/queue?task=lift-any").json()["items"]]
    assert sorted(queued) == sorted(ids)
    for eid in ids:
        for image in ("final.png", "strip.png"):
            r = client.get(f"/api/{image}", params={"episode_id": eid})
            assert r.status_code == 200 and r.content[:4] == b"\x89PNG", (eid, image)
        body = {"episode_id": eid, "task": "lift-any", "success": False}
        assert client.post("/api/labels", json=body).status_code == 200, eid
    assert {lab.episode_id for lab in LabelStore(tmp_path / "labels.jsonl").all()} == set(ids)
    # the page's largest queue request (after many skips) is one the server answers
    from mtopt.success.server import PAGE, QUEUE_LIMIT

    assert f"Math.min({QUEUE_LIMIT}, 10+skipped.size)" in PAGE
    assert client.get(f"/api/queue?task=lift-any&limit={QUEUE_LIMIT}").status_code == 200
    assert client.get(f"/api/queue?task=lift-any&limit={QUEUE_LIMIT + 1}").status_code == 400
    # success is a JSON boolean: "yes", 1 or "0" are refused rather than guessed
    for value in ("yes", 1, "0", None):
        body = {"episode_id": ids[0], "task": "lift-any", "success": value}
        assert client.post("/api/labels", json=body).status_code == 422, value
    assert len(LabelStore(tmp_path / "labels.jsonl").all()) == len(ids)


def test_label_queue_with_a_detector_that_lacks_a_task(tmp_path: Path) -> None:
    """A detector trained before a task was added orders the queues of the tasks it knows
    and leaves the others in store order (it used to answer 500)."""
    with EpisodeWriter(tmp_path / "store", "r0") as w:
        for i in range(3):
            w.write(make_episode(i, size=16))
    sd = SuccessDetector(SuccessNet(SMALL), ("lift-any", "place-any"))
    sd.publish(tmp_path / "sd", 1)
    client = TestClient(
        create_app(tmp_path / "store", tmp_path / "labels.jsonl", tmp_path / "sd"), base_url=LOCAL
    )
    known = client.get("/api/queue", params={"task": "lift-any"}).json()
    assert all(0.0 <= item["p_success"] <= 1.0 for item in known["items"])
    r = client.get("/api/queue", params={"task": "lift-ball"})
    assert r.status_code == 200 and r.json()["remaining"] == 3
    assert all(item["p_success"] is None for item in r.json()["items"])


def test_label_server_sees_new_episodes_and_holds_no_images(tmp_path: Path) -> None:
    """The page keeps an index, not the episodes: images are read from the shard when
    shown (a few cached), and episodes written after the server started join the queue."""
    store = _store(tmp_path)
    app = create_app(store, tmp_path / "labels.jsonl", refresh_s=0.0)
    client = TestClient(app, base_url=LOCAL)
    assert client.get("/api/queue", params={"task": "lift-any"}).json()["remaining"] == 3
    with EpisodeWriter(store, "r1") as w:  # a robot still collecting into the store
        for i in range(10, 30):
            w.write(make_episode(i))
    q = client.get("/api/queue", params={"task": "lift-any", "limit": 500}).json()
    assert q["remaining"] == 23
    for item in q["items"]:
        r = client.get(f"/api/episodes/{item['episode_id']}/strip.png")
        assert r.status_code == 200 and r.content[:4] == b"\x89PNG"
    # a served episode's frames are the ones in the store
    eid = q["items"][-1]["episode_id"]
    stored = {e.episode_id: e for e in EpisodeReader(store).episodes()}[eid]
    png = Image.open(io.BytesIO(client.get(f"/api/episodes/{eid}/final.png").content))
    assert np.array_equal(np.asarray(png.convert("RGB"))[::4, ::4], stored.final_image)


def test_store_index_bounds_its_cache_and_forgets_quarantined_shards(tmp_path: Path) -> None:
    from mtopt.success.server import StoreIndex

    store = _store(tmp_path)
    with EpisodeWriter(store, "r1") as w:
        for i in range(10, 30):
            w.write(make_episode(i))
    index = StoreIndex(store, shards_per_refresh=1, cache_episodes=4)
    assert len(index) == 23  # read in parts until caught up
    for eid in index.ids():
        ep = index.episode(eid)
        assert ep is not None and ep.episode_id == eid
    assert len(index._cache) == 4
    # a shard that turns bad after it was indexed: its episodes 404, nothing crashes
    victim = next(e for e in index.ids() if e not in index._cache)
    index.shard[victim].write_bytes(b"not parquet")
    assert index.episode(victim) is None
    assert victim not in index
    assert (store / "quarantine").is_dir()


def _scored_label_app(tmp_path: Path) -> tuple[SuccessDetector, TestClient]:
    """A store of 3 episodes, a detector published as v1 in tmp_path/sd, and a client of
    a labeling app that refreshes on every request."""
    with EpisodeWriter(tmp_path / "store", "r0") as w:
        for i in range(3):
            w.write(make_episode(i, size=16))
    sd = SuccessDetector(SuccessNet(SMALL), ("lift-any", "place-any"))
    sd.publish(tmp_path / "sd", 1)
    client = TestClient(
        create_app(tmp_path / "store", tmp_path / "labels.jsonl", tmp_path / "sd", refresh_s=0.0),
        base_url=LOCAL,
    )
    return sd, client


def test_label_queue_scores_episodes_that_arrive_later(tmp_path: Path) -> None:
    """With a detector, episodes indexed after the start are scored too."""
    _, client = _scored_label_app(tmp_path)
    with EpisodeWriter(tmp_path / "store", "r1") as w:
        for i in range(10, 14):
            w.write(make_episode(i, size=16))
    q = client.get("/api/queue", params={"task": "place-any", "limit": 100}).json()
    assert q["remaining"] == 7
    assert all(0.0 <= item["p_success"] <= 1.0 for item in q["items"])
    ps = [abs(item["p_success"] - 0.5) for item in q["items"]]
    assert ps == sorted(ps)  # most uncertain first
    # a camera of another size: its episodes are queued unscored, last (they used to be
    # lost until a restart: their shard was read, the scoring raised)
    with EpisodeWriter(tmp_path / "store", "r2") as w:
        w.write(make_episode(20, size=8))
    q = client.get("/api/queue", params={"task": "place-any", "limit": 100}).json()
    assert q["remaining"] == 8
    assert q["items"][-1]["episode_id"] == "ep00020" and q["items"][-1]["p_success"] is None
    # a row that does not decode quarantines its shard; the next shards are indexed
    bad = make_episode(30, size=16).to_row()
    bad["image_height"] = 15
    _write_raw_shard(tmp_path / "store", "99999999999999999997-000000.parquet", [bad])
    with EpisodeWriter(tmp_path / "store", "r3") as w:
        w.write(make_episode(31, size=16))
    q = client.get("/api/queue", params={"task": "place-any", "limit": 100}).json()
    assert q["remaining"] == 9 and (tmp_path / "store" / "quarantine").is_dir()


def test_a_detector_that_cannot_score_the_store_is_not_tried_at_every_refresh(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A newer detector that fails to load was tried again at every queue refresh, each
    time reading every final image of the store; now after RESCORE_RETRY_S."""
    import time

    from mtopt.success import server

    sd, client = _scored_label_app(tmp_path)
    sd.publish(tmp_path / "sd", 2)
    tries: list[int] = []
    real = SuccessDetector.load.__func__  # type: ignore[attr-defined]

    def load(cls, directory, *args, version=None, **kw):  # type: ignore[no-untyped-def]
        if version == 2:
            tries.append(2)
            raise ValueError("a torn weights file")
        return real(cls, directory, *args, version=version, **kw)

    monkeypatch.setattr(SuccessDetector, "load", classmethod(load))

    def ask(times: int) -> None:
        for _ in range(times):
            q = client.get("/api/queue", params={"task": "place-any"})
            assert q.status_code == 200 and q.json()["remaining"] == 3  # served meanwhile
            time.sleep(0.05)  # (the rescore runs in a thread)

    ask(6)
    assert tries == [2]
    monkeypatch.setattr(server, "RESCORE_RETRY_S", 0.0)
    end = time.monotonic() + 30
    while len(tries) < 2 and time.monotonic() < end:
        ask(1)
    assert len(tries) >= 2  # tried again once the wait is over


def test_two_pages_labeling_at_once_get_other_episodes_and_undo_only_their_own(
    tmp_path: Path,
) -> None:
    """Two people label the same task: each page's queue leaves out what the other was
    handed; an undo does not take back a label another page gave since (409)."""
    with EpisodeWriter(tmp_path / "store", "r0") as w:
        for i in range(6):
            w.write(make_episode(i))
    client = TestClient(create_app(tmp_path / "store", tmp_path / "labels.jsonl"), base_url=LOCAL)

    def ids(page: str, limit: int = 3) -> list[str]:
        q = client.get("/api/queue", params={"task": "lift-any", "limit": limit, "client": page})
        return [i["episode_id"] for i in q.json()["items"]]

    a, b = ids("page-a"), ids("page-b")
    assert len(a) == len(b) == 3 and not set(a) & set(b)
    assert ids("page-a") == a  # a page's own episodes stay its own
    assert ids("page-c") == []  # all six are held
    held = client.get("/api/queue", params={"task": "lift-any", "client": "page-c"}).json()
    assert held["held_elsewhere"] == 6 and held["remaining"] == 6
    q = client.get("/api/queue", params={"task": "lift-any", "limit": 6}).json()
    assert len(q["items"]) == 6 and q["remaining"] == 6  # without a name: no holds
    assert client.get("/api/queue", params={"task": "lift-any", "client": ""}).status_code == 400
    # page A labels an episode, page B labels it again (it was shown there too), A undoes
    first = client.post(
        "/api/labels", json={"episode_id": a[0], "task": "lift-any", "success": True}
    )
    later = client.post(
        "/api/labels", json={"episode_id": a[0], "task": "lift-any", "success": False}
    )
    undo = {"episode_id": a[0], "task": "lift-any", "timestamp": first.json()["label"]["timestamp"]}
    r = client.delete("/api/labels", params=undo)
    assert r.status_code == 409 and "labeled again since" in r.text
    assert LabelStore(tmp_path / "labels.jsonl").latest()[(a[0], "lift-any")].success is False
    mine = {**undo, "timestamp": later.json()["label"]["timestamp"]}
    assert client.delete("/api/labels", params=mine).json() == {"ok": True, "retracted": True}
    assert (a[0], "lift-any") not in LabelStore(tmp_path / "labels.jsonl").latest()
    # a body larger than a label could be is refused unread
    huge = {"episode_id": "x" * 100_000, "task": "lift-any", "success": True}
    r = client.post("/api/labels", json=huge)
    assert r.status_code == 413 and len(r.content) < 200


def test_the_queue_orders_by_a_newer_detector_once_published(tmp_path: Path) -> None:
    """``mtopt sd improve`` publishes v2 while the page runs: the store is scored again
    in the background and the queue orders by v2 (it used to keep v1 until a restart)."""
    import time

    with EpisodeWriter(tmp_path / "store", "r0") as w:
        for i in range(4):
            w.write(make_episode(i, size=16))
    torch.manual_seed(0)
    SuccessDetector(SuccessNet(SMALL), ("lift-any", "place-any")).publish(tmp_path / "sd", 1)
    client = TestClient(
        create_app(tmp_path / "store", tmp_path / "labels.jsonl", tmp_path / "sd", refresh_s=0.0),
        base_url=LOCAL,
    )

    def queue() -> dict:  # type: ignore[type-arg]
        return client.get("/api/queue", params={"task": "lift-any", "limit": 10}).json()

    v1 = queue()
    assert v1["sd_version"] == 1
    torch.manual_seed(1)
    SuccessDetector(SuccessNet(SMALL), ("lift-any", "place-any")).publish(tmp_path / "sd", 2)
    deadline = time.monotonic() + 30
    while (q := queue())["sd_version"] != 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert q["sd_version"] == 2 and q["remaining"] == 4
    p1 = {i["episode_id"]: i["p_success"] for i in v1["items"]}
    p2 = {i["episode_id"]: i["p_success"] for i in q["items"]}
    assert p1.keys() == p2.keys() and p1 != p2
    ps = [abs(p - 0.5) for p in p2.values()]
    assert ps == sorted(ps)


def test_label_queue_survives_a_store_it_cannot_refresh(tmp_path: Path) -> None:
    """A shard of a newer schema appearing while the page runs: the queue goes on with the
    episodes indexed so far (it used to be a 500 for every request)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    store = _store(tmp_path)
    client = TestClient(create_app(store, tmp_path / "labels.jsonl", refresh_s=0.0), base_url=LOCAL)
    newer = pa.table({"schema_version": [99], "episode_id": ["x"]}).replace_schema_metadata(
        {"mtopt.schema_version": "99"}
    )
    (store / "shards" / "r9").mkdir()
    pq.write_table(newer, store / "shards" / "r9" / "0.parquet")
    r = client.get("/api/queue", params={"task": "lift-any"})
    assert r.status_code == 200 and r.json()["remaining"] == 3


def test_staging_says_how_many_positives_it_could_not_stage(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A positive that 30 scenes could not stage is kept as a negative (by its ground
    truth), which used to go unsaid: a task could get few positives without a word."""
    import logging

    from mtopt.robots.sim_robot import SimRobot
    from mtopt.success.data import stage_examples
    from mtopt.tasks import DEFAULT_REGISTRY

    def never(self, task, positive, rng, max_tries=30):  # type: ignore[no-untyped-def]
        self.reset_scene(int(rng.integers(0, 2**31 - 1)))
        return np.zeros((16, 16, 3), np.uint8), False, self.scene_state()

    monkeypatch.setattr(SimRobot, "stage_outcome", never)
    with caplog.at_level(logging.WARNING, logger="mtopt.success.data"):
        data = stage_examples(DEFAULT_REGISTRY, ["lift-ball"], 2, image_size=16)
    assert len(data) == 4
    assert "lift-ball: 2 of 2 positives could not be staged" in caplog.text


def test_staged_examples_follow_the_cells_outcome_view(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run with sim.outcome_fixtures_share=0.75 stages its detector's examples and
    validation scenes with that view (they were always staged with the default halves,
    so the detector would learn from other images than the episodes it judges)."""
    from mtopt.config import override
    from mtopt.robots import sim_robot
    from mtopt.runtime import local
    from mtopt.runtime.config import preset
    from mtopt.success.data import stage_examples
    from mtopt.tasks import DEFAULT_REGISTRY

    made: list[float] = []
    real = sim_robot.SimRobot

    class Recording(real):  # type: ignore[misc, valid-type]
        def __init__(self, config, *a, **k):  # type: ignore[no-untyped-def]
            made.append(config.outcome_fixtures_share)
            super().__init__(config, *a, **k)

    monkeypatch.setattr(sim_robot, "SimRobot", Recording)
    staged = stage_examples(DEFAULT_REGISTRY, ["lift-any"], 1, outcome_fixtures_share=0.75)
    assert made == [0.75] and staged.images.shape[1:] == (64, 64, 3)
    calls: list[float] = []
    stage = local.stage_examples
    monkeypatch.setattr(
        local,
        "stage_examples",
        lambda *a, **k: calls.append(k["outcome_fixtures_share"]) or stage(*a, **k),
    )
    run = local.LocalRun(
        override(preset("tiny"), ["sim.outcome_fixtures_share=0.75"]), tmp_path / "run"
    )
    assert run._sd_train_set().outcome_fixtures_share == 0.75  # recorded, and read back
    assert LabeledSet.load(run.paths.sd / "examples.npz").outcome_fixtures_share == 0.75
    run._sd_val_set()
    assert calls == [0.75, 0.75]
    # the folder's key names the view: a start with the default halves in that folder
    # sets these examples aside instead of training on them
    run._check_sd_tasks()
    key = json.loads((run.paths.sd / "tasks.key.json").read_text())
    assert key["outcome_fixtures_share"] == 0.75
    other = local.LocalRun(preset("tiny"), tmp_path / "run")
    other._check_sd_tasks()
    assert not (run.paths.sd / "examples.npz").exists()
    assert "outcome_fixtures_share" not in json.loads((run.paths.sd / "tasks.key.json").read_text())


def test_example_sets_record_their_outcome_view(tmp_path: Path) -> None:
    """Staged examples record the view they were taken in, through save and load, subset
    and new tasks; a set of another view is refused where a run takes it
    (``examples_for``: a 0.5 sd.examples_file trained a 0.75 run's detector without a
    word), sets of two views do not join, and a set without the record (older files,
    episodes) is taken as it is and joins as the other set's view."""
    from mtopt.success.data import examples_for

    staged = dataclasses.replace(synthetic(8, 0), outcome_fixtures_share=0.75)
    path = staged.save(tmp_path / "wide.npz")
    back = LabeledSet.load(path)
    assert back.outcome_fixtures_share == 0.75
    assert back.subset(np.arange(3)).outcome_fixtures_share == 0.75
    assert back.with_tasks((*TASKS, "new")).outcome_fixtures_share == 0.75
    assert (
        LabeledSet.load(synthetic(4, 1).save(tmp_path / "old.npz")).outcome_fixtures_share is None
    )
    with pytest.raises(
        ValueError, match=r"outcome_fixtures_share 0.75, the run's cell renders 0.5"
    ):
        examples_for(path, TASKS, 16, 0.5)
    assert len(examples_for(path, TASKS, 16, 0.75)) == 8
    assert len(examples_for(tmp_path / "old.npz", TASKS, 16, 0.75)) == 4
    with pytest.raises(ValueError, match="two outcome views"):
        staged.concat(dataclasses.replace(staged, outcome_fixtures_share=0.5))
    assert staged.concat(staged).outcome_fixtures_share == 0.75
    # a set without the record joins as the other's view, so a third view is refused
    # whatever the order (it was joined: 0.75 + unknown gave unknown, then + 0.5)
    joined = staged.concat(synthetic(4, 1))
    assert joined.outcome_fixtures_share == 0.75
    assert synthetic(4, 1).concat(staged).outcome_fixtures_share == 0.75
    assert synthetic(4, 1).concat(synthetic(4, 2)).outcome_fixtures_share is None
    with pytest.raises(ValueError, match="two outcome views"):
        joined.concat(dataclasses.replace(staged, outcome_fixtures_share=0.5))


def test_human_examples_take_an_episode_stored_twice_once_and_name_unusable_labels(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A client's retried write stores an episode twice: its label is one example, not
    two (as LogReplay and the run's relabel rounds count it). Labels for tasks the
    registry lacks, or for episodes not in the store, are named in a warning."""
    from mtopt.success.improve import human_examples
    from mtopt.tasks import DEFAULT_REGISTRY

    store = tmp_path / "store"
    with EpisodeWriter(store, "r0") as w:
        for i in range(4):
            w.write(make_episode(i))
    with EpisodeWriter(store, "r1") as w:  # the same two episodes again, another shard
        w.write(make_episode(1))
        w.write(make_episode(2))
    labels = LabelStore(store / "labels.jsonl")
    for i in range(4):
        labels.add(f"ep{i:05d}", "lift-any", bool(i % 2))
    labels.add("ep00000", "place-can-on-plate", True)  # a task of a --tasks-file
    labels.add("ep00099", "lift-any", True)  # not in this store
    with caplog.at_level("WARNING", logger="mtopt.success.improve"):
        pool = human_examples(store, None, DEFAULT_REGISTRY)
    assert sorted(pool.ids.tolist()) == ["ep00000", "ep00001", "ep00002", "ep00003"]
    j = DEFAULT_REGISTRY.names.index("lift-any")
    assert pool.mask[:, j].sum() == 4 and pool.labels[pool.mask[:, j], j].sum() == 2
    assert "1 labels in" in caplog.text and "place-can-on-plate" in caplog.text
    assert "1 labeled episodes of" in caplog.text and "are not in" in caplog.text


def test_example_sets_of_two_image_sizes_do_not_concatenate() -> None:
    small = synthetic(4, 0)
    big = dataclasses.replace(small, images=np.zeros((4, 32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match="16x16- and 32x32-pixel images"):
        small.concat(big)
    assert len(small.concat(synthetic(3, 1))) == 7
    assert len(LabeledSet.empty(small.tasks, 32).concat(small)) == 4
