"""FLOP counts from `torch.utils.flop_counter`, on a meta-device model (no memory, any size).

`forward_flops` counts one image-text pair's forward pass per tower (`flipctl models`);
`step_flops` counts a training step's forward + backward per part (`flipctl bench`, run
summaries). Each part is counted in its own `FlopCounterMode`: the counter's per-module
attribution of backward FLOPs is not reliable, separate counts are. The optimizer's element-wise
update has no FLOP formula in the counter and is not counted (it is memory-bound). On the meta
device attention runs as its math (QK^T, softmax, AV), so it counts forward + 2x backward like
every matmul - the usual convention for MFU - not the recomputation a flash-attention backward does.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from flip.loss import ContrastiveLoss
from flip.masking import num_kept, random_keep_indices
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


def _count(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def step_flops(cfg: ModelConfig, mask_ratio: float, batch: int, model: FLIP | None = None) -> dict[str, int]:
    """FLOPs of one training step's forward + backward at `batch` and image `mask_ratio`:
    {"image", "text", "loss", "total"} (the loss term grows with batch^2: logits are [B, B])."""
    model = model or _meta_model(cfg)
    v, t = cfg.vision, cfg.text
    images = torch.zeros(batch, 3, v.image_size, v.image_size, device="meta")
    tokens = torch.ones(batch, t.context_length, dtype=torch.long, device="meta")
    keep = None
    if num_kept(v.num_patches, mask_ratio) < v.num_patches:
        keep = random_keep_indices(batch, v.num_patches, num_kept(v.num_patches, mask_ratio), "meta")

    def tower(encode, *args):
        def run():
            features = encode(*args)
            features.backward(torch.ones_like(features))
        return run

    def loss():
        image = torch.zeros(batch, cfg.embed_dim, device="meta", requires_grad=True)
        text = torch.zeros(batch, cfg.embed_dim, device="meta", requires_grad=True)
        scale = torch.zeros((), device="meta", requires_grad=True)
        ContrastiveLoss()(image, text, scale.exp()).backward()

    counts = {
        "image": _count(tower(model.encode_image, images, keep)),
        "text": _count(tower(model.encode_text, tokens)),
        "loss": _count(loss),
    }
    counts["total"] = sum(counts.values())
    return counts


def train_flops_per_sample(cfg: ModelConfig, mask_ratio: float, batch: int = 256) -> float:
    """A training step's counted forward + backward FLOPs at `batch`, per sample."""
    return step_flops(cfg, mask_ratio, batch)["total"] / batch


def parameter_count(cfg: ModelConfig) -> dict[str, int]:
    model = _meta_model(cfg)
    image = sum(p.numel() for p in model.visual.parameters())
    text = sum(p.numel() for p in model.text.parameters())
    return {"image": image, "text": text, "total": image + text + 1}
