"""``mtopt sd ...``: success-detector examples, training, evaluation, labeling."""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path

import typer

from mtopt._cli import OWN_TASKS_HELP, TASKS_FILE_HELP, output_dir, output_file, registry_for
from mtopt._cli import fail as _fail

app = typer.Typer(no_args_is_help=True, rich_markup_mode="markdown")


@app.command()
def examples(
    task: str = typer.Option("all", help="Task to stage examples for, or 'all'."),
    n: int = typer.Option(20, min=1, help="Positive and near-miss negative scenes each."),
    out: Path | None = typer.Option(
        None,
        help="Example set file (.npz); appended to if it exists (default: "
        "runs/sd/examples.npz, or runs/sd/test.npz with --split test: a file holds one "
        "split, so held-out objects are never trained on).",
    ),
    split: str = typer.Option("train", help="Object instances: train or test."),
    seed: int | None = typer.Option(
        None,
        min=0,
        help="Scene seed (default: 0 for train, 1 for test: the same seed stages the same "
        "scenes, layout, light and camera, with only the objects changed).",
    ),
    randomize: bool = typer.Option(True, help="Domain randomization (light, colours, camera)."),
    tasks_file: Path | None = typer.Option(None, help=OWN_TASKS_HELP),
    outcome_fixtures_share: float = typer.Option(
        0.5,
        help="Rows of the outcome image for the fixture bin: the run's "
        "sim.outcome_fixtures_share, so the detector sees the episodes' view.",
    ),
) -> None:
    """Stage positive and near-miss final scenes (labels from the ground truth, source 'staged')."""
    from mtopt.sim.cell import SimConfig
    from mtopt.success.data import LabeledSet, stage_examples
    from mtopt.tasks import UnknownTaskError

    try:
        SimConfig(outcome_fixtures_share=outcome_fixtures_share).validate()
    except ValueError as exc:
        _fail(f"--outcome-fixtures-share: {exc}")

    registry = registry_for(None, tasks_file)
    try:
        tasks = registry.names if task == "all" else (registry.get(task).name,)
    except UnknownTaskError as exc:
        _fail(exc)
    if split not in ("train", "test"):
        _fail(f"--split must be train or test, got {split!r}")
    if seed is None:
        seed = 0 if split == "train" else 1
    if out is None:
        out = Path("runs/sd/examples.npz" if split == "train" else "runs/sd/test.npz")
    output_file(out)  # before the staging, not after it
    try:  # every check before the staging (minutes), not after it
        before = LabeledSet.load(out) if out.exists() else None
        if before is not None:  # examples staged before a new task: its labels unknown
            before = before.with_tasks(registry.names)
    except ValueError as exc:
        _fail(exc)
    view = None if before is None else before.outcome_fixtures_share
    if view is not None and view != outcome_fixtures_share:
        _fail(
            f"{out} holds examples of outcome_fixtures_share {view}; examples of "
            f"{outcome_fixtures_share} go to a file of their own (--out): a detector learns one view"
        )
    if before is not None and before.held_out.any() and not before.held_out.all():
        _fail(
            f"{out} mixes training and held-out objects (written before the splits were "
            "kept apart): start a new file (--out) for each split"
        )
    if before is not None and len(before) and set(before.held_out.tolist()) != {split == "test"}:
        held = "held-out (--split test)" if before.held_out.any() else "training (--split train)"
        _fail(
            f"{out} holds examples of {held} objects; --split {split} examples go to a file "
            "of their own (--out), so held-out objects are never trained on"
        )
    staged_size = (64, 64)  # stage_examples' image size
    if before is not None and len(before) and tuple(before.images.shape[1:3]) != staged_size:
        h, w = before.images.shape[1:3]
        _fail(
            f"{out} holds {h}x{w}-pixel examples; staged scenes are {staged_size[0]}x"
            f"{staged_size[1]}: they go to a file of their own (--out), a detector judges one size"
        )
    if before is not None and any(str(i).startswith(f"staged-{split}-{seed}-") for i in before.ids):
        typer.echo(
            f"note: {out} already holds {split} scenes of seed {seed}; these share their "
            "layouts, light and camera (another --seed gives new scenes)",
            err=True,
        )
    data = stage_examples(
        registry,
        tasks,
        n,
        split,
        randomize,
        seed,
        progress=True,
        outcome_fixtures_share=outcome_fixtures_share,
    )
    if before is not None:
        try:
            data = before.concat(data)
        except ValueError as exc:  # (each cause is checked above, before the staging)
            _fail(exc)
    data.save(out)
    typer.echo(f"{len(data)} labeled examples in {out}")


