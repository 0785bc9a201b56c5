import numpy as np
import pytest

from mtopt.robots.action import ACTION_DIM, InvalidActionError, make_action, validate_action


def test_valid_action_roundtrip() -> None:
    a = make_action(dx=0.5, dz=-1.0, close=True, terminate=False)
    out = validate_action(a)
    assert out.dtype == np.float32 and out.shape == (ACTION_DIM,)
    assert out[4] == 1.0 and out[5] == -1.0


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ([0.0] * 5, "shape"),
        ([0.0, 0.0, 0.0, 0.0, 0.0, float("nan")], "non-finite.*terminate"),
        ([2.0, 0.0, 0.0, 0.0, 0.0, 0.0], "out of range.*dx"),
        ("abc", "numeric vector"),
        (["0"] * 6, "numeric vector.*<U1"),  # strings were parsed as numbers
        (np.full(6, 0.5 + 0.5j), "numeric vector.*complex"),  # lost its imaginary part
        ([0.1, None, 0, 0, 0, 0], "numeric vector.*object"),
    ],
)
def test_invalid_actions_have_clear_errors(bad: object, match: str) -> None:
    with pytest.raises(InvalidActionError, match=match):
        validate_action(bad)


def test_actions_of_other_real_dtypes_are_taken() -> None:
    import torch

    for a in (torch.zeros(6), [np.float32(0.5)] * 6, np.zeros(6, np.int8), [0, 1, 0, 0, 1, -1]):
        out = validate_action(a)
        assert out.dtype == np.float32 and out.shape == (ACTION_DIM,)


def test_the_commands_are_stored_as_the_robot_executes_them() -> None:
    """A policy's gripper 0.3 (close) and terminate 0.0 (go on) were kept as 0.3 and 0.0:
    stored and learned from as values CEM never proposes."""
    out = validate_action([0.5, -0.2, 0.0, 0.1, 0.3, 0.0])
    assert out.tolist()[:4] == pytest.approx([0.5, -0.2, 0.0, 0.1])
    assert out[4] == 1.0 and out[5] == -1.0
    assert validate_action([0, 0, 0, 0, -0.7, 1e-3]).tolist()[4:] == [-1.0, 1.0]
