"""`flipctl sweep` and `flipctl report`: parse the flags, show what `flip.sweep.run_sweep` reports, exit;
the work is in `flip.sweep`."""

from __future__ import annotations

import datetime
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from flip.errors import ConfigError
from flip.sweep import SweepEvents, SweepInterrupted, SweepOptions, SweepPlan, SweepResult, run_sweep
from flip.sweep.spec import SpecError, load_spec, shipped_specs
from flipctl.console import make_console
from flipctl.errors import user_errors
from flipctl.launch_opts import LaunchFlags, with_launch_flags

console = make_console()


class PlainSweepProgress:
    """Off a terminal (nohup, a SLURM .out, CI): a line per finished run, and every `every_s` seconds a
    progress line per running run (step, samples/s, ETA) and one for the sweep, as `flipctl train` logs."""

    def __init__(self, out: Console, every_s: float = 60.0, clock=time.monotonic):
        self.out, self.every_s, self.clock = out, every_s, clock
        self.seen_finished: set[str] = set()
        self.first_seen: dict[str, tuple[float, int]] = {}  # run id -> (time, step) when first seen running

    def _print(self, text: str) -> None:
        self.out.print(text, markup=False, highlight=False, soft_wrap=True)

    def start(self, jobs, todo) -> None:
        self.jobs = {job.run_id: job for job in jobs}
        self.todo, self.started = len(todo), self.clock()
        self.last = self.started
        self._print(f"sweep: {len(jobs)} runs, {len(jobs) - len(todo)} already done, {len(todo)} to run")

    def update(self, running, finished) -> None:
        now = self.clock()
        for rid in running:
            self.first_seen.setdefault(rid, (now, running[rid][0]))
        for rid in [rid for rid in finished if rid not in self.seen_finished]:
            self.seen_finished.add(rid)
            job = self.jobs.get(rid)
            took = f", in {_duration(now - self.first_seen[rid][0])}" if rid in self.first_seen else ""
            where = f"  ({job.row}, seed {job.seed}{', tuned' if job.variant == 'tuned' else ''}{took})" if job else ""
            self._print(f"{finished[rid]:>11}  {rid}{where}")
        if running and now - self.last >= self.every_s:
            self.last = now
            for rid, (step, total, samples_per_s) in running.items():
                self._print(self._run_line(rid, step, total, samples_per_s, now))
            done = len(self.seen_finished) - (len(self.jobs) - self.todo)
            self._print(f"sweep: {max(0, done)}/{self.todo} runs finished, {len(running)} running, "
                        f"elapsed {_duration(now - self.started)}")

    def _run_line(self, rid: str, step: int, total: int, samples_per_s: float | None, now: float) -> str:
        t0, step0 = self.first_seen[rid]
        eta = _duration((now - t0) / (step - step0) * (total - step)) if step > step0 else "-"
        rate = f"{samples_per_s:.1f} samples/s" if samples_per_s else "- samples/s"
        return f"progress {rid}: step {step}/{total} ({100 * step / max(1, total):.0f}%)  {rate}  ETA {eta}"

    def close(self) -> None: ...


def _duration(seconds: float) -> str:
    return str(datetime.timedelta(seconds=round(seconds)))


class RichSweepProgress:
    """Runs done / running / left, the running runs' steps, elapsed and estimated time left; off a
    terminal, a `PlainSweepProgress`'s lines."""

    def __init__(self, every_s: float = 60.0):
        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                                 console=console, transient=False)
        self.overall = None
        self.run_tasks: dict[str, int] = {}
        self.seen_finished: set[str] = set()
        self.plain = None if console.is_terminal else PlainSweepProgress(console, every_s)

    def start(self, jobs, todo) -> None:
        if self.plain:
            return self.plain.start(jobs, todo)
        self.total, self.todo = len(jobs), len(todo)
        self.already = self.total - self.todo
        self.progress.start()
        self.overall = self.progress.add_task("sweep", total=self.todo, info=f"{self.already} already done")

    def update(self, running, finished) -> None:
        if self.plain:
            return self.plain.update(running, finished)
        new = [rid for rid in finished if rid not in self.seen_finished]
        for rid in new:
            self.seen_finished.add(rid)
            if rid in self.run_tasks:
                console.print(f"{finished[rid]:>7}  {rid}")
                self.progress.remove_task(self.run_tasks.pop(rid))
        done_now = len(self.seen_finished) - self.already
        self.progress.update(self.overall, completed=max(0, done_now),
                             info=f"running {len(running)}, left {self.todo - max(0, done_now) - len(running)}")
        for rid, (step, total, samples_per_s) in running.items():
            if rid not in self.run_tasks:
                self.run_tasks[rid] = self.progress.add_task(f"  {rid}", total=max(1, total), info="")
            info = f"{samples_per_s:.0f} samples/s" if samples_per_s else ""
            self.progress.update(self.run_tasks[rid], completed=step, total=max(1, total), info=info)

    def close(self) -> None:
        if not self.plain:
            self.progress.stop()


