import math
import typing
from pathlib import Path

import pytest

from mtopt.eval.report import (
    markdown_table,
    plot_batch_composition,
    plot_composition,
    plot_success_over_time,
    plot_training_progress,
    trailing_mean,
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
        # loss, episodes and Q version per evaluation; an entry without a loss is skipped
        plot_training_progress(
            [
                {"step": 0, "episodes": 0, "q_version": 0},
                {"step": 500, "episodes": 100, "q_version": 5, "loss": 0.6},
            ],
            tmp_path / "d.png",
        ),
    ]:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_markdown_table() -> None:
    t = markdown_table([{"task": "a", "rate": 0.5}], ["task", "rate"])
    assert t.splitlines() == ["| task | rate |", "|---|---|", "| a | 0.50 |"]
    # a missing or NaN number is an empty cell, not "nan"
    t = markdown_table([{"task": "a", "rate": float("nan")}, {"task": "b"}], ["task", "rate"])
    assert t.splitlines()[2:] == ["| a |  |", "| b |  |"]


def test_success_over_time_falls_back_to_steps_when_episodes_stand_still() -> None:
    from mtopt.eval.report import time_axis

    growing = [{"step": 1000, "episodes": 500}, {"step": 2000, "episodes": 900}]
    assert time_axis(growing) == "episodes" and time_axis(growing[:1]) == "episodes"
    # robots=0 on a copied store: every point at the same episode count
    static = [{"step": 1000, "episodes": 48000}, {"step": 2000, "episodes": 48000}]
    assert time_axis(static) == "step"
    assert time_axis([{"step": 1}, {"step": 2, "episodes": 3}]) == "step"
    assert time_axis(static, "wall_s") == "wall_s"  # another axis is the caller's choice
    # max_episodes reached part way: the count stands still, learning goes on
    capped = [*growing, {"step": 3000, "episodes": 900}]
    assert time_axis(capped) == "episodes"
    assert time_axis([*growing, {"step": 3000, "episodes": 800}]) == "step"  # went back


def test_composition_plot_with_and_without_original_successes(tmp_path: Path) -> None:
    new = {
        "lift-any": {"original": 10, "original_successes": 2, "impersonated": 12, "successes": 3}
    }
    old = {"lift-any": {"original": 10, "impersonated": 12, "successes": 3}}  # older summary
    for name, comp in (("new.png", new), ("old.png", old), ("empty.png", {})):
        assert plot_composition(comp, tmp_path / name).read_bytes()[:4] == b"\x89PNG"


def test_mean_finite_and_p_text_by_hand() -> None:
    from mtopt.runtime.report import mean_finite, p_text

    assert (p_text(0.004), p_text(0.6057), p_text(0.0), p_text(1.0)) == (
        "0.004",
        "0.61",
        "<0.0001",
        "1",
    )

    assert mean_finite([0.5, float("nan"), 1.0, None]) == 0.75
    assert mean_finite([]) is None and mean_finite([float("nan")]) is None


def test_wilson_interval_by_hand() -> None:
    from mtopt.eval.evaluate import rate_with_ci, wilson_interval

    # k=5, n=10, z=1.96: d = 1.38416, centre = 0.5, half = 1.96*sqrt(0.034604)/d = 0.26341
    lo, hi = wilson_interval(5, 10)
    assert abs(lo - 0.23659) < 1e-4 and abs(hi - 0.76341) < 1e-4
    # k=0: centre = half = 0.19208/1.38416 = 0.13877, so [0, 0.27755]
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and abs(hi - 0.27755) < 1e-4
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert rate_with_ci(0.5, 10) == {"success": 0.5, "ci95": [0.2366, 0.7634]}


