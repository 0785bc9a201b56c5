"""What the command groups share."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import typer

if TYPE_CHECKING:
    from mtopt.tasks.registry import TaskRegistry

TASKS_FILE_HELP = (
    "Tasks of your own after the built-in ones (a JSON list, as `mtopt run --tasks-file`). "
    "Default: the run's tasks when the store is a run's (its config.json beside the "
    "store), else the built-in ones."
)

OWN_TASKS_HELP = (
    "Tasks of your own after the built-in ones (a JSON list of task descriptions, as "
    "`mtopt run --tasks-file`), e.g. for a run's new task."
)

ACT_HELP = (
    "Change how the policy acts (the run's cem_act, only that), e.g. --act gripper=split "
    "--act release_margin=0.1."
)


def fail(msg: object, code: int = 2) -> NoReturn:
    """End the command with ``error: MSG`` on stderr and exit ``code``: 2 for bad input,
    1 for a failure while it ran."""
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(code)


def output_dir(path: Path) -> None:
    """End the command now, with one line, if ``path`` cannot be (or become) a folder."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file there, or in the way, or no permission
        fail(f"cannot write to {path}: {exc}")


def output_file(path: Path) -> None:
    """End the command now, with one line, if ``path`` cannot be written as a file (a
    check before the work, not after it)."""
    if path.is_dir():
        fail(f"{path} is a directory; give a file's path")
    output_dir(path.parent)


def fail_on_other_image_size(store: Path, side: int) -> None:
    """End the command if ``store`` holds episodes of another image size than ``side``
    (a store of mixed sizes trips the success detector's and LogReplay's readers)."""
    from mtopt.store.reader import stored_image_size

    held = stored_image_size(store)
    if held is not None and held != (side, side):
        fail(
            f"{store} holds {held[0]}x{held[1]}-pixel episodes; these robots give "
            f"{side}x{side}: write them to another --store"
        )


def registry_for(store: Path | None, tasks_file: Path | None) -> TaskRegistry:
    """``tasks_file``'s tasks after the built-in ones; else the tasks of the run whose
    store ``store`` is (a ``config.json`` next to it); else the built-in tasks. A bad
    tasks file ends the command, naming it."""
    from mtopt.runtime.config import ConfigError, run_registry
    from mtopt.tasks import DEFAULT_REGISTRY
    from mtopt.tasks.registry import registry_with_tasks_file

    if tasks_file is not None:
        try:
            return registry_with_tasks_file(tasks_file)
        except ValueError as exc:
            fail(exc)
    if store is None:
        return DEFAULT_REGISTRY
    try:
        return run_registry(store.absolute().parent)
    except ConfigError as exc:  # someone else's config.json: the built-in tasks
        typer.echo(f"note: {exc}; using the built-in tasks", err=True)
        return DEFAULT_REGISTRY