@app.command()
def train(
    examples: list[Path] = typer.Option(..., help="Example set files (.npz)."),
    out: Path = typer.Option(Path("runs/sd/weights"), help="Weights directory (versioned)."),
    steps: int = typer.Option(2000, min=1, help="Training steps (Adam, batches of examples)."),
    seed: int = typer.Option(0, min=0, help="Seed of the network and the batches."),
) -> None:
    """Train the multi-task success detector and publish it as the next version."""
    from mtopt.success.data import LabeledSet
    from mtopt.success.network import SuccessDetector, view_meta
    from mtopt.success.train import SDTrainConfig, train_sd

    if (out / "q-latest.json").exists() or any(out.glob("q-*.safetensors")):
        # as `collect --weights` refuses an SD's folder: the SD would sit beside Q weights
        _fail(f"--out {out} holds Q-network weights, not a success detector's")
    try:
        sets = [LabeledSet.load(p) for p in examples]
        tasks = max((s.tasks for s in sets), key=len)  # sets staged before a new task join
        data = sets[0].with_tasks(tasks)
        for s in sets[1:]:
            data = data.concat(s.with_tasks(tasks))
    except (FileNotFoundError, ValueError) as exc:
        _fail(exc)
    if data.held_out.any():
        typer.echo(
            f"note: {int(data.held_out.sum())} of {len(data)} examples are of held-out "
            "objects (--split test): they are trained on, so `sd eval` on them is no "
            "held-out measure",
            err=True,
        )
    output_dir(out)  # before the training, not after it
    net = train_sd(data, SDTrainConfig(steps=steps, seed=seed), progress=True)
    sd = SuccessDetector(net, data.tasks)
    # the next version, picked under the folder's lock; `sd improve` starts from it anew
    sd.publish(out, extra_meta={"origin": "sd train", **view_meta(data.outcome_fixtures_share)})
    typer.echo(f"published success detector v{sd.version} to {out}")


@app.command("eval")
def eval_(
    weights: Path = typer.Option(Path("runs/sd/weights"), help="Weights directory."),
    examples: Path = typer.Option(..., help="Held-out example set (.npz)."),
    plot: Path | None = typer.Option(
        None, help="Confusion plot PNG (default: next to the examples)."
    ),
) -> None:
    """Per-task accuracy table and a confusion plot."""
    from mtopt.qtopt.weights import WeightsError
    from mtopt.success.data import LabeledSet
    from mtopt.success.network import SuccessDetector
    from mtopt.success.plots import plot_confusion
    from mtopt.success.train import evaluate_sd

    if plot is not None:
        output_file(plot)  # now, not after the evaluation
    try:
        sd = SuccessDetector.load(weights)
        data = LabeledSet.load(examples)
        metrics = evaluate_sd(sd, data)
    except (WeightsError, FileNotFoundError, ValueError) as exc:
        _fail(exc)
    typer.echo(f"success detector v{sd.version} on {len(data)} examples")
    if not data.held_out.all():
        typer.echo(
            f"note: {int((~data.held_out).sum())} of these examples are of training objects "
            "(not --split test): their scores overstate held-out accuracy",
            err=True,
        )
    typer.echo(
        f"{'task':22s} {'n':>5s} {'pos':>5s} {'acc':>6s} {'bal.acc':>8s} {'prec':>6s} {'recall':>7s} {'ece':>6s}"
    )
    for t, m in metrics.items():
        typer.echo(
            f"{t:22s} {m['n']:5d} {m['positives']:5d} {m['accuracy']:6.3f} {m['balanced_accuracy']:8.3f} "
            f"{m['precision']:6.3f} {m['recall']:7.3f} {m['ece']:6.3f}"
        )
    out = plot_confusion(metrics, plot or examples.with_suffix(".confusion.png"))
    typer.echo(f"plot: {out}")


