"""`flipctl data ...`: the built-in dataset."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from flip.data import builtin
from flip.data.synth import (SCENE_KINDS, SynthConfig, check_scene_kind, is_complete, total_items,
                             write_builtin_dataset)
from flip.errors import ConfigError
from flipctl.console import make_console
from flipctl.errors import user_errors
from flipctl.help import HelpCommand, HelpGroup
from flipctl.values import parse_floats

app = typer.Typer(help="Datasets: generate the built-in one, or JPEG shards for loader timing.", no_args_is_help=True,
                  cls=HelpGroup)
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


def _check_folder(out: Path) -> None:
    """Refuse an output folder that is a file before generating anything."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} is a file, not a folder to write the dataset to")


@app.command("synth", cls=HelpCommand)
@user_errors
def synth(
    out: Path = typer.Argument(..., metavar="OUT", help="output folder"),
    train_samples: int = typer.Option(SynthConfig.train_samples, help="training image-caption pairs"),
    shard_size: int = typer.Option(SynthConfig.shard_size, help="samples per webdataset shard"),
    image_size: int = typer.Option(SynthConfig.image_size, help="image side in pixels"),
    zeroshot_per_class: int = typer.Option(SynthConfig.zeroshot_per_class, help="held-out images per zero-shot class"),
    retrieval_images: int = typer.Option(SynthConfig.retrieval_images, help="held-out retrieval images"),
    captions_per_image: int = typer.Option(SynthConfig.captions_per_image, help="captions per retrieval image"),
    seed: int = typer.Option(SynthConfig.seed, help="everything is generated from this seed"),
    scenes: str = typer.Option(SynthConfig.scenes, metavar="|".join(SCENE_KINDS), help="object sizes of the training and retrieval scenes: "
                                                        f"{' or '.join(SCENE_KINDS)} (see `flipctl train --help`)"),
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
    if workers < 0:
        raise ConfigError(f"must be at least 0, got {workers}", key="workers")
    check_scene_kind(scenes)
    _check_folder(out)
    cfg = SynthConfig(seed=seed, train_samples=train_samples, shard_size=shard_size, image_size=image_size,
                      zeroshot_per_class=zeroshot_per_class, retrieval_images=retrieval_images,
                      captions_per_image=captions_per_image, scenes=scenes, workers=max(1, workers))
    info = _generate(out, cfg)
    Console().print_json(data=info)


@app.command("jpeg-shards", cls=HelpCommand)
@user_errors
def jpeg_shards(
    out: Path = typer.Argument(..., metavar="OUT", help="output folder"),
    image_size: int = typer.Option(384, help="image side in pixels (img2dataset's LAION shards: 384)"),
    samples: int = typer.Option(4096, help="image-caption pairs"),
    shard_size: int = typer.Option(512, help="samples per shard"),
    quality: int = typer.Option(90, help="JPEG quality (as img2dataset's)"),
    seed: int = typer.Option(0, help="everything is generated from this seed"),
) -> None:
    """Generate realistic JPEG shards in img2dataset's layout, to train or time the loader on.

    Photo-like spectra, ~70 KB at 384 px q90: the shards `flipctl bench --data synthetic-jpeg:SIZE` times.
    """
    from flip.data.synth_jpeg import JpegShardConfig, write_jpeg_shards

    for name, value, low in (("samples", samples, 1), ("shard_size", shard_size, 1), ("image_size", image_size, 32),
                             ("quality", quality, 1)):
        if value < low:
            raise ConfigError(f"must be at least {low}, got {value}", key=name)
    if quality > 100:
        raise ConfigError(f"must be at most 100, got {quality}", key="quality")
    _check_folder(out)
    paths = write_jpeg_shards(out, JpegShardConfig(image_size=image_size, quality=quality, samples=samples,
                                                   shard_size=shard_size, seed=seed))
    Console().print_json(data={"out": str(out), "shards": len(paths), "samples": samples, "image_size": image_size})


@app.command("mask-coverage", cls=HelpCommand)
@user_errors
def mask_coverage(
    scenes: str = typer.Option(SynthConfig.scenes, metavar="|".join(SCENE_KINDS), help="scene kind"),
    mask_ratios: str = typer.Option("0.5,0.75", metavar="X,...", help="mask ratios to report, comma-separated"),
    samples: int = typer.Option(2000, help="scenes to draw"),
    image_size: int = typer.Option(SynthConfig.image_size, help="training resolution in pixels"),
    patch_size: int = typer.Option(8, help="ViT patch size in pixels (tiny: 8)"),
    seed: int = typer.Option(0, help="seed of the drawn scenes"),
    json_out: Path | None = typer.Option(None, "--json", metavar="FILE", help="also write the figures to this JSON file"),
) -> None:
    """How often FLIP's random mask hides every patch of a built-in scene's object (one a caption names)."""
    import dataclasses
    import json

    from rich.table import Table

    from flip.data.mask_coverage import mask_coverage as coverage

    patches, rows = coverage(scenes, parse_floats(mask_ratios, "mask_ratios"), samples, image_size, patch_size, seed)
    table = Table(title=f"{scenes} scenes: {samples} drawn, {(image_size // patch_size) ** 2} patches of "
                        f"{patch_size} px; mean patches per object: "
                        + ", ".join(f"{size} {n:.1f}" for size, n in patches.items()))
    table.add_column("mask", justify="right")
    table.add_column("kept patches", justify="right")
    for size in patches:
        table.add_column(f"P({size} object hidden)", justify="right")
    table.add_column("scenes with an object hidden", justify="right")
    for row in rows:
        table.add_row(f"{row.mask_ratio:.0%}", str(row.kept_patches),
                      *(f"{row.hidden_by_size[size]:.1%}" for size in patches), f"{row.scenes_with_hidden_object:.1%}")
    make_console().print(table)  # off a terminal at its natural width: a piped table prints whole
    if json_out is not None:
        report = {"scenes": scenes, "samples": samples, "image_size": image_size, "patch_size": patch_size,
                  "seed": seed, "patches_per_object": patches, "rows": [dataclasses.asdict(r) for r in rows]}
        json_out.write_text(json.dumps(report, indent=2) + "\n")
