from pathlib import Path

from mtopt.eval.report import (
    markdown_table,
    plot_batch_composition,
    plot_composition,
    plot_success_over_time,
)


def test_plots_write_pngs(tmp_path: Path) -> None:
    hist = [
        {"episodes": 0, "success": {"lift-any": 0.1}, "scripted": {"lift-any": 0.1}},
        {"episodes": 100, "success": {"lift-any": 0.4}, "scripted": {"lift-any": 0.1}},
    ]
    comp = {"lift-any": {"original": 10, "impersonated": 12, "successes": 3}}
    for p in [
        plot_success_over_time(hist, tmp_path / "a.png"),
        plot_composition(comp, tmp_path / "b.png"),
        plot_batch_composition({"lift-any": {"success": 0.5, "failure": 0.5}}, tmp_path / "c.png"),
    ]:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_markdown_table() -> None:
    t = markdown_table([{"task": "a", "rate": 0.5}], ["task", "rate"])
    assert t.splitlines() == ["| task | rate |", "|---|---|", "| a | 0.50 |"]
