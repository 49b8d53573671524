"""`flipctl export`: write a checkpoint in another toolkit's format."""

from __future__ import annotations

from pathlib import Path

import typer

from flip.errors import ConfigError
from flipctl.console import make_console
from flipctl.errors import user_errors

console = make_console()
FORMATS = ("open_clip",)


@user_errors
def export_command(
    out: Path = typer.Argument(..., metavar="OUT", help="output folder."),
    ckpt: str = typer.Option(..., "--ckpt", metavar="RUN|CKPT",
                             help="run directory (its latest checkpoint) or checkpoint directory."),
    format: str = typer.Option("open_clip", "--format", metavar="|".join(FORMATS), help="export format."),
    name: str = typer.Option(None, metavar="NAME", help="open_clip model name. Default: flip-PRESET, e.g. "
                                                        "flip-tiny."),
    weights: str = typer.Option("safetensors", metavar="safetensors|bin",
                                help="weights file: safetensors, or bin (torch.save)."),
) -> None:
    """Export a checkpoint so that open_clip (and CLIP_benchmark) build the same model."""
    from flip.export.open_clip import check_name, export_open_clip
    from flip.saved_model import load_model, resolve_checkpoint

    if format not in FORMATS:
        raise ConfigError(f"must be one of {', '.join(FORMATS)}, got {format!r}", key="format")
    if name is not None:
        check_name(name)
    ckpt_dir = resolve_checkpoint(ckpt)
    model, _ = load_model(ckpt_dir, "cpu")
    export = export_open_clip(model, out, name=name, weights_format=weights, source=str(ckpt_dir.resolve()))
    console.print(f"wrote [bold]{export.config}[/bold], {export.directory / 'open_clip_config.json'} and "
                  f"[bold]{export.weights}[/bold]; load it with open_clip:")
    typer.echo(export.usage())  # verbatim, never wrapped: a user copies it
    console.print(f"(or create_model_and_transforms('local-dir:{export.directory}'), which finds config and weights)")
    if export.pad_mask:
        console.print("note: this model's text tower ignores padding (pad_mask); open_clip 3.3 has no config key "
                      "for that, so model.text.use_pad_mask = True must be set after building "
                      "(flip.export.open_clip.load_exported does it). Tools that only call "
                      "create_model_and_transforms, such as CLIP_benchmark, would score other text features.")
