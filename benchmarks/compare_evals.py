"""Paired comparison of two policies evaluated on the same held-out scenes.

``evaluate_run.py`` and ``ensemble_probe.py`` keep each episode's outcome, scene by scene.
Two evaluations with the same --seed and --episodes ran the same scenes, so the
difference of their success rates can be judged paired: scenes both solve or both fail
carry no information about which policy is better, and the interval of the difference
is much narrower than two unpaired Wilson intervals suggest (McNemar's exact test for the
p-value; ``mtopt.eval.evaluate.paired_comparison``).

Usage: python benchmarks/compare_evals.py --a FILE[:part][,FILE[:part]...]
           --b FILE[:part][,...] --json OUT [--tasks lift-any,place-any]

FILE is a result JSON; part picks a policy within it (acting, online, scripted,
straight_down; default acting; ensemble results have one policy and take no part).
Several files per side are pooled: the i-th file of --a pairs with the i-th of --b, and
they must share seed, episode count and object split (e.g. seed 5 and seed 6 on both
sides); a seed given twice on one side would count its scenes twice and is refused.
Files whose runs had other cell settings (say ``sim.move_from``; recorded by
``evaluate_run.py`` since 2026-12-05) pair by scene seed, not identical dynamics: the
result says so (``sim_differs``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from _results import write_result
from mtopt.eval.evaluate import decode_outcomes, paired_comparison

Outcomes = dict[str, list[bool]]


def split_spec(spec: str) -> tuple[str, str]:
    """ "runs/x.json:online" -> ("runs/x.json", "online"); no part -> "acting"."""
    head, sep, tail = spec.rpartition(":")
    if sep and tail and "/" not in tail and "." not in tail:
        return head, tail
    return spec, "acting"


def cell_version(spec: str) -> int:
    """The simulator cell version a result file was measured on (files from before
    ``mtopt.sim.cell.CELL_VERSION`` was recorded: 1)."""
    return int(json.loads(Path(split_spec(spec)[0]).read_text()).get("cell_version", 1))


def load_outcomes(
    spec: str, tasks: list[str] | None = None
) -> tuple[tuple[int, int, str], Outcomes]:
    """((seed, episodes per task, objects), {task: outcomes}) of one policy in one
    result file, for ``tasks`` only when given (a part such as straight_down exists for
    some tasks only)."""
    path, part = split_spec(spec)
    res = json.loads(Path(path).read_text())
    out: Outcomes = {}
    for task, entry in res["per_task"].items():
        if tasks is not None and task not in tasks:
            continue
        if "outcomes" in entry and path != spec:  # one policy: a part named is a mistake
            raise SystemExit(
                f"{path} holds one policy's outcomes (no parts such as {part!r}): "
                f"name the file alone"
            )
        row = entry if "outcomes" in entry else entry.get(part)
        if row is None or "outcomes" not in row:
            raise SystemExit(
                f"{path}: no episode outcomes for {task!r} part {part!r} "
                f"(has {sorted(entry)}; results written before outcomes were kept have none)"
            )
        out[task] = decode_outcomes(row["outcomes"])
    scenes = (int(res["seed"]), int(res["episodes_per_task"]), str(res.get("objects", "test")))
    return scenes, out


def eval_scenes(spec: str) -> int:
    """The held-out scenes version a result file was measured on
    (``mtopt.eval.evaluate.EVAL_SCENES_VERSION``; files from before it was recorded: 1)."""
    return int(json.loads(Path(split_spec(spec)[0]).read_text()).get("eval_scenes", 1))


def scenes_of_other_versions(tasks: list[str]) -> list[str]:
    """The tasks whose scenes changed with ``EVAL_SCENES_VERSION`` 2: lifts of a category
    or size (their scenes without such an object are replaced since). Tasks the built-in
    registry lacks are named too: their kind is not known here."""
    from mtopt.tasks.predicates import Lifted

    return _tasks_whose_predicate(
        tasks, lambda p: isinstance(p, Lifted) and (p.category, p.min_size) != (None, None)
    )


def _tasks_whose_predicate(tasks: list[str], test: Callable[[object], bool]) -> list[str]:
    """The built-in tasks among ``tasks`` whose predicate passes ``test``, and every task
    the built-in registry lacks (its kind is not known here)."""
    from mtopt.tasks import DEFAULT_REGISTRY

    return [
        t for t in tasks if t not in DEFAULT_REGISTRY or test(DEFAULT_REGISTRY.get(t).predicate)
    ]


def setup_tries(spec: str) -> int | None:
    """The scenes a result file tried per slot of a task the robot sets up
    (``mtopt.eval.evaluate.SETUP_TRIES``; None: not recorded, files before 2026-12-07)."""
    tries = json.loads(Path(split_spec(spec)[0]).read_text()).get("setup_tries")
    return int(tries) if isinstance(tries, int) else None


def category_places(tasks: list[str]) -> list[str]:
    """The tasks whose held-out scenes depend on the setup tries and on how a placing
    task is set up: places of a category (2026-12-06: they start holding an object of
    their category, and 5 scenes are tried instead of 3). Tasks the built-in registry
    lacks are named too: their kind is not known here."""
    from mtopt.tasks.predicates import Placed

    return _tasks_whose_predicate(tasks, lambda p: isinstance(p, Placed) and p.category is not None)


def sim_settings(spec: str) -> dict[str, object] | None:
    """The cell settings a result file's run had (None: not recorded)."""
    sim = json.loads(Path(split_spec(spec)[0]).read_text()).get("sim")
    return sim if isinstance(sim, dict) else None


