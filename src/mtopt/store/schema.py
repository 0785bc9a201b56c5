"""Episode schema (version 1).

One row per episode in Parquet shards. Images are raw uint8 bytes (C-order arrays; shape
in ``image_height``/``image_width``/``num_steps``), compressed by Parquet's zstd: on
this cell that beat PNG by ~2.5x in size and ~5x in read speed. States and actions are
plain list columns so pandas and DuckDB read them directly.

=====================  ============================  ==========================================
column                 type                          meaning
=====================  ============================  ==========================================
schema_version         int32                         1
episode_id             string                        unique id (uuid4 hex)
robot_id               string                        which robot collected it
task                   string                        task the robot was asked to do
policy                 string                        e.g. scripted-pick, cem (cem@lift-any: acting as lift-any)
policy_version         int64                         Q-weights version (0 for scripted)
seed                   int64                         scene seed
scene                  string (JSON)                 scene description (seed, objects, fixtures, cell_version)
chain_index            int32                         position in a task chain (0 = after reset)
prev_episode_id        string (nullable)             previous episode of the chain
started_at, ended_at   float64                       unix time (s)
num_steps              int32                         T actions
terminated             bool                          policy sent TERMINATE (else max steps)
image_height/width     int32                         camera image size
images                 binary                        (T+1, H, W, 3) uint8: obs before each action + last
states                 list<list<float32>>           (T+1, 2): gripper status, gripper height
actions                list<list<float32>>           (T, 6): see mtopt.robots.action
final_image            binary                        (H, W, 3) uint8: what the success detector judges
gt_success             bool (nullable)               SIMULATOR GROUND TRUTH for ``task`` (eval only)
gt_success_by_task     string (JSON, nullable)       SIMULATOR GROUND TRUTH for every task (eval/oracle)
poses                  list<list<float32>> (null.)   (T+1, 4): gripper x, y, z, yaw in the robot frame
                                                     (proprioception; null when the robot gave none)
=====================  ============================  ==========================================

The ``gt_`` columns are null for real robots; they are used only for evaluation and by
the oracle labeler, never as training rewards. ``poses`` was added later within version
1: shards written before it lack the column and read as ``poses=None``. The JSON
columns are standard JSON (``to_json``): keys are strings (an int key 1 reads back as
"1"), NaN and infinities are stored as null.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

SCHEMA_VERSION = 1
SCHEMA_KEY = b"mtopt.schema_version"


class SchemaError(ValueError):
    """A shard or episode that does not match the schema (or a known version of it)."""


class UnknownSchemaVersionError(SchemaError):
    """A shard written by another version of the schema: not corrupt, this mtopt cannot
    read it (a newer writer, say). Readers stop with this error instead of moving it."""


ACTION_DIM = 6  # the layout of mtopt.robots.action (kept here so the store stands alone)


def _plain(value: Any) -> Any:
    """A scene description (or ``gt_success_by_task``) as standard JSON holds it: NumPy
    scalars and arrays (an easy slip in a real robot's ``scene_description()``) become
    numbers and lists, tuples lists, keys strings as JSON writes them (1 -> "1", True ->
    "true", None -> "null"; mixed key types no longer break the sorted dump), and NaN and
    infinities null (JSON has none: other languages' parsers refuse Python's literals)."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    elif isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        out = {_key(k): _plain(v) for k, v in value.items()}
        if len(out) < len(value):  # 1 and "1": one would silently overwrite the other
            raise TypeError(f"keys {list(value)} are not JSON: two of them write the same string")
        return out
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _key(key: Any) -> str:
    if isinstance(key, np.generic):
        key = key.item()
    if isinstance(key, str):
        return key
    if key is None or isinstance(key, bool | int | float):
        return json.dumps(key)  # as json.dumps writes such keys: "true", "1", "null"
    raise TypeError(f"a key of type {type(key).__name__} ({key!r}) is not JSON")


def to_json(value: Any) -> str:
    """``value`` as the store's JSON text (``_plain``; sorted keys)."""
    return json.dumps(_plain(value), sort_keys=True, allow_nan=False)


ARROW_SCHEMA = pa.schema(
    [
        ("schema_version", pa.int32()),
        ("episode_id", pa.string()),
        ("robot_id", pa.string()),
        ("task", pa.string()),
        ("policy", pa.string()),
        ("policy_version", pa.int64()),
        ("seed", pa.int64()),
        ("scene", pa.string()),
        ("chain_index", pa.int32()),
        ("prev_episode_id", pa.string()),
        ("started_at", pa.float64()),
        ("ended_at", pa.float64()),
        ("num_steps", pa.int32()),
        ("terminated", pa.bool_()),
        ("image_height", pa.int32()),
        ("image_width", pa.int32()),
        ("images", pa.binary()),
        ("states", pa.list_(pa.list_(pa.float32()))),
        ("actions", pa.list_(pa.list_(pa.float32()))),
        ("final_image", pa.binary()),
        ("gt_success", pa.bool_()),
        ("gt_success_by_task", pa.string()),
        ("poses", pa.list_(pa.list_(pa.float32()))),
    ],
    metadata={SCHEMA_KEY: str(SCHEMA_VERSION).encode()},
)
LATER_COLUMNS = ("poses",)
"""Columns added within version 1: shards written before them lack them (not corrupt)."""
META_COLUMNS = [
    n
    for n in ARROW_SCHEMA.names
    if n not in ("images", "states", "actions", "final_image", "poses")
]
POSE_DIM = 4  # gripper x, y, z, yaw


@dataclass
class Episode:
    episode_id: str
    robot_id: str
    task: str
    policy: str
    policy_version: int
    seed: int
    images: np.ndarray  # (T+1, H, W, 3) uint8
    states: np.ndarray  # (T+1, 2) float32
    actions: np.ndarray  # (T, 6) float32
    final_image: np.ndarray  # (H, W, 3) uint8
    scene: dict[str, Any] = field(default_factory=dict)
    chain_index: int = 0
    prev_episode_id: str | None = None
    started_at: float = 0.0
    ended_at: float = 0.0
    terminated: bool = False
    gt_success: bool | None = None
    gt_success_by_task: dict[str, bool] | None = None
    poses: np.ndarray | None = None  # (T+1, 4) float32: gripper x, y, z, yaw, or None

    def __post_init__(self) -> None:
        for name in ("images", "final_image"):
            arr = getattr(self, name)
            if not isinstance(arr, np.ndarray):
                kind = f"{type(arr).__module__}.{type(arr).__name__}"
                raise SchemaError(
                    f"episode {self.episode_id}: {name} must be a NumPy uint8 array (0-255), got "
                    f"a {kind}"
                )
            if arr.dtype != np.uint8:
                raise SchemaError(
                    f"episode {self.episode_id}: {name} must be a uint8 array (0-255), got {arr.dtype}"
                )
        # states, actions and poses as any array-like of numbers (lists included)
        for name in ("states", "actions", "poses"):
            value = getattr(self, name)
            if value is None and name == "poses":
                continue
            try:
                setattr(self, name, np.asarray(value, dtype=np.float32))
            except (TypeError, ValueError) as exc:
                raise SchemaError(
                    f"episode {self.episode_id}: {name} must be an array of numbers: {exc}"
                ) from None
        if self.actions.ndim != 2 or self.actions.shape[1] != ACTION_DIM:
            raise SchemaError(
                f"episode {self.episode_id}: actions must be (T, {ACTION_DIM}), got {self.actions.shape}"
            )
        t = self.actions.shape[0]
        if self.images.ndim != 4 or self.images.shape[0] != t + 1 or self.images.shape[3] != 3:
            raise SchemaError(
                f"episode {self.episode_id}: images must be (T+1, H, W, 3) with T={t}, got {self.images.shape}"
            )
        if self.states.shape != (t + 1, 2):
            raise SchemaError(
                f"episode {self.episode_id}: states must be ({t + 1}, 2), got {self.states.shape}"
            )
        if self.poses is not None and self.poses.shape != (t + 1, POSE_DIM):
            raise SchemaError(
                f"episode {self.episode_id}: poses must be ({t + 1}, {POSE_DIM}), got {self.poses.shape}"
            )
        if self.final_image.shape != self.images.shape[1:]:
            raise SchemaError(
                f"episode {self.episode_id}: final_image {self.final_image.shape} != frame shape {self.images.shape[1:]}"
            )

    @property
    def num_steps(self) -> int:
        return int(self.actions.shape[0])

    def to_row(self) -> dict[str, Any]:
        h, w = self.images.shape[1:3]
        return {
            "schema_version": SCHEMA_VERSION,
            "episode_id": self.episode_id,
            "robot_id": self.robot_id,
            "task": self.task,
            "policy": self.policy,
            "policy_version": int(self.policy_version),
            "seed": int(self.seed),
            "scene": to_json(self.scene),
            "chain_index": int(self.chain_index),
            "prev_episode_id": self.prev_episode_id,
            "started_at": float(self.started_at),
            "ended_at": float(self.ended_at),
            "num_steps": self.num_steps,
            "terminated": bool(self.terminated),
            "image_height": int(h),
            "image_width": int(w),
            "images": np.ascontiguousarray(self.images, dtype=np.uint8).tobytes(),
            "states": np.asarray(self.states, np.float32).tolist(),
            "actions": np.asarray(self.actions, np.float32).tolist(),
            "final_image": np.ascontiguousarray(self.final_image, dtype=np.uint8).tobytes(),
            "gt_success": None if self.gt_success is None else bool(self.gt_success),
            "gt_success_by_task": None
            if self.gt_success_by_task is None
            else to_json(self.gt_success_by_task),
            "poses": None if self.poses is None else np.asarray(self.poses, np.float32).tolist(),
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Episode:
        version = row.get("schema_version")
        if version != SCHEMA_VERSION:
            raise UnknownSchemaVersionError(
                f"episode {row.get('episode_id')}: unknown schema version {version!r}; this mtopt reads version {SCHEMA_VERSION}"
            )
        t, h, w = int(row["num_steps"]), int(row["image_height"]), int(row["image_width"])
        images = np.frombuffer(row["images"], dtype=np.uint8).reshape(t + 1, h, w, 3)
        gt_by = row.get("gt_success_by_task")
        poses = row.get("poses")
        return cls(
            episode_id=row["episode_id"],
            robot_id=row["robot_id"],
            task=row["task"],
            policy=row["policy"],
            policy_version=int(row["policy_version"]),
            seed=int(row["seed"]),
            images=images,
            states=np.asarray(row["states"], np.float32).reshape(t + 1, 2),
            actions=np.asarray(row["actions"], np.float32).reshape(t, ACTION_DIM),
            final_image=np.frombuffer(row["final_image"], dtype=np.uint8).reshape(h, w, 3),
            scene=json.loads(row["scene"]) if row.get("scene") else {},
            chain_index=int(row["chain_index"]),
            prev_episode_id=row.get("prev_episode_id"),
            started_at=float(row["started_at"]),
            ended_at=float(row["ended_at"]),
            terminated=bool(row["terminated"]),
            gt_success=row.get("gt_success"),
            gt_success_by_task=json.loads(gt_by) if gt_by else None,
            poses=None if poses is None else np.asarray(poses, np.float32).reshape(t + 1, POSE_DIM),
        )


def episodes_to_table(episodes: list[Episode]) -> pa.Table:
    return pa.Table.from_pylist([e.to_row() for e in episodes], schema=ARROW_SCHEMA)


def check_writable(e: Episode) -> None:
    """What a stored episode needs beyond its arrays, checked when it is written (not when
    read, so a shard stored before these checks still reads): ids that name it (LogReplay
    and stats count a repeated id once, so empty ones would collapse into one episode),
    whole numbers where the columns are integers (1.7 was stored as 1), a scene dict; and
    the arrays' shapes and dtypes again (``Episode`` checks them when it is made; one
    changed after that, such as frames cropped or scaled to floats, made a shard that
    did not read back, costing every episode in it)."""
    e.__post_init__()
    for name in ("episode_id", "robot_id", "task", "policy"):
        value = getattr(e, name)
        if not isinstance(value, str) or not value:
            raise SchemaError(
                f"episode {e.episode_id!r}: {name} must be a non-empty str, got {value!r}"
            )
    if not np.isfinite(e.actions).all():  # (states and poses may hold a sensor's NaN)
        raise SchemaError(
            f"episode {e.episode_id}: actions must be finite (a robot executes none else), "
            "got NaN or inf"
        )
    for name in ("policy_version", "seed", "chain_index"):
        value = getattr(e, name)
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise SchemaError(f"episode {e.episode_id}: {name} must be an int, got {value!r}")
    if not isinstance(e.terminated, (bool, np.bool_)):  # bool("no") was stored as True
        raise SchemaError(
            f"episode {e.episode_id}: terminated must be a bool, got {e.terminated!r}"
        )
    if e.gt_success is not None and not isinstance(e.gt_success, (bool, np.bool_)):
        raise SchemaError(
            f"episode {e.episode_id}: gt_success must be a bool or None, got {e.gt_success!r}"
        )
    by_task = e.gt_success_by_task
    if by_task is not None and (
        not isinstance(by_task, dict)
        or not all(
            isinstance(k, str) and isinstance(v, (bool, np.bool_)) for k, v in by_task.items()
        )
    ):
        # replay.reward="truth" reads each value as a reward ("maybe" would pay 1)
        raise SchemaError(
            f"episode {e.episode_id}: gt_success_by_task must be a dict of task name -> "
            f"bool, got {by_task!r}"
        )
    if not isinstance(e.scene, dict):
        raise SchemaError(
            f"episode {e.episode_id}: scene must be a dict, got {type(e.scene).__name__}"
        )
    for name in ("started_at", "ended_at"):  # a NaN broke `store timeline` for the store
        value = getattr(e, name)
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float, np.integer, np.floating))
            or not math.isfinite(value)
        ):
            raise SchemaError(
                f"episode {e.episode_id}: {name} must be a finite time (s), got {value!r}"
            )


def episode_to_table(episode: Episode) -> pa.Table:
    """One episode as a one-row table: everything that can fail in writing it (JSON, Arrow
    types, ``check_writable``) fails here, for this episode alone, with its id in the
    message."""
    check_writable(episode)
    try:
        return pa.Table.from_pylist([episode.to_row()], schema=ARROW_SCHEMA)
    except (TypeError, ValueError, pa.ArrowException) as exc:
        raise SchemaError(f"episode {episode.episode_id}: cannot be stored: {exc}") from exc


def check_table_version(table: pa.Table | pa.Schema, where: str) -> None:
    meta = (table if isinstance(table, pa.Schema) else table.schema).metadata or {}
    raw = meta.get(SCHEMA_KEY)
    if raw is None:
        raise SchemaError(f"{where}: not an mtopt episode shard (no schema version)")
    check_version(int(raw), where)


def check_version(version: int, where: str) -> None:
    """An ``UnknownSchemaVersionError`` unless ``version`` is the one this mtopt reads."""
    if version != SCHEMA_VERSION:
        raise UnknownSchemaVersionError(
            f"{where}: unknown schema version {version}; this mtopt reads version {SCHEMA_VERSION}"
        )
