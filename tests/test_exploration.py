"""Exploration wrapper used while scripted policies collect."""

import dataclasses

import numpy as np
import pytest

from mtopt.collect.loop import PolicyProvider
from mtopt.policies.exploration import Exploring
from mtopt.robots.action import ACTION_DIM
from mtopt.robots.base import Observation
from mtopt.tasks import DEFAULT_REGISTRY


class Constant:
    name = "const"
    version = 0

    def __init__(self) -> None:
        self.calls = 0

    def reset(self, task: str, rng: np.random.Generator) -> None:
        self.calls = 0

    def act(self, obs: Observation) -> np.ndarray:
        self.calls += 1
        return np.array([0.5, 0.5, 0.5, 0.0, -1.0, -1.0], dtype=np.float32)


OBS = Observation(image=np.zeros((8, 8, 3), np.uint8), state=np.zeros(2, np.float32))


def test_no_exploration_is_the_bare_policy() -> None:
    p = Exploring(Constant())
    p.reset("lift-any", np.random.default_rng(0))
    for _ in range(20):
        np.testing.assert_array_equal(p.act(OBS), Constant().act(OBS))


def test_early_terminate_rate_and_step_range() -> None:
    inner = Constant()
    p = Exploring(inner, early_terminate=0.3, horizon=5)
    rng = np.random.default_rng(1)
    stops = []
    for _ in range(2000):
        p.reset("lift-any", rng)
        stop = None
        for t in range(10):
            if p.act(OBS)[5] > 0:
                stop = t
                break
        stops.append(stop)
    ended = [s for s in stops if s is not None]
    assert 0.26 < len(ended) / len(stops) < 0.34  # binomial, n=2000: sd ~0.01
    assert set(ended) == {0, 1, 2, 3, 4}  # uniform over [0, horizon)


def test_random_actions_are_valid_and_never_terminate() -> None:
    inner = Constant()
    p = Exploring(inner, epsilon=1.0)
    rng = np.random.default_rng(2)
    p.reset("lift-any", rng)
    acts = np.stack([p.act(OBS) for _ in range(500)])
    assert acts.shape == (500, ACTION_DIM) and inner.calls == 500  # inner policy still advances
    assert np.all(np.abs(acts) <= 1.0) and np.all(acts[:, 5] < 0)
    flipped = (acts[:, 4] > 0).mean()  # the inner policy keeps the gripper open (-1)
    assert 0.17 < flipped < 0.33  # gripper_flip 0.25, n=500: sd ~0.02
    assert acts[:, :4].std() > 0.4  # uniform on [-1, 1]: sd 0.577


def test_bad_probabilities_are_rejected() -> None:
    with pytest.raises(ValueError, match="probabilities"):
        Exploring(Constant(), epsilon=1.5)


def test_provider_wraps_scripted_policies_only_when_asked() -> None:
    spec = DEFAULT_REGISTRY.get("lift-any")
    bare = PolicyProvider(DEFAULT_REGISTRY)(spec)
    wrapped = PolicyProvider(DEFAULT_REGISTRY, scripted_early_terminate=0.2)(spec)
    assert not isinstance(bare, Exploring) and isinstance(wrapped, Exploring)
    assert wrapped.name == bare.name == "scripted-pick"


