"""End-of-run report: plots (PNG) and a Markdown summary."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np

from mtopt._io import atomic_write_bytes
from mtopt.eval.report import (
    markdown_table,
    plot_batch_composition,
    plot_composition,
    plot_success_over_time,
    plot_training_progress,
)
from mtopt.replay.impersonation import SUCCESS_AT
from mtopt.success.train import mean_finite  # (the report's own too: tests import it here)


def batch_composition(updater: Any, n: int = 2048, seed: int = 0) -> dict[str, dict[str, float]]:
    """Each task's share of the training batches, split into transitions of episodes that
    succeeded at it and of those that failed: measured on ``n`` transitions drawn as the
    Bellman updater draws them (re-balanced or not), under the buffers' lock when it has
    one. Empty when the buffers are."""
    lock = getattr(updater, "buffers_lock", None)
    with lock if lock is not None else nullcontext():
        if not any(s + f for s, f in updater.buffers.sizes().values()):
            return {}
        rng = np.random.default_rng(seed)
        tr = updater.buffers.sample(
            n, rng, updater.success_ratio, updater.rebalance, updater.task_weights
        )
    won = np.asarray(tr.final_rewards) >= SUCCESS_AT
    share: dict[str, dict[str, float]] = {}
    for i, t in enumerate(updater.buffers.tasks):
        m = np.asarray(tr.task_idx) == i
        share[t] = {"success": float((m & won).mean()), "failure": float((m & ~won).mean())}
    return share


def merge_batch_shares(
    shares: list[dict[str, dict[str, float]]],
) -> dict[str, dict[str, float]]:
    """The batch composition of a learner that takes the same number of batches from each
    of several replay workers (the Ray runtime): the mean of the workers' shares; a worker
    with empty buffers (an empty share) gives no batches and does not count."""
    shares = [s for s in shares if s]
    merged: dict[str, dict[str, float]] = {}
    for share in shares:
        for task, parts in share.items():
            mine = merged.setdefault(task, dict.fromkeys(parts, 0.0))
            for k, v in parts.items():
                mine[k] = mine.get(k, 0.0) + float(v) / len(shares)
    return merged


def write_report(
    run: Any, summary: dict[str, Any], share: dict[str, dict[str, float]] | None
) -> None:
    """``share``: each task's share of the training batches (``batch_composition``);
    None or empty leaves its plot out."""
    out = run.paths.report
    out.mkdir(parents=True, exist_ok=True)
    plot_success_over_time(
        run.history,
        out / "success_over_time.png",
        ylabel="success on the fleet's episodes (SD)"
        if run.cfg.eval_on == "fleet"
        else "held-out success (ground truth)",
    )
    plot_training_progress(run.history, out / "training_progress.png")
    plot_composition(summary["composition"], out / "data_composition.png")
    held = summary.get("buffer_sizes") or {}
    if share:
        rebalanced = bool(run.cfg.replay.rebalance)
        plot_batch_composition(share, out / "batch_composition.png", rebalanced, held)
    scripted = summary.get("scripted", {})
    # the last evaluation's own size (a resume may have changed eval.episodes_per_task)
    per_eval = int(
        (run.history[-1] if run.history else {}).get(
            "episodes_per_task", run.cfg.eval.episodes_per_task
        )
    )
    success_cols = [
        "task",
        "learned (last evaluation)",
        # eval.on=fleet: each task's own count of learned episodes (rows differ)
        "95% interval" if run.cfg.eval_on == "fleet" else f"95% interval (n={per_eval})",
        f"mean of the last {LAST_EVALS} evaluations",
        "scripted (fleet's episodes)" if run.cfg.eval_on == "fleet" else "scripted (held-out)",
    ]
    rows = success_rows(run.history, scripted, per_eval, success_cols)
    comp_rows = [{"task": t, **v} for t, v in summary["composition"].items()]
    held_rows = [{"task": t, "successes": s, "failures": f} for t, (s, f) in held.items()]
    sd_quality = run.paths.sd / "quality.json"
    sd_rows = json.loads(sd_quality.read_text()) if sd_quality.exists() else []
    lines = [
        f"# mtopt run report: {run.paths.root.name} (config {run.cfg.name})",
        "",
        f"- episodes collected: {summary['episodes']}, learner steps: {summary['learner_steps']}, "
        f"wall time: {summary['wall_minutes']} min"
        + (
            f" in this invocation ({summary['total_wall_minutes']} min of running over all "
            "invocations of the run, the stops between them left out)"
            if summary.get("total_wall_minutes", summary["wall_minutes"]) != summary["wall_minutes"]
            else ""
        ),
        f"- Q weights version: {summary['q_version']}, success detector version: {summary['sd_version']} "
        f"({summary['sd_episode_labels']} oracle-labeled episodes)"
        + (
            f", final loss {final_loss:.3f}"
            if isinstance(final_loss := summary.get("final", {}).get("loss"), (int, float))
            else ""
        ),
        "",
        *(FLEET_SUCCESS_TEXT if run.cfg.eval_on == "fleet" else sim_success_text(per_eval)),
        "",
        markdown_table(rows, success_cols),
        "",
        "![success over time](success_over_time.png)",
        "",
        "![training progress](training_progress.png)",
        "",
        *_averaged_lines(summary.get("averaged")),
        "## Data before and after impersonation (paper Figs. 3, 5, 12)",
        "",
        "Every episode ingested: collected for the task (original) and what impersonation "
        + (
            "gives each task, with the successes by the simulator's ground truth, which "
            "was the reward (`replay.reward=truth`, an oracle ablation)."
            if run.cfg.replay.reward == "truth"
            else "gives each task, with the successes by the success detector that scored "
            "them. An episode keeps the verdict of the detector of its time once the "
            "buffers evicted it, so after a new detector these counts mix versions (a "
            "resume re-scores the whole store with the newest)."
        ),
        "",
        markdown_table(
            comp_rows, ["task", "original", "original_successes", "impersonated", "successes"]
        ),
        "",
        "![composition](data_composition.png)",
        "",
        *(
            [
                "What the replay buffers hold at the end (bounded: the newest episodes of "
                "each task's success and failure buffers), before re-balancing:",
                "",
                markdown_table(held_rows, ["task", "successes", "failures"]),
                "",
            ]
            if held_rows
            else []
        ),
        *(["![batch composition](batch_composition.png)", ""] if share else []),
        "## Success detector versions",
        "",
        markdown_table(
            [sd_row(r) for r in sd_rows],
            ["version", "episode labels", "mean balanced acc", "worst task"],
        ),
        "",
        *_sd_truth_lines(summary["composition"], run.cfg.replay.reward),
        *_collection_lines(run, out),
        *_snapshot_lines(run.paths.root),
        *_resume_lines(run.paths.config_changes),
        f"## Log (this invocation's last {min(LOG_LINES, len(run.log_lines))} lines; "
        f"TensorBoard: `tensorboard --logdir {run.paths.root / 'tb'}`)",
        "",
        "```",
        *run.log_lines[-LOG_LINES:],
        "```",
        "",
    ]
    atomic_write_bytes(out / "report.md", "\n".join(lines).encode())


LAST_EVALS = 5
LOG_LINES = 60


def sim_success_text(per_eval: int) -> list[str]:
    """The report's words on its success table for a simulated evaluation."""
    return [
        "## Per-task success on held-out seeds and objects (simulator ground truth)",
        "",
        f"Each evaluation runs the same {per_eval} held-out scenes per task (the scripted "
        "baseline more, once): one evaluation's interval is wide, and the plot's line is "
        f"the mean of {LAST_EVALS}, which is those scenes under {LAST_EVALS} weight "
        "versions, not more scenes (`benchmarks/evaluate_run.py` measures a run's weights "
        "on hundreds of other scenes). These scenes also decide when a task's collection "
        "switches to the learned policy (the parity switch), so they are not untouched by "
        "the run: report a run's result with `evaluate_run.py` on other seeds. Vertical "
        "lines: a new success detector took over.",
    ]


