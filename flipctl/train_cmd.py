"""`flipctl train` and `flipctl tune-unmasked`.

The flags of `flipctl train` are generated from `TrainConfig`'s fields (their help, choices
and defaults live there): a new knob declared in flip/train/config.py is a flag here as is.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import shlex
import types
import typing
from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from flip.data.synth import SynthConfig
from flip.errors import ConfigError
from flip.run_dir import RunDir
from flip.train.config import (
    CKPT,
    OPTIM,
    PANELS,
    RUNTIME,
    TUNE_BUDGET_RULE,
    TUNE_LR_RULE,
    TUNE_WARMUP_RULE,
    TrainConfig,
    knob_help,
    load_toml,
)
from flip.train.faults import StopRequested
from flipctl.console import make_console
from flipctl.data_cmd import ensure_builtin_with_progress
from flipctl.errors import flag, setting_name, settings_from_file, user_errors
from flipctl.launch_opts import LaunchFlags, needs_shared_out, run_job, with_launch_flags
from flipctl.progress import RichReporter
from flipctl.stopping import StopOnSignals

console = make_console()
# The settings a resume may change (TrainConfig knobs declared with resume=True).
RESUME_CHANGEABLE = [f.name for f in dataclasses.fields(TrainConfig) if f.metadata["resume"]]


def print_summary(summary: dict) -> None:
    if os.environ.get("RANK", "0") != "0":
        return  # under torchrun, rank 0 reports
    table = Table(title=f"run {summary['run_dir']}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("model", "mask_ratio", "world_size", "per_device_batch", "accum_steps", "global_batch",
                "steps", "samples_seen", "wall_time_s", "samples_per_s",
                "final_loss", "final_temperature", "skipped_samples", "nonfinite_steps", "train_flops_total"):
        value = summary.get(key)
        table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    for key, value in summary.get("eval", {}).items():
        table.add_row(key, f"{value:.2f}")
    if summary.get("eval_note"):
        table.add_row("eval", summary["eval_note"])
    console.print(table)


# -- flags from TrainConfig's fields -------------------------------------------------------------------
def _flag_type(hint):
    """The type a flag parses: `float | None` -> float, `list[str]` -> List[str]."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    if typing.get_origin(hint) is list:
        return List[typing.get_args(hint)[0]]
    return hint


def flag_metavar(f: dataclasses.Field) -> str | None:
    """What goes after a knob's flag: its declared metavar, else its choices (`random|block|grid`)."""
    choices = f.metadata["choices"]
    return f.metadata["metavar"] or ("|".join(map(str, choices)) if choices else None)


def flag_help(f: dataclasses.Field) -> str:
    """A knob's flag help: the knob's description, less its choices when the metavar lists them."""
    shown = flag_metavar(f)
    return knob_help(f, choices=not shown or "|" not in shown)


def knob_parameters() -> list[inspect.Parameter]:
    """One keyword parameter per TrainConfig field with a flag, in its knob's help panel (panels in
    PANELS' order); None means "not given"."""
    hints = typing.get_type_hints(TrainConfig)
    params = []
    fields = [f for f in dataclasses.fields(TrainConfig) if f.metadata["flag"]]
    for f in sorted(fields, key=lambda f: PANELS.index(f.metadata["panel"])):  # stable: field order within
        kind = _flag_type(hints[f.name])
        decls = [f"{flag(f.name)}/--no-{flag(f.name)[2:]}"] if kind is bool else [flag(f.name)]
        option = typer.Option(None, *decls, help=flag_help(f), show_default=False, metavar=flag_metavar(f),
                              rich_help_panel=f.metadata["panel"])
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=option,
                                        annotation=Optional[kind]))
    return params


def with_knob_flags(fn):
    """Give `fn(..., **knobs)` one Typer option per TrainConfig knob, before its own parameters."""
    own = [p for p in inspect.signature(fn, eval_str=True).parameters.values() if p.kind != p.VAR_KEYWORD]
    fn.__signature__ = inspect.Signature(
        [*knob_parameters(), *(p.replace(kind=p.KEYWORD_ONLY) for p in own)])
    return fn


