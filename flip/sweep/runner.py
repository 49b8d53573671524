"""A whole sweep in one call: `run_sweep` loads the spec, checks the data, generates the built-in data,
matches memory, plans the jobs, writes the folder's manifest, runs the jobs and writes the report.

`flipctl sweep` is this call with its flags as `SweepOptions` and a `SweepEvents` that draws the
progress with rich. Nothing here prints: whoever calls it hears from it through the events. Torch,
pandas and submitit are imported once a sweep runs, so importing `flip.sweep` stays light.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shlex
import signal
import threading
import time
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flip.data.builtin import builtin_dir
from flip.data.synth import SynthConfig, is_complete, total_items, write_builtin_dataset
from flip.errors import ConfigError
from flip.sweep import execute
from flip.sweep.jobs import Job
from flip.sweep.spec import SpecError, SweepSpec, default_preset, load_spec, parse_settings, with_data, with_fit
from flip.sweep.store import RunStore

if TYPE_CHECKING:
    import torch

    from flip.launch import SlurmLaunch


@dataclass(frozen=True)
class SweepOptions:
    """How to run a sweep: `flipctl sweep`'s flags. None: the spec's (or the default) choice."""

    preset: str | None = None  # smoke, tiny or paper; None: tiny when the spec has presets
    seeds: int | None = None  # seeds per row
    jobs: int | None = None  # runs at once; None: 1 here, all of them on SLURM
    data: str | None = None  # webdataset shards to train on instead of the built-in data
    eval_data: str | None = None  # retrieval set
    eval_zeroshot: str | None = None  # zero-shot set (class folders)
    settings: tuple[str, ...] = ()  # KEY=VALUE base config fields set after the preset (`--set`)
    fit: str | None = None  # the scaling fits' form: saturating, power or both
    dry_run: bool = False  # plan and estimate only: write nothing, train nothing
    slurm: SlurmLaunch | None = None  # each run a SLURM job of these settings; None: a process here
    command: str | None = None  # what sweep.json and command.txt record; None: the equivalent `flipctl sweep`


@dataclass
class SweepPlan:
    """The jobs a sweep runs, in order; for a dry run, also what they are expected to cost."""

    spec: SweepSpec  # as run: preset, fit, seeds, data and settings applied
    jobs: list[Job]
    device: torch.device
    batches: dict[str, tuple[int, int | None]]  # memory-matched row -> (batch, measured peak bytes)
    states: dict[str, str]  # run id -> done, to run, or the store's state of it (failed, interrupted, ...)
    estimates: dict[str, tuple[float | None, str]] = field(default_factory=dict)  # dry run: run id -> (s, how)
    warnings: list[str] = field(default_factory=list)  # dry run: run steps that would not fit in memory


@dataclass(frozen=True)
class FailedRun:
    run_id: str
    state: str  # failed, skipped (its parent failed) or interrupted
    error: str  # as the run's status gives it ('' when it gives none)
    log: Path  # the worker's log


@dataclass
class SweepResult:
    plan: SweepPlan
    out: Path  # the report folder (a dry run writes nothing)
    ran: list[str] = field(default_factory=list)  # run ids this sweep executed
    already_done: list[str] = field(default_factory=list)
    done_elsewhere: list[str] = field(default_factory=list)  # finished meanwhile by another sweep on the store
    failed: list[FailedRun] = field(default_factory=list)
    seconds: float = 0.0  # running the jobs took
    report: dict | None = None  # `report.write_report`'s summary (table, notes, paths); None for a dry run

    @property
    def report_paths(self) -> list[Path]:
        return self.report["paths"] if self.report else []


class SweepEvents:
    """What `run_sweep` tells whoever watches it, in this order. Each method does nothing here: a
    subclass overrides the ones it shows."""

    def on_message(self, text: str) -> None:
        """A line of news (a memory probe starting)."""

    def on_data_start(self, cfg: SynthConfig, items: int) -> None:
        """Generating the built-in data of `cfg`: `items` to write."""

    def on_data_progress(self, items: int) -> None:
        """`items` more written."""

    def on_data_end(self) -> None:
        """The data is written, or generating it failed."""

    def on_plan(self, plan: SweepPlan) -> None:
        """The plan; a dry run ends here."""

    def on_runs_start(self, jobs: list[Job], todo: list[Job]) -> None:
        """Running `todo`, the jobs of `jobs` not already done."""

    def on_runs_update(self, running: dict[str, tuple[int, int, float | None]], finished: dict[str, str]) -> None:
        """`running`: run id -> (step, total steps, last logged samples/s); `finished`: run id -> state."""

    def on_runs_stop(self) -> None:
        """No job runs any more: all ended, or the sweep was interrupted."""

    def on_runs_done(self, result: SweepResult) -> None:
        """Every job ended; the report is written next (`result.report` is still None)."""


class SweepInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM while the jobs ran: the running runs stopped at a checkpoint and are marked
    interrupted; running the same sweep again continues them."""

    def __init__(self, signum: int):
        super().__init__(f"sweep interrupted by {signal.Signals(signum).name}")
        self.signum = signum


