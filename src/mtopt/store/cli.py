"""``mtopt store ...``"""

from __future__ import annotations

import math
from pathlib import Path

import typer

from mtopt._cli import TASKS_FILE_HELP, fail, output_file, registry_for

app = typer.Typer(no_args_is_help=True, rich_markup_mode="markdown")


def _positive_minutes(option: str, value: float) -> None:
    """End the command unless ``value`` is a finite number > 0 (NaN and inf pass a
    plain ``> 0`` check the wrong way)."""
    if not (math.isfinite(value) and value > 0):
        fail(f"{option} must be a finite number of minutes > 0, got {value}")


def _decimals(bin_minutes: float) -> int:
    """Decimals that tell bins of ``bin_minutes`` apart (0 for whole minutes, at most 3)."""
    for d in range(3):
        if abs(round(bin_minutes, d) - bin_minutes) < 1e-9:
            return d
    return 3


@app.command()
def stats(
    store: Path = typer.Argument(..., help="Episode store directory."),
    plot: Path | None = typer.Option(None, help="PNG to write (default: STORE/stats.png)."),
    sd: Path | None = typer.Option(
        None,
        help="Success-detector weights directory for the SD column "
        "(default: the run's sd/ next to STORE, when there is one).",
    ),
) -> None:
    """Episodes per task and policy, success rate per task (ground truth and SD), with a plot."""
    from mtopt.qtopt.weights import WeightsError
    from mtopt.store.reader import StoreNotFoundError
    from mtopt.store.schema import SchemaError
    from mtopt.store.stats import plot_stats, sd_scores, store_stats

    if plot is not None:
        output_file(plot)  # now, not after reading the store
    if sd is None and (store.parent / "sd" / "sd-latest.json").exists():
        sd = store.parent / "sd"
    scores, other_size = None, 0
    try:
        if sd is not None:
            scores, other_size = sd_scores(store, sd)
        s = store_stats(store, scores)
    except (StoreNotFoundError, WeightsError, SchemaError, OSError) as exc:
        fail(exc)  # a newer writer's shard, a shard without read permission: one line
    if sd is not None:
        typer.echo(f"success detector: {sd}")
        if other_size:
            typer.echo(
                f"note: {other_size} episodes have images of another size than the success "
                "detector judges: no sd success for them",
                err=True,
            )
    typer.echo(
        f"{s['episodes']} episodes in {s['shards']} shards ({s['quarantined']} in quarantine/)"
    )
    if s["duplicates"]:
        typer.echo(f"{s['duplicates']} rows repeat an episode id already counted: left out")
    typer.echo(f"{'task':22s} {'episodes':>8s} {'gt success':>11s} {'sd success':>11s}")
    for task, v in s["tasks"].items():
        gt = "-" if v["gt_success_rate"] is None else f"{v['gt_success_rate']:.1%}"
        rate = "-" if v["sd_success_rate"] is None else f"{v['sd_success_rate']:.1%}"
        typer.echo(f"{task:22s} {v['episodes']:8d} {gt:>11s} {rate:>11s}")
    typer.echo("policies: " + ", ".join(f"{k}={v}" for k, v in s["policies"].items()))
    out = plot_stats(s, plot or store / "stats.png")
    typer.echo(f"plot: {out}")


@app.command()
def timeline(
    store: Path = typer.Argument(..., help="Episode store directory."),
    task: str = typer.Option(..., help="The task to judge every episode at, e.g. lift-any."),
    episodes_of: str | None = typer.Option(
        None,
        help="Comma-separated tasks whose episodes count (default: every task of TASK's "
        "skill, e.g. all lift-* episodes for lift-any, a --tasks-file's included).",
    ),
    bin_minutes: float = typer.Option(10.0, "--bin", help="Minutes of collection per bin."),
    plot: Path | None = typer.Option(None, help="PNG to write (default: STORE/timeline-TASK.png)."),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the numbers here."),
    tasks_file: Path | None = typer.Option(None, help=TASKS_FILE_HELP),
) -> None:
    """Ground-truth success over collection time, per policy (scripted vs learned)."""
    from mtopt._io import atomic_write_json
    from mtopt.replay.impersonation import skill_tasks
    from mtopt.store.reader import EpisodeReader, StoreNotFoundError
    from mtopt.store.stats import plot_success_over_time, success_over_time
    from mtopt.tasks.registry import UnknownTaskError

    _positive_minutes("--bin", bin_minutes)
    for given in (plot, json_out):
        if given is not None:
            output_file(given)  # now, not after reading the store
    registry = registry_for(store, tasks_file)
    tasks = [t for t in (episodes_of or "").split(",") if t]
    if episodes_of is not None and not tasks:
        fail("--episodes-of names no task")
    try:
        for name in [task, *tasks]:
            registry.get(name)
    except UnknownTaskError as exc:
        fail(f"{exc} (a task of your own: --tasks-file)")
    if episodes_of is None:  # TASK's skill (a --tasks-file task joins its skill's episodes)
        tasks = list(skill_tasks(task, registry))
    try:
        rows = EpisodeReader(store).metadata()
        tl = success_over_time(rows, task, tasks, bin_minutes)
    except (StoreNotFoundError, ValueError, OSError) as exc:
        fail(exc)
    if not tl["policies"]:
        of = {r["episode_id"]: r for r in rows if r["task"] in tasks}
        judged = sum(bool(r.get("gt_success_by_task")) for r in of.values())
        why = ""
        if of and not judged:
            why = f" ({len(of)} of them, none with ground truth: a real robot's)"
        elif of:
            why = f" ({len(of)} of them; their ground truth does not judge {task}: added since?)"
        fail(f"no episodes of {','.join(tasks)} judged at {task} in {store}{why}")
    typer.echo(
        f"{task} success of {','.join(tasks)} episodes, {tl['minutes']:.1f} collection minutes"
    )
    if tl["untimed"]:
        typer.echo(f"({tl['untimed']} episode(s) without a finite started_at left out)")
    d = _decimals(bin_minutes)  # bins of 0.1 minutes read 0.0+, 0.1+, ... (not 0+, 0+)
    for policy, bins in tl["policies"].items():
        typer.echo(f"{policy}:")
        for b in bins:
            typer.echo(
                f"  min {b['start']:6.{d}f}+ {b['episodes']:6d} episodes  {b['rate']:6.1%} success"
            )
    if json_out is not None:
        atomic_write_json(json_out, tl)
    out = plot_success_over_time(tl, plot or store / f"timeline-{task}.png")
    typer.echo(f"plot: {out}")


