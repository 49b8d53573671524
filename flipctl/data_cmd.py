"""`flipctl data ...`: the built-in dataset."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from flip.data import builtin
from flip.data.synth import SynthConfig, is_complete, total_items, write_builtin_dataset
from flip.errors import ConfigError
from flipctl.errors import user_errors

app = typer.Typer(help="Datasets: generate the built-in one.", no_args_is_help=True)
console = Console(stderr=True)


def _generate(out: Path, cfg: SynthConfig) -> dict:
    with Progress(TextColumn("[bold]generating built-in dataset"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task("synth", total=total_items(cfg))
        return write_builtin_dataset(out, cfg, progress=lambda n: progress.advance(task, n))


def ensure_builtin_with_progress(cfg: SynthConfig = SynthConfig()) -> Path:
    out = builtin.builtin_dir(cfg)
    if not is_complete(out, cfg):
        _generate(out, cfg)
    return out


@app.command("synth")
@user_errors
def synth(
    out: Path = typer.Argument(..., help="output folder"),
    train_samples: int = typer.Option(SynthConfig.train_samples, help="training image-caption pairs"),
    shard_size: int = typer.Option(SynthConfig.shard_size, help="samples per webdataset shard"),
    image_size: int = typer.Option(SynthConfig.image_size, help="image side in pixels"),
    zeroshot_per_class: int = typer.Option(SynthConfig.zeroshot_per_class, help="held-out images per zero-shot class"),
    retrieval_images: int = typer.Option(SynthConfig.retrieval_images, help="held-out retrieval images"),
    captions_per_image: int = typer.Option(SynthConfig.captions_per_image, help="captions per retrieval image"),
    seed: int = typer.Option(SynthConfig.seed, help="everything is generated from this seed"),
    workers: int = typer.Option(SynthConfig.workers, help="generator processes"),
) -> None:
    """Generate the built-in procedural dataset: webdataset train shards plus zero-shot and retrieval sets."""
    for name, value in (("train_samples", train_samples), ("shard_size", shard_size),
                        ("retrieval_images", retrieval_images), ("captions_per_image", captions_per_image),
                        ("zeroshot_per_class", zeroshot_per_class)):
        if value < 1:
            raise ConfigError(f"must be at least 1, got {value}", key=name)
    if image_size < 16:
        raise ConfigError(f"must be at least 16, got {image_size}", key="image_size")
    cfg = SynthConfig(seed=seed, train_samples=train_samples, shard_size=shard_size, image_size=image_size,
                      zeroshot_per_class=zeroshot_per_class, retrieval_images=retrieval_images,
                      captions_per_image=captions_per_image, workers=max(1, workers))
    info = _generate(out, cfg)
    Console().print_json(data=info)
