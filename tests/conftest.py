"""Tests share 2 cores with the robot processes they start: one torch thread each.

Runs' success-detector examples are staged once per set of arguments in a test session
(``stage_examples`` is deterministic in them): the tiny runs of the pipeline, Ray and
new-task tests staged the same 104 + 52 scenes each, ~12 of the ~38 seconds of a tiny
Ray run (profiled 2026-12-07). Tests that count or wrap the staging
(test_success.py, test_own_sd.py) patch ``local.stage_examples`` over this, and
``mtopt.success.data.stage_examples`` itself is not cached."""

import copy
import inspect
from collections.abc import Iterator
from typing import Any

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="session")
def _stage_each_example_set_once() -> Iterator[None]:
    from mtopt.runtime import local

    stage = local.stage_examples
    staged: dict[Any, Any] = {}

    params = inspect.signature(stage)

    def cached(*args: Any, **kwargs: Any) -> Any:
        bound = params.bind(*args, **kwargs)
        bound.apply_defaults()
        named = {k: v for k, v in bound.arguments.items() if k != "progress"}
        named["registry"] = tuple(repr(t) for t in named["registry"])
        named["tasks"] = tuple(named["tasks"])
        key = tuple(sorted(named.items()))
        if key not in staged:
            staged[key] = stage(*args, **kwargs)
        return copy.deepcopy(staged[key])

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(local, "stage_examples", cached)
        yield
