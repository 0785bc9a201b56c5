"""The benchmark scripts: their shared result writer, and that every script starts."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

from _results import write_result  # noqa: E402


def test_write_result_writes_json_and_shows_a_part(tmp_path: Path, capsys) -> None:
    out = {"a": 1, "summary": {"ratio": 0.5}}
    path = write_result(tmp_path / "deep" / "r.json", out, show=out["summary"])
    assert json.loads(path.read_text()) == out
    assert json.loads(capsys.readouterr().out) == {"ratio": 0.5}
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]  # no temp file left


def test_write_result_refusing_nan_keeps_the_old_file(tmp_path: Path) -> None:
    path = write_result(tmp_path / "r.json", {"auc": 0.7}, echo=False)
    with pytest.raises(ValueError):
        write_result(path, {"auc": math.nan}, allow_nan=False, echo=False)
    assert json.loads(path.read_text()) == {"auc": 0.7}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


@pytest.mark.parametrize("script", sorted(p.name for p in BENCH.glob("[!_]*.py")))
def test_every_benchmark_script_starts(script: str) -> None:
    """Imports resolve and the arguments parse (``--help``): a renamed function or a
    broken import in a benchmark fails here, not after an hour of measuring."""
    r = subprocess.run(
        [sys.executable, str(BENCH / script), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "--json" in r.stdout