def run_stoppable(fn):
    """`fn(stop_event)`, with SIGTERM, SIGINT and SIGUSR1 made polite stops: the run finishes its step
    and writes a checkpoint, one line says how to resume, and the exit code is 128 + the signal's
    number (143 for SIGTERM, 130 for SIGINT, 138 for SIGUSR1)."""
    with StopOnSignals() as stopper:
        try:
            return fn(stopper.event)
        except StopRequested as exc:
            typer.echo(f"{stopper.name}: run {exc.run_dir} stopped at step {exc.step} and wrote its checkpoint "
                       f"{exc.checkpoint}; resume with: flipctl train --resume --out {shlex.quote(str(exc.run_dir))}",
                       err=True)
            raise typer.Exit(stopper.exit_code) from None


def _check_eval_sets_used(values: dict) -> None:
    """An evaluation set given for a run that never evaluates does nothing. (The library allows it: a
    sweep names its sets in the config and evaluates the finished checkpoint on them itself.)"""
    for key in ("eval_data", "eval_zeroshot"):
        if values.get(key) is not None and values.get("periodic_eval") is False:
            raise ConfigError("does nothing with --no-periodic-eval (no evaluation during training; `flipctl eval` "
                              "evaluates a finished run): leave one of them out", key=key)


@user_errors
@with_knob_flags
@with_launch_flags
def train_command(
    config: Optional[Path] = typer.Option(None, metavar="FILE.toml",
                                          help="TOML file of train settings (the keys are the flags' names, "
                                               "with _); flags given here override it."),
    resume: bool = typer.Option(False, "--resume", metavar="[auto]", rich_help_panel=CKPT,
                                help="continue the run in --out from its last checkpoint. "
                                "`--resume auto` starts the run when --out holds no checkpoint yet, so a requeued "
                                "job can rerun one command line. Settings given with --resume must equal the "
                                f"run's saved ones, except {', '.join(map(flag, RESUME_CHANGEABLE))}."),
    # Typer options cannot take an optional value: `--resume auto` is the flag followed by this word.
    resume_mode: Optional[str] = typer.Argument(None, hidden=True, metavar="[auto]"),
    launch: LaunchFlags = LaunchFlags(),
    **knobs,
) -> None:
    """Train a FLIP model. With no flags: the tiny model on the built-in dataset, in minutes on a CPU."""
    from flip.launch import TrainJob
    from flip.train.trainer import ResumeConflict, init_checkpoint, model_config, resolve, train

    flags = {k: list(v) if isinstance(v, tuple) else v for k, v in knobs.items() if v is not None and v != ()}
    if resume_mode is not None and not (resume and resume_mode == "auto"):
        raise ConfigError(f"unexpected argument {resume_mode!r}: `flipctl train` takes flags only (`--resume auto` "
                          f"is the one word allowed)")
    values = load_toml(config) if config else {}
    file_keys = set(values) - set(flags)
    values.update(flags)

    def start(stop):
        _check_eval_sets_used(values)
        cfg = resolve(TrainConfig.from_dict(values))
        # Everything that can be checked here is, before the built-in data is generated (a minute).
        needs_shared_out(launch, "out" in values)
        if launch.launcher == "slurm":
            launch.slurm()  # --time & co.
        if Path(cfg.out).exists() and not Path(cfg.out).is_dir():
            raise ConfigError(f"{cfg.out} is a file, not a run directory", key="out")
        if "wandb" in cfg.report_to:
            from flip.train.wandb_log import check_installed

            check_installed()
        from flip.eval.datasets import check_eval_sets

        # The sets and templates the user named (not the built-in ones resolve() fills in), before the built-in
        # data is made.
        check_eval_sets(values.get("eval_data"), values.get("eval_zeroshot"), values.get("eval_templates"))
        if cfg.init_from:
            init_checkpoint(cfg.init_from, model_config(cfg))
        if values.get("data") is None:
            ensure_builtin_with_progress(SynthConfig(scenes=cfg.builtin_scenes))
        console.print(f"run directory: [bold]{cfg.out}[/bold]")
        return run_job(TrainJob(cfg.to_dict(), reporter=RichReporter), launch,
                       lambda: train(cfg, reporter=RichReporter(), stop=stop), echo=console.print)

    def cont(stop):
        out = values["out"]
        finished = RunDir(out).summary.exists()
        summary = run_job(TrainJob(TrainConfig(out=out).to_dict(), resume=True, reporter=RichReporter, settings=values),
                          launch, lambda: train(TrainConfig(out=out), resume=True, settings=values,
                                                reporter=RichReporter(), stop=stop), echo=console.print)
        if finished:
            console.print(f"run {out} had already finished: nothing to train")
        return summary

    with settings_from_file(config, file_keys):
        try:
            if not resume:
                summary = run_stoppable(start)
            elif values.get("out") is None:
                raise ConfigError("needs --out RUN_DIR: the run to continue", key="resume")
            elif resume_mode == "auto" and not RunDir(values["out"]).has_checkpoint():
                summary = run_stoppable(start)
            else:
                summary = run_stoppable(cont)
        except ResumeConflict as exc:
            raise ConfigError(exc.describe(lambda key: setting_name(key, file_keys, config))) from None
    if summary is not None:  # None: submitted to SLURM
        print_summary(summary)


