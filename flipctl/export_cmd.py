"""`flipctl export`: write a checkpoint in another toolkit's format."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.syntax import Syntax

from flip.export.open_clip import export_open_clip
from flip.train.checkpoint import load_model, resolve_checkpoint
from flipctl.errors import user_errors

console = Console()
FORMATS = ("open_clip",)


@user_errors
def export_command(
    out: Path = typer.Argument(..., help="output folder."),
    ckpt: str = typer.Option(..., "--ckpt", help="run directory (its latest checkpoint) or checkpoint directory."),
    format: str = typer.Option("open_clip", "--format", help="export format: open_clip."),
    name: str = typer.Option(None, help="open_clip model name. Default: flip-<preset>, e.g. flip-tiny."),
    weights: str = typer.Option("safetensors", help="weights file: safetensors or bin (torch.save)."),
) -> None:
    """Export a checkpoint so that open_clip (and CLIP_benchmark) build the same model."""
    if format not in FORMATS:
        raise ValueError(f"--format must be one of {', '.join(FORMATS)}, got {format!r}")
    ckpt_dir = resolve_checkpoint(ckpt)
    model, _ = load_model(ckpt_dir, "cpu")
    export = export_open_clip(model, out, name=name, weights_format=weights, source=str(ckpt_dir.resolve()))
    console.print(f"wrote [bold]{export.config}[/bold], {export.directory / 'open_clip_config.json'} and "
                  f"[bold]{export.weights}[/bold]")
    console.print("load it with open_clip (or pass model 'local-dir:" f"{export.directory}' to open_clip / CLIP_benchmark):")
    console.print(Syntax(export.usage(), "python", word_wrap=True))
    console.print("note: open_clip has no config key for the text tower's padding mask; set "
                  "model.text.use_pad_mask = True as above (flip.export.open_clip.load_exported does it).")
