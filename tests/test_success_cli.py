"""The sd CLI end to end on a tiny store: examples -> train -> eval -> improve (oracle)."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mtopt.cli import app
from mtopt.success.network import SuccessDetector


@pytest.mark.timeout(600)
def test_sd_cli_flow(tmp_path: Path) -> None:
    r = CliRunner()
    ex, val, w, store = (
        tmp_path / "ex.npz",
        tmp_path / "val.npz",
        tmp_path / "w",
        tmp_path / "store",
    )
    res = r.invoke(app, ["sd", "examples", "--task", "lift-any", "--n", "3", "--out", str(ex)])
    assert res.exit_code == 0, res.output
    res = r.invoke(app, ["sd", "examples", "--task", "place-any", "--n", "2", "--out", str(ex)])
    assert res.exit_code == 0 and "10 labeled examples" in res.output
    assert "already holds train scenes of seed 0" in res.output  # the same layouts again
    res = r.invoke(
        app,
        ["sd", "examples", "--task", "lift-any", "--n", "2", "--split", "test", "--out", str(val)],
    )
    assert res.exit_code == 0
    res = r.invoke(app, ["sd", "train", "--examples", str(ex), "--out", str(w), "--steps", "5"])
    assert res.exit_code == 0 and "v1" in res.output
    res = r.invoke(app, ["sd", "eval", "--weights", str(w), "--examples", str(val)])
    assert (
        res.exit_code == 0
        and "lift-any" in res.output
        and (tmp_path / "val.confusion.png").exists()
    )
    res = r.invoke(app, ["collect", "--store", str(store), "--robots", "1", "--episodes", "6"])
    assert res.exit_code == 0
    res = r.invoke(
        app,
        [
            "sd",
            "improve",
            "--store",
            str(store),
            "--weights",
            str(w),
            "--examples",
            str(ex),
            "--budget",
            "2",
            "--rounds",
            "2",
            "--steps",
            "3",
            "--validation",
            str(val),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "v3: 4 labels/task" in res.output and (w / "accuracy_vs_labels.png").exists()
    # a second call goes on: the first call's labels count, the first SD is the start
    chosen = json.loads((w / "chosen_labels.json").read_text())
    assert sum("lift-any" in tasks for tasks in chosen.values()) == 4
    args = ["sd", "improve", "--store", str(store), "--weights", str(w), "--examples", str(ex)]
    res = r.invoke(app, [*args, "--budget", "1", "--rounds", "1", "--steps", "3"])
    assert res.exit_code == 0, res.output
    chosen = json.loads((w / "chosen_labels.json").read_text())
    assert sum("lift-any" in tasks for tasks in chosen.values()) == 5
    assert SuccessDetector.latest_version(w / "initial") == 1  # the staged-only SD, v1
    # a newer `sd train` SD is what the next call starts from (it went on fine-tuning v1)
    res = r.invoke(app, ["sd", "train", "--examples", str(ex), "--out", str(w), "--steps", "2"])
    trained = SuccessDetector.latest_version(w)
    assert res.exit_code == 0 and f"v{trained}" in res.output
    res = r.invoke(app, [*args, "--budget", "1", "--rounds", "1", "--steps", "3"])
    assert res.exit_code == 0, res.output
    from mtopt.qtopt.weights import read_latest

    kept = read_latest(w / "initial", "sd")
    assert kept is not None and kept["version"] == 2 and kept["meta"]["copied_from"] == trained
    assert read_latest(w, "sd")["meta"]["origin"] == "sd improve"  # type: ignore[index]
    # a real cell's episodes have no ground truth: a person's labels (from `sd label`,
    # here in a file of its own) are what the human labeler retrains on
    import dataclasses

    from mtopt.store import EpisodeReader, EpisodeWriter
    from mtopt.success.labels import LabelStore

    real = tmp_path / "real-store"
    eps = list(EpisodeReader(store).episodes())
    with EpisodeWriter(real, "arm-1") as writer:
        for e in eps:
            writer.write(dataclasses.replace(e, gt_success=None, gt_success_by_task=None))
    labels = LabelStore(tmp_path / "my-labels.jsonl")
    for i, e in enumerate(eps):
        labels.add(e.episode_id, "lift-any", i % 2 == 0)
    args = ["sd", "improve", "--store", str(real), "--weights", str(w), "--examples", str(ex)]
    args += ["--labeler", "human", "--labels", str(tmp_path / "my-labels.jsonl")]
    res = r.invoke(
        app, [*args, "--budget", "2", "--rounds", "1", "--steps", "3", "--validation", str(val)]
    )
    assert res.exit_code == 0, res.output
    # every label the person gave counts (it used to keep --budget of them, 2 here)
    assert f": {len(eps)} labels/task" in res.output and len(eps) > 2
    assert f"published SD v{SuccessDetector.latest_version(w)} in {w}" in res.output
    # bad inputs: clear one-line errors
    no_labels = [*args[:-1], str(tmp_path / "missing.jsonl")]
    res = r.invoke(app, [*no_labels, "--budget", "2", "--rounds", "1", "--steps", "3"])
    assert res.exit_code == 2 and "no labels in" in res.output  # it retrained on none
    # labels of another store's episodes: an error, not a new SD trained on the examples
    foreign = LabelStore(tmp_path / "foreign.jsonl")
    foreign.add("deadbeef", "lift-any", True)
    before = SuccessDetector.latest_version(w)
    res = r.invoke(app, [*args[:-1], str(foreign.path), "--rounds", "1", "--steps", "3"])
    assert res.exit_code == 2 and "none of the 1 labels in" in res.output, res.output
    assert SuccessDetector.latest_version(w) == before
    res = r.invoke(app, [*args[:-4], "--labeler", "oracle", "--labels", str(ex)])
    assert res.exit_code == 2 and "--labels is for --labeler human" in res.output
    (tmp_path / "a-file").write_text("")
    res = r.invoke(app, ["sd", "train", "--examples", str(ex), "--out", str(tmp_path / "a-file")])
    assert res.exit_code == 2 and "cannot write to" in res.output  # before training, not after
    res = r.invoke(app, ["sd", "examples", "--task", "fly", "--out", str(ex)])
    assert res.exit_code == 2 and "unknown task 'fly'" in res.output
    res = r.invoke(app, ["sd", "eval", "--weights", str(tmp_path / "none"), "--examples", str(val)])
    assert res.exit_code == 2 and "no success detector weights" in res.output
    res = r.invoke(
        app,
        [
            "sd",
            "improve",
            "--store",
            str(tmp_path / "nostore"),
            "--weights",
            str(w),
            "--examples",
            str(ex),
        ],
    )
    assert res.exit_code == 2 and "no episode store" in res.output
    # a call that fails on its inputs writes nothing into the weights folder (it kept
    # the SD it was given in WEIGHTS/initial first)
    fresh = tmp_path / "w-fresh"
    fresh.mkdir()
    for f in w.glob("sd-*"):
        (fresh / f.name).write_bytes(f.read_bytes())
    res = r.invoke(
        app,
        [
            *("sd", "improve", "--store", str(tmp_path / "nostore"), "--weights", str(fresh)),
            *("--examples", str(ex)),
        ],
    )
    assert res.exit_code == 2 and not (fresh / "initial").exists()
    # collection with a success detector's folder for Q weights went on, all scripted
    res = r.invoke(app, ["collect", "--store", str(store), "--weights", str(w), "--episodes", "1"])
    assert res.exit_code == 2 and "holds a success detector" in res.output
    res = r.invoke(app, ["sd", "label", "--store", str(store), "--task", "nope", "--port", "0"])
    assert res.exit_code == 2 and "unknown task 'nope'" in res.output
    res = r.invoke(
        app,
        [
            *("sd", "improve", "--store", str(store), "--weights", str(w)),
            *("--examples", str(ex), "--retrain-from", "scratch"),
        ],
    )
    assert res.exit_code == 2 and "retrain_from must be 'previous' or 'initial'" in res.output


def test_sd_commands_take_a_runs_own_tasks(tmp_path: Path) -> None:
    """`--tasks-file` (as `mtopt run`'s) stages examples for a new task; `sd label`
    serves it. They used to know the built-in tasks only."""
    import json

    r = CliRunner()
    task = {"name": "place-can-on-plate", "kind": "place", "fixtures": ["plate"], "category": "can"}
    tasks = tmp_path / "tasks.json"
    tasks.write_text(json.dumps([task]))
    ex = tmp_path / "ex.npz"
    args = ["sd", "examples", "--task", "place-can-on-plate", "--n", "1", "--out", str(ex)]
    res = r.invoke(app, [*args, "--tasks-file", str(tasks)])
    assert res.exit_code == 0 and "2 labeled examples" in res.output, res.output
    from mtopt.success.data import LabeledSet

    assert LabeledSet.load(ex).tasks[-1] == "place-can-on-plate"
    # the test split's default seed is not the train split's: other scenes
    test = tmp_path / "test.npz"
    res = r.invoke(app, [*args[:-1], str(test), "--split", "test", "--tasks-file", str(tasks)])
    assert res.exit_code == 0, res.output
    train_ids, test_ids = LabeledSet.load(ex).ids, LabeledSet.load(test).ids
    assert train_ids[0] == "staged-train-0-0" and test_ids[0] == "staged-test-1-0"
    res = r.invoke(app, args)
    assert res.exit_code == 2 and "unknown task 'place-can-on-plate'" in res.output
    tasks.write_text(json.dumps([{**task, "fixture": ["plate"]}]))
    res = r.invoke(app, [*args, "--tasks-file", str(tasks)])
    assert res.exit_code == 2 and "tasks file" in res.output and "'fixture'" in res.output


def test_sd_examples_adds_a_new_task_to_a_set_and_keeps_splits_apart(tmp_path: Path) -> None:
    """Examples for a new task join a set staged before it (the old rows' labels for it
    unknown); it used to fail with a traceback after staging. Test-split examples are
    refused into a train-split file before staging (they were trained on without a
    word), and go to a file of their own by default; `sd train` and `sd eval` say when
    a set mixes training and held-out objects."""
    import json

    from mtopt.success.data import LabeledSet

    r = CliRunner()
    task = {"name": "place-can-on-plate", "kind": "place", "fixtures": ["plate"], "category": "can"}
    tasks = tmp_path / "tasks.json"
    tasks.write_text(json.dumps([task]))
    ex = tmp_path / "ex.npz"
    res = r.invoke(app, ["sd", "examples", "--task", "lift-any", "--n", "1", "--out", str(ex)])
    assert res.exit_code == 0, res.output
    args = ["sd", "examples", "--task", "place-can-on-plate", "--n", "1", "--out", str(ex)]
    res = r.invoke(app, [*args, "--tasks-file", str(tasks)])
    assert res.exit_code == 0 and "4 labeled examples" in res.output, res.output
    data = LabeledSet.load(ex)
    assert data.tasks[-1] == "place-can-on-plate"
    assert data.mask[:2, -1].tolist() == [False, False] and data.mask[2:, -1].all()
    # a set for other tasks than the start of this task list: one line, before staging
    res = r.invoke(app, ["sd", "examples", "--task", "lift-any", "--n", "1", "--out", str(ex)])
    assert res.exit_code == 2 and "does not start with" in res.output
    res = r.invoke(app, [*args, "--tasks-file", str(tasks), "--split", "test"])
    assert res.exit_code == 2 and "training (--split train) objects" in res.output
    assert len(LabeledSet.load(ex)) == 4
    # sd train takes sets staged before and after the new task; it notes held-out rows
    old = tmp_path / "old.npz"
    r.invoke(app, ["sd", "examples", "--task", "lift-any", "--n", "1", "--out", str(old)])
    test = tmp_path / "test.npz"
    res = r.invoke(app, [*args[:-1], str(test), "--split", "test", "--tasks-file", str(tasks)])
    assert res.exit_code == 0, res.output
    w = tmp_path / "w"
    train = ["sd", "train", "--steps", "1", "--out", str(w), "--examples", str(old)]
    res = r.invoke(app, [*train, "--examples", str(ex)])
    assert res.exit_code == 0 and "note" not in res.output, res.output
    res = r.invoke(app, [*train, "--examples", str(test)])
    assert res.exit_code == 0 and "2 of 4 examples are of held-out objects" in res.output
    res = r.invoke(app, ["sd", "eval", "--weights", str(w), "--examples", str(ex)])
    assert res.exit_code == 0 and "4 of these examples are of training objects" in res.output


def test_sd_examples_and_train_keep_outcome_views_apart(tmp_path: Path) -> None:
    """Examples staged at outcome_fixtures_share 0.75 record it; more examples of the
    default view are refused into that file before staging, and `sd train` refuses to
    train one detector on sets of two views, and records the view of one."""
    from mtopt.success.data import LabeledSet
    from mtopt.success.network import SuccessDetector

    r = CliRunner()
    wide, narrow = tmp_path / "wide.npz", tmp_path / "narrow.npz"
    base = ["sd", "examples", "--task", "lift-any", "--n", "1"]
    res = r.invoke(app, [*base, "--out", str(wide), "--outcome-fixtures-share", "0.75"])
    assert res.exit_code == 0, res.output
    assert LabeledSet.load(wide).outcome_fixtures_share == 0.75
    res = r.invoke(app, [*base, "--out", str(wide)])
    assert res.exit_code == 2 and "outcome_fixtures_share 0.75" in res.output, res.output
    assert len(LabeledSet.load(wide)) == 2
    assert r.invoke(app, [*base, "--out", str(narrow)]).exit_code == 0
    train = ["sd", "train", "--steps", "1", "--out", str(tmp_path / "w")]
    res = r.invoke(app, [*train, "--examples", str(wide), "--examples", str(narrow)])
    assert res.exit_code == 2 and "two outcome views" in res.output, res.output
    # a detector of one view records it (a run given it as sd.weights checks it)
    assert r.invoke(app, [*train, "--examples", str(wide)]).exit_code == 0
    assert SuccessDetector.load(tmp_path / "w").outcome_fixtures_share == 0.75


def test_sd_label_serves_loopback_names_only_on_a_loopback_address(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`mtopt sd label` builds the app it serves with the Host names its bind address
    allows (uvicorn is replaced: the app is checked, not served)."""
    import uvicorn
    from fastapi.testclient import TestClient
    from tests.test_store import make_episode

    from mtopt.store import EpisodeWriter

    with EpisodeWriter(tmp_path / "store", "r0") as w:
        w.write(make_episode(0))
    served: dict[str, object] = {}
    monkeypatch.setattr(
        uvicorn.Server, "run", lambda self, sockets=None: served.update(app=self.config.app)
    )
    for host, evil_status in (("127.0.0.1", 400), ("0.0.0.0", 200)):
        served.clear()
        res = CliRunner().invoke(
            app, ["sd", "label", "--store", str(tmp_path / "store"), "--host", host, "--port", "0"]
        )
        assert res.exit_code == 0, res.output
        client = TestClient(served["app"], base_url="http://evil.example")  # type: ignore[arg-type]
        assert client.get("/api/tasks").status_code == evil_status
        local = TestClient(served["app"], base_url="http://localhost:8765")  # type: ignore[arg-type]
        assert local.get("/api/tasks").status_code == 200


def test_sd_outputs_and_example_files_that_cannot_work_fail_before_any_work(
    tmp_path: Path,
) -> None:
    """A file where the weights folder should go, a folder where the examples file should
    go, and an empty or foreign examples file: one-line errors (exit 2) before staging or
    training (they crashed after it, or printed only "Aborted.")."""
    r = CliRunner()
    a_file = tmp_path / "file"
    a_file.write_text("not a folder")
    empty = tmp_path / "empty.npz"
    empty.write_bytes(b"")
    text = tmp_path / "text.npz"
    text.write_text("hello")
    for args, says in (
        (["sd", "train", "--examples", str(empty)], "not an example set"),
        (["sd", "train", "--examples", str(text)], "not an example set"),
        (["sd", "train", "--examples", str(tmp_path)], "is a directory"),
        (["sd", "examples", "--out", str(tmp_path)], "is a directory"),
        (["sd", "examples", "--out", str(a_file / "x.npz")], "cannot write to"),
        (["sd", "examples", "--out", str(empty)], "not an example set"),
        (["sd", "examples", "--seed", "-1"], "greater than or equal to 0"),  # (was a traceback)
    ):
        res = r.invoke(app, args)
        assert res.exit_code == 2 and says in res.output, (args, res.output)


def test_sd_label_binds_before_it_prints_its_address(tmp_path: Path) -> None:
    """A port in use is one clear error (the address used to be printed first and the
    server then died); port 0 serves on a free port and prints the one it got."""
    import os
    import select
    import signal
    import socket
    import subprocess
    import sys
    import urllib.request

    from tests.test_store import make_episode

    from mtopt.store import EpisodeWriter

    store = tmp_path / "store"
    with EpisodeWriter(store, "r0", flush_every=1) as w:
        w.write(make_episode(0))
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        res = CliRunner().invoke(app, ["sd", "label", "--store", str(store), "--port", str(port)])
    assert res.exit_code == 2 and f"cannot serve on 127.0.0.1:{port}" in res.output
    assert "labeling page" not in res.output
    cmd = [sys.executable, "-m", "mtopt.cli", "sd", "label", "--store", str(store), "--port", "0"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(tmp_path / "stderr.txt", "w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env)
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 120)
        assert ready, "no address printed within 120 s"
        line = proc.stdout.readline()
        assert line.startswith("labeling page: http://127.0.0.1:"), line
        url = line.split(": ", 1)[1].strip()
        assert not url.startswith("http://127.0.0.1:0/")
        with urllib.request.urlopen(url, timeout=20) as page:
            assert page.status == 200 and "mtopt labeling" in page.read().decode()
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=20)
        if proc.stdout is not None:
            proc.stdout.close()
    assert proc.returncode == 0, (tmp_path / "stderr.txt").read_text()  # Ctrl-C: a clean end


def test_sd_label_on_the_ipv6_wildcard_answers_ipv4_clients_too() -> None:
    """`--host ::` binds dual-stack where the system can (as uvicorn's own bind did);
    a plain IPv6 socket would refuse IPv4 clients."""
    import socket

    from mtopt.success.cli import _bind

    if not socket.has_dualstack_ipv6():
        pytest.skip("this system has no dual-stack IPv6 sockets")
    sockets = _bind("::", 0)
    try:
        port = sockets[0].getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
    finally:
        for s in sockets:
            s.close()


def _tiny_sd_setup(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A store of 4 tiny episodes, a 16-pixel SD of the built-in tasks and its examples:
    enough for `sd improve` to run a round in a second (no simulator)."""
    import dataclasses

    import numpy as np
    from tests.test_store import make_episode

    from mtopt.store import EpisodeWriter
    from mtopt.success.data import LabeledSet
    from mtopt.success.network import SDNetConfig, SuccessNet
    from mtopt.tasks import DEFAULT_REGISTRY

    names = DEFAULT_REGISTRY.names
    store, w, ex = tmp_path / "store", tmp_path / "w", tmp_path / "ex.npz"
    with EpisodeWriter(store, "r0") as writer:
        for i in range(4):
            writer.write(make_episode(i, size=16))
    cfg = SDNetConfig(len(names), 16, tower_channels=8, merge_size=4, head_channels=8)
    SuccessDetector(SuccessNet(dataclasses.replace(cfg, fc_units=16)), names).publish(w, 1)
    rng = np.random.default_rng(0)
    n = 4
    LabeledSet(
        tuple(names),
        rng.integers(0, 255, (n, 16, 16, 3), dtype=np.uint8),
        (rng.random((n, len(names))) < 0.5).astype(np.float32),
        np.ones((n, len(names)), bool),
        np.array([f"x{i}" for i in range(n)]),
        np.array(["staged"] * n),
        np.zeros(n, bool),
    ).save(ex)
    return store, w, ex


def test_sd_improve_without_validation_says_so_and_leaves_no_stale_plot(tmp_path: Path) -> None:
    """Without --validation there is no accuracy curve: the output says so, and an
    earlier call's accuracy_vs_labels.png (of SDs now superseded) is not left as if it
    were this call's."""
    store, w, ex = _tiny_sd_setup(tmp_path)
    (w / "accuracy_vs_labels.png").write_bytes(b"an earlier call's curve")
    args = ["sd", "improve", "--store", str(store), "--weights", str(w), "--examples", str(ex)]
    res = CliRunner().invoke(app, [*args, "--budget", "1", "--rounds", "1", "--steps", "1"])
    assert res.exit_code == 0, res.output
    assert "no --validation: no accuracy curve" in res.output
    assert "removed an earlier call's" in res.output
    assert not (w / "accuracy_vs_labels.png").exists()
    assert SuccessDetector.latest_version(w) == 2
    help_text = CliRunner().invoke(app, ["sd", "improve", "--help"]).output
    assert "with --validation" in " ".join(help_text.split())


def test_sd_train_refuses_a_q_weights_folder(tmp_path: Path) -> None:
    """`sd train --out` a Q-weights folder published the SD beside the Q files (as
    `collect --weights` refuses an SD's folder): one line, before any training."""
    _, _, ex = _tiny_sd_setup(tmp_path)
    for name in ("q-latest.json", "q-00000003.safetensors"):
        q = tmp_path / name.split(".")[0]
        q.mkdir()
        (q / name).write_text("{}")
        res = CliRunner().invoke(app, ["sd", "train", "--examples", str(ex), "--out", str(q)])
        assert res.exit_code == 2 and "holds Q-network weights" in res.output, res.output
        assert not list(q.glob("sd-*"))


def test_sd_improve_says_why_it_has_nothing_to_learn_from(tmp_path: Path) -> None:
    """Every label taken back, a real robot's store for the oracle, another camera's
    image size: each a one-line error that says what to do, and no new SD."""
    import dataclasses

    from tests.test_store import make_episode

    from mtopt.store import EpisodeReader, EpisodeWriter
    from mtopt.success.labels import LabelStore

    store, w, ex = _tiny_sd_setup(tmp_path)
    r = CliRunner()
    rest = ["--weights", str(w), "--examples", str(ex), "--rounds", "1", "--steps", "1"]
    labels = LabelStore(tmp_path / "labels.jsonl")
    labels.add("ep00000", "lift-any", True)
    labels.retract("ep00000", "lift-any")
    human = ["--labeler", "human", "--labels", str(labels.path)]
    res = r.invoke(app, ["sd", "improve", "--store", str(store), *rest, *human])
    assert res.exit_code == 2 and "no label in force" in res.output, res.output
    real = tmp_path / "real"
    with EpisodeWriter(real, "arm-1") as writer:
        for e in EpisodeReader(store).episodes():
            writer.write(dataclasses.replace(e, gt_success=None, gt_success_by_task=None))
    res = r.invoke(app, ["sd", "improve", "--store", str(real), *rest])
    assert res.exit_code == 2 and "no episodes with ground truth" in res.output, res.output
    assert "--labeler human" in res.output
    other = tmp_path / "other-camera"
    with EpisodeWriter(other, "r0") as writer:
        for i in range(4):
            writer.write(make_episode(i, size=8))
    res = r.invoke(app, ["sd", "improve", "--store", str(other), *rest])
    assert res.exit_code == 2 and "8x8-pixel images" in res.output, res.output
    assert SuccessDetector.latest_version(w) == 1


def _validation_set(path: Path, ids: list[str], size: int = 16) -> Path:
    import numpy as np

    from mtopt.success.data import LabeledSet
    from mtopt.tasks import DEFAULT_REGISTRY

    names = DEFAULT_REGISTRY.names
    n = len(ids)
    rng = np.random.default_rng(1)
    LabeledSet(
        tuple(names),
        rng.integers(0, 255, (n, size, size, 3), dtype=np.uint8),
        (rng.random((n, len(names))) < 0.5).astype(np.float32),
        np.ones((n, len(names)), bool),
        np.array(ids),
        np.array(["human"] * n),
        np.zeros(n, bool),
    ).save(path)
    return path


def test_sd_improve_never_trains_on_its_validation_episodes(tmp_path: Path) -> None:
    """A person's labels exported with --validation-out, then `sd improve --labeler
    human --validation` on the same labels: the validation episodes used to be trained
    on (the accuracy then measured on training data). They are left out, with a note."""
    from mtopt.success.labels import LabelStore

    store, w, ex = _tiny_sd_setup(tmp_path)
    labels = LabelStore(tmp_path / "labels.jsonl")
    for i in range(4):
        labels.add(f"ep{i:05d}", "lift-any", bool(i % 2))
    val = _validation_set(tmp_path / "val.npz", ["ep00000"])
    args = ["sd", "improve", "--store", str(store), "--weights", str(w), "--examples", str(ex)]
    human = ["--labeler", "human", "--labels", str(labels.path), "--steps", "1"]
    res = CliRunner().invoke(app, [*args, *human, "--validation", str(val)])
    assert res.exit_code == 0, res.output
    assert "1 labeled episodes are in the validation set" in res.output
    assert "v2: 3 labels/task" in res.output  # ep00001-3, not ep00000
    # a second call starts from that SD: its first point is at the 3 labels it saw (the
    # curve put it at 0); the oracle's calls do not count a person's labels as theirs
    again = CliRunner().invoke(app, [*args, *human, "--validation", str(val)])
    assert again.exit_code == 0 and "v2: 3 labels/task" in again.output, again.output
    assert "v3: 3 labels/task" in again.output
    oracle = ["--budget", "1", "--rounds", "1", "--steps", "1", "--validation", str(val)]
    res = CliRunner().invoke(app, [*args, *oracle])
    assert res.exit_code == 0 and "v3: 0 labels/task" in res.output, res.output
    # every labeled episode in the validation set: nothing to train on, said at once
    every = _validation_set(tmp_path / "every.npz", [f"ep{i:05d}" for i in range(4)])
    res = CliRunner().invoke(app, [*args, *human, "--validation", str(every)])
    assert res.exit_code == 2 and "nothing is left to train on" in res.output, res.output
    # the examples themselves in the validation set
    shared = _validation_set(tmp_path / "shared.npz", ["x0"])
    res = CliRunner().invoke(app, [*args, *human, "--validation", str(shared)])
    assert res.exit_code == 2 and "share 1 examples" in res.output, res.output


def test_sd_improve_checks_its_sets_before_writing_and_counts_earlier_labels(
    tmp_path: Path,
) -> None:
    store, w, ex = _tiny_sd_setup(tmp_path)
    args = ["sd", "improve", "--store", str(store), "--weights", str(w), "--examples", str(ex)]
    oracle = ["--budget", "1", "--rounds", "1", "--steps", "1"]
    small = _validation_set(tmp_path / "val8.npz", ["v0"], size=8)
    res = CliRunner().invoke(app, [*args, *oracle, "--validation", str(small)])
    assert res.exit_code == 2 and "has 8x8-pixel images" in res.output, res.output
    assert not (w / "initial").exists() and SuccessDetector.latest_version(w) == 1
    val = _validation_set(tmp_path / "val.npz", ["v0"])
    for call, before in ((1, 0), (2, 1)):  # the second goes on from the first's label
        res = CliRunner().invoke(app, [*args, *oracle, "--validation", str(val)])
        assert res.exit_code == 0, res.output
        first = next(ln for ln in res.output.splitlines() if ln.startswith("v"))
        assert f"{before} labels/task" in first, (call, res.output)


def test_sd_improve_with_human_labels_trains_an_exported_episode_once_as_labeled_now(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Label, `sd export`, label more and correct one, `sd improve --labeler human
    --examples` the export: the corrected episode was trained on twice, once with its
    old label from the export. Now the label in force replaces the export's copy."""
    import numpy as np

    import mtopt.success.improve as improve
    from mtopt.success.labels import LabelStore

    store, w, _ = _tiny_sd_setup(tmp_path)
    ex = _validation_set(tmp_path / "export.npz", ["ep00001", "x-staged"])  # an old export
    labels = LabelStore(tmp_path / "labels.jsonl")
    labels.add("ep00001", "lift-any", True)
    labels.add("ep00002", "lift-any", True)
    labels.add("ep00001", "lift-any", False)  # corrected after the export
    seen = []
    real = improve.train_sd

    def train_sd(data, *a, **k):  # type: ignore[no-untyped-def]
        seen.append(data)
        return real(data, *a, **k)

    monkeypatch.setattr(improve, "train_sd", train_sd)
    args = ["sd", "improve", "--store", str(store), "--weights", str(w), "--examples", str(ex)]
    human = ["--labeler", "human", "--labels", str(labels.path), "--steps", "1"]
    res = CliRunner().invoke(app, [*args, *human])
    assert res.exit_code == 0, res.output
    assert "1 examples of" in res.output and "trained once" in res.output
    ids = seen[0].ids.tolist()
    assert sorted(ids) == ["ep00001", "ep00002", "x-staged"]
    j = seen[0].tasks.index("lift-any")
    row = ids.index("ep00001")
    assert seen[0].mask[row, j] and seen[0].labels[row, j] == 0.0
    assert seen[0].mask[row].sum() == 1  # only what the person labeled now
    assert np.all(seen[0].mask[ids.index("x-staged")])  # the export's other examples stay


def test_sd_commands_refuse_bad_input_in_one_line_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each of these gave a traceback (and some after minutes of staging, or after
    writing to WEIGHTS): a tasks file whose kind or category is not a string, or that is
    not UTF-8; labels under a file; examples of another size to add staged scenes to; a
    malformed chosen_labels.json."""
    import numpy as np
    import uvicorn

    from mtopt.success.data import LabeledSet
    from mtopt.tasks import DEFAULT_REGISTRY

    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: None)
    r = CliRunner()
    store, w, ex = _tiny_sd_setup(tmp_path)

    def one_line_error(args: list[str], says: str, code: int = 2) -> None:
        res = r.invoke(app, args)
        assert isinstance(res.exception, SystemExit), res.exception
        assert res.exit_code == code and says in res.output, res.output

    staged = ["sd", "examples", "--task", "lift-any", "--n", "1"]
    bad_files = {
        "kind.json": b'[{"name": "lift-x1", "kind": ["lift"]}]',
        "category.json": b'[{"name": "lift-x2", "kind": "lift", "category": {"a": 1}}]',
        "utf.json": b'[{"name": "lift-x\xff", "kind": "lift"}]',
    }
    for name, raw in bad_files.items():
        (tmp_path / name).write_bytes(raw)
        says = {"kind.json": "'kind' must be", "category.json": "unknown category"}.get(
            name, "cannot read the tasks file"
        )
        one_line_error([*staged, "--tasks-file", str(tmp_path / name)], says)
    # examples of a 16-pixel camera (sd export's) cannot take 64-pixel staged scenes
    small = tmp_path / "small.npz"
    names = DEFAULT_REGISTRY.names
    LabeledSet(
        tuple(names),
        np.zeros((2, 16, 16, 3), np.uint8),
        np.zeros((2, len(names)), np.float32),
        np.ones((2, len(names)), bool),
        np.array(["e0", "e1"]),
        np.array(["human"] * 2),
        np.zeros(2, bool),
    ).save(small)
    one_line_error([*staged, "--out", str(small)], "holds 16x16-pixel examples")
    assert len(LabeledSet.load(small)) == 2
    # labels under a file: said before serving (each label answered 500)
    (tmp_path / "afile").write_text("x")
    label = ["sd", "label", "--store", str(store), "--port", "0"]
    one_line_error(
        [*label, "--labels", str(tmp_path / "afile" / "labels.jsonl")], "cannot write labels to"
    )
    assert not (tmp_path / "afile").is_dir()
    assert r.invoke(app, [*label, "--labels", str(tmp_path / "new" / "l.jsonl")]).exit_code == 0
    # a chosen_labels.json that is not a record of choices: refused before WEIGHTS changes
    improve = ["sd", "improve", "--store", str(store), "--weights", str(w), "--examples", str(ex)]
    improve += ["--rounds", "1", "--steps", "1", "--budget", "1"]
    for content in ("[]", '{"ep00001": "lift-any"}', "{"):
        (w / "chosen_labels.json").write_text(content)
        one_line_error(improve, "chosen_labels.json")
        assert not (w / "initial").exists()
