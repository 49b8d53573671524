"""`flipctl sweep` and `flipctl report`: parse, print the plan, show progress; the work is in `flip.sweep`."""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path
from typing import Optional

import typer
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from flip.distributed import resolve_device
from flip.errors import ConfigError, DataError
from flip.launch import SlurmSweepRuns
from flip.sweep import estimate, execute, memory, plan, report
from flip.sweep.folder import check_plan_keeps_finished
from flip.sweep.spec import SpecError, default_preset, load_spec, shipped_specs, with_data
from flip.sweep.store import RunStore
from flipctl.console import make_console
from flipctl.errors import user_errors
from flipctl.launch_opts import LaunchFlags, with_launch_flags

console = make_console()


class RichSweepProgress:
    """Runs done / running / left, the running runs' steps, elapsed and estimated time left."""

    def __init__(self):
        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                                 console=console, transient=False)
        self.overall = None
        self.run_tasks: dict[str, int] = {}
        self.seen_finished: set[str] = set()
        self.plain = not console.is_terminal

    def start(self, jobs, todo) -> None:
        self.total, self.todo = len(jobs), len(todo)
        self.already = self.total - self.todo
        if self.plain:
            console.print(f"sweep: {self.total} runs, {self.already} already done, {self.todo} to run")
            return
        self.progress.start()
        self.overall = self.progress.add_task("sweep", total=self.todo, info=f"{self.already} already done")

    def update(self, running, finished) -> None:
        new = [rid for rid in finished if rid not in self.seen_finished]
        for rid in new:
            self.seen_finished.add(rid)
            if self.plain or rid in self.run_tasks:
                console.print(f"{finished[rid]:>7}  {rid}")
            if rid in self.run_tasks:
                self.progress.remove_task(self.run_tasks.pop(rid))
        if self.plain:
            return
        done_now = len(self.seen_finished) - self.already
        self.progress.update(self.overall, completed=max(0, done_now),
                             info=f"running {len(running)}, left {self.todo - max(0, done_now) - len(running)}")
        for rid, (step, total) in running.items():
            if rid not in self.run_tasks:
                self.run_tasks[rid] = self.progress.add_task(f"  {rid}", total=max(1, total), info="")
            self.progress.update(self.run_tasks[rid], completed=step, total=max(1, total))

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


def _print_plan(jobs, store: RunStore, device, est: dict, warnings: list[str]) -> None:
    table = Table(title=f"plan: {len(jobs)} runs")
    for col in ("run", "row", "seed", "variant", "batch", "steps", "samples", "est. time", "state"):
        table.add_column(col, justify="right" if col in ("seed", "batch", "steps", "samples", "est. time") else "left")
    left = 0.0
    for job in jobs:
        seconds, how = est.get(job.run_id, (None, ""))
        state = "done" if execute.is_complete(job, store) else (store.status(job.run_id) or {}).get("state", "to run")
        if state != "done" and seconds:
            left += seconds
        table.add_row(job.run_id, job.row, str(job.seed), job.variant, str(job.config.batch_size), str(job.steps),
                      str(job.samples), _fmt_s(seconds) + ("" if how == "timed" else f" ({how})"), state)
    console.print(table)
    console.print(f"estimated training time left: {_fmt_s(left)} on {device} (evaluations not included)")
    for line in warnings:
        console.print(f"[yellow]warning:[/yellow] {line}")


def _check_eval_sets(eval_data: str | None, eval_zeroshot: str | None) -> None:
    """Read the evaluation sets given as flags as the runs' evaluations will (their lists of images and
    captions, no image decoded): a wrong path or format fails now, also in a dry run, not after training."""
    from flip.eval.datasets import load_classification, load_retrieval

    for key, path, load in (("eval_data", eval_data, load_retrieval), ("eval_zeroshot", eval_zeroshot,
                                                                        load_classification)):
        if path is not None:
            try:
                load(path)
            except DataError as exc:
                raise ConfigError(f"cannot be used: {exc}", key=key) from None