FLEET_SUCCESS_TEXT = [
    "## Per-task success on the robots' own episodes (success detector)",
    "",
    "eval.on=fleet: each evaluation judges the latest collection episodes of each task "
    "(`eval.fleet_window` per policy) with the run's current success detector, the learned "
    "policy's against the scripted policies'. They are episodes with exploration, not "
    "greedy ones, and successive evaluations share most of their episodes: the mean of "
    f"the last {LAST_EVALS} is not {LAST_EVALS} times the episodes. The interval is of the "
    "last evaluation's own count of the task's learned episodes. Measure greedy episodes "
    "with `mtopt evaluate RUN --robot-factory ...`. Vertical lines: a new success detector "
    "took over.",
]


def success_rows(
    history: list[dict[str, Any]],
    scripted: dict[str, float],
    per_eval: int,
    columns: list[str],
) -> list[dict[str, Any]]:
    """The report's success table (columns in ``columns``' order): per task, the last
    evaluation's rate, its 95% Wilson interval over ``per_eval`` episodes, the mean of
    the last ``LAST_EVALS`` evaluations (pooled: weighted by each one's episodes; only
    those on the last one's scenes, ``same_scenes``) and the scripted rate."""
    from mtopt.eval.evaluate import wilson_interval
    from mtopt.runtime.local import same_scenes

    history = same_scenes(list(history))  # a mean over other scenes is not of these
    rows = []
    for t in scripted:
        # each point weighs its own episodes of the task (eval.on=fleet: the task's own
        # count of learned episodes; episodes_per_task is the fewest over the tasks)
        points = [
            (
                h["success"][t],
                int(
                    h.get("fleet_episodes", {})
                    .get(t, {})
                    .get("learned", h.get("episodes_per_task", per_eval))
                ),
            )
            for h in history
            if t in h.get("success", {})
        ]
        last = points[-1][0] if points else None
        n_last = points[-1][1] if points else per_eval
        ci = ""
        if last is not None and n_last > 0:
            lo, hi = wilson_interval(round(last * n_last), n_last)
            ci = f"[{lo:.2f}, {hi:.2f}]"
        tail = points[-LAST_EVALS:]
        n = sum(k for _, k in tail)
        late = sum(r * k for r, k in tail) / n if n else None  # pooled over their episodes
        values = [t, last, ci, late, scripted.get(t)]
        rows.append(dict(zip(columns, values, strict=True)))
    return rows


