"""FLOPs of one training step, per part, counted by `torch.utils.flop_counter` on the meta device.

Each part is counted in its own `FlopCounterMode` (forward + backward of that part alone): the
counter's per-module attribution of backward FLOPs is not reliable, separate counts are. The
optimizer's element-wise update has no FLOP formula in the counter and is not counted (it is
memory-bound; its time shows in the time split). On the meta device attention runs as its math
(QK^T, softmax, AV), so it counts forward + 2x backward like every matmul - the usual convention
for MFU - not the recomputation a flash-attention backward does.
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
