"""``mtopt run``: the whole MT-Opt loop from one command."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import typer

from mtopt._cli import ACT_HELP, fail


def keep_someones_config(out: Path, verb: str) -> None:
    """A policy folder is new: one holding a config.json but no weights is someone's
    (one with weights/ too is the weights writer's error, which says more)."""
    if (out / "config.json").exists() and not (out / "weights").exists():
        fail(f"{out} already holds a config.json: {verb} into a new folder")


def not_inside(out: Path, source: Path, verb: str) -> None:
    """A policy folder is not the run ``source`` belongs to (a run folder, its weights
    folder or one of its snapshot files) nor inside that run's own folders: an export
    into RUN/weights put its config.json and weights/ among the run's weights, and
    RUN/weights no longer read as a weights folder."""
    from mtopt.runtime.local import source_run

    run = source_run(source)
    if run is None:
        return  # weights of no run: nothing of a run's to break
    o, src = out.resolve(), run.resolve()
    own = [(src / d).resolve() for d in ("weights", "sd", "store", "checkpoints", "tb")]
    if o == src or any(o.is_relative_to(d) for d in own):
        fail(f"{out} is {run} or one of its folders: {verb} into a new folder outside them")


def register(app: typer.Typer) -> None:
    @app.command()
    def run(
        config: str | None = typer.Option(
            None,
            help="Preset: local (default, the paper's network, ~20 min), tuned (the best "
            "measured here: local with the gripper's x, y, CoordConv, a gripper crop at each "
            "candidate move's destination, Monte-Carlo-mixed targets, quieter "
            "exploration, batches of 32, a 5% scripted share after parity and native bf16 "
            "where the CPU has it; give it --minutes), tiny (1-2 min), bench (~3 h). "
            "With --resume the run continues with its own config.json.",
        ),
        out: Path = typer.Option(
            Path("runs/local"), help="Run directory (store, weights, checkpoints, report)."
        ),
        resume: bool = typer.Option(
            False, help="Continue the run in --out from its last checkpoint."
        ),
        runtime: str | None = typer.Option(
            None, help="local (default) or ray; with --resume, the run's own by default."
        ),
        address: str | None = typer.Option(
            None, help="Ray: address of an existing cluster (default: start a local Ray)."
        ),
        set_: list[str] = typer.Option(
            [], "--set", help="Override a config field, e.g. --set replay.impersonation=all"
        ),
        impersonation: str | None = typer.Option(None, help="Ablation: orig, all or skill."),
        rebalance: bool | None = typer.Option(None, help="Ablation: re-balancing on/off."),
        network: str | None = typer.Option(None, help="Ablation: onehot or multihead."),
        minutes: float | None = typer.Option(None, help="Wall-clock budget in minutes."),
        tasks_file: Path | None = typer.Option(
            None,
            help="New tasks for this run, after the built-in ones: a JSON list of task "
            'descriptions ([{"name": "place-can-on-plate", "kind": "place", "fixtures": '
            "...], as TaskRegistry.with_extra takes them). The Q-network gets a task input "
            "for each; stored episodes of their skill are relabeled for them.",
        ),
        init_from: Path | None = typer.Option(
            None,
            help="Start the Q-network from a trained run (or policy or weights folder) "
            "instead of at random; new tasks start as the first task of their skill.",
        ),
    ) -> None:
        """Collect, label rewards with the success detector, impersonate, re-balance, learn, evaluate, report."""
        from mtopt.config import ConfigError, override
        from mtopt.qtopt.cem import resolve_device
        from mtopt.qtopt.weights import WeightsError
        from mtopt.runtime.config import load_run_config, preset, resume_config, with_new_tasks

        try:
            sets = list(set_)
            if impersonation is not None:
                sets.append(f"replay.impersonation={impersonation}")
            if rebalance is not None:
                sets.append(f"replay.rebalance={rebalance}")
            if network is not None:
                sets.append(f"qnet.head_type={network}")
            if minutes is not None:
                sets.append(f"budget_minutes={minutes}")
            if runtime is not None:
                sets.append(f"runtime={runtime}")
            if out.exists() and not out.is_dir():
                raise ConfigError(f"--out {out} is a file, not a folder: choose another --out")
            saved = out / "config.json"
            if resume and not saved.exists():
                raise ConfigError(
                    f"{out} holds no run to resume (no config.json): start one without --resume"
                )
            if resume:
                # continue the experiment that was started, not the preset's defaults
                cfg = resume_config(load_run_config(saved), config, sets, out)
            else:
                cfg = override(preset("local" if config is None else config), sets)
            if resume and (tasks_file is not None or init_from is not None):
                raise ConfigError(
                    "--tasks-file and --init-from start a new run; a resumed run keeps "
                    "its tasks and networks (choose another --out)"
                )
            if not resume:
                cfg = with_new_tasks(cfg, tasks_file, init_from)
            cfg.validate()
            cfg.check_robot_factory()
            resolve_device(cfg.learner.device)  # a missing GPU: say so before robots start
            if address is not None and cfg.runtime != "ray":  # it was ignored
                raise ConfigError("--address is for the ray runtime (--runtime ray)")
            if cfg.runtime == "ray" and importlib.util.find_spec("ray") is None:
                raise ConfigError(
                    "--runtime ray needs Ray: pip install 'mtopt[ray]' (make setup installs it)"
                )
        except (ConfigError, ValueError) as exc:
            fail(exc)
        try:
            if cfg.runtime == "ray":
                from mtopt.runtime.ray_runtime import run_ray

                # (SIGTERM stops it as Ctrl-C does: checkpoint, report)
                summary = run_ray(cfg, out, resume, address=address)
            else:
                from mtopt.runtime.local import LocalRun

                summary = LocalRun(cfg, out, resume).run()
        except (FileExistsError, ConfigError, WeightsError) as exc:
            fail(exc)
        typer.echo(f"report: {out / 'report' / 'report.md'}")
        final = summary.get("final", {}).get("success", {})
        for task, rate in final.items():
            typer.echo(
                f"  {task:20s} learned {rate:6.1%}   scripted {summary['scripted'].get(task, float('nan')):6.1%}"
            )
        if summary.get("fleet_error"):
            fail(f"the robot fleet failed: {summary['fleet_error']}", 1)
        if summary.get("replay_error"):
            fail(f"the replay failed: {summary['replay_error']}", 1)

    @app.command()
    def export(
        run: Path = typer.Argument(..., help="Run directory (with config.json and weights/)."),
        out: Path = typer.Argument(..., help="New folder for the exported policy."),
        parts: str = typer.Option(
            "acting,online", help="Networks to keep (acting, online, target0, target1)."
        ),
        act: list[str] = typer.Option(
            [], "--act", help=ACT_HELP + " Kept in the folder's config.json and exported.json."
        ),
        snapshot: int | None = typer.Option(
            None,
            help="Export this weights version from the run's weights/snapshots/ (the "
            "policy at an earlier learner step) instead of the latest weights.",
        ),
    ) -> None:
        """Export a run's learned policy (config and latest weights) to a small folder.

        Keeps only the networks a policy needs. The folder acts like the run for `mtopt sim
        demo --run` and benchmarks/evaluate_run.py, without the episode store or checkpoints.
        """
        from mtopt.config import ConfigError
        from mtopt.qtopt.weights import WeightsError, export_parts
        from mtopt.runtime.config import load_run_config, with_acting_search
        from mtopt.runtime.policy_folder import (
            acting_search_record,
            averaged_record,
            write_policy_folder,
        )

        if not {"acting", "online"} & set(parts.split(",")):
            fail("--parts needs acting or online: a policy acts with one")
        not_inside(out, run, "export")
        keep_someones_config(out, "export")
        try:
            cfg = with_acting_search(load_run_config(run / "config.json"), act)
            path, version, meta = export_parts(
                run / "weights", out / "weights", tuple(parts.split(",")), snapshot=snapshot
            )
        except (ConfigError, WeightsError) as exc:
            fail(exc)
        except FileNotFoundError as exc:  # (sources are read as WeightsErrors above)
            fail(f"cannot write to {out}: {exc}")
        write_policy_folder(
            out, run, cfg, version, meta.get("step"), parts.split(","),
            **averaged_record(run), **acting_search_record(run, cfg),
        )  # fmt: skip
        typer.echo(f"exported {path} (version {version}) and config.json to {out}")

    @app.command()
    def average(
        out: Path = typer.Argument(..., help="New folder for the averaged policy."),
        sources: list[Path] = typer.Argument(
            ...,
            help="Weights to average: run folders (their latest weights), weights folders, "
            "or snapshot files (a run's weights/snapshots/q-*.safetensors).",
        ),
        parts: str = typer.Option(
            "acting,online", help="Networks of each source that go into the average."
        ),
        config: Path | None = typer.Option(
            None,
            help="The run whose config.json the policy takes (default: the first "
            "source that is a run or exported folder).",
        ),
        act: list[str] = typer.Option(
            [], "--act", help=ACT_HELP + " Kept in the folder's config.json and exported.json."
        ),
        across_runs: bool = typer.Option(
            False,
            "--across-runs",
            help="Average weights trained from different initial networks (other runs) "
            "too; refused by default: independently trained networks do not average into "
            "a working one.",
        ),
    ) -> None:
        """Average checkpoints of one run into one network (stochastic weight averaging).

        The element-wise mean of the chosen networks of every source, written as an
        exported policy whose acting network is the average. Free at acting time, and not
        a sure gain: over 800 held-out scenes, acting+online at 128, 146 and 180 minutes
        lifted 71% against 67% for r34's 180-minute acting weights, while r35's last four
        checkpoints lifted 62% against 67%."""
        from mtopt.config import ConfigError
        from mtopt.qtopt.weights import WeightsError, average_into
        from mtopt.runtime.config import load_run_config, with_acting_search
        from mtopt.runtime.local import source_run
        from mtopt.runtime.policy_folder import acting_search_record, write_policy_folder

        run = config or next((s for s in sources if (s / "config.json").is_file()), None)
        if run is None or not (run / "config.json").is_file():
            fail(f"no config.json in {run or 'any source'}: pass --config RUN")
        for src in [*sources, run]:
            not_inside(out, src, "average")
        keep_someones_config(out, "average")
        try:
            cfg = with_acting_search(load_run_config(run / "config.json"), act)
            for src in sources:  # a run's tasks file may define a task of the same name anew
                own = source_run(src)
                if own is not None and load_run_config(own / "config.json").extra_tasks != (
                    cfg.extra_tasks
                ):
                    raise ConfigError(
                        f"{src} is of a run of other tasks than {run} (the extra_tasks of "
                        f"{own / 'config.json'}): an average needs the same tasks"
                    )
            path, version, meta = average_into(
                out / "weights",
                list(sources),
                tuple(parts.split(",")),
                # the policy's robots render the config's image size: the network's
                expected_qnet={"image_size": cfg.sim.image_size},
                expected_tasks=cfg.registry().names,
                across_origins=across_runs,
            )
        except (ConfigError, WeightsError) as exc:
            fail(exc)
        except FileNotFoundError as exc:
            fail(f"cannot write to {out}: {exc}")
        used = meta["averaged"]
        write_policy_folder(
            out,
            run,
            cfg,
            version,
            meta.get("step"),
            ["acting"],
            averaged={"parts": parts.split(","), "sources": used},
            **acting_search_record(run, cfg),
        )
        for gone in meta.get("left_out", []):
            typer.echo(
                f"left out {gone['source']}: the same network as {gone['same_as']} "
                "(each counts once)"
            )
        typer.echo(f"averaged {len(used)} checkpoint(s) x {parts} into {path} and config.json")