SD_TRUTH_COLUMNS = (
    "task",
    "with truth",
    "successes (truth)",
    "successes (SD)",
    "SD precision",
    "SD recall",
)


def sd_truth_rows(composition: Mapping[str, Mapping[str, int]]) -> list[dict[str, Any]]:
    """The success detector's rewards of the impersonated episodes against the
    simulator's ground truth, per task (``ReplayStats.composition``'s counts): precision,
    the share of the detector's successes that are successes in truth; recall, the share
    of the true successes it rewards (NaN where nothing to divide). Tasks without ground
    truth are left out; a summary written before these counts existed gives no rows."""
    rows = []
    for task, c in composition.items():
        known = int(c.get("gt_known", 0))
        if not known:
            continue
        truth, said, both = (
            int(c.get(k, 0))
            for k in ("gt_successes", "sd_successes_with_truth", "sd_true_positives")
        )
        rows.append(
            {
                "task": task,
                "with truth": known,
                "successes (truth)": truth,
                "successes (SD)": said,
                "SD precision": both / said if said else math.nan,
                "SD recall": both / truth if truth else math.nan,
            }
        )
    return rows


def _sd_truth_lines(composition: Mapping[str, Mapping[str, int]], reward: str) -> list[str]:
    if reward == "truth":
        lacking = {t: int(c.get("no_verdict", 0)) for t, c in composition.items()}
        lacking = {t: n for t, n in lacking.items() if n}
        said = (
            [
                "Episodes stored before a task was added have no verdict for it and were not "
                "impersonated as it (each its own episodes only): "
                + ", ".join(f"{t} {n}" for t, n in lacking.items())
                + ".",
                "",
            ]
            if lacking
            else []
        )
        return [
            "The rewards were the simulator's ground truth (`replay.reward=truth`, an "
            "oracle ablation), not the success detector's: there are none of its to check.",
            "",
            *said,
        ]
    rows = sd_truth_rows(composition)
    if not rows:
        return []
    return [
        "The rewards the success detector gave the impersonated episodes, against the "
        "simulator's ground truth (episodes with none, a real robot's, are left out; an "
        "episode counts with the detector that last scored it while the task's buffer held "
        "it). Low precision on a task means the Q-function learns from false successes "
        "there:",
        "",
        markdown_table(rows, SD_TRUTH_COLUMNS),
        "",
    ]