@app.command()
def improve(
    store: Path = typer.Option(..., help="Episode store with collected episodes."),
    weights: Path = typer.Option(
        Path("runs/sd/weights"), help="SD weights directory (initial SD must exist)."
    ),
    examples: Path = typer.Option(..., help="The example set the initial SD was trained on."),
    labeler: str = typer.Option(
        "oracle",
        help="oracle (simulator ground truth) or human (labels file from `mtopt sd label`).",
    ),
    budget: int = typer.Option(100, min=1, help="Labels per task per round (oracle)."),
    rounds: int = typer.Option(3, min=1, help="Rounds (oracle; human: one, on every label)."),
    validation: Path | None = typer.Option(
        None,
        help="Held-out example set: balanced accuracy after each round, printed and plotted "
        "in WEIGHTS/accuracy_vs_labels.png (without it: no curve, and an earlier call's plot "
        "is removed).",
    ),
    steps: int = typer.Option(600, min=1, help="Fine-tuning steps per round."),
    retrain_from: str = typer.Option(
        "initial",
        help="Each round fine-tunes the SD the loop started with (initial) or the last "
        "round's (previous) on the examples and all labels so far.",
    ),
    labels: Path | None = typer.Option(
        None, help="With --labeler human: the labels file (default: STORE/labels.jsonl)."
    ),
    tasks_file: Path | None = typer.Option(None, help=TASKS_FILE_HELP),
) -> None:
    """Score episodes, label the most uncertain (oracle or human), retrain; with --validation, plot accuracy vs labels."""
    from mtopt.qtopt.weights import WeightsError
    from mtopt.store.reader import StoreNotFoundError
    from mtopt.success.improve import ACCURACY_PLOT, improve_loop

    if labeler not in ("oracle", "human"):
        _fail(f"--labeler must be oracle or human, got {labeler!r}")
    if labeler == "human":
        labels_file = labels or store / "labels.jsonl"
        if not labels_file.is_file() or labels_file.stat().st_size == 0:
            _fail(
                f"--labeler human: no labels in {labels_file} (label episodes with "
                "`mtopt sd label` first, or pass --labels FILE)"
            )
    elif labels is not None:
        _fail("--labels is for --labeler human (the oracle labels from ground truth)")
    stale = validation is None and (weights / ACCURACY_PLOT).exists()
    try:
        curve = improve_loop(
            store,
            weights,
            examples,
            labeler,
            budget,
            rounds,
            validation,
            steps,
            registry=registry_for(store, tasks_file),
            retrain_from=retrain_from,  # type: ignore[arg-type]  # checked there
            labels_path=labels,
            on_note=lambda msg: typer.echo(f"note: {msg}", err=True),
        )
    except (WeightsError, StoreNotFoundError, OSError, ValueError) as exc:
        _fail(exc)  # (OSError: a shard or folder of the store it cannot read)
    for row in curve:
        typer.echo(
            f"v{row['version']}: {row['labels_per_task']} labels/task, mean balanced accuracy {row['mean_balanced_accuracy']:.3f}"
        )
    if curve:
        typer.echo(f"plot: {weights / ACCURACY_PLOT}")
    else:
        gone = f" (removed an earlier call's {weights / ACCURACY_PLOT})" if stale else ""
        typer.echo(f"no --validation: no accuracy curve{gone}")
    from mtopt.success.network import SuccessDetector

    typer.echo(f"published SD v{SuccessDetector.latest_version(weights)} in {weights}")


@app.command("export")
def export_labels(
    store: Path = typer.Option(..., help="Episode store whose episodes a person labeled."),
    out: Path = typer.Option(..., help="Example set file (.npz) to write (replaced)."),
    labels: Path | None = typer.Option(None, help="Labels file (default: STORE/labels.jsonl)."),
    validation_out: Path | None = typer.Option(
        None,
        help="Also write a held-out example set here: the labeled episodes whose id hashes "
        "below --validation-share, left out of --out (an episode falls on the same side on "
        "every export).",
    ),
    validation_share: float = typer.Option(
        0.2, min=0.01, max=0.99, help="Share of the labeled episodes for --validation-out."
    ),
    tasks_file: Path | None = typer.Option(None, help=TASKS_FILE_HELP),
) -> None:
    """Turn a person's labels of stored episodes (`mtopt sd label`) into example sets.

    The labeled episodes' final images with their labels, as `sd train`, `sd eval` and a
    run's `sd.examples_file` / `sd.validation_file` take them: a success detector of your
    own cell's images, not of images staged in the simulated cell."""
    import numpy as np

    from mtopt.store.reader import StoreNotFoundError
    from mtopt.success.data import label_counts, split_held_out
    from mtopt.success.improve import human_examples

    labels_file = labels or store / "labels.jsonl"
    if not labels_file.is_file() or labels_file.stat().st_size == 0:
        _fail(f"no labels in {labels_file} (label episodes with `mtopt sd label` first)")
    for path in (out, validation_out):
        if path is not None:
            output_file(path)
    if validation_out is not None and validation_out.resolve() == out.resolve():
        _fail("--validation-out must be another file than --out")
    try:
        pool = human_examples(store, labels_file, registry_for(store, tasks_file))
    except (StoreNotFoundError, OSError, ValueError) as exc:
        _fail(exc)
    data = pool.subset(np.flatnonzero(pool.mask.any(1)))
    if len(data) == 0:
        _fail(f"none of the labels in {labels_file} names an episode of {store}")
    sets = [(out, data)]
    if validation_out is not None:
        try:
            kept, held = split_held_out(data, validation_share, "labeled episodes")
        except ValueError as exc:
            _fail(f"{exc}: label more episodes, or change --validation-share")
        sets = [(out, kept), (validation_out, held)]
    for path, part in sets:
        part.save(path)
        counts = ", ".join(f"{t} {p}+/{n}-" for t, (p, n) in label_counts(part).items() if p or n)
        typer.echo(f"{len(part)} labeled episodes in {path}: {counts}")


