"""The action vector: its layout lives here and only here.

QT-Opt style action, normalised to [-1, 1] in every dimension so that the Gymnasium
``Box`` space, the CEM sampler and the policies agree on one convention:

=====  ==========  ===========================================================
index  name        meaning
=====  ==========  ===========================================================
0      dx          gripper displacement along x, times ``max_step_m``
1      dy          gripper displacement along y, times ``max_step_m``
2      dz          gripper displacement along z, times ``max_step_m``
3      dyaw        rotation about the vertical axis, times ``max_yaw_rad``
4      gripper     gripper command: > 0 close, <= 0 open (binary, absolute)
5      terminate   > 0 ends the episode after this step (binary)
=====  ==========  ===========================================================

Indices 0-3 are continuous; 4 and 5 are binary commands encoded as -1 / +1 (any value
is accepted and thresholded at 0). CEM treats them as Bernoulli variables.
"""

from __future__ import annotations

from typing import Final

import numpy as np

ACTION_DIM: Final = 6
CONTINUOUS_DIMS: Final = (0, 1, 2, 3)
BINARY_DIMS: Final = (4, 5)
IDX_DX, IDX_DY, IDX_DZ, IDX_DYAW, IDX_GRIPPER, IDX_TERMINATE = range(6)
ACTION_NAMES: Final = ("dx", "dy", "dz", "dyaw", "gripper", "terminate")
ACTION_LOW: Final = -1.0
ACTION_HIGH: Final = 1.0

# Small tolerance for float round-off coming from clients (e.g. float64 -> float32).
_TOL = 1e-5


class InvalidActionError(ValueError):
    """Raised when an action does not match the documented layout."""


def validate_action(action: object) -> np.ndarray:
    """Return ``action`` as a float32 vector of shape (ACTION_DIM,), its gripper and
    terminate commands as -1 / +1 (> 0 closes, terminates), or raise a clear error."""
    numeric = f"action must be a numeric vector of length {ACTION_DIM} {ACTION_NAMES}"
    try:
        raw = np.asarray(action)
    except (TypeError, ValueError) as exc:
        raise InvalidActionError(f"{numeric}, got {action!r}") from exc
    # real numbers only: strings were parsed ("0" -> 0.0) and a complex action lost its
    # imaginary part with only a warning
    if raw.dtype.kind not in "biuf":
        raise InvalidActionError(f"{numeric}, got an array of {raw.dtype} {action!r}")
    arr = raw.astype(np.float64)
    if arr.shape != (ACTION_DIM,):
        raise InvalidActionError(
            f"action must have shape ({ACTION_DIM},) with layout {ACTION_NAMES}, got shape {arr.shape}"
        )
    if not np.all(np.isfinite(arr)):
        bad = [ACTION_NAMES[i] for i in np.flatnonzero(~np.isfinite(arr))]
        raise InvalidActionError(f"action has non-finite values in {bad}: {arr.tolist()}")
    out_of_range = (arr < ACTION_LOW - _TOL) | (arr > ACTION_HIGH + _TOL)
    if np.any(out_of_range):
        bad_values = {ACTION_NAMES[i]: float(arr[i]) for i in np.flatnonzero(out_of_range)}
        raise InvalidActionError(
            f"action values must lie in [{ACTION_LOW}, {ACTION_HIGH}]; out of range: {bad_values}"
        )
    out = np.clip(arr, ACTION_LOW, ACTION_HIGH).astype(np.float32)
    # the two commands as the robot executes them (> 0: close / terminate), so what is
    # stored and learned from is what CEM proposes (a policy's 0.3 was stored as 0.3)
    out[IDX_GRIPPER:] = np.where(out[IDX_GRIPPER:] > 0.0, ACTION_HIGH, ACTION_LOW)
    return out


def make_action(
    dx: float = 0.0,
    dy: float = 0.0,
    dz: float = 0.0,
    dyaw: float = 0.0,
    close: bool = False,
    terminate: bool = False,
) -> np.ndarray:
    """Build an action vector from named parts (continuous parts clipped to [-1, 1])."""
    a = np.array(
        [dx, dy, dz, dyaw, 1.0 if close else -1.0, 1.0 if terminate else -1.0], dtype=np.float32
    )
    a[:4] = np.clip(a[:4], ACTION_LOW, ACTION_HIGH)
    return a


def wants_close(action: np.ndarray) -> bool:
    return bool(action[IDX_GRIPPER] > 0.0)


def wants_terminate(action: np.ndarray) -> bool:
    return bool(action[IDX_TERMINATE] > 0.0)