def sd_row(r: dict[str, Any]) -> dict[str, Any]:
    """One success-detector version's line: its mean balanced accuracy (3 decimals: they
    differ in the third) and its worst task."""
    acc = {
        t: float(v)
        for t, v in r["balanced_accuracy"].items()
        if v is not None and math.isfinite(float(v))
    }
    mean = mean_finite(acc.values())
    worst = min(acc, key=lambda t: acc[t]) if acc else None
    return {
        "version": r["version"],
        "episode labels": r["episode_labels"],
        "mean balanced acc": None if mean is None else f"{mean:.3f}",
        "worst task": None if worst is None else f"{worst} {acc[worst]:.3f}",
    }


def _averaged_lines(averaged: dict[str, Any] | None) -> list[str]:
    """The policy the run averaged at its end against the acting weights, paired."""
    if not averaged:
        return []
    rows = []
    for t, c in averaged["averaged_minus_acting"].items():
        lo, hi = c["ci95"]
        rows.append(
            {
                "task": t,
                "acting": c["a"],
                "averaged": c["b"],
                "averaged - acting [95%]": f"{c['b_minus_a']:+.2f} [{lo:+.2f}, {hi:+.2f}]",
                "McNemar p": p_text(c["mcnemar_p"]),
            }
        )
    sources = averaged["averaged"]["sources"]
    steps = ", ".join(str(s.get("step")) for s in sources)
    return [
        "## Averaged policy (checkpoint averaging)",
        "",
        f"`{averaged['folder']}`: one network, the mean of the acting and online weights of "
        f"{len(sources)} checkpoint(s) (learner steps {steps}). Evaluated on the same "
        f"{averaged['episodes_per_task']} held-out scenes per task as the final acting "
        "weights, scene by scene; the interval is of the paired difference. Use it with "
        f"`mtopt sim demo --run {averaged['folder']}` or "
        f"`benchmarks/evaluate_run.py --run {averaged['folder']}` (more scenes).",
        "",
        markdown_table(
            rows, ["task", "acting", "averaged", "averaged - acting [95%]", "McNemar p"]
        ),
        "",
    ]


def _snapshot_lines(root: Path) -> list[str]:
    """The weight snapshots the run kept, and how to average its late ones."""
    from mtopt.qtopt.weights import WeightsError, load_source, snapshot_files
    from mtopt.runtime.policy_folder import late_sources

    snaps = snapshot_files(root / "weights")
    if not snaps:
        return []
    rows = []
    for p in snaps:
        try:
            version, _, meta = load_source(p)
            rows.append({"snapshot": p.name, "version": version, "learner step": meta.get("step")})
        except WeightsError:  # unreadable: listed without its version and step
            rows.append({"snapshot": p.name, "version": None, "learner step": None})
    try:  # the same late snapshots as the run's own average: none of the latest version
        late = " ".join(str(p) for p in late_sources(root, 3)[1:])
    except WeightsError:
        late = " ".join(str(p) for p in snaps[-3:])
    return [
        "## Weight snapshots",
        "",
        markdown_table(rows, ["snapshot", "version", "learner step"]),
        "",
        "Average the latest weights with other snapshots into one policy network "
        "(checkpoint averaging, as the run does at its end with `--set average_last=N`). "
        "It is not a sure gain (README: it helped one run and hurt another): compare on "
        "your own scenes (`benchmarks/compare_evals.py`):",
        "",
        f"    mtopt average {root / 'policy-avg'} {root} {late}",
        "",
    ]