def run_sweep(spec: str | Path, store: str | Path = Path("runs/store"), out: str | Path | None = None,
              options: SweepOptions = SweepOptions(), events: SweepEvents | None = None) -> SweepResult:
    """Run the sweep `spec` (a shipped name or a spec file) on the run store `store`, skipping the runs it
    holds already, and write its report to `out` (default runs/sweeps/NAME-PRESET). A user error
    (`flip.errors.FlipError`) is raised before anything is written; a failed run is not an error but
    one of `SweepResult.failed`. Raises `SweepInterrupted` when stopped by a signal while runs ran."""
    events = events or SweepEvents()
    loaded, overrides = _load(spec, options)
    run_store = RunStore(store, read_only=options.dry_run)
    out = Path(out or Path("runs/sweeps") / f"{loaded.name}-{loaded.preset or 'custom'}")
    plan = _plan(loaded, run_store, options.dry_run, events)
    events.on_plan(plan)
    if options.dry_run:
        return SweepResult(plan, out)
    command = options.command or _command_line(spec, store, out, options)
    return _run(plan, run_store, out, overrides, command, options, events)


def _load(name: str | Path, options: SweepOptions) -> tuple[SweepSpec, dict[str, Any]]:
    """The spec as the options change it, its data and evaluation sets checked; and the options recorded
    in sweep.json (so that `flipctl report` sets them again)."""
    from flip.eval.datasets import check_eval_sets  # torch & co.: only once a sweep runs

    spec = load_spec(name, options.preset or default_preset(name))
    if options.fit is not None:
        spec = with_fit(spec, options.fit)
    if options.seeds is not None:
        if options.seeds < 1:
            raise SpecError(f"--seeds must be >= 1, got {options.seeds}")
        spec = dataclasses.replace(spec, seeds=options.seeds)
    overrides: dict[str, Any] = {"data": options.data, "eval_data": options.eval_data,
                                 "eval_zeroshot": options.eval_zeroshot}
    if options.settings:  # recorded only when given
        overrides["settings"] = parse_settings(options.settings)
    built_in_evals = (spec.evals.zeroshot and options.eval_zeroshot is None
                      or spec.evals.retrieval and options.eval_data is None)
    if options.data is not None and built_in_evals:
        raise SpecError("with --data, give the evaluation sets too: --eval-zeroshot (class folders) and --eval-data "
                        "(retrieval), since the built-in ones say nothing about your data")
    _check_eval_sets_used(spec, options.eval_data, options.eval_zeroshot)
    spec = with_data(spec, **overrides)
    check_eval_sets(options.eval_data, options.eval_zeroshot)
    _check_training_data(spec)
    return spec, overrides


def _check_eval_sets_used(spec: SweepSpec, eval_data: str | None, eval_zeroshot: str | None) -> None:
    """An evaluation set the spec never evaluates on does nothing."""
    if eval_data is not None and not spec.evals.retrieval:
        raise ConfigError(f"does nothing: {spec.source} evaluates no retrieval ([eval] retrieval = false)",
                          key="eval_data")
    if eval_zeroshot is not None and not (spec.evals.zeroshot or spec.evals.linear_probe):
        raise ConfigError(f"does nothing: {spec.source} evaluates no zero-shot classification or linear probe "
                          f"([eval] zeroshot = false)", key="eval_zeroshot")


def _check_training_data(spec: SweepSpec) -> None:
    """Each row's settings and shards checked as `flipctl train` checks them, before anything is written:
    a wrong --data fails now, not in every run after it started."""
    from flip.data.shards import check_shards
    from flip.train.trainer import resolve

    configs = [spec.config(row, 0) for row in spec.rows]
    for data in sorted({cfg.data for cfg in configs} - {None}):
        check_shards(data)
    for cfg in configs:
        resolve(cfg)  # e.g. built-in scenes asked of --data