def test_the_paired_interval_excludes_zero_exactly_when_the_exact_test_rejects() -> None:
    """Agresti-Min's interval and the exact p disagreed at (0, 5), (1, 7), (2, 9), ... of
    any n: the interval said "a difference" where the test did not."""
    from mtopt.eval.evaluate import binomial_cdf, clopper_pearson, paired_comparison

    assert binomial_cdf(1, 3, 0.5) == pytest.approx(0.5)  # (1 + 3) / 8
    assert binomial_cdf(-1, 3, 0.5) == 0.0 and binomial_cdf(3, 3, 0.2) == 1.0
    assert clopper_pearson(0, 10)[1] == pytest.approx(1 - 0.025 ** (1 / 10))
    # a tiny alpha: P(X >= 3) ~ C(10, 3) p^3 = 120 p^3 = 5e-21 -> p = 3.466e-8 (1 - cdf
    # lost this tail below 1e-16 and gave 7.7e-7)
    assert clopper_pearson(3, 10, alpha=1e-20)[0] == pytest.approx(3.466e-8, rel=1e-2)
    with pytest.raises(ValueError):
        clopper_pearson(3, 2)
    for n in (12, 40, 400):
        for only_a in range(0, 8):
            for only_b in range(0, min(20, n - only_a + 1)):
                a = [True] * only_a + [False] * (n - only_a)
                b = [False] * only_a + [True] * only_b + [False] * (n - only_a - only_b)
                c = paired_comparison(a, b)
                assert (c.ci95[0] > 0 or c.ci95[1] < 0) == (c.p_value < 0.05), (n, only_a, only_b)
                assert c.ci95[0] <= c.diff <= c.ci95[1]


def test_paired_comparison_by_hand() -> None:
    from mtopt.eval.evaluate import paired_comparison

    # scenes 0..4: A wins 0,1,4; B wins 0,2,3,4 -> only A: 1, only B: 2, diff = 1/5
    c = paired_comparison([1, 1, 0, 0, 1], [1, 0, 1, 1, 1])  # type: ignore[list-item]
    assert (c.n, c.only_a, c.only_b) == (5, 1, 2)
    assert c.a_rate == pytest.approx(0.6) and c.b_rate == pytest.approx(0.8)
    assert c.diff == pytest.approx(0.2)
    # the exact conditional interval: m = 3 discordant, 2 of them B's. Clopper-Pearson
    # for 2 of 3: lower p with P(X >= 2) = 3p^2 - 2p^3 = 0.025 -> 0.094299; upper with
    # P(X <= 2) = 1 - p^3 = 0.025 -> 0.975^(1/3) = 0.991596. The difference is
    # (2 theta - 1) * 3 / 5: (-0.486846, 0.589916)
    assert c.ci95 == pytest.approx((-0.486846, 0.589916), abs=1e-5)
    # McNemar exact: m = 3 discordant, min 1: 2 * (C(3,0) + C(3,1)) / 8 = 1.0
    assert c.p_value == pytest.approx(1.0)
    # 5 scenes only B solves, 5 both fail: diff 0.5, p = 2 / 32 = 0.0625; theta for 5 of
    # 5 is at least 0.025^(1/5) = 0.478176, so the difference is from
    # (2 * 0.478176 - 1) * 5 / 10 = -0.021824 to 0.5: it holds 0, as p says (Agresti-Min's
    # [0.093, 0.740] did not)
    c = paired_comparison([False] * 10, [True] * 5 + [False] * 5)
    assert c.diff == pytest.approx(0.5) and c.p_value == pytest.approx(0.0625)
    assert c.ci95 == pytest.approx((-0.021824, 0.5), abs=1e-5)
    assert c.as_dict()["mcnemar_p"] == 0.0625 and c.as_dict()["b_minus_a"] == 0.5
    assert c.as_dict()["ci95_method"] == "exact-conditional"
    # 6 of 6: 0.025^(1/6) = 0.540734 -> from 0.081469 * 6 / 12 = 0.040734: excludes 0 at
    # p = 2 / 64 = 0.03125
    c = paired_comparison([False] * 12, [True] * 6 + [False] * 6)
    assert c.p_value == pytest.approx(0.03125) and c.ci95[0] == pytest.approx(0.040734, abs=1e-5)
    # identical outcomes: no difference, p = 1, and an interval that still says how
    # little 2 scenes tell: a discordant share of 0 of 2 is below 1 - 0.025^(1/2) = 0.841886
    c = paired_comparison([True, False], [True, False])
    assert (c.diff, c.p_value) == (0.0, 1.0)
    assert c.ci95 == pytest.approx((-0.841886, 0.841886), abs=1e-5)
    # 0 against 4 of 400: p = 0.125, and the interval holds 0: 0.025^(1/4) = 0.397635 ->
    # (2 * 0.397635 - 1) * 4 / 400 = -0.002047 to 4 / 400
    c = paired_comparison([False] * 400, [True] * 4 + [False] * 396)
    assert c.p_value == pytest.approx(0.125)
    assert c.ci95 == pytest.approx((-0.002047, 0.01), abs=1e-5)
    with pytest.raises(ValueError, match="same scenes"):
        paired_comparison([True], [True, False])
    with pytest.raises(ValueError, match="zero scenes"):
        paired_comparison([], [])
    # 1100 discordant scenes, split evenly: p = 1 (2.0**1100 overflowed a float)
    c = paired_comparison([True] * 550 + [False] * 550, [False] * 550 + [True] * 550)
    assert c.diff == 0.0 and c.p_value == 1.0
    # all 1100 one way: p = 2 / 2**1100, a float that underflows to 0.0, not an error
    assert paired_comparison([False] * 1100, [True] * 1100).p_value == 0.0