def test_provider_sends_a_share_of_episodes_to_the_learned_policy(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from mtopt.qtopt.learner import Learner
    from mtopt.qtopt.networks import QNetConfig

    Learner(QNetConfig(tower_channels=8, head_channels=8, fc_units=16)).publish(tmp_path)
    spec = DEFAULT_REGISTRY.get("place-any")
    never = PolicyProvider(DEFAULT_REGISTRY, tmp_path, learned_fraction=0.0)
    assert {never(spec).name for _ in range(20)} == {"scripted-place"}
    half = PolicyProvider(DEFAULT_REGISTRY, tmp_path, learned_fraction=0.5, seed=1)
    names = [half(spec).name for _ in range(400)]
    assert 0.4 < names.count("cem") / len(names) < 0.6  # binomial, n=400: sd 0.025
    with pytest.raises(ValueError, match="learned_fraction"):
        PolicyProvider(DEFAULT_REGISTRY, learned_fraction=2.0)
    with pytest.raises(ValueError, match="parity_fraction"):
        PolicyProvider(DEFAULT_REGISTRY, parity_fraction=-0.1)


def test_after_parity_a_share_of_episodes_stays_scripted(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json

    from mtopt.qtopt.learner import Learner
    from mtopt.qtopt.networks import QNetConfig

    Learner(QNetConfig(tower_channels=8, head_channels=8, fc_units=16)).publish(tmp_path)
    switch = tmp_path / "switch.json"
    switch.write_text(json.dumps({"learned": ["lift-any"], "proxy": {"lift-ball": "lift-any"}}))
    prov = PolicyProvider(
        DEFAULT_REGISTRY,
        tmp_path,
        switch,
        learned_fraction=0.0,
        parity_fraction=0.75,
        seed=3,
    )
    # lift-ball collects with lift-any's policy (a proxy): stored as cem@lift-any
    for name, learned in (("lift-any", "cem"), ("lift-ball", "cem@lift-any")):
        names = [prov(DEFAULT_REGISTRY.get(name)).name for _ in range(400)]
        assert 0.68 < names.count(learned) / 400 < 0.82  # binomial, n=400: sd 0.022
        assert set(names) == {learned, "scripted-pick"}
    # a task neither at parity nor proxied gets learned_fraction (0 here)
    names = [prov(DEFAULT_REGISTRY.get("place-any")).name for _ in range(50)]
    assert set(names) == {"scripted-place"}
    full = PolicyProvider(DEFAULT_REGISTRY, tmp_path, switch, parity_fraction=1.0)
    assert {full(DEFAULT_REGISTRY.get("lift-any")).name for _ in range(50)} == {"cem"}


def test_pre_parity_share_by_hand() -> None:
    from mtopt.collect.loop import pre_parity_share

    assert pre_parity_share(0.5, None, 0.0) == 0.5  # fixed share (the default)
    assert pre_parity_share(0.5, 0.1, None) == 0.5  # no evaluation yet
    assert pre_parity_share(0.5, 0.1, 0.0) == 0.1  # cannot succeed yet: the floor
    assert pre_parity_share(0.5, 0.1, 0.6) == pytest.approx(0.3)  # 0.5 * 0.6
    assert pre_parity_share(0.5, 0.1, 1.4) == 0.5  # never above learned_fraction


def test_provider_scales_the_pre_parity_share_by_the_ratio(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json

    from mtopt.collect.loop import CollectConfig
    from mtopt.qtopt.learner import Learner
    from mtopt.qtopt.networks import QNetConfig

    Learner(QNetConfig(tower_channels=8, head_channels=8, fc_units=16)).publish(tmp_path)
    switch = tmp_path / "switch.json"
    switch.write_text(
        json.dumps({"learned": [], "proxy": {}, "ratio": {"lift-any": 0.0, "place-any": 0.6}})
    )
    prov = PolicyProvider(
        DEFAULT_REGISTRY, tmp_path, switch, learned_fraction=0.5, learned_fraction_min=0.1, seed=4
    )
    lift = [prov(DEFAULT_REGISTRY.get("lift-any")).name for _ in range(600)]
    place = [prov(DEFAULT_REGISTRY.get("place-any")).name for _ in range(600)]
    assert 0.05 < lift.count("cem") / 600 < 0.15  # 0.1, binomial n=600: sd 0.012
    assert 0.22 < place.count("cem") / 600 < 0.38  # 0.3: sd 0.019
    # without a minimum the share stays fixed whatever the ratio
    fixed = PolicyProvider(DEFAULT_REGISTRY, tmp_path, switch, learned_fraction=0.5, seed=4)
    lift = [fixed(DEFAULT_REGISTRY.get("lift-any")).name for _ in range(600)]
    assert 0.42 < lift.count("cem") / 600 < 0.58
    with pytest.raises(ValueError, match="learned_fraction_min"):
        PolicyProvider(DEFAULT_REGISTRY, learned_fraction=0.2, learned_fraction_min=0.3)
    with pytest.raises(ValueError, match="learned_fraction_min"):
        CollectConfig(learned_fraction_min=0.9).validate()
    assert CollectConfig(learned_fraction_min=0.1).validate().learned_fraction_min == 0.1


def test_a_provider_for_collection_takes_the_collect_settings() -> None:
    from mtopt.collect.loop import CollectConfig

    collect = CollectConfig(
        scripted_epsilon=0.0,
        scripted_early_terminate=0.0,
        learned_fraction=0.3,
        parity_fraction=0.95,
        learned_fraction_min=0.1,
    )
    p = PolicyProvider.for_collection(DEFAULT_REGISTRY, None, None, collect, 0.2, 0.05, seed=4)
    assert (p.epsilon, p.noise_std, p.seed) == (0.2, 0.05, 4)
    assert (p.learned_fraction, p.parity_fraction, p.learned_fraction_min) == (0.3, 0.95, 0.1)
    spec = DEFAULT_REGISTRY.get("lift-any")
    assert not isinstance(p(spec), Exploring)  # no scripted exploration asked for
    noisy = dataclasses.replace(collect, scripted_epsilon=0.1)
    q = PolicyProvider.for_collection(DEFAULT_REGISTRY, None, None, noisy, 0.2, 0.05)
    assert isinstance(q(spec), Exploring)


def test_the_robots_search_is_the_runs_cem_act_in_fp32(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Robots used CEMPolicy's default search whatever the run's ``cem_act`` said (the
    tiny preset's 16 samples, a split gripper search): only the evaluation followed it."""
    import dataclasses

    from mtopt.collect.loop import CollectConfig
    from mtopt.qtopt.learner import Learner
    from mtopt.qtopt.networks import QNetConfig
    from mtopt.runtime.config import preset

    Learner(QNetConfig(tower_channels=8, head_channels=8, fc_units=16)).publish(tmp_path)
    cfg = preset("tiny")
    cfg = dataclasses.replace(cfg, cem_act=dataclasses.replace(cfg.cem_act, gripper="split"))
    want = cfg.collection_cem()
    assert want.samples == 16 and want.gripper == "split" and want.precision == "fp32"
    prov = PolicyProvider.for_collection(
        DEFAULT_REGISTRY, tmp_path, None, CollectConfig(learned_fraction=1.0), 0.0, 0.0, cem=want
    )
    assert prov(DEFAULT_REGISTRY.get("lift-any")).name == "cem"
    assert prov._cem is not None and prov._cem.cem == want
    plain = PolicyProvider(DEFAULT_REGISTRY, tmp_path, learned_fraction=1.0)
    plain(DEFAULT_REGISTRY.get("lift-any"))
    assert plain._cem is not None and plain._cem.cem.samples == 64  # CEMPolicy's default
