"""Export a flipctl model to open_clip's format: a model config and a weights file.

open_clip then builds the same network (features equal to float precision), so open_clip
users and CLIP_benchmark-style evaluation code can score a flipctl model:

    import open_clip
    open_clip.add_model_config(OUT)
    model, _, preprocess = open_clip.create_model_and_transforms(NAME, pretrained=f"{OUT}/open_clip_model.safetensors")
    tokenizer = open_clip.get_tokenizer(NAME)

(or `create_model_and_transforms(f"local-dir:{OUT}")`, which reads `open_clip_config.json`
and finds the weights itself; `load_exported` below does all of this).

How flipctl's layers map onto open_clip's:
- vision: `pool_type='avg'` (mean of the patch tokens, CLS excluded, as flipctl pools);
  `no_ln_pre`; CLS prepended after masking with no position embedding, so
  `positional_embedding[0] = 0` and rows 1.. = flipctl's fixed sin-cos table; flipctl's
  patch-embedding conv has a bias and open_clip's `conv1` has none, so the bias is folded
  into rows 1.. of `positional_embedding` (it is added to every patch token either way);
- text: `no_causal_mask`, `pool_type='first'` (the SOT token), pad id 0, bias-free projection;
- blocks: timm's packed qkv -> `in_proj_weight/bias`, `attn.proj` -> `out_proj`,
  `mlp.fc1/fc2` -> `mlp.c_fc/c_proj`, `norm1/2` -> `ln_1/2`; LayerNorm eps 1e-5 and exact
  GELU on both sides (`quick_gelu` off); image mean/std are OpenAI's on both sides.

The export uses open_clip's `CustomTextCLIP` (`custom_text: true`, the text tower as a
`TextTransformer` sub-module). flipctl's default text tower attends to padding, as open_clip's
bidirectional tower does, so nothing needs setting after `create_model_and_transforms` and
CLIP_benchmark scores the export as it is. The one exception: a model trained with the
text config's `pad_mask=True` (padding not attended to). open_clip's `TextTransformer` can do
that too (`use_pad_mask`), but open_clip 3.3's `CLIPTextCfg` has no such key, so for such a
model `model.text.use_pad_mask = True` must be set after building (`load_exported` does);
without it its text features differ.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from safetensors.torch import save_file

from flip.errors import ConfigError
from flip.files import chmod_as_umask
from flip.models import FLIP, ModelConfig

WEIGHTS = "open_clip_model.safetensors"
WEIGHTS_BIN = "open_clip_pytorch_model.bin"
LOCAL_DIR_CONFIG = "open_clip_config.json"  # what `local-dir:` and hf-hub loading read


def model_name(cfg: ModelConfig) -> str:
    """open_clip config name for a flipctl model, e.g. `flip-tiny`, `flip-ViT-B-16`."""
    base = cfg.name if cfg.name in ("tiny", "small", "custom") else f"ViT-{cfg.name}"
    return "flip-" + re.sub(r"[^A-Za-z0-9_.-]+", "-", base)


def check_name(name: str) -> None:
    """An export name is the stem of `<name>.json`, which open_clip takes as the model's name: one file name
    of letters, digits, `.`, `_` and `-` (what `model_name` makes of a preset)."""
    if not re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*", name):
        raise ConfigError(f"must be a file name of letters, digits, '.', '_' and '-', got {name!r}", key="name")


def open_clip_config(cfg: ModelConfig) -> dict:
    """The open_clip model config (`embed_dim`, `vision_cfg`, `text_cfg`) of a flipctl model."""
    v, t = cfg.vision, cfg.text
    if v.width % v.heads:
        raise ValueError(f"vision width {v.width} is not divisible by {v.heads} heads")
    bias = {} if cfg.init_logit_bias is None else {"init_logit_bias": cfg.init_logit_bias}  # a sigmoid-loss model
    return {
        "embed_dim": cfg.embed_dim,
        **bias,
        "custom_text": True,  # CustomTextCLIP: the text tower that can mask padding (see module doc)
        "quick_gelu": False,
        "vision_cfg": {
            "image_size": v.image_size, "patch_size": v.patch_size, "width": v.width, "layers": v.depth,
            "head_width": v.width // v.heads, "mlp_ratio": v.mlp_ratio,
            "no_ln_pre": True, "pool_type": "avg", "pos_embed_type": "learnable",
        },
        "text_cfg": {
            "context_length": t.context_length, "vocab_size": t.vocab_size, "width": t.width, "heads": t.heads,
            "layers": t.depth, "mlp_ratio": t.mlp_ratio, "no_causal_mask": True, "pool_type": "first",
            "pad_id": t.pad_id, "proj_bias": False,
        },
    }


def _blocks(src: dict[str, torch.Tensor], src_prefix: str, dst_prefix: str, depth: int) -> dict[str, torch.Tensor]:
    names = {"norm1": "ln_1", "norm2": "ln_2", "attn.proj": "attn.out_proj", "mlp.fc1": "mlp.c_fc",
             "mlp.fc2": "mlp.c_proj"}
    out = {}
    for i in range(depth):
        s, d = f"{src_prefix}.{i}.", f"{dst_prefix}.{i}."
        out[d + "attn.in_proj_weight"] = src[s + "attn.qkv.weight"]  # q, k, v stacked the same way
        out[d + "attn.in_proj_bias"] = src[s + "attn.qkv.bias"]
        for ours, theirs in names.items():
            for p in ("weight", "bias"):
                out[f"{d}{theirs}.{p}"] = src[f"{s}{ours}.{p}"]
    return out


def convert_state_dict(model: FLIP) -> dict[str, torch.Tensor]:
    """flipctl weights -> open_clip `CustomTextCLIP` state dict."""
    cfg = model.cfg
    src = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    pos = model.visual.pos_embed[0].detach().float().cpu() + src["visual.patch_embed.proj.bias"]  # [L, D]
    out = {
        "logit_scale": src["logit_scale"],
        "visual.conv1.weight": src["visual.patch_embed.proj.weight"],
        "visual.class_embedding": src["visual.cls_token"].reshape(-1),
        "visual.positional_embedding": torch.cat([torch.zeros(1, pos.shape[1]), pos]),  # CLS: no position
        "visual.ln_post.weight": src["visual.norm.weight"],
        "visual.ln_post.bias": src["visual.norm.bias"],
        "visual.proj": src["visual.proj.weight"].T,
        "text.token_embedding.weight": src["text.token_embedding.weight"],
        "text.positional_embedding": src["text.pos_embed"][0],
        "text.ln_final.weight": src["text.norm.weight"],
        "text.ln_final.bias": src["text.norm.bias"],
        "text.text_projection": src["text.proj.weight"].T,
    }
    if "logit_bias" in src:  # the sigmoid loss's learnt bias (open_clip's SigLIP models have it too)
        out["logit_bias"] = src["logit_bias"]
    out |= _blocks(src, "visual.blocks", "visual.transformer.resblocks", cfg.vision.depth)
    out |= _blocks(src, "text.blocks", "text.transformer.resblocks", cfg.text.depth)
    return {k: v.contiguous() for k, v in out.items()}


@dataclass
class Export:
    name: str
    directory: Path
    config: Path  # <name>.json, for open_clip.add_model_config(directory)
    weights: Path
    pad_mask: bool = False  # the model's text tower ignores padding: one flag to set after building

    def usage(self) -> str:
        """Python that loads the export with open_clip."""
        return (f"import open_clip\n"
                f"open_clip.add_model_config({str(self.directory)!r})\n"
                f"model, _, preprocess = open_clip.create_model_and_transforms(\n"
                f"    {self.name!r}, pretrained={str(self.weights)!r})\n"
                + ("model.text.use_pad_mask = True  # this model's text tower ignores padding; no config key for it\n"
                   if self.pad_mask else "")
                + f"tokenizer = open_clip.get_tokenizer({self.name!r})")


def export_open_clip(model: FLIP, out_dir: str | Path, name: str | None = None, weights_format: str = "safetensors",
                     source: str | None = None) -> Export:
    """Write `<name>.json`, `open_clip_config.json` and the weights into `out_dir`."""
    if weights_format not in ("safetensors", "bin"):
        raise ConfigError(f"weights format must be safetensors or bin, got {weights_format!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = name or model_name(model.cfg)
    check_name(name)
    config = open_clip_config(model.cfg)
    config_path = out_dir / f"{name}.json"
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    (out_dir / LOCAL_DIR_CONFIG).write_text(json.dumps({
        "model_cfg": config,
        "preprocess_cfg": {"mean": list(OPENAI_DATASET_MEAN), "std": list(OPENAI_DATASET_STD),
                           "interpolation": "bicubic", "resize_mode": "shortest"},
        "flipctl": {"source": source, "model": model.cfg.to_dict(),
                    **({"note": "set model.text.use_pad_mask = True after building (see flip/export/open_clip.py)"}
                       if model.cfg.text.pad_mask else {})},
    }, indent=2) + "\n")
    weights = convert_state_dict(model)
    if weights_format == "safetensors":
        weights_path = out_dir / WEIGHTS
        save_file(weights, str(weights_path), metadata={"format": "pt"})
        chmod_as_umask(weights_path)  # safetensors writes 0600 through its temporary file
    else:
        weights_path = out_dir / WEIGHTS_BIN
        torch.save(weights, weights_path)
    return Export(name, out_dir, config_path, weights_path, model.cfg.text.pad_mask)


def load_exported(out_dir: str | Path, device: str | torch.device = "cpu"):
    """(model, preprocess, tokenizer) from an export directory (padding mask on where the model has one)."""
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{Path(out_dir)}", device=device)
    config = json.loads((Path(out_dir) / LOCAL_DIR_CONFIG).read_text())
    model.text.use_pad_mask = bool(config.get("flipctl", {}).get("model", {}).get("text", {}).get("pad_mask"))
    model.eval()
    return model, preprocess, open_clip.get_tokenizer(f"local-dir:{Path(out_dir)}")

