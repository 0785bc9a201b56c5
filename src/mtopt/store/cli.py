"""``mtopt store ...``"""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(no_args_is_help=True)


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
    from mtopt.store.stats import plot_stats, sd_scores, store_stats

    if sd is None and (store.parent / "sd" / "sd-latest.json").exists():
        sd = store.parent / "sd"
    try:
        scores = sd_scores(store, sd) if sd is not None else None
        s = store_stats(store, scores)
    except (StoreNotFoundError, WeightsError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if sd is not None:
        typer.echo(f"success detector: {sd}")
    typer.echo(f"{s['episodes']} episodes in {s['shards']} shards ({s['quarantined']} quarantined)")
    typer.echo(f"{'task':22s} {'episodes':>8s} {'gt success':>11s} {'sd success':>11s}")
    for task, v in s["tasks"].items():
        gt = "-" if v["gt_success_rate"] is None else f"{v['gt_success_rate']:.1%}"
        rate = "-" if v["sd_success_rate"] is None else f"{v['sd_success_rate']:.1%}"
        typer.echo(f"{task:22s} {v['episodes']:8d} {gt:>11s} {rate:>11s}")
    typer.echo("policies: " + ", ".join(f"{k}={v}" for k, v in s["policies"].items()))
    out = plot_stats(s, plot or store / "stats.png")
    typer.echo(f"plot: {out}")
