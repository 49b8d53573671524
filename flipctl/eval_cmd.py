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

from flip.errors import ConfigError
from flipctl.console import make_console
from flipctl.errors import user_errors
from flipctl.help import HelpCommand, HelpGroup

app = typer.Typer(cls=HelpGroup, no_args_is_help=True,
                  help="Evaluate a checkpoint: zero-shot classification, retrieval, linear probe (`eval zeroshot` "
                       "and `eval retrieval` are also `eval-zeroshot` and `eval-retrieval`).")
console = make_console()

# Options shared by the commands.
CKPT = typer.Option(..., "--ckpt", metavar="RUN|CKPT",
                    help="run directory (its latest checkpoint) or checkpoint directory.")
MASK_RATIO = typer.Option(0.0, help="masked inference: drop this fraction of each image's patches "
                                    "(random, seeded); 0 shows the full image.")
VIEWS = typer.Option(1, help="ensemble of K complementary masked views that together cover every patch "
                             "exactly once (each keeps ~1/K of the patches); the K L2-normalised image "
                             "embeddings are averaged, then renormalised. Paper Table 1d.")
SEED = typer.Option(None, help="seed of the masks drawn by --mask-ratio / --views (only with one of them). "
                               "Default: 0.")
BATCH_SIZE = typer.Option(256, help="images (and texts) per forward pass.")
PRECISION = typer.Option("fp32", metavar="fp32|bf16", help="fp32, or bf16 autocast.")
DEVICE = typer.Option("auto", metavar="auto|cpu|cuda[:N]", help="the device to evaluate on.")
WORKERS = typer.Option(2, help="image-decoding worker processes (0: decode in the main process).")
JSON_OUT = typer.Option(None, "--json", metavar="FILE",
                        help="write every metric, with the checkpoint, data and settings, here.")
COMPILE = typer.Option(False, "--compile/--no-compile", help="torch.compile the encoders: inductor where it can "
                       "build kernels here, else aot_eager (a note says why). Pays off on large sets.")


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


def _evaluate(ckpt: str, task: str, title: str, json_out: Optional[Path], **kwargs) -> None:
    """Run the evaluation with progress bars, print its table and write its record to `json_out`."""
    _check_writable(json_out)
    from flip.eval.api import evaluate_checkpoint  # torch: loaded when an evaluation runs

    with _progress_bar() as bar:
        record = evaluate_checkpoint(ckpt, task, progress=RichProgress(bar), log=console.print, **kwargs)
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in record["metrics"].items():
        table.add_row(key, f"{value:.4g}" if key == "l2" else f"{value:.2f}")
    table.add_row("images/s", f"{record['speed']['images_per_s']:.1f}")
    console.print(table)
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(record, indent=2) + "\n")
        console.print(f"wrote {json_out}")


def _check_writable(path: Optional[Path]) -> None:
    """Fail before evaluating, not after, when the record cannot be written to `path`."""
    if path is None:
        return
    existed = path.exists()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a"):
            pass
    except OSError as exc:
        raise ConfigError(f"--json {path}: cannot write there ({exc.strerror or exc}); evaluated nothing") from None
    if not existed:
        path.unlink()  # written once the evaluation is done


def _masking(mask_ratio: float, views: int, seed: int | None):
    from flip.eval.features import Masking

    if seed is not None and mask_ratio == 0 and views == 1:
        raise ConfigError("does nothing on full images: it seeds the masks of {other} or --views; give one of "
                          "them too, or leave it out", key="seed", other="mask_ratio")
    return Masking(mask_ratio, views, seed or 0)


def _runtime(device: str, batch_size: int, precision: str, workers: int):
    from flip.eval.features import Runtime

    return Runtime(device, batch_size, precision, workers)


