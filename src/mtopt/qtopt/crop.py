"""A gripper-centred crop of the camera image (pure functions; no simulator needed).

The Q-network of Fig. 9 sees the whole scene from a fixed camera. To aim a grasp it has
to find both the gripper and the object in the image and compare where they are: a
1 cm error is about one pixel of the 64x64 image. With ``QNetConfig.gripper_crop`` it
also gets the window of the same image around the point below the gripper, cut out
where the gripper's x, y (the robot's kinematics) project through the calibrated
camera: an object at the centre of the crop is right under the gripper, whatever the
gripper's position, so the offset to aim by is read directly off the crop.

Camera model: a pinhole looking from ``eye`` at ``target``, with ``up`` the world
direction that is up in the image and ``fov_deg`` the vertical field of view, as
OpenGL's lookAt and perspective (PyBullet's computeViewMatrix and
computeProjectionMatrixFOV). Normalized device coordinates (NDC): x from -1 (left edge
of the image) to +1 (right edge), y from -1 (top row) to +1 (bottom row), the
convention of ``torch.nn.functional.grid_sample`` with ``align_corners=False``.
"""

from __future__ import annotations

import math

import torch

from mtopt.robots.base import PinholeCamera
from mtopt.sim.config import SCENE_CAMERA

__all__ = [
    "CAMERAS",
    "CROP_POINT_Z",
    "PinholeCamera",
    "camera_named",
    "crop_grid",
    "gripper_crop",
    "project",
]


CAMERAS: dict[str, PinholeCamera] = {
    # the simulated cell's policy camera ("scene" in mtopt.sim.cell.CAMERA_VIEWS), without
    # domain randomization (which jitters the eye by up to 3 cm and the fov by 2 deg)
    "sim-scene": SCENE_CAMERA,
}

PINHOLE_PREFIX = "pinhole:"


def camera_named(name: str) -> PinholeCamera:
    """The calibration ``QNetConfig.crop_camera`` names: a key of ``CAMERAS``, or a real
    camera written out in the name itself, ``pinhole:ex,ey,ez,tx,ty,tz,ux,uy,uz,fov_deg``
    (eye, target, up in the robot frame, m; then the vertical field of view, and an
    optional 11th number, the aspect), so a run (``--set qnet.crop_camera=pinhole:...``)
    and its published weights carry it. A ``ValueError`` for anything else."""
    if name in CAMERAS:
        return CAMERAS[name]
    if name.startswith(PINHOLE_PREFIX):
        try:
            v = [float(x) for x in name[len(PINHOLE_PREFIX) :].split(",")]
        except ValueError:
            v = []
        if len(v) in (10, 11) and all(math.isfinite(x) for x in v):
            cam = PinholeCamera(
                (v[0], v[1], v[2]),
                (v[3], v[4], v[5]),
                (v[6], v[7], v[8]),
                v[9],
                v[10] if len(v) == 11 else 1.0,
            )
            f = [t - e for t, e in zip(cam.target, cam.eye, strict=True)]
            u = cam.up
            side = (f[1] * u[2] - f[2] * u[1], f[2] * u[0] - f[0] * u[2], f[0] * u[1] - f[1] * u[0])
            if not 0 < cam.fov_deg < 180 or cam.aspect <= 0 or not any(f):
                raise ValueError(
                    f"crop_camera {name!r}: the fov must be in (0, 180) degrees, the aspect > 0 "
                    "and the target away from the eye"
                )
            if math.hypot(*side) <= 1e-9 * math.hypot(*f) * max(math.hypot(*u), 1e-300):
                # the image's up would be undefined: every projection NaN, a blind crop
                raise ValueError(
                    f"crop_camera {name!r}: up must be a direction across the view "
                    "(not zero, not along target - eye)"
                )
            return cam
        raise ValueError(
            f"crop_camera {name!r}: write {PINHOLE_PREFIX}ex,ey,ez,tx,ty,tz,ux,uy,uz,fov_deg"
            "[,aspect] (10 or 11 finite numbers)"
        )
    raise ValueError(
        f"unknown crop_camera {name!r}; valid: {', '.join(sorted(CAMERAS))}, or a calibration "
        f"{PINHOLE_PREFIX}ex,ey,ez,tx,ty,tz,ux,uy,uz,fov_deg[,aspect]"
    )


CROP_POINT_Z = 0.02
"""Height (m above the bin floor) of the point below the gripper the crop is centred on:
about the centre of a 3-5 cm object lying in the bin."""


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm()


def project(cam: PinholeCamera, points: torch.Tensor) -> torch.Tensor:
    """World points (..., 3) -> NDC (..., 2): x -1 left .. +1 right, y -1 top .. +1 bottom.

    f = unit(target - eye) is the viewing axis, r = unit(f x up) points right in the
    image and u = r x f up. A point p at depth d = (p - eye).f lands at
    x = (p - eye).r / (d tan(fov/2) aspect) and y = -(p - eye).u / (d tan(fov/2)).
    """
    dt = points.dtype if points.is_floating_point() else torch.float32
    eye = torch.tensor(cam.eye, dtype=torch.float64)
    f = _unit(torch.tensor(cam.target, dtype=torch.float64) - eye)
    r = _unit(torch.linalg.cross(f, torch.tensor(cam.up, dtype=torch.float64)))
    u = torch.linalg.cross(r, f)
    axes = torch.stack([r, u, f], 1).to(device=points.device, dtype=dt)  # (3, 3)
    rel = points.to(dt) - eye.to(device=points.device, dtype=dt)
    cx, cy, depth = (rel @ axes).unbind(-1)
    t = math.tan(math.radians(cam.fov_deg) / 2)
    return torch.stack([cx / (depth * t * cam.aspect), -cy / (depth * t)], -1)


def crop_grid(
    cam: PinholeCamera, xy: torch.Tensor, image_size: int, window: int, out: int
) -> torch.Tensor:
    """Sampling grid (B, out, out, 2) for ``grid_sample``: a ``window`` x ``window``
    pixel square of a square ``image_size`` image, centred where the point
    (x, y, CROP_POINT_Z) projects, sampled at ``out`` x ``out`` points (pixel centres
    when ``out == window``). xy: (B, 2) gripper x, y in metres."""
    pts = torch.cat([xy, torch.full_like(xy[:, :1], CROP_POINT_Z)], 1)
    centre = project(cam, pts)  # (B, 2)
    # offsets of the out x out sample points from the centre, in NDC (2 / image_size per px)
    k = (torch.arange(out, device=xy.device, dtype=centre.dtype) + 0.5) / out - 0.5
    k = k * (window * 2.0 / image_size)
    gx = centre[:, 0, None, None] + k[None, None, :]  # varies along columns
    gy = centre[:, 1, None, None] + k[None, :, None]  # varies along rows
    return torch.stack([gx.expand(-1, out, out), gy.expand(-1, out, out)], -1)


def gripper_crop(
    images: torch.Tensor, xy: torch.Tensor, cam: PinholeCamera, window: int, out: int
) -> torch.Tensor:
    """The crops (B, C, out, out) of NCHW float ``images`` around the points below the
    grippers at ``xy`` (B, 2, metres). Bilinear; outside the image the border repeats."""
    grid = crop_grid(cam, xy.to(images.dtype), int(images.shape[-1]), window, out)
    return torch.nn.functional.grid_sample(
        images, grid.to(images.dtype), mode="bilinear", padding_mode="border", align_corners=False
    )
