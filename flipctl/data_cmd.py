"""`flipctl data ...`: the built-in dataset, JPEG shards for loader timing, the emoji corpus."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from flip.data import builtin
from flip.data.emoji import EmojiConfig, build_emoji_corpus
from flip.data.synth import SCENE_KINDS, SynthConfig, check_scene_kind, is_complete, total_items, write_builtin_dataset
from flip.errors import ConfigError
from flipctl.console import make_console
from flipctl.errors import user_errors
from flipctl.help import HelpCommand, HelpGroup
from flipctl.values import parse_floats

app = typer.Typer(help="Datasets: generate the built-in one, JPEG shards for loader timing, or build the emoji corpus.",
                  no_args_is_help=True, cls=HelpGroup)
console = make_console(stderr=True)  # off a terminal: lines as long as their content, not cut at 80


def generating_bar() -> Progress:
    """The bar shown while the built-in data is generated (here, and by a sweep that needs it)."""
    return Progress(TextColumn("[bold]generating built-in dataset"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console)


def _generate(out: Path, cfg: SynthConfig) -> dict:
    with generating_bar() as progress:
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
    scenes: str = typer.Option(SynthConfig.scenes, metavar="|".join(SCENE_KINDS),
                               help="object sizes of the training and retrieval scenes: "
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
    json_out: Path | None = typer.Option(None, "--json", metavar="FILE",
                                         help="also write the figures to this JSON file"),
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


@app.command("emoji", cls=HelpCommand)
@user_errors
def emoji(
    out: Path = typer.Argument(..., help="output folder (built next to it, then moved into place)"),
    source: Path = typer.Option(..., "--from", help="a node_modules folder, or a folder holding the unpacked "
                                "packages emoji-datasource-apple, emoji-datasource-facebook and openmoji"),
    seed: int = typer.Option(EmojiConfig.seed, help="the held-out emoji, caption choices and samples follow it"),
    vendors: str = typer.Option(",".join(EmojiConfig.vendors), help="whose art to use (comma-separated)"),
    held_out_vendor: Optional[str] = typer.Option(None, help="vendor kept out of training, for the held-out-style "
                                                  "retrieval set. Default: openmoji if used, else the last vendor"),
    held_out_fraction: float = typer.Option(EmojiConfig.held_out_fraction, help="fraction of the emoji (with all "
                                            "their skin tones and art) kept out of training, per subcategory"),
    shard_size: int = typer.Option(EmojiConfig.shard_size, help="samples per training shard"),
    style_retrieval_images: int = typer.Option(EmojiConfig.style_retrieval_images, help="images in the "
                                               "held-out-style retrieval set (0: all of the held-out vendor's art)"),
    retrieval_captions: int = typer.Option(EmojiConfig.retrieval_captions, help="captions per retrieval image"),
    force: bool = typer.Option(False, "--force", help="replace an emoji corpus of other settings in OUT"),
) -> None:
    """Build a real image-text corpus from emoji art (npm packages): train shards, zero-shot and retrieval sets."""
    cfg = EmojiConfig(seed=seed, vendors=tuple(v.strip() for v in vendors.split(",") if v.strip()),
                      held_out_vendor=held_out_vendor, held_out_fraction=held_out_fraction, shard_size=shard_size,
                      style_retrieval_images=style_retrieval_images, retrieval_captions=retrieval_captions)
    with Progress(TextColumn("[bold]building emoji corpus"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, disable=not console.is_terminal) as progress:  # off a terminal: errors stay one line
        task = progress.add_task("emoji", total=None)
        result = build_emoji_corpus(out, source, cfg, force=force,
                                    progress=lambda done, total: progress.update(task, completed=done, total=total))
    stats = result.stats
    if not result.built:
        console.print(f"{out} already holds this corpus (same settings and packages): nothing to do")
    sets = stats["sets"]
    console.print(f"{out}: {sets['train']['samples']} training samples, {stats['bytes'] / 2**20:.1f} MiB; "
                  f"train with: flipctl train --data {out}/train --eval-zeroshot {out}/zeroshot/category "
                  f"--eval-data {out}/retrieval/style/captions.csv")
    Console().print_json(data={name: {k: v for k, v in s.items() if not isinstance(v, dict)}
                               for name, s in sets.items()})
