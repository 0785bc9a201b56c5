"""``mtopt`` command line. Each room owns a Typer sub-app; this file only mounts them."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="mtopt",
    help="MT-Opt: continuous multi-task robotic RL on a simulated (or real) robot cell.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
    pretty_exceptions_show_locals=False,
)


@app.callback()
def _root() -> None:
    """MT-Opt: continuous multi-task robotic RL on a simulated (or real) robot cell."""


@app.command()
def tasks() -> None:
    """List the registered tasks and their skills."""
    from mtopt.tasks import DEFAULT_REGISTRY

    for i, t in enumerate(DEFAULT_REGISTRY):
        holding = "starts holding" if t.starts_holding else "starts empty"
        typer.echo(f"{i:2d}  {t.name:20s} skill={t.skill:6s} {holding:15s} {t.description}")


def _mount() -> None:
    # Sub-apps are mounted here, one line per room (keep imports light: no torch/pybullet
    # at import time of the sub-app modules).
    import importlib

    for module, name, help_ in [
        ("mtopt.sim.cli", "sim", "Simulated robot cell: a demo of its policies (GIF, success)."),
        ("mtopt.store.cli", "store", "Episode store: stats, success timeline, task subsets."),
        ("mtopt.success.cli", "sd", "Success detectors: examples, training, labeling."),
    ]:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            continue
        app.add_typer(mod.app, name=name, help=help_)
    for module in ["mtopt.collect.cli", "mtopt.runtime.cli", "mtopt.eval.cli"]:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            continue
        mod.register(app)


_mount()


def main() -> None:
    """The ``mtopt`` entry point: a path that cannot be used (a file where a folder is
    wanted, a folder where a file is, no permission) ends with a one-line error naming
    it and exit code 2 (bad input, as ``mtopt._cli.fail``), not a traceback
    (``MTOPT_DEBUG=1`` shows the traceback)."""
    import os

    try:
        app()
    except (NotADirectoryError, IsADirectoryError, FileExistsError, PermissionError) as exc:
        if os.environ.get("MTOPT_DEBUG"):
            raise
        # an atomic write's rename names its temp file first: the path the user gave is
        # the second
        path = exc.filename2 or exc.filename
        msg = f"{path}: {exc.strerror}" if path is not None and exc.strerror else exc
        typer.echo(f"error: {msg}", err=True)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
