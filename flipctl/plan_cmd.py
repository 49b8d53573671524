"""`flipctl plan`: will a run fit its GPUs, and with which settings (the estimate is `flip.capacity`'s)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from flip.bench.defaults import DEFAULT_MFU, DEFAULT_PEAK_TFLOPS
from flip.capacity import HEADROOM, LEGACY_LOADER_SAMPLES_PER_CORE, launch_flags, plan_run
from flip.errors import ConfigError
from flipctl.console import make_console
from flipctl.errors import user_errors

console = make_console()


@user_errors
def plan_command(
    model: str = typer.Option(..., metavar="PRESET", help="model preset (see `flipctl models`)."),
    batch_size: int = typer.Option(..., help="global batch size."),
    gpus: int = typer.Option(..., help="GPUs in all, over every node."),
    gpu_memory: str = typer.Option("80GiB", metavar="SIZE", help="memory of one GPU, e.g. 80GiB or 40GB."),
    mask_ratio: float = typer.Option(0.5, help="fraction of image patches dropped."),
    gpus_per_node: int = typer.Option(8, help="GPUs per machine, for the launch flags printed."),
    gpu_peak_tflops: float = typer.Option(DEFAULT_PEAK_TFLOPS, help="one GPU's dense bf16 peak, TFLOP/s "
                                          "(989: H100/H200 SXM), for the input rate a GPU consumes."),
    mfu: float = typer.Option(DEFAULT_MFU, help="the model FLOPs utilisation assumed for that rate."),
    loader_samples_per_core: Optional[float] = typer.Option(
        None, metavar="X", help="samples/s one data-loader core delivers. Default: the committed `flipctl bench "
                                "--data` measurement of the worker path (shipped with flipctl), else "
                                f"{LEGACY_LOADER_SAMPLES_PER_CORE:g} (issue 13's measurement of the original loader)."),
    json_out: Optional[Path] = typer.Option(None, "--json", metavar="FILE", help="also write the plan as JSON here."),
) -> None:
    """Estimate whether a run fits its GPUs' memory, and the flags that make it fit.

    Memory per GPU from the preset's shapes, with and without activation checkpointing, gradient
    accumulation and parameter sharding (FSDP).
    """
    from flip.bench.peak_memory import format_size, parse_size

    try:
        memory = parse_size(gpu_memory)
    except ConfigError as exc:
        raise ConfigError(exc.detail, key="gpu_memory") from None
    if gpus_per_node < 1:
        raise ConfigError(f"must be at least 1, got {gpus_per_node}", key="gpus_per_node")
    plan = plan_run(model, batch_size, gpus, memory, mask_ratio, gpu_peak_tflops, mfu, loader_samples_per_core)

    console.print(f"{plan.model}, global batch {plan.batch_size} on {plan.gpus} GPUs of {format_size(memory)} "
                  f"(mask {plan.mask_ratio:g}): {plan.per_device_batch} samples per GPU per step")
    console.print(f"parameters {plan.parameters / 1e6:.1f}M: weights, gradients and AdamW moments "
                  f"{format_size(plan.state_bytes)} per GPU replicated; activations "
                  f"{format_size(plan.activation_bytes)} per sample, "
                  f"{format_size(plan.checkpointed_activation_bytes)} with activation checkpointing")
    table = Table(title=f"estimated peak per GPU (fits: under {HEADROOM:.0%} of its memory)")
    for name in ("settings", "samples at once", "memory", "fits"):
        table.add_column(name, justify="left" if name == "settings" else "right")
    shown = [v for v in plan.variants if v.accum_steps == 1 or v is plan.choice or (
        v.fits and v.fsdp and v is next((w for w in plan.variants if w.fits and w.fsdp), None))]
    for v in shown:
        table.add_row(v.label, str(v.chunk), format_size(int(v.bytes)), "yes" if v.fits else "no")
    console.print(table)

    train = f"flipctl train --model {plan.model} --batch-size {plan.batch_size} --mask-ratio {plan.mask_ratio:g}"
    if plan.choice is not None:
        flags = " ".join([*plan.choice.flags, launch_flags(gpus, gpus_per_node)])
        console.print("--fsdp needed: " + ("yes, nothing fits with replicated parameters" if plan.fsdp_needed
                                           else "no, it fits replicated (DDP)"))
        console.print(f"fits with {plan.choice.label}; use:\n  {train} {flags} ...", soft_wrap=True)
    else:
        console.print("[red]does not fit[/red], whatever the accumulation steps, with replicated or sharded "
                      "(--fsdp) parameters: use more GPUs")
    need = plan.loader
    console.print(f"input: at {need.mfu:.0%} MFU of {need.gpu_peak_tflops:g} TFLOP/s, a GPU's step "
                  f"({need.flops_per_sample / 1e9:.0f} GFLOP a sample at mask {plan.mask_ratio:g}) consumes "
                  f"{need.samples_per_s:,.0f} samples/s: {need.cores} loader cores per GPU at "
                  f"{need.samples_per_core:.0f} samples/s per core ({need.samples_per_core_source})", soft_wrap=True)
    if json_out:
        record = {**dataclasses.asdict(plan), "usable_bytes": plan.usable_bytes}
        json_out.write_text(json.dumps(record, indent=2))
