"""``mtopt evaluate``: a run's learned policy on a robot (yours, or the simulated cell),
each episode judged by the run's success detector."""

from __future__ import annotations

from pathlib import Path

import typer

from mtopt._cli import ACT_HELP, fail, fail_on_other_image_size, output_file


def register(app: typer.Typer) -> None:
    @app.command()
    def evaluate(
        run: Path = typer.Argument(
            ..., help="Run or exported policy folder (config.json and weights/)."
        ),
        robot_factory: str = typer.Option(
            "",
            help="MODULE:NAME of a callable making your robot (NAME(robot_id=..., seed=..., "
            "sim=SimConfig); mtopt.robots.factory). Default: the run's simulated cell with "
            "held-out objects, where the simulator's verdict is kept beside the detector's.",
        ),
        tasks: str = typer.Option(
            "", help="Comma-separated tasks (default: the run's eval.tasks)."
        ),
        episodes: int = typer.Option(10, min=1, help="Episodes per task."),
        part: str = typer.Option("acting", help="Network that acts: acting or online."),
        act: list[str] = typer.Option(
            [], "--act", help=ACT_HELP + " (mtopt export --act keeps such a change)"
        ),
        sd: Path | None = typer.Option(
            None, help="Success detector folder that judges the episodes (default: RUN/sd)."
        ),
        threshold: float = typer.Option(
            0.5, min=0.0, max=1.0, help="Detector probability counted as a success."
        ),
        seed: int = typer.Option(
            5, min=0, help="Held-out scene block (the simulated cell's; 5 and 6 in the README)."
        ),
        store: Path | None = typer.Option(
            None,
            help="Also store the episodes here (a store of their own, not the run's: the run "
            "would train on them), to label on the labeling page (mtopt sd label).",
        ),
        json_out: Path | None = typer.Option(None, "--json", help="Write the results here."),
    ) -> None:
        """Evaluate a run's learned policy on a robot: greedy CEM episodes of each task,
        each judged by the success detector on its final image (a real cell has no
        ground truth). Prints per-task success with 95% intervals; on the simulated cell
        also the simulator's rate and how often the detector agrees with it."""
        import dataclasses
        import logging
        from contextlib import ExitStack

        from tqdm import tqdm

        from mtopt._io import atomic_write_json
        from mtopt.config import ConfigError
        from mtopt.eval.on_robot import (
            JudgedEpisode,
            RobotEvaluation,
            check_evaluation,
            evaluate_on_robot,
            summarize,
        )
        from mtopt.policies.cem_policy import load_policy
        from mtopt.qtopt.weights import WeightsError
        from mtopt.robots.factory import load_robot_factory, make_robot
        from mtopt.runtime.config import load_run_config
        from mtopt.sim.runner import RobotContractError
        from mtopt.store.writer import EpisodeWriter
        from mtopt.success.network import SuccessDetector
        from mtopt.tasks import UnknownTaskError

        if part not in ("acting", "online"):
            fail(f"--part must be acting or online, got {part!r}")
        if json_out is not None:
            output_file(json_out)  # now, not after the evaluation
        if not (run / "config.json").is_file() or not (run / "weights").is_dir():
            fail(f"{run} is not a run or policy folder (config.json and weights/)")
        sd_dir = sd if sd is not None else run / "sd"
        if store is not None and store.resolve() == (run / "store").resolve():
            fail(f"--store {store} is the run's own store: the run would train on these episodes")
        if store is not None and store.exists() and not store.is_dir():
            fail(f"--store {store} is a file, not a folder")  # (a traceback, after the robot)
        try:
            cfg = load_run_config(run / "config.json")
            # a fleet-judged run (eval.on='fleet') never evaluated on simulated scenes
            if not robot_factory and cfg.eval_on == "sim" and seed == cfg.eval_seed:
                raise ValueError(
                    f"--seed {seed} is the in-run evaluation block of {run} (its seed "
                    f"{cfg.seed}): its collection switched to learned policies on those "
                    f"scenes; pick another"
                )
            policy, sim, registry = load_policy(run, part, seed, act)
            # a task named twice once (it ran twice, the first pass thrown away)
            names = tuple(dict.fromkeys(t.strip() for t in tasks.split(",") if t.strip()))
            if tasks and not names:
                raise ValueError(f"--tasks {tasks!r} names no task")
            names = names or cfg.eval.tasks
            for t in names:
                registry.get(t)
            if robot_factory:
                load_robot_factory(robot_factory)
            if not sd_dir.is_dir():
                raise ValueError(
                    f"no success detector folder {sd_dir}"
                    + ("" if sd is not None else ": pass --sd (an exported policy has none)")
                )
            judge = SuccessDetector.load(sd_dir)
            if judge.net.cfg.image_size != sim.image_size:
                raise ValueError(
                    f"the success detector in {sd_dir} judges {judge.net.cfg.image_size}-pixel "
                    f"images; the run's robots give {sim.image_size}"
                )
            check_evaluation(judge, names, episodes, seed)
        except (ConfigError, ValueError, WeightsError, UnknownTaskError, FileNotFoundError) as exc:
            fail(exc)
        sim = dataclasses.replace(sim, object_split="test").validate()
        if store is not None:  # (a factory's robots must give sim.image_size: make_robot)
            fail_on_other_image_size(store, sim.image_size)
        bar = tqdm(total=episodes * len(names), unit="ep", desc="evaluate")
        wins: dict[str, int] = {}

        def shown(one: JudgedEpisode) -> None:
            wins[one.task] = wins.get(one.task, 0) + one.sd_success
            bar.update(1)
            bar.set_postfix_str(" ".join(f"{k}:{v}" for k, v in wins.items()))

        evaluation = RobotEvaluation()
        interrupted = False
        failure: BaseException | None = None
        try:
            with ExitStack() as stack:
                robot = make_robot(robot_factory, sim, "eval-00", seed)
                stack.callback(robot.close)
                writer = None
                if store is not None:
                    writer = stack.enter_context(EpisodeWriter(store, robot.robot_id))
                evaluate_on_robot(
                    robot,
                    lambda spec: policy,
                    registry,
                    names,
                    episodes,
                    sim.max_steps,
                    judge,
                    seed=seed,
                    threshold=threshold,
                    write=writer.write if writer is not None else None,
                    on_episode=shown,
                    into=evaluation,
                )
        except KeyboardInterrupt:
            interrupted = True  # the robot is closed, the store flushed: report what was judged
        except Exception as exc:  # a robot that fails part-way: what was judged still counts
            failure = exc
        finally:
            bar.close()
        per_task = summarize(evaluation)
        result = {
            "run": str(run),
            "robot": robot_factory or "simulated cell (held-out objects)",
            "part": part,
            "acting_search": dataclasses.asdict(policy.cem),
            "weights_version": policy.version,
            "sd": str(sd_dir),
            "sd_version": judge.version,
            "threshold": threshold,
            "seed": seed,
            "interrupted": interrupted,
            "error": None if failure is None else f"{type(failure).__name__}: {failure}",
            "complete": not interrupted and failure is None,
            "tasks": per_task,
        }
        if interrupted or failure is not None:
            typer.echo("incomplete: what was judged before it stopped")
        for task, row in per_task.items():
            if row["sd_success"] is None:
                why = f" ({row['not_set_up']} never set up)" if row["not_set_up"] else ""
                typer.echo(f"  {task:22s} not evaluated (no episode judged){why}")
                continue
            lo, hi = row["sd_success"]["ci95"]
            line = (
                f"  {task:22s} detector {row['sd_success']['success']:6.1%} "
                f"[{lo:.0%}, {hi:.0%}] of {row['episodes']}"
            )
            if row["gt_success"] is not None:
                line += (
                    f"   simulator {row['gt_success']['success']:6.1%}, "
                    f"agreement {row['sd_agreement']:.0%}"
                )
            if row["not_set_up"]:
                line += f"   ({row['not_set_up']} never set up: left out)"
            typer.echo(line)
        typer.echo(
            f"Q weights v{policy.version} ({part}), success detector v{judge.version} "
            f"at {threshold:g}"
        )
        if json_out is not None:
            atomic_write_json(json_out, result)
            typer.echo(f"wrote {json_out}")
        if failure is not None:
            if not isinstance(failure, ValueError | RobotContractError):
                logging.getLogger(__name__).error("evaluation failed", exc_info=failure)
            fail(failure, 1)
        if interrupted:
            raise typer.Exit(130)  # as a shell reports a command stopped by Ctrl-C
