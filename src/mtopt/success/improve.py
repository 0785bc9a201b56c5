"""Incremental relabel + retrain (the paper's loop), with an oracle or human labeler."""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np

from mtopt._io import atomic_write_json
from mtopt.qtopt.weights import read_latest
from mtopt.store.reader import EpisodeReader
from mtopt.store.stats import first_of_each
from mtopt.success.data import LabeledSet, episode_examples
from mtopt.success.labels import LabelStore
from mtopt.success.network import SuccessDetector, view_meta
from mtopt.success.plots import plot_curve
from mtopt.success.train import SDTrainConfig, evaluate_sd, mean_finite, train_sd
from mtopt.tasks.registry import DEFAULT_REGISTRY, TaskRegistry

log = logging.getLogger(__name__)


def select_uncertain(probs: np.ndarray, already: np.ndarray, budget: int) -> dict[int, np.ndarray]:
    """Per task column: indices of the ``budget`` least certain unlabeled rows (|p - 0.5| smallest)."""
    out = {}
    for j in range(probs.shape[1]):
        order = np.argsort(np.abs(probs[:, j] - 0.5))
        out[j] = np.array([i for i in order if not already[i, j]][:budget], dtype=np.int64)
    return out


def task_implications(
    labels: np.ndarray, mask: np.ndarray, min_support: int = 5
) -> list[tuple[int, int]]:
    """(child, parent) task pairs that the labels show as "child succeeded => parent
    succeeded" (lift-capsule => lift-any): at least ``min_support`` labeled child
    successes with the parent labeled, and never the parent labeled a failure there."""
    pos = (labels > 0.5) & mask
    pairs = []
    for c in range(labels.shape[1]):
        for p in range(labels.shape[1]):
            both = pos[:, c] & mask[:, p]
            if c != p and both.sum() >= min_support and pos[both, p].all():
                pairs.append((c, p))
    return pairs


def exhaustive_parents(
    labels: np.ndarray, mask: np.ndarray, pairs: list[tuple[int, int]], min_support: int = 5
) -> dict[int, list[int]]:
    """Parents whose successes the labels always explain by one of their children (every
    lift-any success is a lift-<category> success), with those children."""
    pos = (labels > 0.5) & mask
    out: dict[int, list[int]] = {}
    for p in sorted({p for _, p in pairs}):
        kids = [c for c, q in pairs if q == p and (p, c) not in pairs]  # not equivalents
        if not kids:
            continue
        rows = pos[:, p] & mask[:, kids].all(1)
        if rows.sum() >= min_support and pos[rows][:, kids].any(1).all():
            out[p] = kids
    return out


def dispute_scores(
    probs: np.ndarray, pairs: list[tuple[int, int]], parents: dict[int, list[int]]
) -> np.ndarray:
    """(N, T) how strongly the SD's own answers for related tasks contradict each other:
    a child judged a success while its parent is not (both tasks get the gap), or an
    exhaustive parent judged a success while none of its children is (every child gets
    the gap: one of them was probably missed, as a held capsule the lift-capsule task
    does not see)."""
    d = np.zeros_like(probs)
    for c, p in pairs:
        gap = np.clip(probs[:, c] - probs[:, p], 0.0, None)
        d[:, c] = np.maximum(d[:, c], gap)
        d[:, p] = np.maximum(d[:, p], gap)
    for p, kids in parents.items():
        unexplained = np.clip(probs[:, p] - probs[:, kids].max(1), 0.0, None)
        for c in kids:
            d[:, c] = np.maximum(d[:, c], unexplained)
    return d


