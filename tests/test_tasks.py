from pathlib import Path

import pytest

from mtopt.tasks import (
    DEFAULT_REGISTRY,
    BinState,
    FixtureState,
    ObjectState,
    SceneState,
    UnknownTaskError,
    get_task,
    task_from_dict,
)
from mtopt.tasks.predicates import LIFT_HEIGHT_M

RIGHT = BinState(center=(0.5, -0.25), half_extent=(0.15, 0.15), floor_z=0.0)
LEFT = BinState(center=(0.5, 0.25), half_extent=(0.15, 0.15), floor_z=0.0)
PLATE = FixtureState("plate", (0.45, 0.25, 0.01), 0.07)
BOWL = FixtureState("bowl", (0.58, 0.30, 0.01), 0.05)


def scene(*objs: ObjectState, closed: bool = False) -> SceneState:
    return SceneState(objs, (PLATE, BOWL), RIGHT, LEFT, (0.5, 0.0, 0.3), closed)


def obj(
    cat: str, pos: tuple[float, float, float], held: bool = False, size: float = 0.03
) -> ObjectState:
    return ObjectState(1, cat, f"{cat}/train/000", size, pos, held)


def test_registry_has_at_least_12_tasks_in_skills() -> None:
    assert len(DEFAULT_REGISTRY) >= 12
    skills = DEFAULT_REGISTRY.skills
    assert {"lift", "place"} <= set(skills)
    assert "lift-any" in skills["lift"] and "place-in-bowl" in skills["place"]
    assert DEFAULT_REGISTRY.index("lift-any") == 0


def test_the_registry_answers_by_name_and_by_spec() -> None:
    reg = DEFAULT_REGISTRY
    lift = reg["lift-any"]
    assert lift is reg[0] and lift.name == "lift-any"
    assert "lift-any" in reg and lift in reg  # the name was not "in" it
    assert "lift-unicorn" not in reg and 3 not in reg
    # a spec of the same name but another task is not the registered one
    other = task_from_dict({"name": "lift-any", "kind": "lift", "category": "ball"})
    assert other != lift and other not in reg
    assert reg.index(lift) == reg.index("lift-any") == 0
    with pytest.raises(UnknownTaskError, match="lift-unicorn"):
        reg["lift-unicorn"]
    with pytest.raises(UnknownTaskError):
        DEFAULT_REGISTRY.subset(["place-any"]).index(lift)


def test_a_lift_is_possible_only_with_its_object_released_in_the_right_bin() -> None:
    lift_ball = get_task("lift-ball").predicate
    lift_large = get_task("lift-large").predicate
    in_right = obj("ball", (0.5, -0.25, 0.02))
    assert lift_ball.possible(scene(in_right))  # type: ignore[attr-defined]
    assert not lift_ball.possible(scene(obj("cube", (0.5, -0.25, 0.02))))  # type: ignore[attr-defined]
    assert not lift_ball.possible(scene(obj("ball", (0.5, 0.25, 0.02))))  # type: ignore[attr-defined]  # left bin
    assert not lift_ball.possible(scene(obj("ball", (0.5, -0.25, 0.2), held=True)))  # type: ignore[attr-defined]
    assert not lift_large.possible(scene(obj("cube", (0.5, -0.25, 0.02), size=0.03)))  # type: ignore[attr-defined]
    assert lift_large.possible(scene(obj("cube", (0.5, -0.25, 0.02), size=0.035)))  # type: ignore[attr-defined]


def test_unknown_task_lists_valid_names() -> None:
    with pytest.raises(UnknownTaskError) as e:
        get_task("lift-unicorn")
    msg = str(e.value)
    assert "lift-unicorn" in msg and "lift-any" in msg and "place-in-bowl" in msg


def test_lift_predicates() -> None:
    high = LIFT_HEIGHT_M + 0.01
    lifted_ball = scene(obj("ball", (0.5, -0.25, high), held=True), closed=True)
    assert get_task("lift-any").succeeded(lifted_ball)
    assert get_task("lift-ball").succeeded(lifted_ball)
    assert not get_task("lift-box").succeeded(lifted_ball)
    # held but too low, or high but not held: failure
    assert not get_task("lift-any").succeeded(scene(obj("ball", (0.5, -0.25, 0.02), held=True)))
    assert not get_task("lift-any").succeeded(scene(obj("ball", (0.5, -0.25, high), held=False)))
    # size-based task
    assert not get_task("lift-large").succeeded(lifted_ball)
    big = scene(obj("box", (0.5, -0.25, high), held=True, size=0.04), closed=True)
    assert get_task("lift-large").succeeded(big)