def _resume_lines(path: Path) -> list[str]:
    """The report's record of settings changed on resume (``config_changes.json``)."""
    from mtopt.runtime.config import load_config_changes

    log = load_config_changes(path)
    if not log:
        return []

    def exact(v: Any) -> str:  # as given (the table's 2 decimals read lr 1e-4 as 0.00)
        return v if isinstance(v, str) else json.dumps(v)

    rows = [
        {"resumed at": entry["time"], "setting": k, "before": exact(v[0]), "after": exact(v[1])}
        for entry in log
        for k, v in entry["changes"].items()
    ]
    return [
        "## Settings changed on resume",
        "",
        markdown_table(rows, ["resumed at", "setting", "before", "after"]),
        "",
    ]


def _collection_lines(run: Any, out: Path) -> list[str]:
    """Ground-truth success of the episodes the robots collected, per policy over
    collection time, for each evaluated task (its skill's episodes): does the learned
    policy, exploring, collect more successes than the scripted one?"""
    from mtopt.replay.impersonation import skill_tasks
    from mtopt.store.reader import EpisodeReader, StoreNotFoundError
    from mtopt.store.stats import (
        collection_minutes,
        finite_time,
        plot_success_over_time,
        success_over_time,
    )

    try:
        rows = EpisodeReader(run.paths.store).metadata()
    except StoreNotFoundError:
        return []
    if not rows:
        return []
    starts = sorted(r["started_at"] for r in rows if finite_time(r["started_at"]))
    if not starts:
        return []
    total = float(collection_minutes(starts)[-1])  # (a NaN time failed the report)
    bin_minutes = float(max(1, math.ceil(total / 10)))
    table: list[dict[str, Any]] = []
    plots: list[str] = []
    for task in run.cfg.eval.tasks:
        tl = success_over_time(rows, task, skill_tasks(task, run.registry), bin_minutes)
        if not tl["policies"]:
            continue
        name = f"collection_{task}.png"
        plot_success_over_time(tl, out / name)
        plots.append(f"![{task}]({name})")
        for policy, bins in tl["policies"].items():
            n = sum(b["episodes"] for b in bins)
            table.append(
                {
                    "task": task,
                    "policy": policy,
                    "episodes": n,
                    "success": sum(b["successes"] for b in bins) / n,
                    "first bin": bin_text(bins[0]),
                    "last bin": bin_text(bins[-1]),
                }
            )
    if not table:
        return []
    return [
        "## Success of the collected episodes (ground truth, with exploration)",
        "",
        f"Each task's skill's episodes judged at the task, per policy, in bins of "
        f"{bin_minutes:g} collection minutes (`mtopt store timeline` for other tasks); a "
        f"policy's first and last bins with episodes, with their episode count and start.",
        "",
        markdown_table(table, ["task", "policy", "episodes", "success", "first bin", "last bin"]),
        "",
        *plots,
        "",
    ]


def bin_text(b: Mapping[str, Any]) -> str:
    """A timeline bin (``success_over_time``) as the report's table shows it: its success
    rate, episodes and the collection minute it starts at."""
    return f"{b['rate']:.2f} (n={b['episodes']}, from min {b['start']:g})"


def p_text(p: float) -> str:
    """A p-value for a table: two significant digits (0.004, not "0.00"), and below the
    4 decimals results keep, "<0.0001" (not "0")."""
    return "<0.0001" if p < 1e-4 else f"{p:.2g}"
