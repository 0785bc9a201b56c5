"""How well can a small convolutional network see where to grasp? A supervised probe.

For random gripper poses over the right bin (a scene reset, then 0-4 random moves), it
renders the camera image and records the horizontal offset (cm) from the gripper to the
nearest object in the right bin. A small network (image + gripper height -> offset) is
trained on most samples and scored on the rest (RMS error, cm) against predicting the
mean offset. A learned lift policy must see this offset to grasp better than descending
blindly; the probe gives it labels that RL never gets, so it bounds what the image
offers at this resolution and framing. Each view is trained with the same seed and
settings on the same poses.

Usage: python benchmarks/grasp_offset_probe.py --json OUT [--samples 6000] [--test 1000]
           [--steps 2000] [--views scene,bins]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from _results import write_result
from mtopt.robots.action import make_action
from mtopt.robots.base import Observation
from mtopt.robots.sim_robot import SimRobot
from mtopt.sim.cell import CAMERA_VIEWS, SimConfig


def random_pose(robot: SimRobot, scene_seed: int, rng: np.random.Generator) -> Observation:
    """A fresh scene, then 0-4 random moves (mostly down) from the start pose."""
    robot.reset_scene(scene_seed)
    obs = robot.start_episode()
    for _ in range(int(rng.integers(0, 5))):
        dx, dy = rng.uniform(-1, 1, 2)
        move = make_action(float(dx), float(dy), float(rng.uniform(-1, 0.2)))
        obs = robot.act(move).observation
    return obs


def collect(
    n: int, views: list[str], seed: int
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    robot = SimRobot(SimConfig(object_split="train"), seed=seed)
    rng = np.random.default_rng(seed)
    images: dict[str, list[np.ndarray]] = {v: [] for v in views}
    heights, offsets = [], []
    try:
        for i in tqdm(range(n), desc="poses", mininterval=2):
            obs = random_pose(robot, seed * 1_000_000 + i, rng)
            cell = robot.cell
            tcp = cell.tcp_position()
            objs = [
                cell.object_position(b) for b, _ in cell.object_bodies() if robot.in_right_bin(b)
            ]
            if not objs:
                continue
            d = np.array([o[:2] - tcp[:2] for o in objs])
            for v in views:
                images[v].append(cell.render(64, view=v))
            heights.append(float(obs.state[1]))
            offsets.append(d[np.argmin(np.hypot(d[:, 0], d[:, 1]))] * 100.0)
    finally:
        robot.close()
    return (
        {v: np.stack(x) for v, x in images.items()},
        np.array(heights, np.float32),
        np.array(offsets, np.float32),
    )


class Probe(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for cin, cout, stride in ((3, 32, 1), (32, 32, 2), (32, 64, 2), (64, 64, 1), (64, 64, 2)):
            layers += [nn.Conv2d(cin, cout, 3, stride, 1), nn.ReLU()]
        self.conv = nn.Sequential(*layers, nn.Conv2d(64, 64, 3, 1, 1), nn.ReLU())
        self.head = nn.Sequential(nn.Linear(64 * 8 * 8 + 1, 128), nn.ReLU(), nn.Linear(128, 2))

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.conv(x).flatten(1), h], 1))


def train_probe(
    images: np.ndarray, heights: np.ndarray, offsets: np.ndarray, n_test: int, steps: int
) -> dict[str, object]:
    torch.manual_seed(0)
    x = torch.tensor(images).permute(0, 3, 1, 2).float() / 255.0
    n_train = len(x) - n_test
    mean = x[:n_train].mean((0, 2, 3), keepdim=True)
    std = x[:n_train].std((0, 2, 3), keepdim=True)
    x = (x - mean) / std
    h = torch.tensor(heights)[:, None] * 5.0
    y = torch.tensor(offsets)
    net = Probe()
    opt = torch.optim.Adam(net.parameters(), 5e-4)
    g = torch.Generator().manual_seed(0)

    def test_rmse() -> float:
        with torch.no_grad():
            pred = torch.cat(
                [net(x[i : i + 500], h[i : i + 500]) for i in range(n_train, len(x), 500)]
            )
        return float(((pred - y[n_train:]) ** 2).sum(1).mean().sqrt())

    curve = []
    every = max(1, steps // 8)
    for step in tqdm(range(1, steps + 1), desc="probe", mininterval=2):
        idx = torch.randint(0, n_train, (64,), generator=g)
        loss = ((net(x[idx], h[idx]) - y[idx]) ** 2).sum(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % every == 0:
            curve.append({"step": step, "test_rmse_cm": round(test_rmse(), 3)})
    baseline = float(((y[n_train:] - y[:n_train].mean(0)) ** 2).sum(1).mean().sqrt())
    return {
        "baseline_rmse_cm": round(baseline, 3),
        "best_test_rmse_cm": min(c["test_rmse_cm"] for c in curve),
        "curve": curve,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", required=True)
    ap.add_argument("--samples", type=int, default=6000)
    ap.add_argument("--test", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--views", default="scene,bins")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    views = args.views.split(",")
    for v in views:
        if v not in CAMERA_VIEWS:
            ap.error(f"unknown view {v!r}; valid: {sorted(CAMERA_VIEWS)}")
    if not 0 < args.test < args.samples:
        ap.error("--test must be between 0 and --samples")
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    images, heights, offsets = collect(args.samples, views, args.seed)
    out: dict[str, object] = {
        "samples": len(offsets),
        "test": args.test,
        "steps": args.steps,
        "batch": 64,
        "per_view": {
            v: train_probe(images[v], heights, offsets, args.test, args.steps) for v in views
        },
    }
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    write_result(args.json, out)


if __name__ == "__main__":
    main()