def _list_specs() -> None:
    table = Table(title="shipped sweeps (flipctl sweep NAME --preset smoke|tiny|paper)")
    for col in ("name", "paper", "title", "presets", "rows x seeds (tiny)"):
        table.add_column(col, no_wrap=col == "name")
    for name, path in shipped_specs().items():
        try:
            spec = load_spec(path, "tiny")
            size = f"{len(spec.rows)} x {spec.seeds}" + (" (+ tuning)" if spec.tuning.enabled else "")
            table.add_row(name, spec.paper, spec.title, ", ".join(spec.presets), size)
        except SpecError as exc:
            table.add_row(name, "", f"[red]invalid: {exc}", "", "")
    console.print(table)


def _fmt_s(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def _print_plan(plan: SweepPlan) -> None:
    table = Table(title=f"plan: {len(plan.jobs)} runs")
    for col in ("run", "row", "seed", "variant", "batch", "steps", "samples", "est. time", "state"):
        table.add_column(col, justify="right" if col in ("seed", "batch", "steps", "samples", "est. time") else "left")
    left, unknown = 0.0, 0
    for job in plan.jobs:
        seconds, how = plan.estimates.get(job.run_id, (None, "unknown"))
        state = plan.states[job.run_id]
        if state != "done":
            left += seconds or 0.0
            unknown += seconds is None
        shown = "unknown" if seconds is None else _fmt_s(seconds) + ("" if how == "timed" else f" ({how})")
        table.add_row(job.run_id, job.row, str(job.seed), job.variant, str(job.config.batch_size), str(job.steps),
                      str(job.samples), shown, state)
    console.print(table)
    more = f", plus {unknown} runs of unknown time" if unknown else ""
    console.print(f"estimated training time left: {_fmt_s(left)}{more} on {plan.device} (evaluations not included; "
                  f"runs of one model scale with their counted FLOPs)")
    for line in plan.warnings:
        console.print(f"[yellow]warning:[/yellow] {line}")


class CliSweepEvents(SweepEvents):
    """The sweep as `flipctl sweep` shows it: news and the plan printed, a bar while the built-in data is
    generated, the runs' progress drawn by `RichSweepProgress`, a summary line once they end."""

    def __init__(self, dry_run: bool, progress_every: float):
        self.dry_run = dry_run
        self.runs = RichSweepProgress(progress_every)

    def on_message(self, text: str) -> None:
        console.print(text)

    def on_data_start(self, cfg, items: int) -> None:
        from flipctl.data_cmd import generating_bar

        self.bar = generating_bar()
        self.bar.start()
        self.data_task = self.bar.add_task("synth", total=items)

    def on_data_progress(self, items: int) -> None:
        self.bar.advance(self.data_task, items)

    def on_data_end(self) -> None:
        self.bar.stop()

    def on_plan(self, plan: SweepPlan) -> None:
        if plan.batches:
            console.print("memory-matched batches: " + ", ".join(
                f"{label} -> {b} ({(peak or 0) / 2**20:.0f} MiB)" for label, (b, peak) in plan.batches.items()))
        if self.dry_run:
            _print_plan(plan)

    def on_runs_start(self, jobs, todo) -> None:
        self.runs.start(jobs, todo)

    def on_runs_update(self, running, finished) -> None:
        self.runs.update(running, finished)

    def on_runs_stop(self) -> None:
        self.runs.close()

    def on_runs_done(self, result: SweepResult) -> None:
        elsewhere = f", {len(result.done_elsewhere)} finished by another sweep" if result.done_elsewhere else ""
        console.print(f"sweep {result.plan.spec.name}: {len(result.ran)} runs executed, {len(result.already_done)} "
                      f"already done{elsewhere}, {len(result.failed)} failed or skipped, in {_fmt_s(result.seconds)}")


FIT_HELP = ("the scaling fits' form: saturating (error = a·C^-b + c), power (Cherti et al.'s error = a·C^b) or "
            "both; each is also refitted without the largest-cost frontier point, whose error is reported "
            "(notes, fits.json). Default: the spec's.")


@user_errors
@with_launch_flags(torchrun=False)
def sweep_command(
    spec_name: Optional[str] = typer.Argument(None, metavar="NAME|SPEC.toml",
                                              help="a shipped sweep (see --list) or a spec file."),
    preset: Optional[str] = typer.Option(None, metavar="smoke|tiny|paper", help="smoke (minutes, for tests), tiny "
                                         "(about an hour on a CPU) or paper (the paper's settings, for a GPU cluster). "
                                         "Default: tiny when the spec has presets."),
    out: Optional[Path] = typer.Option(None, metavar="DIR", help="report folder. Default: runs/sweeps/NAME-PRESET."),
    store: Path = typer.Option(Path("runs/store"), metavar="DIR", help="run store shared by all sweeps."),
    seeds: Optional[int] = typer.Option(None, help="seeds per row (overrides the spec)."),
    jobs: Optional[int] = typer.Option(None, help="runs at once on this machine (each in its own process). "
                                       "Default: 1."),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the plan with estimated times; train nothing."),
    list_specs: bool = typer.Option(False, "--list", help="list the shipped sweeps and exit."),
    data: Optional[str] = typer.Option(None, metavar="SHARDS",
                                       help="train on these webdataset shards instead of the built-in data."),
    eval_data: Optional[str] = typer.Option(None, metavar="PATH",
                                            help="retrieval set to evaluate on (CSV, Karpathy JSON, shards)."),
    eval_zeroshot: Optional[str] = typer.Option(None, metavar="DIR",
                                                help="zero-shot set (class folders) to evaluate on."),
    settings: list[str] = typer.Option([], "--set", metavar="KEY=VALUE", help="set a base training config field "
                                       "after the preset, e.g. --set samples=46080 (repeatable); part of each "
                                       "run's identity, recorded in sweep.json."),
    max_parallel: Optional[int] = typer.Option(None, help="with --launcher slurm: runs queued or running on the "
                                               "cluster at once (each run a SLURM job). Default: all."),
    progress_every: float = typer.Option(60.0, help="off a terminal (nohup, SLURM, CI): seconds between progress "
                                         "lines (each running run's step, samples/s and ETA)."),
    fit: Optional[str] = typer.Option(None, metavar="saturating|power|both", help=FIT_HELP),
    launch: LaunchFlags = LaunchFlags(),
) -> None:
    """Run a study: a whole ablation or scaling sweep, ending in paper-style tables, plots and report.html."""
    if list_specs:
        _list_specs()
        return
    if spec_name is None:
        raise SpecError("give a sweep name or spec file (flipctl sweep --list shows the shipped ones)")
    if progress_every <= 0:
        raise ConfigError(f"must be > 0, got {progress_every:g}", key="progress_every")
    if jobs is not None and jobs < 1:
        raise SpecError(f"--jobs must be >= 1, got {jobs}")
    if max_parallel is not None and (launch.launcher != "slurm" or max_parallel < 1):
        raise ConfigError("takes a number >= 1, with --launcher slurm (here: --jobs)", key="max_parallel")
    if jobs is not None and launch.launcher == "slurm":
        raise ConfigError("does nothing with --launcher slurm (runs are SLURM jobs, not processes here): use "
                          "--max-parallel", key="jobs")
    command = "flipctl " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    options = SweepOptions(preset=preset, seeds=seeds, jobs=max_parallel if launch.launcher == "slurm" else jobs,
                           data=data, eval_data=eval_data, eval_zeroshot=eval_zeroshot, settings=tuple(settings),
                           fit=fit, dry_run=dry_run, command=command,
                           slurm=launch.slurm() if launch.launcher == "slurm" else None)
    try:
        result = run_sweep(spec_name, store, out, options, CliSweepEvents(dry_run, progress_every))
    except SweepInterrupted as exc:
        typer.echo(f"interrupted: running runs stopped at their last checkpoint; continue the sweep with: "
                   f"cd {shlex.quote(os.getcwd())} && {command}", err=True)
        raise typer.Exit(128 + exc.signum) from None
    if dry_run:
        return
    _print_report(result.report, result.out)
    for run in result.failed:
        console.print(f"[red]{run.state}[/red] {run.run_id}: {run.error} (log: {run.log})")
    if result.failed:
        raise typer.Exit(1)


def _print_report(result: dict, out: Path) -> None:
    from flip.sweep.folder import SweepFolder

    display = result["table"].display
    table = Table(title=f"{out}")
    for col in display.columns:
        table.add_column(str(col), justify="left" if col == "row" else "right")
    for _, r in display.iterrows():
        table.add_row(*[str(v) for v in r.values])
    console.print(table)
    for note in result["notes"]:
        console.print(f"  {note}")
    console.print(f"wrote {len(result['paths'])} files to {out} (report: {SweepFolder(out).report})")


@user_errors
def report_command(out: Path = typer.Argument(..., metavar="OUT",
                                              help="a sweep's report folder (holding sweep.json)."),
                   fit: Optional[str] = typer.Option(None, metavar="saturating|power|both",
                                                     help=FIT_HELP + " Recorded in sweep.json.")) -> None:
    """Rebuild a sweep's tables, plots and report.html from its folder, refreshed from the run store (trains nothing)."""  # noqa: E501
    from flip.sweep import report

    result = report.regenerate(out, fit=fit)
    if result["store_note"]:
        console.print(result["store_note"])
    _print_report(result, out)