def test_sign_test_by_hand() -> None:
    from mtopt.eval.evaluate import sign_test_p

    assert sign_test_p(0, 4) == 0.125  # 2 * 1/16
    assert sign_test_p(0, 0) == 1.0
    assert sign_test_p(1, 9) == 22 / 1024  # 2 * (C(10,0) + C(10,1)) / 2^10
    assert sign_test_p(9, 1) == 22 / 1024  # two-sided
    assert sign_test_p(5, 5) == 1.0  # 2 * 638 / 1024, capped
    with pytest.raises(ValueError, match="negative"):
        sign_test_p(-1, 3)


def test_outcomes_encode_and_decode() -> None:
    from mtopt.eval.evaluate import decode_outcomes, encode_outcomes

    assert encode_outcomes([True, False, True]) == "101"
    assert decode_outcomes("101") == [True, False, True]
    assert decode_outcomes("") == []
    with pytest.raises(ValueError, match="0 and 1"):
        decode_outcomes("10x")


def test_trailing_mean_by_hand() -> None:
    assert trailing_mean([0.0, 0.3, 0.6, 0.0], 3) == [0.0, 0.15, 0.3, 0.3]
    assert trailing_mean([0.5], 5) == [0.5]
    assert trailing_mean([], 3) == []


def test_report_shows_collected_success_per_policy(tmp_path: Path) -> None:
    """The run report's table of collected episodes: lift-* episodes judged at lift-any,
    per policy (3 of 6 scripted lift episodes succeed in test_store's make_episode)."""
    from types import SimpleNamespace

    from tests.test_store import make_episode

    from mtopt.runtime.config import RunConfig
    from mtopt.runtime.local import RunPaths
    from mtopt.runtime.report import _collection_lines
    from mtopt.store import EpisodeWriter
    from mtopt.tasks.registry import DEFAULT_REGISTRY

    run = SimpleNamespace(paths=RunPaths(tmp_path), registry=DEFAULT_REGISTRY, cfg=RunConfig())
    assert _collection_lines(run, tmp_path / "report") == []  # no store yet
    with EpisodeWriter(tmp_path / "store", "r0") as w:
        for i in range(6):
            w.write(make_episode(i))
    text = "\n".join(_collection_lines(run, tmp_path / "report"))
    row = (
        "| lift-any | scripted-pick | 6 | 0.50 | 0.50 (n=6, from min 0) | 0.50 (n=6, from min 0) |"
    )
    assert row in text
    assert "| lift-ball | scripted-pick | 6 | 0.00 | 0.00 (n=6, from min 0) |" in text
    assert (tmp_path / "report" / "collection_lift-any.png").exists()
    assert "place-any |" not in text  # no place episodes were collected