def test_place_predicates_and_near_miss() -> None:
    on_plate = scene(obj("can", (0.46, 0.26, 0.04)))
    in_bowl = scene(obj("ball", (0.58, 0.31, 0.03)))
    next_to_plate = scene(obj("can", (0.45 + 0.09, 0.25 - 0.05, 0.02)))  # near miss
    assert get_task("place-on-plate").succeeded(on_plate)
    assert get_task("place-any").succeeded(on_plate)
    assert not get_task("place-in-bowl").succeeded(on_plate)
    assert get_task("place-in-bowl").succeeded(in_bowl)
    assert get_task("place-ball-in-bowl").succeeded(in_bowl)
    assert not get_task("place-ball-in-bowl").succeeded(scene(obj("can", (0.58, 0.31, 0.03))))
    assert not get_task("place-any").succeeded(next_to_plate)
    assert get_task("place-in-left-bin").succeeded(next_to_plate)
    # still held above the plate: not placed
    assert not get_task("place-on-plate").succeeded(
        scene(obj("can", (0.45, 0.25, 0.04), held=True))
    )
    # on the floor of the right bin: not in left bin
    assert not get_task("place-in-left-bin").succeeded(scene(obj("can", (0.5, -0.25, 0.02))))


def test_tasks_from_config_append() -> None:
    reg = DEFAULT_REGISTRY.with_extra(
        [{"name": "place-can-on-plate", "kind": "place", "fixtures": ["plate"], "category": "can"}]
    )
    assert reg.index("place-can-on-plate") == len(DEFAULT_REGISTRY)
    assert reg.index("lift-any") == 0
    assert reg.get("place-can-on-plate").starts_holding
    with pytest.raises(ValueError, match="unknown category"):
        task_from_dict({"name": "x", "kind": "lift", "category": "unicorn"})
    with pytest.raises(ValueError, match="duplicate"):
        DEFAULT_REGISTRY.with_extra([{"name": "lift-any", "kind": "lift"}])


@pytest.mark.parametrize(
    ("desc", "error"),
    [
        ({"name": "x", "kind": "place", "fixture": ["plate"]}, r"unknown key\(s\) \['fixture'\]"),
        ({"name": "x", "kind": "place", "min_size": 0.02}, r"unknown key\(s\) \['min_size'\]"),
        ({"name": "x", "kind": "lift", "min_size": "0.02"}, "'min_size' must be a positive"),
        ({"name": "x", "kind": "lift", "min_size": True}, "'min_size' must be a positive"),
        ({"name": "x", "kind": "lift", "min_size": float("nan")}, "'min_size' must be a posi"),
        ({"name": "x", "kind": "lift", "min_size": float("inf")}, "'min_size' must be a posi"),
        ({"name": "x", "kind": "place", "fixtures": 5}, "'fixtures' must be a non-empty list"),
        ({"name": "x", "kind": "place", "fixtures": "plate"}, "'fixtures' must be a non-empty"),
        ({"name": "x", "kind": "lift", "skill": "place"}, "cannot join the skill 'place'"),
        ({"name": "x", "kind": "place", "skill": 3}, "'skill' must be a non-empty string"),
        ({"name": "x", "kind": "stack"}, "'kind' must be 'lift' or 'place'"),
        (["x"], "a task description is a mapping"),
    ],
)
def test_a_task_description_that_is_not_quite_right_is_an_error(desc: object, error: str) -> None:
    """A misspelt key or a wrong type used to be dropped or to fail minutes later (in the
    success detector's staging) with a TypeError."""
    with pytest.raises(ValueError, match=error):
        task_from_dict(desc)  # type: ignore[arg-type]


def test_a_new_tasks_name_is_one_a_list_can_hold(tmp_path: Path) -> None:
    """Names with a comma or a space could never be named in ``--set eval.tasks=a,b``;
    they are refused where tasks are made, while a saved run's config still loads."""
    import json

    from mtopt.tasks.registry import check_task_name, read_tasks_file

    for bad in ("a,b", " ", "-x", "", None):
        with pytest.raises(ValueError, match="letters, digits"):
            check_task_name(bad)
    check_task_name("lift-small_ball.v2")
    path = tmp_path / "tasks.json"
    path.write_text(json.dumps([{"name": "lift small ball", "kind": "lift"}]))
    with pytest.raises(ValueError, match=r"tasks file .*tasks.json: task name 'lift small"):
        read_tasks_file(path)
    # a run saved before the rule: its registry still builds (resume, evaluate, report)
    assert DEFAULT_REGISTRY.with_extra([{"name": "lift small ball", "kind": "lift"}])