@user_errors
@with_launch_flags(torchrun=False)
def sweep_command(
    spec_name: Optional[str] = typer.Argument(None, metavar="NAME|SPEC.toml",
                                              help="a shipped sweep (see --list) or a spec file."),
    preset: Optional[str] = typer.Option(None, help="smoke (minutes, for tests), tiny (about an hour on a CPU) "
                                         "or paper (the paper's settings, for a GPU cluster). Default: tiny when "
                                         "the spec has presets."),
    out: Optional[Path] = typer.Option(None, help="report folder. Default: runs/sweeps/NAME-PRESET."),
    store: Path = typer.Option(Path("runs/store"), help="run store shared by all sweeps."),
    seeds: Optional[int] = typer.Option(None, help="seeds per row (overrides the spec)."),
    jobs: int = typer.Option(1, help="runs at once on this machine (each in its own process)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the plan with estimated times; train nothing."),
    list_specs: bool = typer.Option(False, "--list", help="list the shipped sweeps and exit."),
    data: Optional[str] = typer.Option(None, help="train on these webdataset shards instead of the built-in data."),
    eval_data: Optional[str] = typer.Option(None, help="retrieval set to evaluate on (CSV, Karpathy JSON, shards)."),
    eval_zeroshot: Optional[str] = typer.Option(None, help="zero-shot set (class folders) to evaluate on."),
    max_parallel: Optional[int] = typer.Option(None, help="with --launcher slurm: runs queued or running on the "
                                               "cluster at once (each run a SLURM job). Default: all."),
    launch: LaunchFlags = LaunchFlags(),
) -> None:
    """Run a study: a whole ablation or scaling sweep, ending in paper-style tables, plots and report.html."""
    if list_specs:
        _list_specs()
        return
    if spec_name is None:
        raise SpecError("give a sweep name or spec file (flipctl sweep --list shows the shipped ones)")
    if jobs < 1:
        raise SpecError(f"--jobs must be >= 1, got {jobs}")
    if max_parallel is not None and (launch.launcher != "slurm" or max_parallel < 1):
        raise ConfigError("takes a number >= 1, with --launcher slurm (here: --jobs)", key="max_parallel")
    spawn = SlurmSweepRuns(launch.slurm()) if launch.launcher == "slurm" else None
    spec = load_spec(spec_name, preset or default_preset(spec_name))
    if seeds is not None:
        if seeds < 1:
            raise SpecError(f"--seeds must be >= 1, got {seeds}")
        import dataclasses
        spec = dataclasses.replace(spec, seeds=seeds)
    overrides = {"data": data, "eval_data": eval_data, "eval_zeroshot": eval_zeroshot}
    if data is not None and (spec.evals.zeroshot and eval_zeroshot is None or spec.evals.retrieval and eval_data is None):
        raise SpecError("with --data, give the evaluation sets too: --eval-zeroshot (class folders) and --eval-data "
                        "(retrieval), since the built-in ones say nothing about your data")
    spec = with_data(spec, **overrides)
    _check_eval_sets(eval_data, eval_zeroshot)
    run_store = RunStore(store, read_only=dry_run)
    out = out or Path("runs/sweeps") / f"{spec.name}-{spec.preset or 'custom'}"
    device = resolve_device(spec.base.get("device", "auto"))

    if not dry_run and spec.base.get("data") is None:
        from flip.data.synth import SynthConfig
        from flipctl.data_cmd import ensure_builtin_with_progress
        for scenes in sorted({spec.config(row, seed=0).builtin_scenes for row in spec.rows}):
            ensure_builtin_with_progress(SynthConfig(scenes=scenes))
    batches = memory.matched_batches(spec, run_store, device, log=lambda text: console.print(text))
    jobs_list = plan.build_plan(spec, run_store, batches)
    if batches:
        console.print("memory-matched batches: " + ", ".join(
            f"{label} -> {b} ({(peak or 0) / 2**20:.0f} MiB)" for label, (b, peak) in batches.items()))
    command = "flipctl " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    if dry_run:
        est = estimate.estimate(jobs_list, run_store, device)
        warnings = memory.memory_warnings([j.config for j in jobs_list if j.kind == "train"], run_store, device)
        _print_plan(jobs_list, run_store, device, est, warnings)
        return

    check_plan_keeps_finished(out, jobs_list)  # before sweep.json changes: the folder's finished runs stay
    out.mkdir(parents=True, exist_ok=True)
    manifest = report.manifest_for(spec, jobs_list, run_store, overrides, command)
    manifest.write(out)
    start = time.perf_counter()
    parallel = (max_parallel or len(jobs_list)) if spawn else jobs
    outcome = execute.run_jobs(jobs_list, run_store, parallel=parallel, progress=RichSweepProgress(), spawn=spawn)
    console.print(f"sweep {spec.name}: {len(outcome.ran)} runs executed, {len(outcome.skipped_done)} already done, "
                  f"{len(outcome.failed)} failed or skipped, in {_fmt_s(time.perf_counter() - start)}")
    _print_report(report.write_report(out, spec, jobs_list, run_store, command, manifest.commit), out)
    if outcome.failed:
        for rid in outcome.failed:
            console.print(f"[red]{outcome.states[rid]}[/red] {rid}: {(run_store.status(rid) or {}).get('error', '')} "
                          f"(log: {run_store.sweep_dir(rid) / 'worker.log'})")
        raise typer.Exit(1)


def _print_report(result: dict, out: Path) -> None:
    display = result["table"].display
    table = Table(title=f"{out}")
    for col in display.columns:
        table.add_column(str(col), justify="left" if col == "row" else "right")
    for _, r in display.iterrows():
        table.add_row(*[str(v) for v in r.values])
    console.print(table)
    for note in result["notes"]:
        console.print(f"  {note}")
    console.print(f"wrote {len(result['paths'])} files to {out} (report: {out / 'report.html'})")


@user_errors
def report_command(out: Path = typer.Argument(..., help="a sweep's report folder (holding sweep.json).")) -> None:
    """Rebuild a sweep's tables, plots and report.html from its folder, refreshed from the run store (trains nothing)."""
    result = report.regenerate(out)
    if result["store_note"]:
        console.print(result["store_note"])
    _print_report(result, out)
