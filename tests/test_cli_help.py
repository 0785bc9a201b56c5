"""Every ``mtopt`` command prints its help: the docstrings and option texts render
(markdown markup), and the command list shows each command's one-line summary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from mtopt.cli import app


def _commands(group: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = []
    for name, cmd in group.commands.items():
        path = (*prefix, name)
        out.append(path)
        if hasattr(cmd, "commands"):  # a sub-app (Typer vendors its own click)
            out.extend(_commands(cmd, path))
    return out


def test_every_command_prints_help() -> None:
    root = typer.main.get_command(app)
    assert hasattr(root, "commands")
    paths = _commands(root)
    names = {" ".join(p) for p in paths}
    assert {"run", "collect", "export", "average", "sd label", "store stats"} <= names
    runner = CliRunner()
    for path in paths:
        r = runner.invoke(app, [*path, "--help"], terminal_width=100)
        assert r.exit_code == 0, (path, r.output[-1000:])
        assert "Usage:" in r.output, path
    top = runner.invoke(app, ["--help"], terminal_width=100).output
    # the command list shows the first paragraph of each docstring, not a wrapped dump
    assert "Export a run's learned policy (config and latest weights)" in top
    assert "sure gain" not in top


def test_resume_needs_a_run_and_path_errors_are_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`mtopt run --resume` on a folder without a run is refused (it started a new run);
    a path that cannot be used ends the `mtopt` entry point with one line and exit 2."""
    import mtopt.cli as cli
    from mtopt._io import atomic_write_bytes

    res = CliRunner().invoke(cli.app, ["run", "--resume", "--out", str(tmp_path / "none")])
    assert res.exit_code == 2 and "holds no run to resume" in res.output
    assert not (tmp_path / "none").exists()
    (tmp_path / "afile").write_text("x")
    res = CliRunner().invoke(cli.app, ["run", "--config", "tiny", "--out", str(tmp_path / "afile")])
    assert res.exit_code == 2 and "is a file, not a folder" in res.output

    def broken() -> None:
        raise NotADirectoryError(20, "Not a directory", str(tmp_path / "file" / "sub"))

    monkeypatch.setattr(cli, "app", broken)
    monkeypatch.delenv("MTOPT_DEBUG", raising=False)
    with pytest.raises(SystemExit) as e:
        cli.main()
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err == f"error: {tmp_path / 'file' / 'sub'}: Not a directory\n"
    # a rename's error names the destination, not the atomic write's temp file
    (tmp_path / "plot").mkdir()
    monkeypatch.setattr(cli, "app", lambda: atomic_write_bytes(tmp_path / "plot", b""))
    with pytest.raises(SystemExit) as e:
        cli.main()
    assert e.value.code == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'plot'}: Is a directory\n"
    monkeypatch.setattr(cli, "app", broken)
    monkeypatch.setenv("MTOPT_DEBUG", "1")
    with pytest.raises(NotADirectoryError):
        cli.main()
