"""What the command groups share."""

from __future__ import annotations

from typing import NoReturn

import typer


def fail(msg: object, code: int = 2) -> NoReturn:
    """End the command with ``error: MSG`` on stderr and exit ``code``: 2 for bad input,
    1 for a failure while it ran."""
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(code)