@app.command()
def subset(
    src: Path = typer.Argument(..., help="Episode store to copy from."),
    dst: Path = typer.Argument(
        ..., help="New store (a folder without shards; created when there is something to copy)."
    ),
    tasks: str = typer.Option(..., help="Comma-separated tasks whose episodes are copied."),
    minutes: float | None = typer.Option(
        None,
        help="Only episodes started in the store's first M minutes of collection (as "
        "`store timeline` counts them: a stop of more than a minute between episodes, "
        "such as a run's resume, counts one minute).",
    ),
    tasks_file: Path | None = typer.Option(None, help=TASKS_FILE_HELP),
) -> None:
    """Copy the episodes of some tasks into a new store (e.g. a single-task baseline on the data a multi-task run collected).

    When SRC holds no episodes of TASKS (in its first M minutes), nothing is copied, DST
    is not created, and the command exits 1.
    """
    from mtopt.store.reader import StoreNotFoundError
    from mtopt.store.subset import subset_store
    from mtopt.tasks.registry import UnknownTaskError

    if minutes is not None:
        _positive_minutes("--minutes", minutes)
    registry = registry_for(src, tasks_file)
    try:
        names = [registry.get(t).name for t in tasks.split(",") if t]
    except UnknownTaskError as exc:
        fail(f"{exc} (a task of your own: --tasks-file)")
    try:
        counts = subset_store(src, dst, names, minutes)
    except (StoreNotFoundError, ValueError, OSError) as exc:
        fail(exc)
    shards = counts.pop("shards")
    if not shards:
        within = f" in its first {minutes:g} collection minutes" if minutes is not None else ""
        made = "was left as it was" if dst.exists() else "was not created"
        fail(f"{src} has no episodes of {','.join(names)}{within}: nothing copied, {dst} {made}", 1)
    typer.echo(
        f"copied {sum(counts.values())} episodes in {shards} shards to {dst}: "
        + ", ".join(f"{t}={n}" for t, n in counts.items())
    )


@app.command()
def verify(
    store: Path = typer.Argument(..., help="Episode store directory."),
    dry_run: bool = typer.Option(
        False,
        "--dry-run",
        help="List corrupt shards but leave them where they are (the store is not changed).",
    ),
    json_out: Path | None = typer.Option(None, "--json", help="Write the findings as JSON."),
) -> None:
    """Read every shard whole (each page against its checksum, each row as an episode) and quarantine the corrupt ones.

    `store stats` and `subset` read only the columns they need, so a damaged image page
    is found only when LogReplay or the success detector reads it. Exits 0 when every
    shard reads, 1 when a shard is corrupt (quarantined unless --dry-run).
    """
    from tqdm import tqdm

    from mtopt._io import atomic_write_json
    from mtopt.store.reader import EpisodeReader, StoreNotFoundError, shard_paths
    from mtopt.store.schema import SchemaError

    if json_out is not None:
        output_file(json_out)
    try:
        reader = EpisodeReader(store, move_corrupt=not dry_run)
        total = len(shard_paths(store))
        with tqdm(total=total, desc="verify", unit="shard", disable=None) as bar:
            report = reader.verify(progress=lambda _path: bar.update())
    except (StoreNotFoundError, SchemaError, OSError) as exc:
        fail(exc)  # a newer writer's shard, a shard without read permission: one line
    typer.echo(
        f"{report.shards} shards read whole: {report.episodes} episodes, "
        f"{report.steps} steps"
        + (f" ({report.duplicates} rows repeat an episode id)" if report.duplicates else "")
    )
    for path in report.being_written:
        typer.echo(f"not judged (modified moments ago, still being written?): {path}")
    for bad in report.corrupt:
        went = "left in place" if bad.moved_to is None else f"moved to {bad.moved_to}"
        typer.echo(f"corrupt: {bad.path} ({went}): {bad.reason}")
    if json_out is not None:
        atomic_write_json(
            json_out,
            {
                "store": str(store.resolve()),
                "dry_run": dry_run,
                "shards_ok": report.shards,
                "episodes": report.episodes,
                "steps": report.steps,
                "duplicates": report.duplicates,
                "corrupt": [
                    {
                        "shard": str(c.path),
                        "reason": c.reason,
                        "moved_to": None if c.moved_to is None else str(c.moved_to),
                    }
                    for c in report.corrupt
                ],
                "being_written": [str(p) for p in report.being_written],
            },
        )
    if not report.ok:
        fail(f"{len(report.corrupt)} corrupt shard(s) in {store}", 1)
