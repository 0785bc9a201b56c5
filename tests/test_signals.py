"""Stops by signal: SIGTERM as Ctrl-C, and updates that a stop waits for."""

import os
import signal

import pytest
import torch

from mtopt._signals import deferred_interrupts, stop_on_sigterm


def test_a_stop_inside_a_deferred_block_arrives_when_it_ends() -> None:
    done = []
    with stop_on_sigterm(), pytest.raises(KeyboardInterrupt):
        with deferred_interrupts():
            os.kill(os.getpid(), signal.SIGTERM)
            done.append("rest of the block")  # not cut short
        done.append("after the block")  # the stop arrives before this
    assert done == ["rest of the block"]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL or callable(
        signal.getsignal(signal.SIGTERM)
    )


def test_ctrl_c_inside_a_deferred_block_arrives_when_it_ends() -> None:
    done = []
    with pytest.raises(KeyboardInterrupt), deferred_interrupts():
        os.kill(os.getpid(), signal.SIGINT)
        done.append("rest of the block")
    assert done == ["rest of the block"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_deferred_block_without_a_stop_changes_nothing() -> None:
    before = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
    with deferred_interrupts():
        pass
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_a_stop_during_the_learners_update_checkpoints_it_whole(tmp_path) -> None:
    """A SIGTERM that lands while Adam steps the parameters (here: right after the first
    of them) stops the run only after the whole update: every parameter stepped, the step
    counted, the targets and acting network updated."""
    from mtopt.qtopt.learner import Learner, LearnerConfig
    from qtopt_fixtures import SMALL, batch

    learner = Learner(SMALL, LearnerConfig(target_period=1, seed=0))
    params = list(learner.online.parameters())
    real_step = torch.optim.Adam.step

    def step_then_stop(self, *a, **k):  # type: ignore[no-untyped-def]
        os.kill(os.getpid(), signal.SIGTERM)  # arrives mid-update
        return real_step(self, *a, **k)

    before = [p.detach().clone() for p in params]
    with stop_on_sigterm(), pytest.raises(KeyboardInterrupt):
        torch.optim.Adam.step = step_then_stop  # type: ignore[method-assign]
        try:
            learner.train_step(batch(0))
        finally:
            torch.optim.Adam.step = real_step  # type: ignore[method-assign]
    assert learner.step == 1
    assert all(not torch.equal(p, b) for p, b in zip(params, before, strict=True) if p.numel())
    steps = {int(s["step"]) for s in learner.optimizer.state.values()}
    assert steps == {1}
    online = learner.online.state_dict()
    assert all(torch.equal(online[k], v) for k, v in learner.targets[0].state_dict().items())
