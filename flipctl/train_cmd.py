"""`flipctl train` and `flipctl tune-unmasked`."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from flip.train.config import TrainConfig, load_toml
from flip.train.reporting import RichReporter
from flip.train.trainer import resolve, train, tune_unmasked
from flipctl.data_cmd import ensure_builtin_with_progress
from flipctl.errors import user_errors

console = Console()


def print_summary(summary: dict) -> None:
    if os.environ.get("RANK", "0") != "0":
        return  # under torchrun, rank 0 reports
    table = Table(title=f"run {summary['run_dir']}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("model", "mask_ratio", "steps", "samples_seen", "wall_time_s", "samples_per_s",
                "final_loss", "final_temperature", "skipped_samples", "train_flops_total"):
        value = summary.get(key)
        table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    for key, value in summary.get("eval", {}).items():
        table.add_row(key, f"{value:.2f}")
    console.print(table)


@user_errors
def train_command(
    data: Optional[str] = typer.Option(None, help="webdataset shards: brace pattern, dir or glob; several joined by '::'. Default: the built-in dataset."),
    model: Optional[str] = typer.Option(None, help="model preset (see `flipctl models`). Default: tiny."),
    mask_ratio: Optional[float] = typer.Option(None, help="fraction of image patches dropped, in [0, 1). Default 0.5."),
    mask_strategy: Optional[str] = typer.Option(None, help="which patches are dropped: random (paper), block (BEiT-style rectangles) or grid (a regular sub-grid, random offset)."),
    text_mask: Optional[str] = typer.Option(None, help="text token dropping: none (default), random, or padding (padding first, then random real tokens)."),
    text_mask_ratio: Optional[float] = typer.Option(None, help="fraction of text positions dropped (32 -> 16 tokens at 0.5); the SOT token is always kept."),
    recon_weight: Optional[float] = typer.Option(None, help="weight of an MAE pixel-reconstruction loss on the masked patches (0 = off, the paper's default)."),
    decoder_depth: Optional[int] = typer.Option(None, help="reconstruction decoder blocks. Default 2."),
    decoder_width: Optional[int] = typer.Option(None, help="reconstruction decoder width. Default 128."),
    batch_size: Optional[int] = typer.Option(None, help="global batch size. Default 256."),
    samples: Optional[int] = typer.Option(None, help="training budget in samples (default on built-in data: 60k for tiny)."),
    epochs: Optional[float] = typer.Option(None, help="training budget in epochs of --data (instead of --samples)."),
    lr: Optional[float] = typer.Option(None, help="peak learning rate. Default: base lr x batch/256."),
    base_lr: Optional[float] = typer.Option(None, help="lr per 256 samples (paper presets 4e-6, tiny/small 1e-3)."),
    warmup: Optional[int] = typer.Option(None, help="linear warm-up, in samples. Default: 5% of the budget."),
    out: Optional[str] = typer.Option(None, help="run directory. Default: runs/<model>-mask<r>-<time>."),
    resume: bool = typer.Option(False, "--resume", help="continue the run in --out from its last checkpoint."),
    seed: Optional[int] = typer.Option(None, help="random seed; the same seed repeats a run exactly."),
    precision: Optional[str] = typer.Option(None, help="fp32 (default, as the paper) or bf16 autocast."),
    workers: Optional[int] = typer.Option(None, help="data loader worker processes. Default 2."),
    grad_clip: Optional[float] = typer.Option(None, help="clip the gradient norm to this value."),
    context_length: Optional[int] = typer.Option(None, help="text tokens per caption. Default 32."),
    resampled: Optional[bool] = typer.Option(None, "--resampled/--no-resampled", help="draw shards with replacement (endless corpora)."),
    eval_data: Optional[str] = typer.Option(None, help="retrieval CSV (filepath,caption) for the periodic quick eval."),
    eval_every: Optional[int] = typer.Option(None, help="steps between quick retrieval evals. Default 100."),
    ckpt_every: Optional[int] = typer.Option(None, help="steps between checkpoints. Default 100."),
    log_every: Optional[int] = typer.Option(None, help="steps between metric log lines. Default 10."),
    device: Optional[str] = typer.Option(None, help="auto, cpu or cuda."),
    compile: Optional[bool] = typer.Option(None, "--compile/--no-compile", help="torch.compile the model."),
    config: Optional[Path] = typer.Option(None, help="TOML file of train settings; flags given here override it."),
) -> None:
    """Train a FLIP model. With no flags: the tiny model on the built-in dataset, in minutes on a CPU."""
    flags = {k: v for k, v in locals().items() if v is not None and k not in ("config", "resume")}
    if resume:
        if out is None:
            raise ValueError("--resume needs --out RUN_DIR: the run to continue")
        ignored = sorted(k for k in flags if k != "out") + (["config"] if config else [])
        if ignored:
            names = ", ".join("--" + k.replace("_", "-") for k in ignored)
            raise ValueError(f"--resume continues {out} with its saved config; drop {names}")
        summary = train(TrainConfig(out=out), resume=True, reporter=RichReporter())
    else:
        values = load_toml(config) if config else {}
        values.update(flags)
        cfg = resolve(TrainConfig.from_dict(values))
        if data is None and "data" not in values:
            ensure_builtin_with_progress()
        console.print(f"run directory: [bold]{cfg.out}[/bold]")
        summary = train(cfg, reporter=RichReporter())
    print_summary(summary)


@user_errors
def tune_unmasked_command(
    ckpt: str = typer.Option(..., help="run directory or checkpoint to continue from."),
    samples: Optional[int] = typer.Option(None, help="tuning budget in samples. Default: 10% of the parent's budget."),
    epochs: Optional[float] = typer.Option(None, help="tuning budget in epochs of the data (the paper: 0.32)."),
    lr: Optional[float] = typer.Option(None, help="peak lr. Default: the parent's peak lr / 100 (paper: 4e-8 vs 4e-6 per 256)."),
    warmup: Optional[int] = typer.Option(None, help="warm-up samples. Default: 20% of the tuning budget."),
    out: Optional[str] = typer.Option(None, help="new run directory. Default: <parent run>-unmasked."),
) -> None:
    """Unmasked tuning: continue a masked run with mask ratio 0 at a low lr (paper Table 1e)."""
    summary = tune_unmasked(ckpt, samples=samples, epochs=epochs, lr=lr, warmup=warmup, out=out,
                            reporter=RichReporter())
    print_summary(summary)
    console.print(json.dumps({"parent": summary["parent"]}))
