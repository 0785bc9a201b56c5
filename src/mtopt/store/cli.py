"""``mtopt store ...``"""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(no_args_is_help=True)


@app.command()
def stats(
    store: Path = typer.Argument(..., help="Episode store directory."),
    plot: Path | None = typer.Option(None, help="PNG to write (default: STORE/stats.png)."),
) -> None:
    """Episodes per task and policy, success rate per task (ground truth and SD), with a plot."""
    from mtopt.store.reader import StoreNotFoundError
    from mtopt.store.stats import plot_stats, store_stats

    try:
        s = store_stats(store)
    except StoreNotFoundError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"{s['episodes']} episodes in {s['shards']} shards ({s['quarantined']} quarantined)")
    typer.echo(f"{'task':22s} {'episodes':>8s} {'gt success':>11s} {'sd success':>11s}")
    for task, v in s["tasks"].items():
        gt = "-" if v["gt_success_rate"] is None else f"{v['gt_success_rate']:.1%}"
        sd = "-" if v["sd_success_rate"] is None else f"{v['sd_success_rate']:.1%}"
        typer.echo(f"{task:22s} {v['episodes']:8d} {gt:>11s} {sd:>11s}")
    typer.echo("policies: " + ", ".join(f"{k}={v}" for k, v in s["policies"].items()))
    out = plot_stats(s, plot or store / "stats.png")
    typer.echo(f"plot: {out}")