@user_errors
@with_launch_flags
def tune_unmasked_command(
    ckpt: str = typer.Option(..., metavar="RUN|CKPT", rich_help_panel=CKPT,
                             help="run directory or checkpoint to continue from."),
    samples: Optional[int] = typer.Option(None, rich_help_panel=OPTIM,
                                          help=f"tuning budget in samples. Default: {TUNE_BUDGET_RULE.describe()}."),
    epochs: Optional[float] = typer.Option(None, rich_help_panel=OPTIM,
                                           help="tuning budget in epochs of the data."),
    lr: Optional[float] = typer.Option(None, rich_help_panel=OPTIM,
                                       help=f"peak lr. Default: {TUNE_LR_RULE.describe()}."),
    warmup: Optional[int] = typer.Option(None, rich_help_panel=OPTIM,
                                         help=f"warm-up samples. Default: {TUNE_WARMUP_RULE.describe()}."),
    out: Optional[str] = typer.Option(None, metavar="DIR", rich_help_panel=CKPT,
                                      help="new run directory. Default: the parent run's, with -unmasked."),
    compile: Optional[bool] = typer.Option(None, "--compile/--no-compile", show_default=False, rich_help_panel=RUNTIME,
                                           help="torch.compile the model (as `flipctl train --compile`). "
                                                "Default: as the parent run."),
    image_size: Optional[int] = typer.Option(None, "--image-size", show_default=False,
                                             help="tune at this image resolution (a multiple of the patch size). "
                                                  "Default: the model's own, whatever size the parent trained at: "
                                                  "after training at a reduced --image-size this is CLIPA's "
                                                  "final full-resolution stage."),
    launch: LaunchFlags = LaunchFlags(),
) -> None:
    """Unmasked tuning: continue a masked run with mask ratio 0 at a low lr (paper Table 1e)."""
    from flip.launch import TrainJob
    from flip.train.trainer import tune_unmasked, unmasked_tuning_config

    overrides = {"compile": compile} if compile is not None else {}
    if image_size is not None:
        overrides["image_size"] = image_size
    if launch.elsewhere:
        job = TrainJob(unmasked_tuning_config(ckpt, samples, epochs, lr, warmup, out, **overrides).to_dict(),
                       reporter=RichReporter)
        summary = run_job(job, launch, lambda: None, echo=console.print)
    else:
        summary = run_stoppable(lambda stop: tune_unmasked(ckpt, samples=samples, epochs=epochs, lr=lr,
                                                          warmup=warmup, out=out, reporter=RichReporter(), stop=stop,
                                                          **overrides))
    if summary is None:  # submitted to SLURM
        return
    print_summary(summary)
    console.print(json.dumps({"parent": summary["parent"]}))
