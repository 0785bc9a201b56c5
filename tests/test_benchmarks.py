"""The benchmark scripts: their shared result writer, and that every script starts."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
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


def test_spearman_of_the_q_landscape_probe_by_hand() -> None:
    from q_landscape_probe import spearman

    # ranks (0, 1, 2, 3) and (0, 2, 1, 3): 1 - 6 * sum(d^2) / (n (n^2 - 1)) = 1 - 12 / 60
    assert spearman(np.array([1.0, 2, 3, 4]), np.array([10.0, 30, 20, 40])) == pytest.approx(0.8)
    assert spearman(np.array([1.0, 2, 3]), np.array([5.0, 4, 1])) == pytest.approx(-1.0)
    # tied x: ranks (0, 1.5, 1.5, 3) against (0, 1, 2, 3): 4.5 / sqrt(4.5 * 5)
    assert spearman(np.array([1.0, 2, 2, 3]), np.array([1.0, 2, 3, 4])) == pytest.approx(
        4.5 / math.sqrt(22.5)
    )
    assert math.isnan(spearman(np.array([1.0, 2, 3]), np.array([2.0, 2, 2])))
