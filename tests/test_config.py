from dataclasses import dataclass, field

import pytest

from mtopt.config import ConfigError, from_dict, override, to_dict


@dataclass(frozen=True)
class Inner:
    lr: float = 1e-4
    """learning rate"""
    tasks: tuple[str, ...] = ("a", "b")


@dataclass(frozen=True)
class Outer:
    name: str = "x"
    steps: int = 10
    fast: bool = False
    inner: Inner = field(default_factory=Inner)


def test_override_nested_and_roundtrip() -> None:
    cfg = override(Outer(), ["steps=20", "inner.lr=0.5", "fast=true", "inner.tasks=c,d"])
    assert cfg.steps == 20 and cfg.inner.lr == 0.5 and cfg.fast and cfg.inner.tasks == ("c", "d")
    assert from_dict(Outer, to_dict(cfg)) == cfg


def test_override_errors_are_clear() -> None:
    with pytest.raises(ConfigError, match="unknown config field 'stepz'"):
        override(Outer(), ["stepz=1"])
    with pytest.raises(ConfigError, match="expected int"):
        override(Outer(), ["steps=many"])
    with pytest.raises(ConfigError, match="field=value"):
        override(Outer(), ["steps"])
