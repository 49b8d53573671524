"""`flipctl eval zeroshot | retrieval | linear-probe`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from flip.data import builtin
from flip.distributed import resolve_device
from flip.eval.datasets import (
    load_classification,
    load_probe_splits,
    load_retrieval,
    with_classnames,
)
from flip.eval.features import IMAGES, Masking, Meter, Runtime
from flip.eval.linear_probe import ProbeConfig, evaluate_linear_probe
from flip.eval.retrieval import evaluate_retrieval
from flip.eval.templates import as_text, resolve_classnames, resolve_templates
from flip.eval.zeroshot import evaluate_zeroshot
from flip.train.checkpoint import load_model, resolve_checkpoint
from flipctl.console import make_console
from flipctl.data_cmd import ensure_builtin_with_progress
from flipctl.errors import user_errors

app = typer.Typer(help="Evaluate a checkpoint: zero-shot classification, retrieval, linear probe.",
                  no_args_is_help=True)
console = make_console()

# Options shared by the commands.
CKPT = typer.Option(..., "--ckpt", help="run directory (its latest checkpoint) or checkpoint directory.")
MASK_RATIO = typer.Option(0.0, help="masked inference: drop this fraction of each image's patches "
                                    "(random, seeded). Default 0: the full image.")
VIEWS = typer.Option(1, help="ensemble of K complementary masked views that together cover every patch "
                             "exactly once (each keeps ~1/K of the patches); the K L2-normalised image "
                             "embeddings are averaged, then renormalised. Paper Table 1d.")
SEED = typer.Option(0, help="seed of the masks drawn by --mask-ratio / --views.")
BATCH_SIZE = typer.Option(256, help="images (and texts) per forward pass.")
PRECISION = typer.Option("fp32", help="fp32, or bf16 autocast.")
DEVICE = typer.Option("auto", help="auto, cpu or cuda.")
WORKERS = typer.Option(2, help="image-decoding worker processes (0: decode in the main process).")
JSON_OUT = typer.Option(None, "--json", help="write every metric, with the checkpoint, data and settings, here.")


class RichProgress:
    """Progress bars for the phases of an evaluation (a `features.Progress`)."""

    def __init__(self, progress: Progress):
        self.progress, self.task = progress, None

    def start(self, description: str, total: int) -> None:
        self.task = self.progress.add_task(description, total=total)

    def advance(self, n: int) -> None:
        self.progress.advance(self.task, n)


def _progress_bar() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
                    TimeElapsedColumn(), console=console, transient=True)


def _setup(ckpt: str, device: str, batch_size: int, precision: str, workers: int, mask_ratio: float = 0.0,
           views: int = 1, seed: int = 0):
    """Validate the options, then load the model: (model, saved config, checkpoint dir, runtime, masking)."""
    runtime = Runtime(resolve_device(device), batch_size, precision, max(0, workers))
    masking = Masking(mask_ratio, views, seed)
    ckpt_dir = resolve_checkpoint(ckpt)
    model, config = load_model(ckpt_dir, runtime.device)
    if views > model.cfg.vision.num_patches:
        raise ValueError(f"--views {views}: the model has only {model.cfg.vision.num_patches} patches")
    return model, config, ckpt_dir, runtime, masking


def _run_info(task: str, ckpt_dir: Path, config: dict, model, runtime: Runtime, masking: Masking | None) -> dict:
    train = config.get("train", {})
    info = {"task": task, "checkpoint": str(ckpt_dir.resolve()), "model": model.cfg.name,
            "train_mask_ratio": train.get("mask_ratio"), "train_samples": train.get("samples"),
            "settings": {"device": str(runtime.device), "batch_size": runtime.batch_size,
                         "precision": runtime.precision, "workers": runtime.workers}}
    if masking is not None:
        info["settings"]["masking"] = masking.to_dict(model.cfg.vision.num_patches)
    return info


def _report(title: str, info: dict, metrics: dict, meter: Meter, json_out: Optional[Path]) -> None:
    info = {**info, "metrics": metrics,
            "speed": {"images_per_s": meter.rate(IMAGES), "images": meter.items.get(IMAGES, 0),
                      "seconds": meter.seconds.get(IMAGES, 0.0)}}
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        table.add_row(key, f"{value:.4g}" if key == "l2" else f"{value:.2f}")
    table.add_row("images/s", f"{info['speed']['images_per_s']:.1f}")
    console.print(table)
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(info, indent=2) + "\n")
        console.print(f"wrote {json_out}")


def _masking_note(masking: Masking) -> str:
    return masking.describe() + (f", seed {masking.seed}" if masking.mode != "full" else "")


@app.command("zeroshot")
@user_errors
def zeroshot(
    ckpt: str = CKPT,
    data: Optional[Path] = typer.Option(None, help="class-folder set (one sub-folder per class, optional "
                                        "classnames.txt) or CLIP_benchmark webdataset folder. "
                                        "Default: the built-in zero-shot set."),
    split: str = typer.Option("test", help="split sub-folder to use when --data holds several."),
    templates: Optional[str] = typer.Option(None, help="prompt templates: 'simple' (the 7 the FLIP paper "
                                            "used), 'openai' (CLIP's 80), 'builtin', 'dataset' (the data's own "
                                            "templates file) or a file with one {c} template a line. "
                                            "Default: the data's own, else 'simple'."),
    classnames: Optional[str] = typer.Option(None, help="class names: 'imagenet' (for an ImageNet val folder "
                                             "of WordNet-id folders) or a file, one name a line."),
    mask_ratio: float = MASK_RATIO, views: int = VIEWS, seed: int = SEED, batch_size: int = BATCH_SIZE,
    precision: str = PRECISION, device: str = DEVICE, workers: int = WORKERS, json_out: Optional[Path] = JSON_OUT,
) -> None:
    """Zero-shot classification: top-1, top-5, mean per-class recall (CLIP_benchmark's protocol)."""
    model, config, ckpt_dir, runtime, masking = _setup(ckpt, device, batch_size, precision, workers, mask_ratio,
                                                       views, seed)
    if data is None:
        data = builtin.zeroshot_dir(ensure_builtin_with_progress())
    dataset = load_classification(data, split)
    if classnames is not None:
        dataset = with_classnames(dataset, resolve_classnames(classnames), f"--classnames {classnames}")
    template_name, template_fns = resolve_templates(templates, dataset.templates)
    console.print(f"zero-shot: {len(dataset.images)} images, {len(dataset.classnames)} classes from {dataset.source}; "
                  f"{len(template_fns)} templates ({template_name}); {_masking_note(masking)}")
    with _progress_bar() as bar:
        meter = Meter(RichProgress(bar))
        metrics = evaluate_zeroshot(model, dataset, template_fns, masking, runtime, meter)
    info = _run_info("zeroshot", ckpt_dir, config, model, runtime, masking)
    info["data"] = {"path": str(data), "source": dataset.source, "format": dataset.format,
                    "images": len(dataset.images), "classes": len(dataset.classnames), "classnames": dataset.classnames}
    info["settings"]["templates"] = {"name": template_name, "count": len(template_fns),
                                     "templates": as_text(template_fns)}
    _report(f"zero-shot, {masking.mode}", info, metrics, meter, json_out)


@app.command("retrieval")
@user_errors
def retrieval(
    ckpt: str = CKPT,
    data: Optional[str] = typer.Option(None, help="Karpathy-style JSON (Flickr30k/COCO), CSV/TSV of "
                                       "filepath,caption (repeated paths = several captions) or webdataset "
                                       "shards (dir, brace pattern) whose .txt has one caption a line. "
                                       "Default: the built-in retrieval set."),
    images_root: Optional[Path] = typer.Option(None, help="folder the JSON/CSV image paths are relative to. "
                                               "Default: the folder of the JSON/CSV."),
    split: str = typer.Option("test", help="Karpathy split to evaluate (test, val, ...)."),
    mask_ratio: float = MASK_RATIO, views: int = VIEWS, seed: int = SEED, batch_size: int = BATCH_SIZE,
    precision: str = PRECISION, device: str = DEVICE, workers: int = WORKERS, json_out: Optional[Path] = JSON_OUT,
) -> None:
    """Image-text retrieval: R@1/5/10 image->text and text->image (CLIP_benchmark's protocol)."""
    model, config, ckpt_dir, runtime, masking = _setup(ckpt, device, batch_size, precision, workers, mask_ratio,
                                                       views, seed)
    if data is None:
        data = str(builtin.retrieval_csv(ensure_builtin_with_progress()))
    dataset = load_retrieval(data, images_root, split)
    console.print(f"retrieval: {len(dataset.images)} images, {len(dataset.captions)} captions from "
                  f"{dataset.source}; {_masking_note(masking)}")
    with _progress_bar() as bar:
        meter = Meter(RichProgress(bar))
        metrics = evaluate_retrieval(model, dataset, masking=masking, runtime=runtime, progress=meter)
    info = _run_info("retrieval", ckpt_dir, config, model, runtime, masking)
    info["data"] = {"path": data, "format": dataset.format, "images": len(dataset.images),
                    "captions": len(dataset.captions), "images_root": str(images_root) if images_root else None,
                    "split": split if dataset.format == "karpathy-json" else None}
    _report(f"retrieval, {masking.mode}", info, metrics, meter, json_out)


@app.command("linear-probe")
@user_errors
def linear_probe(
    ckpt: str = CKPT,
    data: Path = typer.Option(..., help="class-folder set with train/ and test/ (and optionally val/) split "
                              "folders (or CLIP_benchmark webdataset splits), or one class-folder set to split."),
    val_fraction: float = typer.Option(0.2, help="share of the training images held out to choose the "
                                       "regularisation, when there is no val/ split."),
    test_fraction: float = typer.Option(0.3, help="share of the images used as the test split, when --data "
                                        "has no split folders."),
    seed: int = typer.Option(0, help="seed of the split."),
    max_iter: int = typer.Option(1000, help="L-BFGS iterations per fit (CLIP: 1000)."),
    batch_size: int = BATCH_SIZE, precision: str = PRECISION, device: str = DEVICE, workers: int = WORKERS,
    json_out: Optional[Path] = JSON_OUT,
) -> None:
    """Linear probe: logistic regression on frozen image features, L2 strength chosen on a validation split."""
    model, config, ckpt_dir, runtime, _ = _setup(ckpt, device, batch_size, precision, workers)
    train, val, test = load_probe_splits(data, val_fraction, test_fraction, seed)
    console.print(f"linear probe: {len(train.classnames)} classes; train {len(train.images)}, val {len(val.images)}, "
                  f"test {len(test.images)} images")
    with _progress_bar() as bar:
        meter = Meter(RichProgress(bar))
        metrics = evaluate_linear_probe(model, train, val, test, runtime=runtime, progress=meter,
                                        config=ProbeConfig(max_iter=max_iter))
    info = _run_info("linear-probe", ckpt_dir, config, model, runtime, None)
    info["data"] = {"path": str(data), "classes": len(train.classnames), "train_images": len(train.images),
                    "val_images": len(val.images), "test_images": len(test.images),
                    "val_fraction": val_fraction, "test_fraction": test_fraction, "seed": seed}
    info["settings"]["probe"] = {"max_iter": max_iter, "l2_grid": list(ProbeConfig().l2_grid)}
    _report("linear probe (test split)", info, metrics, meter, json_out)