def test_save_figure_writes_png_atomically_and_closes(tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    from mtopt._plots import save_figure
    from mtopt.success.plots import plot_confusion, plot_curve

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    out = save_figure(fig, tmp_path / "new" / "f.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not plt.fignum_exists(fig.number)
    assert [p.name for p in out.parent.iterdir()] == ["f.png"]  # no temp file left
    metrics = {"lift-any": {"confusion": {"tp": 8, "fn": 2, "tn": 9, "fp": 1}}}
    curve = [{"labels_per_task": 0, "balanced_accuracy": {"lift-any": 0.8}}]
    for p in [plot_confusion(metrics, tmp_path / "c.png"), plot_curve(curve, tmp_path / "d.png")]:
        assert p.read_bytes()[:4] == b"\x89PNG"


def test_batch_composition_is_measured_from_drawn_transitions() -> None:
    """Without re-balancing, batches follow the buffers: a task holding 1 success and 9
    failures gets ~10% successes. The report used to assume the re-balanced ratio (50%)
    whatever was drawn."""
    from tests.test_replay_buffers import episode

    from mtopt.replay.buffers import TaskBuffers
    from mtopt.runtime.report import batch_composition

    buf = TaskBuffers(["a", "b"], capacity_per_bucket=100)
    buf.add(episode("s0", "a"), [("a", 1.0)])
    for i in range(9):
        buf.add(episode(f"f{i}", "a"), [("a", 0.0)])
    buf.add(episode("s1", "b"), [("b", 1.0)])

    class Updater:  # what batch_composition reads of a BellmanUpdater
        buffers = buf
        success_ratio = 0.5
        rebalance = False
        task_weights: typing.ClassVar[dict[str, float]] = {}

    share = batch_composition(Updater(), n=4000)
    assert share["a"]["success"] == pytest.approx(1 / 11, abs=0.02)
    assert share["a"]["failure"] == pytest.approx(9 / 11, abs=0.02)
    assert share["b"] == {"success": pytest.approx(1 / 11, abs=0.02), "failure": 0.0}
    Updater.rebalance = True  # equal task shares, half successes where a task has both
    share = batch_composition(Updater(), n=4000)
    assert share["a"]["success"] == pytest.approx(0.25, abs=0.02)
    assert share["a"]["failure"] == pytest.approx(0.25, abs=0.02)
    assert share["b"]["success"] == pytest.approx(0.5, abs=0.02)
    Updater.task_weights = {"b": 3.0}  # replay.task_shares: b 3/4 of each batch, a 1/4
    share = batch_composition(Updater(), n=4000)
    assert share["a"]["success"] == pytest.approx(0.125, abs=0.02)
    assert share["a"]["failure"] == pytest.approx(0.125, abs=0.02)
    assert share["b"]["success"] == pytest.approx(0.75, abs=0.02)


def test_evaluation_replaces_a_scene_the_robot_cannot_set_up() -> None:
    """A place scene where the object cannot be put in the gripper is replaced by the next
    scene of its slot (it used to be scored as the policy's failure); slots stay aligned."""
    from mtopt.eval.evaluate import SETUP_TRIES, eval_scene_seed, evaluate_outcomes
    from mtopt.policies.scripted import scripted_policy_for
    from mtopt.robots.sim_robot import SimRobot
    from mtopt.sim.cell import SimConfig
    from mtopt.tasks import DEFAULT_REGISTRY

    sim = SimConfig(max_steps=3)
    robot = SimRobot(sim, robot_id="eval", seed=0)
    ran: list[int] = []
    refuse = {eval_scene_seed(0, 0, 1, 0)} | {
        eval_scene_seed(0, 0, 2, a) for a in range(SETUP_TRIES)
    }
    prepare = robot.prepare_for_task

    def prepare_unless_refused(starts_holding: bool) -> bool:
        ran.append(robot.scene_seed)
        return robot.scene_seed not in refuse and prepare(starts_holding)

    robot.prepare_for_task = prepare_unless_refused  # type: ignore[method-assign]
    try:
        wins = evaluate_outcomes(
            scripted_policy_for, DEFAULT_REGISTRY, ["place-any"], 3, sim, seed=0, robot=robot
        )
    finally:
        robot.close()
    assert SETUP_TRIES == 5
    assert ran == [
        eval_scene_seed(0, 0, 0),
        eval_scene_seed(0, 0, 1, 0),
        eval_scene_seed(0, 0, 1, 1),  # slot 1's replacement
        *(eval_scene_seed(0, 0, 2, a) for a in range(5)),  # slot 2: no scene sets up
    ]
    assert len(wins["place-any"]) == 3 and wins["place-any"][2] is False
    assert eval_scene_seed(5, 1, 7) == 7_000_000 + 500_000 + 1000 + 7  # by hand


def test_a_lift_scene_without_an_object_the_task_may_lift_is_replaced() -> None:
    """About half the scenes of four objects have no ball: lift-ball failed there whatever
    the policy, capping its held-out rate near 50%. Such a scene is now replaced like a
    place scene that cannot be set up; every lift-ball episode meets a ball. lift-any
    meets the scenes it met before."""
    from mtopt.eval.evaluate import eval_scene_seed, run_held_out_episode
    from mtopt.policies.scripted import scripted_policy_for
    from mtopt.robots.sim_robot import SimRobot
    from mtopt.sim.cell import SimConfig
    from mtopt.tasks import DEFAULT_REGISTRY

    sim = SimConfig(max_steps=1, object_split="test")
    robot = SimRobot(sim, robot_id="eval", seed=0)
    ball, any_ = DEFAULT_REGISTRY.get("lift-ball"), DEFAULT_REGISTRY.get("lift-any")
    seen: list[int] = []
    start = robot.start_episode

    def start_and_look() -> object:
        seen.append(robot.scene_seed)
        assert any_.predicate.possible(robot.scene_state())  # type: ignore[attr-defined]
        seen_balls.append(ball.predicate.possible(robot.scene_state()))  # type: ignore[attr-defined]
        return start()

    seen_balls: list[bool] = []
    robot.start_episode = start_and_look  # type: ignore[method-assign]
    try:
        first_has_ball = []
        for k in range(8):
            robot.reset_scene(eval_scene_seed(5, 0, k))
            first_has_ball.append(ball.predicate.possible(robot.scene_state()))  # type: ignore[attr-defined]
        assert not all(first_has_ball), "no ball-less scene among 8: pick another seed"
        for k in range(8):
            run_held_out_episode(robot, scripted_policy_for, ball, 5, 0, k, 1)
        assert all(seen_balls)  # every episode met a ball
        assert [s == eval_scene_seed(5, 0, k) for k, s in enumerate(seen)] == first_has_ball
        seen.clear()
        for k in range(8):
            run_held_out_episode(robot, scripted_policy_for, any_, 5, 0, k, 1)
        assert seen == [eval_scene_seed(5, 0, k) for k in range(8)]  # unchanged
    finally:
        robot.close()


def test_the_report_tables_and_marks_by_hand(tmp_path: Path) -> None:
    """Where a new success detector took over, the buffers' shares beside the batches',
    the success table's interval and late mean, and each SD version's worst task."""
    from mtopt.eval.report import buffer_shares, sd_changes
    from mtopt.runtime.report import success_rows

    hist = [
        {"episodes": 10, "sd_version": 1, "success": {"a": 0.2}},
        {"episodes": 20, "sd_version": 1, "success": {"a": 0.4}},
        {"episodes": 30, "success": {"a": 0.6}},  # no version: skipped
        {"episodes": 40, "sd_version": 3, "success": {"a": 0.8}},
    ]
    assert sd_changes(hist, "episodes") == [(40.0, 3)]
    assert buffer_shares({"a": (1, 3), "b": (0, 4)}) == {
        "a": {"success": 0.125, "failure": 0.375},
        "b": {"success": 0.0, "failure": 0.5},
    }
    assert buffer_shares({"a": (0, 0)}) == {"a": {"success": 0.0, "failure": 0.0}}
    cols = ["task", "last", "ci", "late", "scripted"]
    (row,) = success_rows(hist, {"a": 0.1}, 20, cols)
    # 16 of 20: Wilson centre (16 + 1.92) / 23.84 = 0.752, half width 1.96/23.84 *
    # sqrt(20 * 0.8 * 0.2 + 0.96) = 0.1756 -> [0.58, 0.92]; the last 5 (all 4) mean 0.5
    assert row == {"task": "a", "last": 0.8, "ci": "[0.58, 0.92]", "late": 0.5, "scripted": 0.1}
    # eval.on=fleet: each point weighs the task's own learned episodes (episodes_per_task
    # is the fewest over the tasks, 2 here): (0.5 * 10 + 1.0 * 30) / 40 = 0.875
    fleet = [
        {"episodes_per_task": 2, "success": {"a": 0.5},
         "fleet_episodes": {"a": {"learned": 10, "scripted": 0}}},
        {"episodes_per_task": 2, "success": {"a": 1.0},
         "fleet_episodes": {"a": {"learned": 30, "scripted": 3}}},
    ]  # fmt: skip
    (row,) = success_rows(fleet, {"a": 0.1}, 2, cols)
    assert row["late"] == 0.875 and row["last"] == 1.0
    # 30 of 30: Wilson (30 + 1.92) / 33.84 = 0.943, half 1.96 / 33.84 * sqrt(0.96) = 0.057
    assert row["ci"] == "[0.89, 1.00]"
    from mtopt.runtime.report import sd_row

    r = {
        "version": 2,
        "episode_labels": 40,
        "balanced_accuracy": {"a": 0.9905, "b": 0.95, "c": None},
    }
    assert sd_row(r) == {
        "version": 2,
        "episode labels": 40,
        "mean balanced acc": "0.970",
        "worst task": "b 0.950",
    }
    p = plot_batch_composition(
        {"a": {"success": 0.25, "failure": 0.25}, "b": {"success": 0.25, "failure": 0.25}},
        tmp_path / "c.png",
        buffer_sizes={"a": (1, 3), "b": (0, 4)},
    )
    assert p.read_bytes()[:4] == b"\x89PNG"
    assert plot_success_over_time(hist, tmp_path / "s.png").exists()


def test_sd_truth_rows_by_hand() -> None:
    from mtopt.runtime.report import _sd_truth_lines, sd_truth_rows

    comp = {
        # 10 with truth: 4 true successes; the detector says 5, 3 of them true
        "a": {"gt_known": 10, "gt_successes": 4, "sd_successes_with_truth": 5,
              "sd_true_positives": 3},
        "b": {"gt_known": 0, "gt_successes": 0},  # a real robot's task: left out
        "c": {"gt_known": 6, "gt_successes": 0, "sd_successes_with_truth": 0,
              "sd_true_positives": 0},
        "d": {"original": 4, "successes": 2},  # a summary from before these counts
    }  # fmt: skip
    rows = sd_truth_rows(comp)
    assert [r["task"] for r in rows] == ["a", "c"]
    assert rows[0]["SD precision"] == 3 / 5 and rows[0]["SD recall"] == 3 / 4
    assert rows[0]["with truth"] == 10 and rows[0]["successes (truth)"] == 4
    assert math.isnan(rows[1]["SD precision"]) and math.isnan(rows[1]["SD recall"])
    # the report's lines: the table for the detector's rewards (either kind); a run
    # rewarded with the ground truth says so instead of a precision of 1 that is no
    # detector's
    for kind in ("binary", "probability"):
        assert any("| SD precision |" in line for line in _sd_truth_lines(comp, kind))
    lines = _sd_truth_lines(comp, "truth")
    assert "replay.reward=truth" in lines[0] and not any("|" in line for line in lines)
    assert not any("no verdict" in line for line in lines)
    # under truth, episodes stored before a task was added are said per task
    comp["c"]["no_verdict"] = 7
    comp["a"]["no_verdict"] = 0
    lines = _sd_truth_lines(comp, "truth")
    assert next(line for line in lines if "no verdict" in line).endswith(": c 7.")


def test_a_collection_bin_is_shown_with_its_count_and_start() -> None:
    from mtopt.runtime.report import bin_text

    b = {"start": 36.0, "episodes": 230, "successes": 32, "rate": 32 / 230}
    assert bin_text(b) == "0.14 (n=230, from min 36)"


def test_newcombe_paired_interval_by_hand_and_its_coverage() -> None:
    """The exact conditional interval treats the number of discordant scenes as fixed:
    where one policy wins nearly all of few, it is too narrow for the difference of the
    rates. Newcombe's hybrid score interval (``ci95_score``) is not."""
    import numpy as np

    from mtopt.eval.evaluate import newcombe_paired, paired_comparison

    # the 5 scenes of test_paired_comparison_by_hand: both 2, only B 2, only A 1. Wilson
    # for B's 4 of 5: (0.375530, 0.963776), A's 3 of 5: (0.230722, 0.882380); phi =
    # (2 * 0 - 2 * 1) / sqrt(4 * 1 * 3 * 2) = -0.408248; lower 0.2 - sqrt(0.424470^2 +
    # 2 * 0.408248 * 0.424470 * 0.282380 + 0.282380^2) = 0.2 - 0.598147, upper 0.2 +
    # sqrt(0.163776^2 + 2 * 0.408248 * 0.163776 * 0.369278 + 0.369278^2) = 0.2 + 0.461053
    assert newcombe_paired(2, 2, 1, 5) == pytest.approx((-0.398147, 0.661053), abs=2e-5)
    c = paired_comparison([1, 1, 0, 0, 1], [1, 0, 1, 1, 1])  # type: ignore[list-item]
    assert c.ci95_score == newcombe_paired(2, 2, 1, 5)
    assert c.as_dict()["ci95_score"] == [round(v, 4) for v in c.ci95_score]
    # no discordant scene: around 0; a table that is none: refused
    lo, hi = newcombe_paired(3, 0, 0, 10)
    assert lo < 0 < hi and lo == pytest.approx(-hi)
    with pytest.raises(ValueError, match="2x2 table"):
        newcombe_paired(3, 5, 5, 10)
    # coverage over 100 scenes where only B ever wins a discordant scene (10% of them):
    # the true difference is 0.10
    rng = np.random.default_rng(0)
    covered = {"ci95": 0, "ci95_score": 0}
    trials = 1000
    for _ in range(trials):
        u = rng.random(100)
        a = list(u < 0.45)  # both solve 45%, only B 10%, neither 45%
        b = list(u < 0.55)
        c = paired_comparison(a, b)
        covered["ci95"] += c.ci95[0] <= 0.10 <= c.ci95[1]
        covered["ci95_score"] += c.ci95_score[0] <= 0.10 <= c.ci95_score[1]
    assert covered["ci95"] / trials < 0.8  # conditional on the discordant count
    assert covered["ci95_score"] / trials > 0.93