@app.command("zeroshot", cls=HelpCommand)
@user_errors
def zeroshot(
    ckpt: str = CKPT,
    data: Optional[Path] = typer.Option(None, metavar="DIR", help="class-folder set (one sub-folder per class, "
                                        "optional classnames.txt) or CLIP_benchmark webdataset folder. "
                                        "Default: the built-in zero-shot set."),
    split: str = typer.Option("test", metavar="NAME", help="split sub-folder to use when --data holds several."),
    templates: Optional[str] = typer.Option(None, metavar="NAME|FILE", help="prompt templates: 'simple' (the 7 the "
                                            "FLIP paper used), 'openai' (CLIP's 80), 'builtin', 'dataset' (the data's "
                                            "own templates file) or a file with one {c} template a line. "
                                            "Default: the data's own, else 'simple'."),
    classnames: Optional[str] = typer.Option(None, metavar="imagenet|FILE", help="class names: 'imagenet' (for an "
                                             "ImageNet val folder of WordNet-id folders) or a file, one name a line."),
    mask_ratio: float = MASK_RATIO, views: int = VIEWS, seed: int = SEED, batch_size: int = BATCH_SIZE,
    precision: str = PRECISION, device: str = DEVICE, workers: int = WORKERS, json_out: Optional[Path] = JSON_OUT,
    compile: bool = COMPILE,
) -> None:
    """Zero-shot classification: top-1, top-5, mean per-class recall (CLIP_benchmark's protocol).

    `flipctl eval zeroshot` and `flipctl eval-zeroshot` are the same command.
    """
    masking = _masking(mask_ratio, views, seed)
    runtime = _runtime(device, batch_size, precision, workers)
    _evaluate(ckpt, "zeroshot", f"zero-shot, {masking.mode}", json_out, data=data, masking=masking,
              runtime=runtime, templates=templates, classnames=classnames, split=split, compile=compile)


@app.command("retrieval", cls=HelpCommand)
@user_errors
def retrieval(
    ckpt: str = CKPT,
    data: Optional[str] = typer.Option(None, metavar="PATH", help="Karpathy-style JSON (Flickr30k/COCO), CSV/TSV of "
                                       "filepath,caption (repeated paths = several captions) or webdataset "
                                       "shards (dir, brace pattern) whose .txt has one caption a line. "
                                       "Default: the built-in retrieval set."),
    images_root: Optional[Path] = typer.Option(None, metavar="DIR", help="folder the JSON/CSV image paths are "
                                               "relative to. Default: the folder of the JSON/CSV."),
    split: str = typer.Option("test", metavar="NAME", help="Karpathy split to evaluate (test, val, ...)."),
    mask_ratio: float = MASK_RATIO, views: int = VIEWS, seed: int = SEED, batch_size: int = BATCH_SIZE,
    precision: str = PRECISION, device: str = DEVICE, workers: int = WORKERS, json_out: Optional[Path] = JSON_OUT,
    compile: bool = COMPILE,
) -> None:
    """Image-text retrieval: R@1/5/10 image->text and text->image (CLIP_benchmark's protocol).

    `flipctl eval retrieval` and `flipctl eval-retrieval` are the same command.
    """
    if images_root is not None and data is None:
        raise ConfigError("does nothing without {other}: it is the folder a JSON or CSV's image paths are "
                          "relative to", key="images_root", other="data")
    masking = _masking(mask_ratio, views, seed)
    runtime = _runtime(device, batch_size, precision, workers)
    _evaluate(ckpt, "retrieval", f"retrieval, {masking.mode}", json_out, data=data, masking=masking,
              runtime=runtime, images_root=images_root, split=split, compile=compile)


@app.command("linear-probe", cls=HelpCommand)
@user_errors
def linear_probe(
    ckpt: str = CKPT,
    data: Path = typer.Option(..., metavar="DIR", help="class-folder set with train/ and test/ (and optionally val/) "
                              "split folders (or CLIP_benchmark webdataset splits), or one class-folder set to split."),
    val_fraction: float = typer.Option(0.2, help="share of the training images held out to choose the "
                                       "regularisation, when there is no val/ split."),
    test_fraction: float = typer.Option(0.3, help="share of the images used as the test split, when --data "
                                        "has no split folders."),
    seed: int = typer.Option(0, help="seed of the split."),
    max_iter: int = typer.Option(1000, help="L-BFGS iterations per fit (CLIP: 1000)."),
    batch_size: int = BATCH_SIZE, precision: str = PRECISION, device: str = DEVICE, workers: int = WORKERS,
    json_out: Optional[Path] = JSON_OUT, compile: bool = COMPILE,
) -> None:
    """Linear probe: logistic regression on frozen image features, L2 strength chosen on a validation split."""
    from flip.eval.linear_probe import ProbeConfig

    runtime, probe = _runtime(device, batch_size, precision, workers), ProbeConfig(max_iter=max_iter)
    for key, fraction in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 < fraction < 1:
            raise ConfigError(f"must be in (0, 1), got {fraction}", key=key)
    _evaluate(ckpt, "linear-probe", "linear probe (test split)", json_out, data=data, runtime=runtime, probe=probe,
              val_fraction=val_fraction, test_fraction=test_fraction, probe_seed=seed, compile=compile)
