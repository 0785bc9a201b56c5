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
Scored on held-out poses by ROC AUC (0.5: blind) and accuracy against the base rate. A
network that reaches a high AUC here can see where grasps work; if RL's lift policy
still grasps blindly, the gap is in learning from rewards, not in what the image shows.

Usage: python benchmarks/grasp_outcome_probe.py --json OUT [--samples 5000] [--test 1000]
           [--steps 2000] [--cache FILE.npz] [--qnet KEY=VALUE ...] [--big 128]
           [--train-sizes 4000,0] [--nets qnet,probe]
  --cache  keep the samples in FILE (collected once, ~12 minutes for 5000)
  --qnet   a Q-network variant to compare (QNetConfig fields, e.g. merge_size=16)
  --big N  also render every pose at NxN and train the Q-network on those (image_size=N)
  --train-sizes 4000,0  a learning curve: train on the first 4000 samples, then on all
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from grasp_offset_probe import Probe, random_pose
from mtopt.policies.scripted import ScriptedPick
from mtopt.qtopt.networks import QNetwork
from mtopt.robots.action import make_action
from mtopt.robots.sim_robot import SimRobot
from mtopt.runtime.config import preset
from mtopt.sim.cell import SimConfig
from mtopt.tasks import DEFAULT_REGISTRY

TASK = "lift-any"


def collect(
    n: int, seed: int, extra_size: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """(images (n, 64, 64, 3) uint8, states (n, 2), labels (n,), and with ``extra_size``
    the same views rendered at that size) of the poses."""
    sim = SimConfig(object_split="train")
    robot = SimRobot(sim, seed=seed)
    spec = DEFAULT_REGISTRY.get(TASK)
    rng = np.random.default_rng(seed)
    images, states, labels, extra = [], [], [], []
    try:
        for i in tqdm(range(n), desc="poses + grasps", mininterval=2):
            obs = random_pose(robot, seed * 1_000_000 + i, rng)
            images.append(obs.image)
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
    big = np.stack(extra) if extra else None
    return np.stack(images), np.stack(states), np.array(labels, np.float32), big


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC by the rank-sum formula (ties get half credit)."""
    pos, neg = scores[labels > 0.5], scores[labels <= 0.5]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def train(
    kind: str,
    images: np.ndarray,
    states: np.ndarray,
    labels: np.ndarray,
    n_test: int,
    steps: int,
    qnet_overrides: dict[str, str] | None = None,
    max_train: int = 0,
) -> dict[str, object]:
    """Train on the first ``max_train`` training samples (0: all), score on the last
    ``n_test``."""
    torch.manual_seed(0)
    n_all = len(labels) - n_test
    n_train = min(n_all, max_train) if max_train else n_all
    x_u8 = torch.from_numpy(images)
    s = torch.from_numpy(states)
    y = torch.from_numpy(labels)
    qcfg = dataclasses.replace(preset("local").qnet, image_size=images.shape[1])
    if qnet_overrides:
        fields = qcfg.to_dict()
        qcfg = type(qcfg)(
            **{**fields, **{k: type(fields[k])(v) for k, v in qnet_overrides.items()}}
        )
    task_idx = DEFAULT_REGISTRY.names.index(TASK)
    down = torch.tensor(make_action(0.0, 0.0, -1.0, 0.0), dtype=torch.float32)
    if kind == "qnet":
        net: nn.Module = QNetwork(qcfg)

        def logits(idx: torch.Tensor) -> torch.Tensor:
            n = len(idx)
            return net.logits(
                x_u8[idx],
                s[idx],
                down.expand(n, -1),
                torch.full((n,), task_idx, dtype=torch.long),
            )
    else:
        net = Probe()
        net.head[-1] = nn.Linear(128, 1)
        x_f = x_u8.permute(0, 3, 1, 2).float() / 255.0
        mean = x_f[:n_train].mean((0, 2, 3), keepdim=True)
        std = x_f[:n_train].std((0, 2, 3), keepdim=True)
        x_f = (x_f - mean) / std

        def logits(idx: torch.Tensor) -> torch.Tensor:
            return net(x_f[idx], s[idx, 1:2] * 5.0).squeeze(1)

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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", required=True)
    ap.add_argument("--samples", type=int, default=5000)
    ap.add_argument("--test", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--nets", default="qnet,probe")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--cache", default="")
    ap.add_argument("--qnet", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--big", type=int, default=0, help="also render this size; train qnet")
    ap.add_argument("--train-sizes", default="0", help="training subsets (0: all), e.g. 4000,0")
    args = ap.parse_args()
    if not 0 < args.test < args.samples:
        ap.error("--test must be between 0 and --samples")
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    if args.cache and Path(args.cache).exists():
        data = np.load(args.cache)
        images, states, labels = data["images"], data["states"], data["labels"]
        big = data.get("big", None) if args.big else None
    else:
        images, states, labels, big = collect(args.samples, args.seed, args.big)
        if args.cache:
            extra = {"big": big} if big is not None else {}
            np.savez_compressed(args.cache, images=images, states=states, labels=labels, **extra)
    variant = dict(kv.split("=", 1) for kv in args.qnet)
    n_train = len(labels) - args.test
    per_net: dict[str, object] = {}
    for k in filter(None, args.nets.split(",")):  # --nets "": only --qnet / --big
        for m in [int(x) for x in args.train_sizes.split(",")]:
            name = k if m == 0 else f"{k}_train{m}"
            per_net[name] = train(k, images, states, labels, args.test, args.steps, None, m)
    if variant:
        per_net["qnet_variant"] = train(
            "qnet", images, states, labels, args.test, args.steps, variant
        )
    if big is not None:
        per_net[f"qnet_{big.shape[1]}px"] = train(
            "qnet", big, states, labels, args.test, args.steps
        )
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
    with open(args.json, "w") as f:
        json.dump(out, f, indent=2)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
