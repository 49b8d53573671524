"""`flipctl bench`: training-step speed against the FLOP limit, against OpenCLIP, memory and data."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from flip.bench.defaults import DEFAULT_HOST_CORES, DEFAULT_MFU
from flip.choices import DECODE_MODES
from flip.errors import ConfigError
from flipctl.console import make_console
from flipctl.data_cmd import ensure_builtin_with_progress
from flipctl.errors import user_errors
from flipctl.values import parse_floats

console = make_console()


def parse_ratios(text: str) -> tuple[float, ...]:
    return parse_floats(text, "mask_ratios")


def make_config(model: str, batch_size: int, mask_ratios: str, device: str, precision: str, compile: bool,
                compile_backend: Optional[str], steps: int, warmup: int, compare: Optional[str], split: bool,
                data: bool, data_path: Optional[str], workers: int, max_batch: bool, memory_limit: Optional[str],
                peak_tflops: Optional[float], seed: int, ablations: bool = False,
                variants: Optional[bool] = None):
    """CLI values -> a validated BenchConfig; bad input raises ConfigError naming the setting."""
    from flip.bench.peak_memory import parse_size
    from flip.bench.runner import BenchConfig

    cfg = BenchConfig(
        model=model, batch_size=batch_size, mask_ratios=parse_ratios(mask_ratios), device=device,
        precision=precision, compile=compile, compile_backend=compile_backend, steps=steps, warmup=warmup,
        compare=compare, split=split, data=data, data_path=data_path, workers=workers, max_batch=max_batch,
        memory_limit=parse_size(memory_limit) if memory_limit is not None else None, peak_tflops=peak_tflops,
        seed=seed, ablations=ablations, variants=variants,
    )
    return cfg.validate()


@user_errors
def bench_command(
    ctx: typer.Context,
    model: str = typer.Option("tiny", metavar="PRESET", help="model preset (see `flipctl models`)."),
    batch_size: int = typer.Option(256, help="batch per step (as the trainer's)."),
    mask_ratios: str = typer.Option("0,0.5,0.75", metavar="X,...",
                                    help="image mask ratios, comma-separated; 0 is always timed."),
    device: str = typer.Option("auto", metavar="auto|cpu|cuda[:N]", help="the device to time on."),
    precision: str = typer.Option("fp32", metavar="fp32|bf16", help="fp32, or bf16 autocast."),
    compile: bool = typer.Option(False, "--compile/--no-compile",
                                 help="torch.compile the forward (both implementations)."),
    compile_backend: Optional[str] = typer.Option(None, metavar="NAME", help="torch.compile backend. Default: inductor "
                                                  "where it builds kernels here, else aot_eager (a note says why); "
                                                  "aot_eager checks tracing quickly."),
    variants: Optional[bool] = typer.Option(None, "--variants/--no-variants", show_default=False,
                                            help="also time our step in bf16 and compiled (bf16 eager, bf16 compiled, "
                                                 "--precision compiled) against the configured one. Default: on a "
                                                 "CUDA device."),
    steps: int = typer.Option(7, help="timed steps per configuration; the median is reported."),
    warmup: int = typer.Option(2, help="untimed steps per configuration first."),
    compare: Optional[str] = typer.Option(None, metavar="open_clip", help="also time open_clip's model of the same "
                                          "network with patch_dropout, interleaved with ours."),
    split: bool = typer.Option(True, "--split/--no-split",
                               help="time image tower, text tower, loss and optimizer separately."),
    data: bool = typer.Option(False, "--data", help="also time the data loader alone (decode, augment, tokenise); "
                                                    "with SHARDS or synthetic-jpeg:SIZE, the decode paths instead."),
    data_spec: Optional[str] = typer.Argument(
        None, metavar="SHARDS|synthetic-jpeg:SIZE", show_default=False,
        help="with --data: time the decode paths side by side instead of the steps (legacy PIL, worker, device; "
             "per core, and the cores per accelerator each needs at each mask ratio), on these shards or on "
             "generated ones (synthetic-jpeg:384: 384 px JPEG q90, img2dataset's layout)."),
    decode: str = typer.Option(",".join(DECODE_MODES), metavar="PATH,...",
                               help="decode paths for --data SHARDS, comma-separated: legacy, worker, device."),
    mfu: float = typer.Option(DEFAULT_MFU, help="for --data SHARDS: the MFU at which the step's sample rate is "
                                                "computed from its FLOPs and --peak-tflops (an H200 SXM's 989 when "
                                                "not given)."),
    host_cores: int = typer.Option(DEFAULT_HOST_CORES, help="for --data SHARDS: CPU cores per accelerator, to name "
                                                            "the bottleneck."),
    data_path: Optional[str] = typer.Option(None, metavar="SHARDS", help="shards for --data. Default: the built-in "
                                            "dataset."),
    workers: int = typer.Option(2, help="data loader workers for --data (as the trainer's)."),
    max_batch: bool = typer.Option(False, "--max-batch",
                                   help="find the largest batch per mask ratio that fits --memory-limit."),
    memory_limit: Optional[str] = typer.Option(None, metavar="SIZE", help="memory for --max-batch, e.g. 4GiB or "
                                               "1500MB. Default: the peak of the mask-0 step at --batch-size."),
    peak_tflops: Optional[float] = typer.Option(None, help="the device's peak TFLOP/s for MFU. Default: looked up "
                                                "from the CUDA device's name (flip/bench/peaks.py: H100/H200 SXM, "
                                                "PCIe, NVL, A100; dense bf16, tf32 or fp32 as the step runs); no MFU "
                                                "for an unknown device."),
    threads: Optional[int] = typer.Option(None, help="torch CPU threads. Default: torch's (one per core)."),
    ablations: bool = typer.Option(False, "--ablations", help="also time the paper's knobs against the plain step: 50% "
                                   "padding-first text masking, and --recon-weight 1 (MAE decoder)."),
    seed: int = typer.Option(0, help="seed of the models and the synthetic batch."),
    json_out: Optional[Path] = typer.Option(None, "--json", metavar="FILE",
                                            help="write the full report (every figure) to this JSON file."),
) -> None:
    """Time training steps per mask ratio: throughput, FLOPs, ideal vs measured speed-up, memory, time split."""
    import torch

    from flip.bench.runner import run_bench

    if data_spec is not None:
        if not data:
            raise ConfigError(f"{data_spec!r}: a data spec is timed with --data (flipctl bench --data {data_spec})")
        return _data_paths(ctx, data_spec, model, batch_size, workers, decode, mask_ratios, peak_tflops, mfu,
                           host_cores, device, seed, json_out)
    cfg = make_config(model, batch_size, mask_ratios, device, precision, compile, compile_backend, steps, warmup,
                      compare, split, data, data_path, workers, max_batch, memory_limit, peak_tflops, seed,
                      ablations, variants)
    if threads is not None:
        if threads < 1:
            raise ConfigError(f"must be at least 1, got {threads}", key="threads")
        torch.set_num_threads(threads)
    if data and data_path is None:
        ensure_builtin_with_progress()
    status_console = Console(stderr=True)
    with status_console.status("bench") as status:
        report = run_bench(cfg, progress=lambda message: status.update(f"bench: {message}"))
    _finish(ctx, report, render_step_summary, json_out)


def _data_paths(ctx, data, model, batch_size, workers, decode, mask_ratios, peak_tflops, mfu, host_cores, device,
                seed, json_out) -> None:
    """`--data SHARDS|synthetic-jpeg:SIZE`: the decode paths side by side (flip.bench.data)."""
    from flip.bench.data import DataBenchConfig, run_data_bench

    cfg = DataBenchConfig(data=data, model=model, batch_size=batch_size, workers=workers,
                          paths=tuple(p.strip() for p in decode.split(",") if p.strip()),
                          mask_ratios=parse_ratios(mask_ratios), peak_tflops=peak_tflops, mfu=mfu,
                          host_cores=host_cores, device=device, seed=seed).validate()
    with Console(stderr=True).status("bench --data") as status:
        report = run_data_bench(cfg, progress=lambda message: status.update(f"bench --data: {message}"))
    _finish(ctx, report, render_data_summary, json_out)


def _finish(ctx: typer.Context, report: dict, render_report, json_out: Optional[Path]) -> None:
    """Stamp the report with its command line, print it, and write it as JSON when asked."""
    report["command"] = _command_line(ctx)
    render_report(report, console)
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(report, indent=2) + "\n")
        console.print(f"report written to [bold]{json_out}[/bold]")


def render_step_summary(report: dict, console: Console) -> None:
    """Print a `run_bench` report: the tables and lines of `flip.bench.summary`."""
    from flip.bench.summary import step_summary

    print_blocks(step_summary(report), console)


def render_data_summary(report: dict, console: Console) -> None:
    """Print a `run_data_bench` report: the tables and lines of `flip.bench.data_summary`."""
    from flip.bench.data_summary import data_paths_summary

    print_blocks(data_paths_summary(report), console)


def print_blocks(blocks: list, console: Console) -> None:
    """Draw a bench summary's blocks with rich: a check mark green (pass) or red (MISS), a footnote dimmed."""
    from rich.markup import escape
    from rich.table import Table as RichTable

    from flip.bench.summary import Mark, Table

    def markup(cell) -> str:  # the library's text is text: a "[...]" in it is not a rich tag
        return (f"[{'green' if cell.passed else 'red'}]{escape(cell.text)}[/]" if isinstance(cell, Mark)
                else escape(cell))

    for block in blocks:
        if isinstance(block, Table):
            table = RichTable(title=escape(block.title))
            for column in block.columns:
                table.add_column(escape(column.name), justify=column.justify)
            for row in block.rows:
                table.add_row(*map(markup, row))
            console.print(table)
        else:
            text = "".join(map(markup, block.parts))
            console.print(f"[dim]{text}[/dim]" if block.footnote else text)


def _command_line(ctx: typer.Context) -> str:
    """The flags given on this command line (not the defaults), as a shell line."""
    words = ["flipctl", "bench"]
    for param in ctx.command.params:
        source = ctx.get_parameter_source(param.name)
        if source is None or source.name != "COMMANDLINE":
            continue
        value = ctx.params[param.name]
        if param.param_type_name == "argument":
            words.append(str(value))
        elif getattr(param, "is_flag", False):
            words.append(param.opts[0] if value else param.secondary_opts[0])
        else:
            words += [param.opts[0], str(value)]
    return shlex.join(words)
