"""Can the Q-network see whether a grasp here would work? A supervised probe.

For random gripper poses over the right bin (a scene reset, then 0-4 random moves) it
records the camera image and the gripper state, then runs a straight-down grasp from
that pose (descend without moving sideways, close at the bin bottom, then the robot
presents what it holds) and labels the pose with the ground-truth lift-any outcome. So
the label is what Q(s, "go straight down and close") should predict for lift-any, and
it is given here, where RL must discover it from sparse rewards.

Two networks learn it from the same samples with the same seed and steps:
  qnet   the run's Q-network (the local preset's Fig. 9 network: tower, action + state +
         one-hot task merged into the feature map, 9 convolutions, 2 dense layers), fed a
         fixed "down" action and the lift-any task; trained with cross-entropy on its logit
  probe  the small CNN of grasp_offset_probe.py (image + height -> one logit)
and three variants and a ceiling (``--nets``):
  qnet_tcp        the Q-network with the gripper's x, y (the robot's kinematics) appended
                  to its state features (QNetConfig.gripper_xy)
  qnet_coord      the Q-network with CoordConv channels (QNetConfig.coord_channels)
  qnet_tcp_coord  both
  qnet_crop       both, and a 16-pixel crop of the image around the point below the
                  gripper (QNetConfig.gripper_crop; qnet_crop32 resamples it to 32)
  oracle          an MLP on privileged features (offset to the nearest object, gripper
                  position): how predictable the label is at all
Scored on held-out poses by ROC AUC (0.5: blind) and accuracy against the base rate. A
network that reaches a high AUC here can see where grasps work; if RL's lift policy
still grasps blindly, the gap is in learning from rewards, not in what the image shows.

Usage: python benchmarks/grasp_outcome_probe.py --json OUT [--samples 5000] [--test 1000]
           [--steps 2000] [--cache FILE.npz] [--qnet KEY=VALUE ...] [--big 128]
           [--train-sizes 4000,0] [--nets qnet,probe] [--collect-only]
  --cache  keep the samples in FILE (collected once, ~12 minutes for 5000); several files,
           comma-separated, are concatenated (a missing k-th file is collected with seed
           --seed + k); --collect-only fills them and stops, so two processes can collect
           on two cores
  --qnet   a Q-network variant to compare (QNetConfig fields, e.g. merge_size=16)
  --big N  also render every pose at NxN and train the Q-network on those (image_size=N)
  --train-sizes 4000,0  a learning curve: train on the first 4000 samples, then on all
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from _results import write_result
from grasp_offset_probe import Probe, random_pose
from mtopt.policies.scripted import ScriptedPick
from mtopt.qtopt.networks import QNetwork, q_state
from mtopt.robots.action import make_action
from mtopt.robots.sim_robot import SimRobot
from mtopt.runtime.config import preset
from mtopt.sim.cell import SimConfig
from mtopt.tasks import DEFAULT_REGISTRY

TASK = "lift-any"


def nearest_offset(robot: SimRobot) -> np.ndarray:
    """Horizontal offset (m) from the gripper to the nearest object in the right bin
    (privileged: read from the simulator; NaN when the bin is empty)."""
    cell = robot.cell
    tcp = cell.tcp_position()
    objs = [cell.object_position(b) for b, _ in cell.object_bodies() if robot.in_right_bin(b)]
    if not objs:
        return np.full(2, np.nan, np.float32)
    d = np.array([o[:2] - tcp[:2] for o in objs])
    return d[np.argmin(np.hypot(d[:, 0], d[:, 1]))].astype(np.float32)


def collect(n: int, seed: int, extra_size: int = 0) -> dict[str, np.ndarray]:
    """Per pose: images (n, 64, 64, 3) uint8, states (n, 2), labels (n,), tcp (n, 3) the
    gripper's position and near (n, 2) the offset to the nearest object (both privileged,
    for the oracle baselines), and with ``extra_size`` big: the same views at that size."""
    sim = SimConfig(object_split="train")
    robot = SimRobot(sim, seed=seed)
    spec = DEFAULT_REGISTRY.get(TASK)
    rng = np.random.default_rng(seed)
    images, states, labels, extra, tcps, nears = [], [], [], [], [], []
    try:
        for i in tqdm(range(n), desc="poses + grasps", mininterval=2):
            obs = random_pose(robot, seed * 1_000_000 + i, rng)
            images.append(obs.image)
            tcps.append(robot.cell.tcp_position().astype(np.float32))
            nears.append(nearest_offset(robot))
            if extra_size:
                extra.append(robot.cell.render(extra_size))
            states.append(np.asarray(obs.state, np.float32))
            grasp = ScriptedPick(noise=0.0, early_close_prob=0.0, lift_steps=0)
            grasp.reset(TASK, rng)
            for _ in range(sim.max_steps):
                result = robot.act(grasp.act(obs))
                if result.terminated:
                    break
                obs = result.observation
            robot.final_image()  # the robot presents what it holds before it is judged
            labels.append(float(spec.succeeded(robot.scene_state())))
    finally:
        robot.close()
    out = {
        "images": np.stack(images),
        "states": np.stack(states),
        "labels": np.array(labels, np.float32),
        "tcp": np.stack(tcps),
        "near": np.stack(nears),
    }
    if extra:
        out["big"] = np.stack(extra)
    return out


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC by the rank-sum formula (ties get half credit)."""
    pos, neg = scores[labels > 0.5], scores[labels <= 0.5]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