def disputes_given_labels(probs: np.ndarray, labels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``dispute_scores`` with the task relations the labels so far show."""
    pairs = task_implications(labels, mask)
    return dispute_scores(probs, pairs, exhaustive_parents(labels, mask, pairs))


def select_episodes(
    probs: np.ndarray,
    budget: int,
    disputes: np.ndarray | None = None,
    dispute_share: float = 0.5,
    min_dispute: float = 0.25,
) -> np.ndarray:
    """Episodes to label in full (every task): up to ``dispute_share`` of the budget from
    the most disputed (largest dispute over tasks), the rest least certain first (the
    task nearest 0.5)."""
    uncertain = np.argsort(np.abs(probs - 0.5).min(axis=1), kind="stable")
    if disputes is None:
        return uncertain[:budget]
    d = disputes.max(axis=1)
    hot = np.flatnonzero(d >= min_dispute)
    hot = hot[np.argsort(-d[hot], kind="stable")][: int(budget * dispute_share)]
    taken = np.zeros(len(probs), bool)
    taken[hot] = True
    fill = uncertain[~taken[uncertain]][: budget - len(hot)]
    return np.concatenate([hot, fill]).astype(np.int64)


def select_for_labeling(
    probs: np.ndarray,
    already: np.ndarray,
    budget: int,
    disputes: np.ndarray | None = None,
    dispute_share: float = 0.5,
    min_dispute: float = 0.25,
) -> dict[int, np.ndarray]:
    """Per task column: up to ``dispute_share`` of the budget from the most disputed
    unlabeled rows (dispute >= ``min_dispute``), the rest from the least certain."""
    if disputes is None:
        return select_uncertain(probs, already, budget)
    out = {}
    for j in range(probs.shape[1]):
        free = ~already[:, j]
        hot = np.flatnonzero(free & (disputes[:, j] >= min_dispute))
        hot = hot[np.argsort(-disputes[hot, j], kind="stable")][: int(budget * dispute_share)]
        rest = already[:, j].copy()
        rest[hot] = True
        fill = select_uncertain(probs[:, j : j + 1], rest[:, None], budget - len(hot))[0]
        out[j] = np.concatenate([hot, fill]).astype(np.int64)
    return out


ACCURACY_PLOT = "accuracy_vs_labels.png"
"""``sd improve``'s accuracy curve (in its weights folder), with a validation set."""

CHOSEN_LABELS = "chosen_labels.json"
"""``sd improve``'s oracle labels so far (in its weights folder): episode id -> tasks."""


def save_chosen(
    path: Path, ids: np.ndarray, tasks: tuple[str, ...] | list[str], chosen: np.ndarray
) -> None:
    """The labels chosen so far (earlier calls' kept), atomically."""
    old = json.loads(path.read_text()) if path.exists() else {}
    for i, j in zip(*np.nonzero(chosen), strict=True):
        mine = old.setdefault(str(ids[i]), [])
        if tasks[j] not in mine:
            mine.append(tasks[j])
    atomic_write_json(path, old)


def chosen_cells(
    path: Path, ids: np.ndarray, tasks: tuple[str, ...] | list[str]
) -> list[tuple[int, int]]:
    """(row, task column) of each label chosen by earlier calls, for episodes in ``ids``."""
    if not path.exists():
        return []
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from None
    if not isinstance(saved, dict) or not all(
        isinstance(v, list) and all(isinstance(t, str) for t in v) for v in saved.values()
    ):
        raise ValueError(
            f"{path} is not a record of chosen labels (episode id -> list of task names): "
            "move it away to start choosing anew"
        )
    col = {t: j for j, t in enumerate(tasks)}
    return [(i, col[t]) for i, eid in enumerate(ids) for t in saved.get(str(eid), []) if t in col]


def _initial_is_stale(initial: Path, sd: SuccessDetector, tasks: tuple[str, ...]) -> bool:
    """Whether ``sd improve`` must (re)take the SD it starts from, ``sd``, as the one its
    rounds fine-tune (``WEIGHTS/initial``): there is none yet; or ``sd`` is a newer
    ``sd train`` SD than the one copied there (it used to go on fine-tuning the old one
    and drop the new one without a word); or its tasks are not this call's (a task was
    added: loading it failed). A run's own staged-only SD there is kept: only an
    ``origin`` of "sd train" replaces it (a run's SDs say "run", or nothing before
    2026-12-05)."""
    latest = read_latest(initial, "sd")
    if latest is None:
        return True
    meta = dict(latest.get("meta", {}))
    if list(meta.get("tasks", [])) != list(tasks):
        return True
    return sd.meta.get("origin") == "sd train" and meta.get("copied_from") != sd.version


def human_examples(
    store: str | Path, labels_path: str | Path | None, registry: TaskRegistry
) -> LabeledSet:
    """The store's episodes with a person's labels (``labels_path``, default
    ``STORE/labels.jsonl``, where ``mtopt sd label`` writes): their final images, each
    labeled for the tasks a person judged it on (the latest verdict; retracted ones
    unknown), source "human". Only labeled episodes are rows (it used to stack every
    episode of the store: memory, and an error on a store of mixed image sizes). A
    labels file none of whose labels names an episode of the store is a ValueError
    (another store's file?), as are labeled episodes of different image sizes."""
    labels_file = Path(labels_path or Path(store) / "labels.jsonl")
    human = LabelStore(labels_file).latest()
    if not human:
        raise ValueError(
            f"no label in force in {labels_file} (it has none, or every one was taken "
            "back): label episodes with `mtopt sd label` first"
        )
    labeled = {str(eid) for eid, _ in human}
    # final images, ground truth and scenes only: no frames (0.13 MB an episode)
    # an episode a client stored twice is labeled and trained on once
    views = first_of_each(EpisodeReader(store).final_views(), lambda v: v.episode_id)
    eps = [v for v in views if v.episode_id in labeled]
    unread = labeled - {v.episode_id for v in views}
    sizes = sorted({v.final_image.shape[:2] for v in eps})
    if len(sizes) > 1:
        raise ValueError(
            f"the labeled episodes of {store} have images of {len(sizes)} sizes "
            f"({', '.join(f'{h}x{w}' for h, w in sizes)}): a success detector judges one; "
            "label one camera's episodes per labels file"
        )
    pool = episode_examples(eps, registry, source="human", only_with_ground_truth=False)
    pool.mask[:] = False
    for i, eid in enumerate(pool.ids):
        for j, t in enumerate(registry.names):
            lab = human.get((str(eid), t))
            if lab is not None:
                pool.mask[i, j], pool.labels[i, j] = True, float(lab.success)
    if not pool.mask.any():  # it retrained on the examples alone
        raise ValueError(
            f"none of the {len(human)} labels in {labels_file} names an episode of "
            f"{store} with one of these tasks: another store's labels file?"
        )
    # labels that cannot be used are named, not dropped without a word
    other_tasks = [t for _, t in human if t not in registry.names]
    if other_tasks:
        log.warning(
            "%d labels in %s are for tasks these tasks lack (%s): left out (a --tasks-file?)",
            len(other_tasks),
            labels_file,
            ", ".join(sorted(set(other_tasks))),
        )
    if unread:
        log.warning(
            "%d labeled episodes of %s are not in %s: their labels are left out",
            len(unread),
            labels_file,
            store,
        )
    return pool


def improve_loop(
    store: str | Path,
    weights: str | Path,
    examples: str | Path,
    labeler: str = "oracle",
    budget: int = 100,
    rounds: int = 3,
    validation: str | Path | None = None,
    steps: int = 600,
    registry: TaskRegistry = DEFAULT_REGISTRY,
    dispute_share: float = 0.5,
    retrain_from: Literal["previous", "initial"] = "initial",
    labels_path: str | Path | None = None,
    on_note: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Rounds of: score the store's episodes, label ``budget`` per task (the most
    disputed between related tasks first, up to ``dispute_share``, then the least
    certain), retrain on the examples plus all labels so far, starting from the current
    weights ("previous") or from the weights the loop started with ("initial": no
    drift accumulates over rounds; each round's SD depends only on the labels so far).
    With ``labeler="human"`` the labels are a person's, in ``labels_path`` (default
    ``STORE/labels.jsonl``, where ``mtopt sd label`` writes), given already: one
    retrain on all of them (``budget`` and ``rounds`` do not apply; the labeling page
    orders its queue by the SD's uncertainty instead). It used to pick ``budget`` of
    them per task and round and leave the rest out.

    Calls go on from each other: the first keeps the SD it starts from in
    ``WEIGHTS/initial`` (what "initial" retrains from in every later call too, until
    ``mtopt sd train`` publishes a newer SD there or the tasks change), and each
    round keeps the oracle labels chosen so far in ``WEIGHTS/chosen_labels.json``, so a
    later call retrains on them as well (both used to last one call only).

    With ``validation``, returns the balanced accuracy before and after each round and
    plots it in ``WEIGHTS/accuracy_vs_labels.png``; without it, returns [] and removes
    an earlier call's plot there (its SDs are not the latest any more).

    Episodes of the validation set (``mtopt sd export --validation-out`` of the same
    labels) are never labeled or trained on: they are left out of the pool, with a note
    (``on_note``, default: the log), as is training on held-out objects."""
    note = on_note or log.warning
    if retrain_from not in ("previous", "initial"):
        raise ValueError(f"retrain_from must be 'previous' or 'initial', got {retrain_from!r}")
    sd = SuccessDetector.load(weights, registry.names)
    # examples staged before a task of the registry existed: its labels unknown
    base = LabeledSet.load(examples).with_tasks(registry.names)
    val = LabeledSet.load(validation) if validation else None
    if val is not None and (unknown := sorted(set(val.tasks) - set(registry.names))):
        raise ValueError(f"validation set {validation} has tasks this SD lacks: {unknown}")
    size = sd.net.cfg.image_size
    if labeler == "human":  # only what a person labeled counts
        pool = human_examples(store, labels_path, registry)
    else:  # final images, ground truth and scenes only: no frames (0.13 MB an episode)
        views = [
            v
            for v in first_of_each(EpisodeReader(store).final_views(), lambda v: v.episode_id)
            if v.gt_success_by_task
        ]
        same = [v for v in views if v.final_image.shape == (size, size, 3)]
        if same and len(same) < len(views):
            note(
                f"{len(views) - len(same)} episodes of {store} have images of another size "
                f"than the success detector's {size}x{size}: left out"
            )
        pool = episode_examples(same or views[:1], registry, labeler)
    if len(pool) == 0 and labeler != "human":
        raise ValueError(
            f"no episodes with ground truth in {store} (a real robot's store has none): "
            "label them with `mtopt sd label`, then run this with --labeler human"
        )
    if len(pool) == 0:
        raise ValueError(f"no episodes with labels available in {store}")
    if pool.images.shape[1:3] != (size, size):
        h, w = pool.images.shape[1:3]
        raise ValueError(
            f"the episodes of {store} have {h}x{w}-pixel images; the success detector in "
            f"{weights} judges {size}x{size}: train one for this camera (`mtopt sd export` "
            "its labeled episodes, then `mtopt sd train --examples` on them)"
        )
    for name, path, labeled_set in (("examples", examples, base), ("validation", validation, val)):
        if (
            labeled_set is not None
            and len(labeled_set)
            and labeled_set.images.shape[1:3] != (size, size)
        ):
            h, w = labeled_set.images.shape[1:3]
            raise ValueError(
                f"the {name} set {path} has {h}x{w}-pixel images; the success detector "
                f"in {weights} judges {size}x{size}"
            )
    known = pool.mask.copy()
    if val is not None:
        if overlap := sorted(set(base.ids.tolist()) & set(val.ids.tolist())):
            raise ValueError(
                f"the examples {examples} and the validation set {validation} share "
                f"{len(overlap)} examples (e.g. {overlap[0]}): the accuracy would be measured "
                "on training data"
            )
        kept_out = np.isin(pool.ids, val.ids) & known.any(1)
        if kept_out.any():
            known[kept_out] = False
            note(
                f"{int(kept_out.sum())} labeled episodes are in the validation set "
                f"{validation}: left out of labeling and training"
            )
    if not known.any():
        raise ValueError(
            f"every labeled episode of {store} is in the validation set {validation}: "
            "nothing is left to train on"
        )
    if (pool.held_out & known.any(1)).any():
        note(
            f"{int((pool.held_out & known.any(1)).sum())} episodes of {store} are of held-out "
            "objects (an evaluation's): training on them overstates a held-out measure"
        )
    if labeler == "human":  # the labels in force now, not an earlier export's copies
        superseded = np.isin(base.ids, pool.ids[known.any(1)])
        if superseded.any():
            base = base.subset(np.flatnonzero(~superseded))
            note(
                f"{int(superseded.sum())} examples of {examples} are episodes labeled in "
                f"{labels_path or Path(store) / 'labels.jsonl'}: trained once, with the "
                "labels in force there now"
            )
    chosen_path = Path(weights) / CHOSEN_LABELS
    chosen = np.zeros_like(known)
    for i, j in chosen_cells(chosen_path, pool.ids, registry.names):  # earlier calls'
        chosen[i, j] = True
    # once every input loaded and has labels: a call that fails writes nothing to WEIGHTS
    initial = Path(weights) / "initial"
    if _initial_is_stale(initial, sd, registry.names):
        SuccessDetector(copy.deepcopy(sd.net), registry.names).publish(
            initial, extra_meta={"copied_from": sd.version}
        )
    start = SuccessDetector.load(initial, registry.names).net
    # the labels the SD it starts from was trained on: an earlier call's of the same
    # labeler, when it is that call's SD (not one `sd train` published since). SDs of
    # calls before the labeler was kept in their metadata were the oracle's
    origin = sd.meta.get("origin") == "sd improve"
    continues = origin and sd.meta.get("labeler", "oracle") == labeler
    labels_before = 0
    if continues and "labels_per_task" in sd.meta:
        labels_before = int(sd.meta["labels_per_task"])
    elif continues and labeler == "oracle":
        labels_before = int((chosen & known).sum(0).max())
    curve: list[dict[str, Any]] = []
    if labeler == "human":  # every label a person gave, in one retrain
        chosen[:] = known
        rounds = 1

    def record(n: int) -> None:
        if val is not None:
            m = evaluate_sd(sd, val)
            bal = {t: v["balanced_accuracy"] for t, v in m.items()}
            mean = mean_finite(bal.values())  # (NaN: a task with one class only)
            curve.append(
                {
                    "version": sd.version,
                    "labels_per_task": n,
                    "balanced_accuracy": bal,
                    "mean_balanced_accuracy": float("nan") if mean is None else mean,
                }
            )

    record(labels_before)
    for r in range(rounds):
        probs = sd.score(pool.images)
        # task relations as the labels so far show them (examples + labeled episodes)
        used = chosen & known
        rows = used.any(1)
        labels = np.concatenate([base.labels, pool.labels[rows]])
        mask = np.concatenate([base.mask, used[rows]])
        disputes = disputes_given_labels(probs, labels, mask)
        picks = select_for_labeling(probs, chosen | ~known, budget, disputes, dispute_share)
        for j, idx in picks.items():
            chosen[idx, j] = True
        labeled = LabeledSet(
            pool.tasks,
            pool.images,
            pool.labels,
            chosen & known,
            pool.ids,
            pool.sources,
            pool.held_out,
        )
        keep = labeled.mask.any(1)
        data = base.concat(labeled.subset(np.flatnonzero(keep)))
        init = copy.deepcopy(start) if retrain_from == "initial" else sd.net
        net = train_sd(data, SDTrainConfig(steps=steps, seed=r + 1), init=init)
        sd = SuccessDetector(net, registry.names)
        n_labels = int((chosen & known).sum(0).max())  # the labels of the task with the most
        meta = {
            "origin": "sd improve",
            "labeler": labeler,
            "labels_per_task": n_labels,
            **view_meta(data.outcome_fixtures_share),
        }
        if labeler == "oracle":  # the labels first: an SD must not count labels not kept
            save_chosen(chosen_path, pool.ids, registry.names, chosen & known)
        sd.publish(weights, extra_meta=meta)
        record(n_labels)
    if curve:
        plot_curve(curve, Path(weights) / ACCURACY_PLOT)
    else:  # an earlier call's curve is of SDs this call superseded: it would read as this one's
        (Path(weights) / ACCURACY_PLOT).unlink(missing_ok=True)
    return curve