def _plan(spec: SweepSpec, store: RunStore, dry_run: bool, events: SweepEvents) -> SweepPlan:
    """The built-in data generated (unless a dry run), memory-matched batches probed, the jobs planned;
    a dry run also estimates their time and checks they fit in memory."""
    from flip.distributed import resolve_device
    from flip.sweep import estimate
    from flip.sweep.jobs import build_plan
    from flip.sweep.memory_match import matched_batches, memory_warnings

    device = resolve_device(spec.base.get("device", "auto"))
    if not dry_run and spec.base.get("data") is None:
        _generate_builtin_data(spec, events)
    batches = matched_batches(spec, store, device, log=events.on_message)
    jobs = build_plan(spec, store, batches)
    states = {job.run_id: "done" if execute.is_complete(job, store)
              else (store.status(job.run_id) or {}).get("state", "to run") for job in jobs}
    result = SweepPlan(spec, jobs, device, batches, states)
    if dry_run:
        result.estimates = estimate.estimate(jobs, store, device)
        result.warnings = memory_warnings([j.config for j in jobs if j.kind == "train"], store, device)
    return result


def _generate_builtin_data(spec: SweepSpec, events: SweepEvents) -> None:
    """The built-in data of every scene kind the rows train on, generated once into the cache."""
    for scenes in sorted({spec.config(row, seed=0).builtin_scenes for row in spec.rows}):
        cfg = SynthConfig(scenes=scenes)
        if is_complete(builtin_dir(cfg), cfg):
            continue
        events.on_data_start(cfg, total_items(cfg))
        try:
            write_builtin_dataset(builtin_dir(cfg), cfg, progress=events.on_data_progress)
        finally:
            events.on_data_end()


def _command_line(spec: str | Path, store: str | Path, out: Path, options: SweepOptions) -> str:
    """The `flipctl sweep` command that runs the same runs into the same folder (not how many at once, nor where)."""
    args = [str(spec), "--store", str(store), "--out", str(out)]
    for flag, value in (("--preset", options.preset), ("--seeds", options.seeds), ("--data", options.data),
                        ("--eval-data", options.eval_data), ("--eval-zeroshot", options.eval_zeroshot),
                        ("--fit", options.fit)):
        if value is not None:
            args += [flag, str(value)]
    for setting in options.settings:
        args += ["--set", setting]
    return "flipctl sweep " + shlex.join(args)


def _run(plan: SweepPlan, store: RunStore, out: Path, overrides: dict[str, Any], command: str,
         options: SweepOptions, events: SweepEvents) -> SweepResult:
    """Write the folder's manifest, run the jobs not done yet, then write the report."""
    from flip.sweep import report
    from flip.sweep.folder import check_plan_keeps_finished

    spawn = None
    if options.slurm:
        from flip.launch import SlurmSweepRuns  # submitit: only for a sweep on SLURM
        spawn = SlurmSweepRuns(options.slurm)

    check_plan_keeps_finished(out, plan.jobs)  # before sweep.json changes: the folder's finished runs stay
    out.mkdir(parents=True, exist_ok=True)
    manifest = report.manifest_for(plan.spec, plan.jobs, store, overrides, command)
    manifest.write(out)
    start = time.perf_counter()
    # A run that reports to W&B is grouped under its sweep's name (the runs inherit the environment).
    os.environ.setdefault("WANDB_RUN_GROUP", plan.spec.name)
    parallel = options.jobs or (len(plan.jobs) if spawn else 1)
    # run_jobs's progress, passed on as events
    progress = types.SimpleNamespace(start=events.on_runs_start, update=events.on_runs_update,
                                     close=events.on_runs_stop)
    with _interrupts_raised():
        outcome = execute.run_jobs(plan.jobs, store, parallel=parallel, progress=progress, spawn=spawn)
    failed = [FailedRun(rid, outcome.states[rid], (store.status(rid) or {}).get("error", ""),
                        store.sweep_files(rid).worker_log) for rid in outcome.failed]
    result = SweepResult(plan, out, outcome.ran, outcome.skipped_done, outcome.done_elsewhere, failed,
                         time.perf_counter() - start)
    events.on_runs_done(result)
    result.report = report.write_report(out, plan.spec, plan.jobs, store, command, manifest.commit)
    return result


@contextlib.contextmanager
def _interrupts_raised():
    """Ctrl-C or SIGTERM: `run_jobs` stops the running runs at a checkpoint and marks them interrupted;
    the caller gets one `SweepInterrupted`."""
    def on_term(signum, frame):
        raise _Terminated()

    # a signal handler can only be set from the main thread; elsewhere SIGTERM keeps its own
    previous = signal.signal(signal.SIGTERM, on_term) if threading.current_thread() is threading.main_thread() \
        else None
    try:
        yield
    except (KeyboardInterrupt, _Terminated) as exc:
        raise SweepInterrupted(signal.SIGTERM if isinstance(exc, _Terminated) else signal.SIGINT) from None
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


class _Terminated(Exception):
    """SIGTERM to the sweep, handled as Ctrl-C is."""
