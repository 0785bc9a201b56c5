"""Can the Q-network's gripper crop see a 1 cm aiming error? A supervised probe.

The learned lift policy closes a median ~2.2 cm from the object's centre, and lifting
needs ~1 cm. Is that the information in the 16-pixel crop of the 64x64 image (about
0.8 cm per pixel) or the reinforcement signal? This probe gives the crop tower the labels
RL never gets: the privileged oracle descends on lift-any objects with an aiming error of
N(0, ``--aim-cm``^2) per axis (any yaw), and at its close the probe keeps the camera
image, the gripper's x, y and height, and the true offset (cm) from the gripper to the
nearest object's centre. The Q-network's crop tower (``mtopt.qtopt.networks.CropTower``,
the ``tuned`` sizes) plus a small head is trained to regress that offset, per arm:

- ``crop64``: the ``tuned`` crop, a 16-pixel window of the 64x64 image at 16x16;
- ``crop64_up32``: the same window resampled to 32x32 (more convolution, no new pixels);
- ``crop128``: a 32-pixel window of the same scene rendered at 128x128, at 32x32 (the
  same 13 cm of the bin at twice the pixels);
- ``full64``: no crop, the whole 64x64 image (the probe of ``grasp_offset_probe.py``).

Scored on held-out closes (other scenes): RMS and median error (cm), the share within
1 cm, and how well the predicted offset ranks "within 1 cm" against "over 2 cm" (AUC),
against predicting the mean offset.

The closes are collected in the default cell (training objects). With ``--runs``, each
run's acting weights are also scored on the held-out closes (``run_q``), with the run's
tasks, in the cell the run learned in (its ``config.json``'s sim settings): a run trained
in another cell (e.g. ``sim.move_from=measured``, another image size) gets the scenes of
the held-out closes collected again in its own cell, the same oracle on the same scenes.
The result records the cells (``cell_version``, ``sim``, and each run's ``sim``).

Usage: python benchmarks/grasp_crop_probe.py --json OUT [--samples 6000] [--test 1000]
           [--steps 3000] [--aim-cm 2] [--workers 2] [--finish] [--runs RUN,RUN]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from _results import write_result
from grasp_outcome_probe import auc as _auc
from grasp_outcome_probe import nearest_offset
from mtopt.qtopt.networks import POSE_XY_SCALE, CropTower, QNetConfig
from mtopt.robots.base import STATE_DIM, Observation
from mtopt.robots.sim_robot import SimRobot
from mtopt.runtime.config import run_registry, run_sim_config
from mtopt.sim.cell import CELL_VERSION
from mtopt.sim.config import SimConfig
from mtopt.sim.oracle import OraclePolicy
from mtopt.sim.runner import run_episode

TASK = "lift-any"


class _Closed(Exception):
    """Ends an episode once its first close is recorded."""


def collection_cell(run: str | None) -> SimConfig:
    """The cell closes are collected in (training objects): the one ``run`` learned in,
    the default cell without a run."""
    return run_sim_config(run, "train")


class RecordFirstClose:
    """Wraps the oracle; at its first close records the image(s), pose and offset: the
    camera's image as ``image{N}`` (N its size: ``image64`` in the default cell) and, with
    ``big``, the same view rendered at 128x128 as ``image128``."""

    def __init__(self, policy: OraclePolicy, robot: SimRobot, finish: bool, big: bool = True):
        self.policy, self.robot, self.finish, self.big = policy, robot, finish, big
        self.sample: dict[str, Any] | None = None
        self._seen = False
        self.version = 0

    def reset(self, task: str, rng: np.random.Generator) -> None:
        self.sample, self._seen = None, False
        self.policy.reset(task, rng)

    def act(self, obs: Observation) -> np.ndarray:
        action = np.asarray(self.policy.act(obs), dtype=np.float32)
        if action[4] > 0 and obs.pose is not None and not self._seen:
            self._seen = True
            to_object = nearest_offset(self.robot)  # m, object minus gripper; NaN: bin empty
            if not np.isnan(to_object).any():
                self.sample = {
                    f"image{self.robot.config.image_size}": np.asarray(obs.image, np.uint8),
                    "xy": np.asarray(obs.pose[:2], np.float32),
                    "state": np.asarray(obs.state, np.float32),
                    "offset_cm": -100 * to_object,  # gripper minus object
                }
                if self.big and "image128" not in self.sample:
                    self.sample["image128"] = self.robot.cell.render(128)
            if not self.finish:
                raise _Closed
        return action


def collect(job: tuple[int, int, int, float, bool, str | None]) -> list[dict[str, Any]]:
    """Samples from scenes ``k0 .. k0 + n - 1`` of ``seed`` (train-split objects), each
    noting its scene ``k``, in the default cell (``run`` None) or in the cell ``run``
    learned in, with its tasks (then without the 128x128 render); with ``finish`` each
    episode runs to its end and the sample notes whether it lifted."""
    k0, n, seed, aim_cm, finish, run = job
    registry = run_registry(run)
    robot = SimRobot(collection_cell(run), robot_id="probe", seed=seed)
    spec = registry.get(TASK)
    oracle = OraclePolicy(robot, registry, robot.config.max_steps, aim_cm / 100, 1.57)
    watch = RecordFirstClose(oracle, robot, finish, big=run is None)
    out = []
    try:
        for k in tqdm(range(k0, k0 + n), desc=f"closes {k0}", mininterval=5, disable=k0 > 0):
            scene_seed = seed * 1_000_000 + k
            robot.reset_scene(scene_seed)
            with contextlib.suppress(_Closed):
                run_episode(robot, watch, spec, np.random.default_rng(scene_seed), 15)
            if watch.sample is not None:
                watch.sample["scene"] = k
                if finish:
                    watch.sample["lifted"] = bool(spec.succeeded(robot.scene_state()))
                out.append(watch.sample)
    finally:
        robot.close()
    return out


class Probe(nn.Module):
    """CropTower (or, without a crop, the same three convolutions with two more stride-2
    ones over the whole image) -> [features, height] -> 64 -> 2."""

    def __init__(self, cfg: QNetConfig | None):
        super().__init__()
        self.cfg = cfg
        if cfg is not None:
            self.tower: nn.Module = CropTower(cfg)
            width = cfg.fc_units
        else:
            c = 32
            layers: list[nn.Module] = []
            for cin, stride in ((3, 1), (c, 2), (c, 2), (c, 2), (c, 2)):
                layers += [nn.Conv2d(cin, c, 3, stride, 1), nn.ReLU()]
            self.tower = nn.Sequential(*layers, nn.Flatten(), nn.Linear(c * 16, 64), nn.ReLU())
            width = 64
        self.head = nn.Sequential(nn.Linear(width + 1, 64), nn.ReLU(), nn.Linear(64, 2))

    def forward(self, images: torch.Tensor, state: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        if self.cfg is not None:
            f = self.tower(images, state)
        else:
            f = self.tower(images.permute(0, 3, 1, 2).float() / 255.0 - 0.5)
        return self.head(torch.cat([f, h], 1))


def auc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """ROC AUC (``grasp_outcome_probe.auc``: ties count half); None without both classes."""
    a = _auc(scores, np.asarray(positive, np.float64))
    return None if np.isnan(a) else a


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def errors_summary(
    pred: np.ndarray, true: np.ndarray, lifted: np.ndarray | None = None
) -> dict[str, Any]:
    """Error statistics (cm) of predicted against true offsets (N, 2), and with ``lifted``
    (N,) how well the predicted distance ranks lifting grasps above failing ones (pure)."""
    err = np.hypot(*(pred - true).T)
    dist_true = np.hypot(*true.T)
    near, far = dist_true < 1.0, dist_true > 2.0
    keep = near | far
    # score "close here": a smaller predicted distance should mean a nearer object
    score = -np.hypot(*pred.T)
    out: dict[str, Any] = {
        "rms_cm": round(float(np.sqrt((err**2).mean())), 3),
        "median_cm": round(float(np.median(err)), 3),
        "within_1cm": round(float((err < 1.0).mean()), 3),
        "auc_within1_vs_over2": _round(auc(score[keep], near[keep])),
    }
    if lifted is not None:
        out["auc_lifted"] = _round(auc(score, lifted))
    return out


def train_arm(arm: str, data: dict[str, np.ndarray], n_test: int, steps: int) -> dict[str, Any]:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    if arm == "full64":
        cfg, key = None, "image64"
    else:
        size, window, out = {"crop64": (64, 16, 16), "crop64_up32": (64, 16, 32)}.get(
            arm, (128, 32, 32)
        )
        key = f"image{size}"
        cfg = QNetConfig(image_size=size, gripper_xy=True, gripper_crop=out, crop_window=window)
    images = torch.from_numpy(data[key])
    state = torch.zeros(len(images), STATE_DIM + 2)
    state[:, STATE_DIM:] = torch.from_numpy(data["xy"]) * POSE_XY_SCALE
    h = torch.from_numpy(data["state"][:, 1:2]) * 5.0  # gripper height
    y = torch.from_numpy(data["offset_cm"])
    n_train = len(images) - n_test
    lifted_test = data["lifted"][n_train:] if "lifted" in data else None
    net = Probe(cfg)
    opt = torch.optim.Adam(net.parameters(), 5e-4)

    def predict(lo: int, hi: int) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat(
                [
                    net(images[i : i + 500], state[i : i + 500], h[i : i + 500])
                    for i in range(lo, hi, 500)
                ]
            )

    curve = []
    every = max(1, steps // 6)
    t0 = time.perf_counter()
    for step in tqdm(range(1, steps + 1), desc=arm, mininterval=5):
        idx = torch.randint(0, n_train, (64,), generator=g)
        loss = ((net(images[idx], state[idx], h[idx]) - y[idx]) ** 2).sum(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % every == 0 or step == steps:
            test = errors_summary(
                predict(n_train, len(images)).numpy(), y[n_train:].numpy(), lifted_test
            )
            curve.append({"step": step, **test})
    best = min(curve, key=lambda c: c["rms_cm"])
    return {
        "final": curve[-1],
        "best_rms_cm": best["rms_cm"],
        "train": errors_summary(predict(0, min(n_train, 2000)).numpy(), y[:2000].numpy()),
        "curve": curve,
        "train_s": round(time.perf_counter() - t0, 1),
    }


def run_q(run: str, data: dict[str, np.ndarray], n_test: int) -> dict[str, Any]:
    """The run's acting weights on the last ``n_test`` closes of ``data`` (collected in
    the run's cell), with the run's tasks: does Q(s, close here, lift-any) rank near
    grasps (< 1 cm) above far ones (> 2 cm), and lifting grasps above failing ones? And
    what CEM picks there: close, or move (towards the object?)."""
    from mtopt.policies.cem_policy import CEMPolicy
    from mtopt.qtopt.cem import CEMConfig, cem_argmax
    from mtopt.qtopt.networks import q_state

    torch.set_num_threads(2)
    cem = CEMConfig(precision="fp32")
    registry = run_registry(run)
    policy = CEMPolicy(registry.names, weights_dir=f"{run}/weights", cem=cem, seed=0)
    policy.maybe_reload()
    net = policy.net
    assert net is not None, f"no weights in {run}/weights"
    key = f"image{net.cfg.image_size}"
    if key not in data:
        raise ValueError(f"{run}'s Q-network takes {key}; the closes have {sorted(data)}")
    lo = len(data["offset_cm"]) - n_test
    images = torch.from_numpy(data[key][lo:])
    poses = np.concatenate([data["xy"][lo:], np.zeros((n_test, 2), np.float32)], 1)
    states = torch.from_numpy(q_state(data["state"][lo:], poses, net.cfg))
    task = torch.full((n_test,), registry.names.index(TASK))
    close_here = torch.tensor([[0.0, 0.0, 0.0, 0.0, 1.0, -1.0]]).expand(n_test, -1)
    gen = torch.Generator().manual_seed(0)
    qs, picks = [], []
    with torch.no_grad():
        for i in range(0, n_test, 250):
            sl = slice(i, i + 250)
            qs.append(net(images[sl], states[sl], close_here[sl], task[sl]))
            picks.append(cem_argmax(net, images[sl], states[sl], task[sl], cem, gen)[0])
    q = torch.cat(qs).numpy()
    pick = torch.cat(picks).numpy()
    off = data["offset_cm"][lo:]
    dist = np.hypot(*off.T)
    near, far = dist < 1.0, dist > 2.0
    keep = near | far
    closes = pick[:, 4] > 0
    moves = ~closes & (dist > 1.5)
    # does the chosen move point at the object? cosine of (dx, dy) with -offset
    mv = pick[moves, :2]
    cos = (mv * -off[moves]).sum(1) / (np.hypot(*mv.T) * dist[moves] + 1e-9)
    out: dict[str, Any] = {
        "q_close_here_auc_within1_vs_over2": _round(auc(q[keep], near[keep])),
        "q_close_here_mean": {
            "within_1cm": round(float(q[near].mean()), 3),
            "over_2cm": round(float(q[far].mean()), 3),
        },
        "cem_closes": {
            "within_1cm": round(float(closes[near].mean()), 3),
            "over_2cm": round(float(closes[far].mean()), 3),
        },
        "cem_move_cosine_to_object_median": round(float(np.median(cos)), 3) if len(cos) else None,
        "cem_moves_over_1p5cm": int(moves.sum()),
    }
    if "lifted" in data:
        out["q_close_here_auc_lifted"] = _round(auc(q, data["lifted"][lo:].astype(bool)))
    return out


def held_out_closes(run: str, first: int, args: argparse.Namespace) -> dict[str, np.ndarray]:
    """The closes of scenes ``first .. args.samples - 1`` (the held-out ones), collected
    again in the cell ``run`` learned in (empty when none of them gives a close)."""
    n = args.samples - first
    chunk = -(-n // args.workers)
    jobs = [
        (k, min(chunk, args.samples - k), args.seed, args.aim_cm, args.finish, run)
        for k in range(first, args.samples, chunk)
    ]
    with ProcessPoolExecutor(args.workers) as pool:
        rows = [r for part in pool.map(collect, jobs) for r in part]
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]} if rows else {}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", required=True)
    ap.add_argument("--samples", type=int, default=6000, help="scenes (one close each)")
    ap.add_argument("--test", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--aim-cm", type=float, default=2.0)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--arms", default="crop64,crop64_up32,crop128,full64")
    ap.add_argument("--finish", action="store_true", help="run episodes on; note lifts")
    ap.add_argument("--runs", default="", help="also score these runs' acting weights")
    args = ap.parse_args()
    runs = [r for r in args.runs.split(",") if r]
    try:  # each run's cell and tasks: a clear error before any work
        cells = {r: collection_cell(r) for r in runs}
        for r in runs:
            run_registry(r).get(TASK)
    except (ValueError, KeyError) as exc:  # a ConfigError is a ValueError
        ap.error(str(exc))
    default_cell = collection_cell(None)
    t0 = time.perf_counter()
    chunk = -(-args.samples // args.workers)
    jobs = [
        (k, min(chunk, args.samples - k), args.seed, args.aim_cm, args.finish, None)
        for k in range(0, args.samples, chunk)
    ]
    with ProcessPoolExecutor(args.workers) as pool:
        rows = [r for part in pool.map(collect, jobs) for r in part]
    if not 0 < args.test < len(rows):
        ap.error(f"--test must be between 0 and the {len(rows)} samples collected")
    data = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
    collect_s = time.perf_counter() - t0
    torch.set_num_threads(2)
    true = data["offset_cm"][-args.test :]
    mean = data["offset_cm"][: -args.test].mean(0)
    out: dict[str, Any] = {
        "task": TASK,
        "aim_cm": args.aim_cm,
        "samples": len(rows),
        "test": args.test,
        "cell_version": CELL_VERSION,
        "sim": dataclasses.asdict(default_cell),
        "steps": args.steps,
        "batch": 64,
        "collect_s": round(collect_s, 1),
        "predict_mean": errors_summary(np.broadcast_to(mean, true.shape), true),
        "true_offset_cm_median": round(float(np.median(np.hypot(*data["offset_cm"].T))), 3),
        "arms": {
            arm: train_arm(arm, data, args.test, args.steps) for arm in args.arms.split(",") if arm
        },
    }
    if "lifted" in data:
        out["oracle_lifted"] = round(float(data["lifted"].mean()), 3)
    out["runs"] = {}
    first_test_scene = int(data["scene"][-args.test])
    for r in runs:
        result: dict[str, Any] = {"sim": dataclasses.asdict(cells[r])}
        if cells[r] == default_cell:  # the closes above were collected in the run's cell
            result |= {"closes": args.test, "own_closes": False, **run_q(r, data, args.test)}
        else:  # the held-out closes' scenes again, in the run's own cell
            own = held_out_closes(r, first_test_scene, args)
            n = len(own["offset_cm"]) if own else 0
            result |= {"closes": n, "own_closes": True, **(run_q(r, own, n) if n else {})}
        out["runs"][r] = result
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    write_result(args.json, out)


if __name__ == "__main__":
    main()
