"""FLOP counts from `torch.utils.flop_counter`, on a meta-device model (no memory, any size)."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from flip.masking import num_kept
from flip.models import FLIP, ModelConfig


def _meta_model(cfg: ModelConfig) -> FLIP:
    with torch.device("meta"):
        return FLIP(cfg)


def forward_flops(cfg: ModelConfig, mask_ratio: float = 0.0, text_length: int | None = None,
                  model: FLIP | None = None) -> dict[str, int]:
    """Forward FLOPs per sample of each tower at `mask_ratio` (and a text length, for text masking)."""
    model = model or _meta_model(cfg)
    device = next(model.parameters()).device
    v, t = cfg.vision, cfg.text
    images = torch.zeros(1, 3, v.image_size, v.image_size, device=device)
    length = text_length or t.context_length
    tokens = torch.ones(1, length, dtype=torch.long, device=device)
    keep = None
    if mask_ratio > 0:
        keep = torch.arange(num_kept(v.num_patches, mask_ratio), device=device).unsqueeze(0)
    with torch.no_grad():
        with FlopCounterMode(display=False) as counter:
            model.encode_image(images, keep)
        image = counter.get_total_flops()
        with FlopCounterMode(display=False) as counter:
            model.encode_text(tokens)
        text = counter.get_total_flops()
    return {"image": image, "text": text, "total": image + text}


def train_flops_per_sample(cfg: ModelConfig, mask_ratio: float) -> int:
    """Forward + backward ~ 3x forward: the usual estimate for a training step's FLOPs per sample."""
    return 3 * forward_flops(cfg, mask_ratio)["total"]


def parameter_count(cfg: ModelConfig) -> dict[str, int]:
    model = _meta_model(cfg)
    image = sum(p.numel() for p in model.visual.parameters())
    text = sum(p.numel() for p in model.text.parameters())
    return {"image": image, "text": text, "total": image + text + 1}