def _bind(host: str, port: int) -> list[socket.socket]:
    """Listening sockets on every address ``host`` names (``localhost``: 127.0.0.1 and
    ::1 where both exist), all on one port (``port`` 0: a free one, the first's); a
    one-line error when none can be bound."""
    name = host.strip("[]")
    try:
        infos = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        _fail(f"cannot serve on {host}:{port}: {exc.strerror or exc}")
    sockets: list[socket.socket] = []
    errors: list[str] = []
    for family, address in dict.fromkeys((i[0], str(i[4][0])) for i in infos):
        at = sockets[0].getsockname()[1] if sockets else port
        try:
            dual = address == "::" and socket.has_dualstack_ipv6()  # IPv4 clients too
            sockets.append(socket.create_server((address, at), family=family, dualstack_ipv6=dual))
        except OSError as exc:
            errors.append(f"{address}:{at}: {exc.strerror or exc}")
    if not sockets:
        _fail(f"cannot serve on {host}:{port}: {'; '.join(errors)}")
    if errors:
        typer.echo(f"note: not serving on {'; '.join(errors)}", err=True)
    return sockets


def _check_labels_writable(path: Path) -> None:
    """End the command now if labels cannot be written to ``path`` (a file in the way of
    its folder, a read-only file): the page answered every label with a 500. Creates
    nothing."""
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    problem = None
    if not folder.is_dir():
        problem = f"{folder} is not a folder"
    elif path.exists():
        try:
            with open(path, "ab"):
                pass
        except OSError as exc:
            problem = str(exc)
    elif not os.access(folder, os.W_OK):
        problem = f"no permission to write in {folder}"
    if problem:
        _fail(f"cannot write labels to {path}: {problem}")


@app.command()
def label(
    store: Path = typer.Option(..., help="Episode store directory."),
    task: str = typer.Option("lift-any", help="Task shown first."),
    labels: Path | None = typer.Option(None, help="Labels file (default: STORE/labels.jsonl)."),
    weights: Path | None = typer.Option(None, help="SD weights (orders the queue by uncertainty)."),
    host: str = typer.Option(
        "127.0.0.1",
        help="Address to serve on; a loopback address answers loopback names only "
        "(0.0.0.0: other machines too).",
    ),
    port: int = typer.Option(
        8765, min=0, max=65535, help="Port to serve on (0: any free one, printed)."
    ),
    tasks_file: Path | None = typer.Option(None, help=TASKS_FILE_HELP),
) -> None:
    """Serve the labeling page (http://127.0.0.1:8765/?task=TASK)."""
    import uvicorn

    from mtopt.qtopt.weights import WeightsError
    from mtopt.store.reader import StoreNotFoundError
    from mtopt.success.server import allowed_hosts_for, create_app
    from mtopt.tasks import UnknownTaskError

    labels_path = labels or store / "labels.jsonl"
    if labels_path.is_dir():
        _fail(f"--labels {labels_path} is a directory; give the labels file's path")
    _check_labels_writable(labels_path)
    registry = registry_for(store, tasks_file)
    try:
        registry.get(task)  # the page opens on it (an unknown one served an error)
        api = create_app(
            store,
            labels_path,
            weights,
            registry,
            allowed_hosts=allowed_hosts_for(host),
        )
    except (StoreNotFoundError, WeightsError, ValueError, UnknownTaskError) as exc:
        _fail(exc)
    sockets = _bind(host, port)  # before the address is printed: a port in use is one error
    try:
        bound = sockets[0].getsockname()[1]
        name = host.strip("[]")
        shown = f"[{name}]" if ":" in name else name
        typer.echo(f"labeling page: http://{shown}:{bound}/?task={task}")
        server = uvicorn.Server(uvicorn.Config(api, log_level="warning"))
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C: the server shut down cleanly
            server.run(sockets=sockets)
    finally:
        for sock in sockets:
            sock.close()