def sims_differ(sims: list[dict[str, object]]) -> bool:
    """Whether recorded cell settings differ in a setting they all record (a field
    added to the cell later is in newer files only and is no difference)."""
    if len(sims) < 2:
        return False
    shared = set.intersection(*(set(s) for s in sims))
    return any(s[k] != sims[0][k] for s in sims for k in shared)


def pooled(
    a_specs: list[str], b_specs: list[str], tasks: list[str] | None
) -> tuple[Outcomes, Outcomes]:
    """Concatenated outcomes per task of each side; the i-th files of the two sides must
    have run the same scenes (same seed and episode count)."""
    if len(a_specs) != len(b_specs):
        raise SystemExit(f"--a has {len(a_specs)} files, --b {len(b_specs)}: they pair up")
    a_all: Outcomes = {}
    b_all: Outcomes = {}
    seen: dict[tuple[int, str], str] = {}
    loaded = [
        (sa, sb, load_outcomes(sa, tasks), load_outcomes(sb, tasks))
        for sa, sb in zip(a_specs, b_specs, strict=True)
    ]
    if tasks is None:
        # the tasks every pair has: a task of only some pairs was pooled over fewer
        # seeds than the others without a word
        per_pair = [set(a) & set(b) for _, _, (_, a), (_, b) in loaded]
        tasks = sorted(set.intersection(*per_pair))
        left = sorted(set.union(*per_pair) - set(tasks))
        if left:
            print(
                f"note: {', '.join(left)} left out: not in every pair of files "
                "(--tasks names them, to see which)",
                file=sys.stderr,
            )
    for sa, sb, (scenes_a, a), (scenes_b, b) in loaded:
        if scenes_a != scenes_b:
            raise SystemExit(
                f"{sa} ran (seed, episodes, objects) {scenes_a}, {sb} ran {scenes_b}: "
                "not the same scenes"
            )
        key = (scenes_a[0], scenes_a[2])  # a seed of one object split
        if key in seen:
            raise SystemExit(
                f"{sa} and {seen[key]} both ran seed {key[0]} ({key[1]} objects): pooling "
                "them would count the same scenes twice"
            )
        seen[key] = sa
        for task in tasks:
            if task not in a or task not in b:
                raise SystemExit(f"task {task!r} is not in both {sa} and {sb}")
            a_all.setdefault(task, []).extend(a[task])
            b_all.setdefault(task, []).extend(b[task])
    return a_all, b_all


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--a", required=True, help="FILE[:part][,...]: the baseline")
    ap.add_argument("--b", required=True, help="FILE[:part][,...]: compared to the baseline")
    ap.add_argument("--tasks", default="", help="default: the tasks both sides have")
    ap.add_argument("--json", required=True)
    args = ap.parse_args()
    a_specs, b_specs = args.a.split(","), args.b.split(",")
    for option, specs in (("--a", a_specs), ("--b", b_specs)):
        for spec in specs:  # a missing or unreadable file: one line, not a traceback
            path = Path(split_spec(spec)[0])
            if not path.is_file():
                ap.error(f"{option} {path}: no such file")
            try:
                json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                ap.error(f"{option} {path}: not a result JSON ({exc})")
    a, b = pooled(a_specs, b_specs, args.tasks.split(",") if args.tasks else None)
    cells = sorted({cell_version(s) for s in a_specs + b_specs})
    sims = [sim for sim in map(sim_settings, a_specs + b_specs) if sim is not None]
    differ = sims_differ(sims)
    if differ:
        print(
            'note: the runs had other cell settings (their files\' "sim"): the same '
            "scene seeds, other dynamics",
            file=sys.stderr,
        )
    if len(cells) > 1 and cells[0] == 1:
        print(
            f"note: the files were measured on cell versions {cells}: the same seeds gave "
            "other scenes (fixture layouts, ground truth), so the pairing is by seed, not "
            "by identical scene",
            file=sys.stderr,
        )
    elif len(cells) > 1:  # 2 and 3: the same scenes, judged by other ground truth
        print(
            f"note: the files were measured on cell versions {cells}: the same scenes, "
            "judged by another ground truth (3: an object across the bowl's rim is not in "
            "it, and the outcome is read once the objects are still), so a difference may "
            "be the judge's, not the policy's",
            file=sys.stderr,
        )
    scene_versions = sorted({eval_scenes(s) for s in a_specs + b_specs})
    moved = scenes_of_other_versions(sorted(a)) if len(scene_versions) > 1 else []
    if moved:
        print(
            f"note: the files were measured on held-out scene versions {scene_versions}: "
            f"{', '.join(moved)} met other scenes in them (version 2 replaces a lift's scene "
            "without an object it may lift), so those pair by seed, not by scene",
            file=sys.stderr,
        )
    tries = {setup_tries(s) for s in a_specs + b_specs}
    unsure = category_places(sorted(a)) if len(tries) > 1 else []
    if unsure:
        said = ", ".join("not recorded" if t is None else str(t) for t in sorted(tries, key=str))
        print(
            f"note: the files tried other numbers of scenes per slot ({said}; files before "
            f"2026-12-07 do not record it, and on 2026-12-06 category places changed how "
            f"they are set up): {', '.join(unsure)} may have met other scenes, so those "
            "pair by seed, not by scene",
            file=sys.stderr,
        )
    write_result(
        args.json,
        {
            "a": a_specs,
            "b": b_specs,
            "cell_versions": cells,
            "eval_scenes_versions": scene_versions,
            "sim_differs": differ,
            "per_task": {t: paired_comparison(a[t], b[t]).as_dict() for t in a},
        },
    )


if __name__ == "__main__":
    main()
