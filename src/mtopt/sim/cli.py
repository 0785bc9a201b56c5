"""``mtopt sim ...``: look at the simulated cell."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from mtopt._cli import ACT_HELP, OWN_TASKS_HELP, fail, output_dir, registry_for

if TYPE_CHECKING:
    from mtopt.policies.base import Policy

app = typer.Typer(no_args_is_help=True, rich_markup_mode="markdown")


@app.command()
def demo(
    task: str = typer.Option("lift-any", help="Task to run (see `mtopt tasks`)."),
    episodes: int = typer.Option(4, min=1, help="Number of episodes."),
    out: Path = typer.Option(Path("runs/demo"), help="Output directory for the GIF and PNG strip."),
    seed: int = typer.Option(0, min=0, help="Seed for scenes and policy noise."),
    split: str = typer.Option("train", help="Object instances: train or test (held out)."),
    randomize: bool = typer.Option(False, help="Domain randomization (camera, light, colours)."),
    size: int = typer.Option(
        None, help="Camera image size in pixels (default 64, or the run's with --run)."
    ),
    run: Path = typer.Option(
        None,
        help="Act with this run's learned policy (its latest published Q weights, CEM and "
        "cell settings) instead of the scripted one.",
    ),
    part: str | None = typer.Option(
        None, help="With --run: the acting (moving-average, default) or the online weights."
    ),
    act: list[str] = typer.Option([], "--act", help="With --run. " + ACT_HELP),
    tasks_file: Path | None = typer.Option(
        None, help=OWN_TASKS_HELP + " Without --run (a run brings its own tasks)."
    ),
) -> None:
    """Run the scripted bootstrap policy for TASK (or, with --run, a run's learned CEM
    policy), write an animated GIF + PNG strip, print success."""
    import dataclasses

    import numpy as np
    from PIL import Image
    from tqdm import tqdm

    from mtopt.policies.scripted import scripted_policy_for
    from mtopt.qtopt.weights import WeightsError
    from mtopt.robots.sim_robot import SimRobot
    from mtopt.sim.cell import SimConfig
    from mtopt.sim.runner import run_episode
    from mtopt.tasks import DEFAULT_REGISTRY, UnknownTaskError

    learned: Policy | None = None
    if run is not None and tasks_file is not None:
        fail("--tasks-file is for the scripted policies: a --run brings its own tasks")
    registry = DEFAULT_REGISTRY if tasks_file is None else registry_for(None, tasks_file)
    try:
        base = SimConfig()
        if run is None and part is not None:  # it was ignored: the scripted policy ran
            raise ValueError("--part picks a run's weights: give --run too")
        if run is None and act:
            raise ValueError("--act changes a run's acting search: give --run too")
        part = "acting" if part is None else part
        if run is not None:
            from mtopt.policies.cem_policy import load_policy

            learned, base, registry = load_policy(run, part, seed, act)
        spec = registry.get(task)  # a run's own tasks (its extra_tasks) included
        config = dataclasses.replace(
            base,
            image_size=base.image_size if size is None else size,
            object_split=split,  # type: ignore[arg-type]
            randomize=randomize,
        ).validate()
        if learned is not None and config.image_size != base.image_size:
            raise ValueError(
                f"the run's network sees {base.image_size}-pixel images, not {config.image_size}"
            )
    except (UnknownTaskError, ValueError, FileNotFoundError, WeightsError) as exc:
        fail(exc)
    output_dir(out)
    robot = SimRobot(config, robot_id="demo", seed=seed)
    rng = np.random.default_rng(seed)
    frames: list[Image.Image] = []
    strips: list[np.ndarray] = []
    skill_tasks = [t for t in registry if t.skill == spec.skill]
    wins = dict.fromkeys((t.name for t in skill_tasks), 0)
    size = config.image_size
    scale = max(1, 192 // size)
    for ep in tqdm(range(episodes), desc=f"demo {task}", unit="ep"):
        robot.reset_scene(seed * 100_003 + ep)
        policy = learned if learned is not None else scripted_policy_for(spec)
        rec = run_episode(robot, policy, spec, rng, config.max_steps)
        state = robot.scene_state()
        for t in skill_tasks:
            wins[t.name] += t.succeeded(state)
        ok = spec.succeeded(state)
        for img in rec.images:
            frames.append(
                Image.fromarray(img).resize((size * scale, size * scale), Image.Resampling.NEAREST)
            )
        strip = np.concatenate(rec.images, axis=1)
        border = np.zeros((3, strip.shape[1], 3), np.uint8)
        border[:] = (40, 180, 60) if ok else (200, 40, 40)
        strips.append(np.concatenate([border, strip, border], axis=0))
    width = max(s.shape[1] for s in strips)
    padded = [np.pad(s, ((0, 0), (0, width - s.shape[1]), (0, 0))) for s in strips]
    Image.fromarray(np.concatenate(padded, axis=0)).save(out / f"{task}.png")
    frames[0].save(
        out / f"{task}.gif", save_all=True, append_images=frames[1:], duration=180, loop=0
    )
    robot.close()
    typer.echo(f"wrote {out / (task + '.gif')} and {out / (task + '.png')} (green border: success)")
    who = f"{run}'s {part} Q weights (CEM)" if run is not None else policy.name
    typer.echo(f"ground-truth success over {episodes} episodes of {who} for {task}:")
    for name, n in wins.items():
        typer.echo(f"  {name:20s} {n / episodes:6.1%}")
