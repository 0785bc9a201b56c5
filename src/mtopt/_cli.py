"""What the command groups share."""

from __future__ import annotations

from typing import NoReturn

import typer


def fail(msg: object) -> NoReturn:
    """End the command with ``error: MSG`` on stderr and exit code 2 (bad input)."""
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(2)