def test_a_task_of_a_new_skill_and_a_described_one() -> None:
    spec = task_from_dict(
        {"name": "stack-on-plate", "kind": "place", "skill": "stack", "fixtures": ["plate"]}
    )
    assert spec.skill == "stack" and spec.starts_holding and spec.description == "stack-on-plate"
    small = task_from_dict(
        {"name": "lift-small", "kind": "lift", "min_size": 1, "description": "d"}
    )
    assert small.skill == "lift" and not small.starts_holding and small.description == "d"
    # a new skill of a lift and a place: refused (impersonation would relabel each
    # kind's episodes for the other)
    grab = [
        {"name": "grab-ball", "kind": "lift", "skill": "grab", "category": "ball"},
        {"name": "drop-ball-in-bowl", "kind": "place", "skill": "grab", "fixtures": ["bowl"]},
    ]
    with pytest.raises(ValueError, match=r"skill\(s\) \['grab'\] mix tasks"):
        DEFAULT_REGISTRY.with_extra(grab)
    DEFAULT_REGISTRY.with_extra(grab[:1])  # one kind in the skill is fine


def test_in_the_bowl_means_below_its_rim_and_off_the_floor_beside_it() -> None:
    """Hand-placed: the bowl's floor at z 0.01, its rim at 0.036; the predicate judges the
    lowest point and the floors touched where the simulator reports them."""
    from dataclasses import replace

    from mtopt.tasks.predicates import RIM_CLEARANCE_M

    bowl = FixtureState("bowl", (0.58, 0.30, 0.01), 0.05, rim_z=0.036)
    place = get_task("place-in-bowl")

    def in_bowl(bottom: float | None, touching: frozenset[str] | None) -> bool:
        o = replace(obj("banana", (0.58, 0.30, 0.04)), bottom_z=bottom, touching=touching)
        return place.succeeded(SceneState((o,), (PLATE, bowl), RIGHT, LEFT, (0.5, 0.0, 0.3), False))

    assert RIM_CLEARANCE_M == 0.005
    assert in_bowl(0.012, frozenset({"bowl"}))  # resting on its floor
    assert in_bowl(0.0305, frozenset({"bowl", "left_bin_wall"}))  # tilted in, under 0.031
    assert not in_bowl(0.0315, frozenset({"bowl"}))  # across the rim
    assert not in_bowl(0.035, None)
    assert not in_bowl(None, frozenset({"bowl", "left_bin_floor"}))  # floor known, bottom not
    assert not in_bowl(0.002, frozenset({"bowl", "left_bin_floor"}))  # leaning from outside
    assert not in_bowl(0.002, frozenset({"bowl", "table"}))

    # across the opening, sagging below the clearance: on the wall alone, centre above
    # the rim (CELL_VERSION 2 counted it); partly in, one end on the floor: in
    def at(z: float, bottom: float, touching: set[str]) -> bool:
        o = replace(obj("capsule", (0.58, 0.30, z)), bottom_z=bottom, touching=frozenset(touching))
        return place.succeeded(SceneState((o,), (PLATE, bowl), RIGHT, LEFT, (0.5, 0.0, 0.3), False))

    assert not at(0.0485, 0.030, {"bowl", "bowl_wall"})
    assert at(0.0485, 0.012, {"bowl", "bowl_wall", "bowl_floor"})
    assert at(0.030, 0.020, {"bowl", "bowl_wall"})  # centre under the rim: on another object
    assert at(0.0485, 0.030, {"bowl"})  # a scene without the parts: judged as before
    # unknown (an older or a real scene without them): only the centre is judged, as before
    assert in_bowl(None, None) and in_bowl(0.05, None) is False
    # the plate has no rim: an object on it is judged by its centre alone
    on_plate = replace(obj("box", (0.45, 0.25, 0.03)), bottom_z=0.05, touching=frozenset())
    scene_plate = SceneState((on_plate,), (PLATE, bowl), RIGHT, LEFT, (0.5, 0.0, 0.3), False)
    assert get_task("place-on-plate").succeeded(scene_plate)


def test_touching_is_kept_as_a_frozenset() -> None:
    from dataclasses import replace

    o = replace(obj("ball", (0.58, 0.30, 0.03)), touching=["bowl", "left_bin_wall"])  # type: ignore[arg-type]
    assert o.touching == frozenset({"bowl", "left_bin_wall"})
    with pytest.raises(TypeError, match="collection of names"):
        replace(o, touching="bowl")  # type: ignore[arg-type]
