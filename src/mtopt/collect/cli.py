"""``mtopt collect``: a local fleet of robots (the simulated cell, or your own ``Robot``
made by ``--robot-factory``) writing to an episode store."""

from __future__ import annotations

from pathlib import Path

import typer

from mtopt._cli import OWN_TASKS_HELP, fail, fail_on_other_image_size


def register(app: typer.Typer) -> None:
    @app.command()
    def collect(
        store: Path = typer.Option(..., help="Episode store directory (created if missing)."),
        robots: int = typer.Option(2, min=1, help="Robot processes."),
        episodes: int = typer.Option(100, min=1, help="Episodes per robot."),
        tasks: str = typer.Option("", help="Comma-separated enabled tasks (default: all)."),
        seed: int = typer.Option(0, min=0, help="Fleet seed."),
        split: str = typer.Option("train", help="Object instances: train or test."),
        randomize: bool | None = typer.Option(
            None, help="Domain randomization (default: the run's with a run's --weights, else off)."
        ),
        weights: Path | None = typer.Option(
            None,
            help="Published Q weights dir (learned policies); a run's weights/ brings the "
            "run's own tasks (its config's extra_tasks), its cell (sim settings: image "
            "size, moves, episode length) and its robots' exploration and action search too.",
        ),
        tasks_file: Path | None = typer.Option(None, help=OWN_TASKS_HELP),
        robot_factory: str = typer.Option(
            "",
            help="MODULE:NAME of a callable making each robot, your own Robot "
            "(NAME(robot_id=..., seed=..., sim=SimConfig); mtopt.robots.factory). "
            "Default: the simulated cell.",
        ),
        gripper_status: str | None = typer.Option(
            None,
            help="What the state's gripper status is: closure (measured) or command "
            "(binary). Default: the run's (sim.gripper_status) with a run's --weights, "
            "else closure. A robot that declares another is refused.",
        ),
    ) -> None:
        """Run ROBOTS robot processes, EPISODES each, scripted (or learned) policies."""
        import dataclasses
        from collections import Counter
        from typing import Any

        from tqdm import tqdm

        from mtopt.collect.fleet import FleetSpec, run_fleet
        from mtopt.collect.loop import CollectConfig
        from mtopt.config import ConfigError
        from mtopt.qtopt.weights import WeightsError, read_latest
        from mtopt.runtime.config import load_run_config
        from mtopt.sim.config import GRIPPER_STATUSES
        from mtopt.tasks import DEFAULT_REGISTRY, UnknownTaskError
        from mtopt.tasks.registry import read_tasks_file, registry_with_tasks_file

        names = tuple(t.strip() for t in tasks.split(",") if t.strip())
        if tasks.strip() and not names:
            fail(f"--tasks {tasks!r} names no task: give task names, or leave it out for all")
        extra: tuple[dict[str, object], ...] = ()
        run_cfg = None  # the config of the run whose weights these are
        if weights is not None and weights.exists() and not weights.is_dir():
            fail(f"--weights {weights} is a file, not a folder")
        if weights is not None and not weights.is_dir():
            fail(f"--weights {weights}: no such folder")
        if weights is not None and (weights / "weights").is_dir():
            fail(
                f"--weights {weights} is a run folder: pass its weights folder, "
                f"{weights / 'weights'}"
            )
        if weights is not None and not (weights / "q-latest.json").exists():
            if (weights / "sd-latest.json").exists():
                fail(f"--weights {weights} holds a success detector, not Q-network weights")
            # a run's learner may publish later: its robots act scripted until then
            typer.echo(
                f"note: no Q-network weights in {weights} yet: scripted until some appear",
                err=True,
            )
        try:
            run_config = weights.parent / "config.json" if weights is not None else None
            if run_config is not None and run_config.exists():
                run_cfg = load_run_config(run_config)
                extra = run_cfg.extra_tasks
                if gripper_status is None:  # the status its networks learned with
                    gripper_status = run_cfg.sim.gripper_status
            if gripper_status is not None and gripper_status not in GRIPPER_STATUSES:
                raise ValueError(
                    f"--gripper-status must be closure or command, got {gripper_status!r}"
                )
            if tasks_file is not None:
                own = tuple(read_tasks_file(tasks_file))
                if run_config is not None and run_config.exists() and own != extra:
                    raise ValueError(
                        f"the tasks file {tasks_file} does not describe the tasks of the run "
                        f"of {weights} (its config.json's extra_tasks): leave it out"
                    )
                registry = registry_with_tasks_file(tasks_file)
                extra = own
            else:
                registry = DEFAULT_REGISTRY.with_extra(extra)
            latest = read_latest(weights) if weights is not None else None
            trained = (latest or {}).get("meta", {}).get("tasks")
            if trained is not None and list(trained) != list(registry.names):
                # of one count, the robots would give a task another task's input
                raise ValueError(
                    f"the weights in {weights} were trained on the tasks {list(trained)}, "
                    f"not these: {list(registry.names)}"
                )
            for t in names:
                registry.get(t)
        except (UnknownTaskError, ConfigError, ValueError, WeightsError) as exc:
            fail(exc)
        if split not in ("train", "test"):
            fail(f"--split must be train or test, got {split!r}")
        # a run's weights act in the run's own cell, as its robots collect
        cell = dataclasses.asdict(run_cfg.sim) if run_cfg is not None else {}
        cell.update(
            object_split=split,
            randomize=cell.get("randomize", False) if randomize is None else randomize,
            gripper_status=gripper_status or "closure",
        )
        side = int(cell.get("image_size", 64))
        fail_on_other_image_size(store, side)  # (a factory's robots must give it: make_robot)
        acting: dict[str, Any] = {}
        if run_cfg is not None:
            acting = {
                "epsilon": run_cfg.epsilon,
                "noise_std": run_cfg.noise_std,
                "cem": run_cfg.collection_cem(),
            }
        # a run's weights collect as its robots did: its collection settings (chains,
        # resets, the learned policy's shares; --tasks replaces its tasks and weights)
        # and its parity switch (which tasks act with their learned policy, which with
        # another's as a proxy)
        collect_cfg = run_cfg.collect if run_cfg is not None else CollectConfig()
        if names or run_cfg is None:
            collect_cfg = dataclasses.replace(collect_cfg, tasks=names, task_weights=())
        collect_cfg = dataclasses.replace(
            collect_cfg, max_steps=cell.get("max_steps", CollectConfig.max_steps)
        )
        # passed whether or not it exists yet: beside a live run the trainer writes it
        # later, and the robots re-read it (a path dropped here kept every task off parity)
        switch = weights.parent / "switch.json" if weights is not None else None
        spec = FleetSpec(
            store=str(store),
            robots=robots,
            episodes_per_robot=episodes,
            switch_file=str(switch) if switch is not None else None,
            collect=collect_cfg,
            sim=cell,
            seed=seed,
            weights_dir=str(weights) if weights else None,
            extra_tasks=extra,
            robot_factory=robot_factory,
            **acting,
        )
        counts: Counter[str] = Counter()
        wins: Counter[str] = Counter()
        known: Counter[str] = Counter()  # episodes with ground truth (a real robot's: none)
        bar = tqdm(total=robots * episodes, unit="ep", desc="collect")

        def on_episode(i: int, task: str, policy: str, gt: bool | None) -> None:
            counts[task] += 1
            known[task] += gt is not None
            wins[task] += int(bool(gt))
            bar.update(1)
            bar.set_postfix_str(" ".join(f"{k}:{v}" for k, v in counts.most_common(4)))

        from mtopt._signals import stop_on_sigterm

        try:
            with stop_on_sigterm():  # SIGTERM stops like Ctrl-C: robots flush, then exit
                summary = run_fleet(spec, on_episode)
        except ValueError as exc:  # run_fleet's check of --robot-factory, before any robot
            bar.close()
            fail(exc)
        bar.close()
        typer.echo(f"written per robot: {summary['written']}  restarts: {summary['restarts']}")
        for task, n in sorted(counts.items()):
            gt_text = f"{wins[task] / known[task]:6.1%}" if known[task] else "   n/a"
            typer.echo(f"  {task:22s} {n:5d} episodes, ground-truth success {gt_text}")
        if summary["interrupted"]:
            typer.echo("interrupted: buffered episodes were flushed")
        elif summary.get("refused"):  # (a stand-in run_fleet may not say)
            robot, why = next(iter(summary["refused"].items()))
            fail(f"robot {robot} does not fit this collection: {why}", 2)
        elif summary["failed"]:
            fail(
                f"robot(s) {summary['failed']} kept failing and gave up after their "
                f"restarts ({summary['restarts']}); their errors are in the log above",
                1,
            )
