"""`flipctl models`: the presets with parameter counts and FLOPs."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from flip.errors import ConfigError
from flip.models import PRESETS
from flipctl.console import make_console
from flipctl.errors import user_errors

MASKS = (0.0, 0.5, 0.75)


@user_errors
def models_command(json_out: Optional[str] = typer.Option(None, "--json", metavar="FILE",
                                                                 help="also write the table as JSON.")) -> None:
    """List model presets: sizes, parameters, forward GFLOPs per sample at mask 0/50/75%."""
    if json_out and Path(json_out).is_dir():  # checked before the FLOPs are counted
        raise ConfigError(f"{json_out} is a directory", key="json")
    if json_out and not Path(json_out).parent.is_dir():
        raise ConfigError(f"{json_out} cannot be written: no folder {Path(json_out).parent}", key="json")
    from flip.flops import forward_flops, parameter_count

    rows = []
    for name, cfg in PRESETS.items():
        params = parameter_count(cfg)
        flops = {r: forward_flops(cfg, r) for r in MASKS}
        rows.append({
            "name": name, "image_size": cfg.vision.image_size, "patch": cfg.vision.patch_size,
            "vision": f"{cfg.vision.depth}x{cfg.vision.width}", "text": f"{cfg.text.depth}x{cfg.text.width}",
            "embed_dim": cfg.embed_dim, "params_M": params["total"] / 1e6,
            **{f"gflops_mask{int(r * 100)}": flops[r]["total"] / 1e9 for r in MASKS},
            "text_share": flops[0.0]["text"] / flops[0.0]["image"],
        })
    table = Table(title="flipctl model presets (forward GFLOPs per image-text pair)")
    for col in ("name", "image", "vision", "text", "embed", "params (M)", "mask 0%", "mask 50%", "mask 75%",
                "text/image"):
        table.add_column(col, justify="left" if col == "name" else "right")
    for r in rows:
        table.add_row(r["name"], f"{r['image_size']}/{r['patch']}", r["vision"], r["text"], str(r["embed_dim"]),
                      f"{r['params_M']:.1f}", f"{r['gflops_mask0']:.2f}", f"{r['gflops_mask50']:.2f}",
                      f"{r['gflops_mask75']:.2f}", f"{100 * r['text_share']:.1f}%")
    make_console().print(table)
    if json_out:
        import json

        Path(json_out).write_text(json.dumps(rows, indent=2))