QNET_VARIANTS: dict[str, dict[str, bool | int]] = {
    "qnet": {},
    "qnet_tcp": {"gripper_xy": True},
    "qnet_coord": {"coord_channels": True},
    "qnet_tcp_coord": {"gripper_xy": True, "coord_channels": True},
    # with a 16-pixel crop around the point below the gripper (QNetConfig.gripper_crop)
    "qnet_crop": {"gripper_xy": True, "coord_channels": True, "gripper_crop": 16},
    "qnet_crop32": {"gripper_xy": True, "coord_channels": True, "gripper_crop": 32},
}


def oracle_features(data: dict[str, np.ndarray]) -> np.ndarray:
    """Privileged per-pose features: offset to the nearest object (cm; 20 cm when the bin
    is empty), its length, the gripper height and position (cm)."""
    near = np.nan_to_num(data["near"] * 100.0, nan=20.0)
    dist = np.hypot(near[:, 0], near[:, 1])[:, None]
    return np.concatenate([near, dist, data["tcp"] * 100.0], 1).astype(np.float32) / 10.0


def train(
    kind: str,
    data: dict[str, np.ndarray],
    n_test: int,
    steps: int,
    qnet_overrides: dict[str, str] | None = None,
    max_train: int = 0,
    image_key: str = "images",
) -> dict[str, object]:
    """Train on the first ``max_train`` training samples (0: all), score on the last
    ``n_test``. kind: qnet, probe (see the module doc), qnet_tcp (the Q-network with the
    gripper's x, y appended to its state features, as a robot's kinematics gives them),
    qnet_coord (CoordConv stem) or oracle (an MLP on privileged object offsets: how
    predictable the label is at all)."""
    torch.manual_seed(0)
    images, states, labels = data[image_key], data["states"], data["labels"]
    n_all = len(labels) - n_test
    n_train = min(n_all, max_train) if max_train else n_all
    x_u8 = torch.from_numpy(images)
    y = torch.from_numpy(labels)
    qcfg = dataclasses.replace(preset("local").qnet, image_size=images.shape[1])
    if qnet_overrides:
        fields = qcfg.to_dict()
        qcfg = type(qcfg)(
            **{**fields, **{k: type(fields[k])(v) for k, v in qnet_overrides.items()}}
        )
    task_idx = DEFAULT_REGISTRY.names.index(TASK)
    down = torch.tensor(make_action(0.0, 0.0, -1.0, 0.0), dtype=torch.float32)
    if kind in QNET_VARIANTS:
        qcfg = dataclasses.replace(qcfg, **QNET_VARIANTS[kind])
        net: nn.Module = QNetwork(qcfg)
        # the state features this network takes (with gripper_xy: x, y from the poses)
        s = torch.from_numpy(q_state(states, data.get("tcp"), qcfg))

        def logits(idx: torch.Tensor) -> torch.Tensor:
            n = len(idx)
            return net.logits(
                x_u8[idx],
                s[idx],
                down.expand(n, -1),
                torch.full((n,), task_idx, dtype=torch.long),
            )
    elif kind == "oracle":
        f = torch.from_numpy(oracle_features(data))
        net = nn.Sequential(
            nn.Linear(f.shape[1], 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1)
        )

        def logits(idx: torch.Tensor) -> torch.Tensor:
            return net(f[idx]).squeeze(1)
    elif kind == "probe":
        net = Probe()
        net.head[-1] = nn.Linear(128, 1)
        x_f = x_u8.permute(0, 3, 1, 2).float() / 255.0
        mean = x_f[:n_train].mean((0, 2, 3), keepdim=True)
        std = x_f[:n_train].std((0, 2, 3), keepdim=True)
        x_f = (x_f - mean) / std

        heights = torch.from_numpy(states[:, 1:2]) * 5.0

        def logits(idx: torch.Tensor) -> torch.Tensor:
            return net(x_f[idx], heights[idx]).squeeze(1)
    else:
        raise ValueError(f"unknown net {kind!r}")

    opt = torch.optim.Adam(net.parameters(), 3e-4)
    g = torch.Generator().manual_seed(0)
    test_idx = torch.arange(n_all, len(labels))

    def score() -> dict[str, float]:
        net.eval()
        with torch.no_grad():
            z = torch.cat([logits(test_idx[i : i + 250]) for i in range(0, len(test_idx), 250)])
        net.train()
        p = torch.sigmoid(z).numpy()
        yt = labels[n_all:]
        return {"auc": round(auc(p, yt), 3), "accuracy": round(float(((p > 0.5) == yt).mean()), 3)}

    curve = []
    every = max(1, steps // 8)
    bce = nn.BCEWithLogitsLoss()
    for step in tqdm(range(1, steps + 1), desc=kind, mininterval=2):
        idx = torch.randint(0, n_train, (64,), generator=g)
        loss = bce(logits(idx), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % every == 0:
            curve.append({"step": step, **score()})
    return {
        "train_samples": n_train,
        "image_size": int(images.shape[1]),
        "best_test_auc": max(c["auc"] for c in curve),
        "final": curve[-1],
        "curve": curve,
    }


def load_or_collect(caches: list[str], samples: int, seed: int, big: int) -> dict[str, np.ndarray]:
    """The samples of every cache file, concatenated; a missing file is collected first
    (``samples`` poses, seed ``seed + k`` for the k-th file) and saved. Caches collected
    in separate processes (``--collect-only``) this way merge into one data set."""
    if not caches:
        return collect(samples, seed, big)
    parts = []
    for k, path in enumerate(caches):
        if Path(path).exists():
            with np.load(path) as z:
                parts.append({key: z[key] for key in z.files})
        else:
            part = collect(samples, seed + k, big)
            np.savez_compressed(path, **part)  # type: ignore[arg-type]
            parts.append(part)
    keys = set.intersection(*(set(p) for p in parts))
    return {key: np.concatenate([p[key] for p in parts]) for key in keys}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", default="")
    ap.add_argument("--samples", type=int, default=5000, help="poses per cache file")
    ap.add_argument("--test", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument(
        "--nets",
        default="qnet,probe",
        help="of qnet,probe,qnet_tcp,qnet_coord,qnet_tcp_coord,qnet_crop,qnet_crop32,oracle",
    )
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--cache", default="", help="FILE.npz[,FILE2.npz...]: kept samples")
    ap.add_argument("--collect-only", action="store_true", help="fill the caches and stop")
    ap.add_argument("--qnet", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--big", type=int, default=0, help="also render this size; train qnet")
    ap.add_argument("--train-sizes", default="0", help="training subsets (0: all), e.g. 4000,0")
    args = ap.parse_args()
    if not args.collect_only and not args.json:
        ap.error("--json is required unless --collect-only")
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    data = load_or_collect(
        list(filter(None, args.cache.split(","))), args.samples, args.seed, args.big
    )
    if args.collect_only:
        return
    labels = data["labels"]
    if not 0 < args.test < len(labels):
        ap.error(f"--test must be between 0 and the {len(labels)} samples")
    variant = dict(kv.split("=", 1) for kv in args.qnet)
    n_train = len(labels) - args.test
    per_net: dict[str, object] = {}
    for k in filter(None, args.nets.split(",")):  # --nets "": only --qnet / --big
        for m in [int(x) for x in args.train_sizes.split(",")]:
            name = k if m == 0 else f"{k}_train{m}"
            per_net[name] = train(k, data, args.test, args.steps, None, m)
    if variant:
        per_net["qnet_variant"] = train("qnet", data, args.test, args.steps, variant)
    if args.big and "big" in data:
        per_net[f"qnet_{args.big}px"] = train("qnet", data, args.test, args.steps, image_key="big")
    out: dict[str, object] = {
        "task": TASK,
        "samples": len(labels),
        "test": args.test,
        "steps": args.steps,
        "batch": 64,
        "train_success_rate": round(float(labels[:n_train].mean()), 3),
        "test_success_rate": round(float(labels[n_train:].mean()), 3),
        "test_accuracy_of_always_fail": round(float(1 - labels[n_train:].mean()), 3),
        "qnet_variant": variant,
        "per_net": per_net,
    }
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    write_result(args.json, out)


if __name__ == "__main__":
    main()
