"""Typed configs: frozen dataclasses, overridable with ``section.field=value`` strings.

Every room keeps its own config dataclass next to its code; this module only knows how
to override, validate and save them generically.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from mtopt._io import atomic_write_json

T = TypeVar("T")


class ConfigError(ValueError):
    """A bad config field or value."""


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: str, typ: Any, where: str) -> Any:
    origin = typing.get_origin(typ)
    args = typing.get_args(typ)
    if origin in (typing.Union, types.UnionType):
        non_none = [a for a in args if a is not type(None)]
        if value.lower() in ("none", "null") and len(non_none) < len(args):
            return None
        return _coerce(value, non_none[0], where)
    if typ is bool:
        low = value.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{where}: expected a boolean (true/false), got {value!r}")
    if typ in (int, float, str):
        try:
            return typ(value)
        except ValueError:
            raise ConfigError(f"{where}: expected {typ.__name__}, got {value!r}") from None
    if typing.get_origin(typ) is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: must be one of {list(args)}, got {value!r}")
        return value
    if origin in (tuple, list):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = [v for v in value.split(",") if v != ""]
        if not isinstance(parsed, list):
            parsed = [parsed]
        inner = args[0] if args else str
        base = typing.get_origin(inner) or inner  # dict[str, Any] -> dict

        def done(v: Any) -> bool:  # already of the element's type (JSON gave it)
            return isinstance(base, type) and isinstance(v, base)

        items = [v if done(v) else _coerce(str(v), inner, where) for v in parsed]
        return tuple(items) if origin is tuple else items
    if origin is dict or typ is dict:
        try:
            parsed_obj = json.loads(value)
        except json.JSONDecodeError:
            parsed_obj = None
        if not isinstance(parsed_obj, dict):
            raise ConfigError(f"{where}: expected a JSON object, got {value!r}")
        return parsed_obj
    raise ConfigError(f"{where}: cannot set a field of type {typ} from the command line")


def override(cfg: T, assignments: list[str] | tuple[str, ...]) -> T:
    """Return a copy of ``cfg`` with ``a.b.c=value`` assignments applied (values coerced)."""
    for item in assignments:
        if "=" not in item:
            raise ConfigError(
                f"override {item!r} must look like field=value or section.field=value"
            )
        key, value = item.split("=", 1)
        cfg = _set_path(cfg, key.strip().split("."), value.strip(), key)
    return cfg


def _set_path(obj: Any, path: list[str], value: str, full: str) -> Any:
    if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
        raise ConfigError(f"{full}: {path[0]!r} is not a config section")
    names = [f.name for f in dataclasses.fields(obj)]
    name = path[0]
    if name not in names:
        raise ConfigError(f"unknown config field {full!r}; valid fields here: {names}")
    if len(path) == 1:
        new = _coerce(value, _field_types(type(obj))[name], full)
    else:
        new = _set_path(getattr(obj, name), path[1:], value, full)
    try:
        return dataclasses.replace(obj, **{name: new})
    except ConfigError:
        raise
    except ValueError as exc:  # the section's own checks (__post_init__): name the key
        raise ConfigError(f"{full}: {exc}") from None


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Rebuild a (nested) config dataclass from ``to_dict`` output; unknown keys are errors."""
    hints = _field_types(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"unknown fields for {cls.__name__}: {sorted(unknown)}")
    kwargs: dict[str, Any] = {}
    for k, v in data.items():
        typ = hints[k]
        if dataclasses.is_dataclass(typ) and isinstance(v, dict):
            kwargs[k] = from_dict(typ, v)  # type: ignore[arg-type]
        elif typing.get_origin(typ) is tuple and isinstance(v, list):
            kwargs[k] = tuple(v)
        else:
            kwargs[k] = v
    return cls(**kwargs)


def save_config(cfg: Any, path: str | Path) -> Path:
    """Write the resolved config as JSON next to a run's outputs (atomically)."""
    return atomic_write_json(path, to_dict(cfg))


class _NoEntry:
    """A key that one of two compared dicts lacks (a ``learner.task_gamma`` entry added
    on resume), told apart from a None value."""

    def __repr__(self) -> str:
        return "(no entry)"


NO_ENTRY = _NoEntry()


def describe_changes(old: Any, new: Any, prefix: str = "") -> str:
    """``field: old -> new`` for every field of two config dataclasses of the same type
    that differs, nested sections as dotted paths (``learner.lr: 0.0001 -> 0.0003``),
    comma-separated ("" when they are equal); a dict key on one side only reads
    ``(no entry)`` on the other."""
    return ", ".join(
        f"{k}: {a!r} -> {b!r}"
        for k, (a, b) in changed_fields(old, new, prefix, missing=NO_ENTRY).items()
    )


def changed_fields(
    old: Any, new: Any, prefix: str = "", missing: Any = None
) -> dict[str, tuple[Any, Any]]:
    """``{dotted.field: (old, new)}`` for every leaf field that differs between two config
    dataclasses of the same type (or their ``to_dict`` forms); ``missing`` stands for a
    key one side's dict lacks (None, as JSON writes it, unless told)."""
    a = old if isinstance(old, dict) else to_dict(old)
    b = new if isinstance(new, dict) else to_dict(new)
    out: dict[str, tuple[Any, Any]] = {}
    for k in list(a) + [k for k in b if k not in a]:
        x, y = a.get(k, missing), b.get(k, missing)
        if isinstance(x, dict) and isinstance(y, dict):
            out.update(changed_fields(x, y, f"{prefix}{k}.", missing))
        elif k not in a or k not in b or x != y:
            out[f"{prefix}{k}"] = (x, y)
    return out
