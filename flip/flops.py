"""FLOP counts from `torch.utils.flop_counter`, on a meta-device model (no memory, any size).

`forward_flops` counts one image-text pair's forward pass per tower (`flipctl models`);
`step_flops` counts a training step's forward + backward per part (`flipctl bench`), and
`train_step_flops` the step a run's settings make - the image tower at the kept patches, the text
tower at the kept tokens, the reconstruction decoder when it runs, the loss (run summaries).
Each part is counted in its own `FlopCounterMode`: the counter's per-module
attribution of backward FLOPs is not reliable, separate counts are. The optimizer's element-wise
update has no FLOP formula in the counter and is not counted (it is memory-bound). On the meta
device attention runs as its math (QK^T, softmax, AV), so it counts forward + 2x backward like
every matmul - the usual convention for MFU - not the recomputation a flash-attention backward does.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch.utils.flop_counter import FlopCounterMode

from flip.loss import make_loss
from flip.masking import num_kept, random_keep_indices
from flip.models import FLIP, ModelConfig
from flip.models.decoder import DecoderConfig, MAEDecoder


def _meta_model(cfg: ModelConfig) -> FLIP:
    with torch.device("meta"):
        return FLIP(cfg)


def forward_flops(cfg: ModelConfig, mask_ratio: float = 0.0, text_length: int | None = None,
                  model: FLIP | None = None, image_size: int | None = None) -> dict[str, int]:
    """Forward FLOPs per sample of each tower at `mask_ratio` (and a text length, for text masking; an
    image size, for training at a reduced resolution: the patches of that size's grid)."""
    model = model or _meta_model(cfg)
    device = next(model.parameters()).device
    v, t = cfg.vision.at_image_size(image_size), cfg.text
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


def text_kept(context_length: int, text_mask: str, text_mask_ratio: float) -> int | None:
    """Text positions the text tower runs on under text masking; None when nothing is dropped.

    The count `flip.masking.text_keep_indices` keeps: fixed by the ratio, whatever the captions hold.
    """
    if text_mask == "none" or text_mask_ratio == 0:
        return None
    return num_kept(context_length, text_mask_ratio)


def step_flops(cfg: ModelConfig, mask_ratio: float, batch: int, model: FLIP | None = None, *,
               text_keep: int | None = None, decoder: DecoderConfig | None = None, loss: str = "contrastive",
               loss_chunk: int = 0, image_size: int | None = None) -> dict[str, int]:
    """FLOPs of one training step's forward + backward at `batch`, per part:
    {"image", "text", "decoder", "loss", "total"}.

    The image tower runs on the patches kept at `mask_ratio` of the grid at `image_size` (None: the
    model's own; a reduced training size has fewer patches), the text tower on `text_keep` of its
    `context_length` positions (None: all), and the MAE `decoder` (None: no reconstruction loss) on
    the encoded tokens, as `Pretrainer` runs it: only when patches are masked. The `loss` term
    (`contrastive` or `sigmoid`, chunked by `loss_chunk`: its backward recomputes the logits) grows
    with batch^2 (logits are [B, B]); at the global batch it is also what all ranks of a
    distributed step compute together ([n, N] logits on each of N/n ranks).
    """
    model = model or _meta_model(cfg)
    v, t = cfg.vision.at_image_size(image_size), cfg.text
    images = torch.zeros(batch, 3, v.image_size, v.image_size, device="meta")
    tokens = torch.ones(batch, t.context_length, dtype=torch.long, device="meta")
    kept = num_kept(v.num_patches, mask_ratio)
    keep = random_keep_indices(batch, v.num_patches, kept, "meta") if kept < v.num_patches else None
    token_keep = None
    if text_keep is not None:
        if not 1 <= text_keep <= t.context_length:
            raise ValueError(f"text_keep must be in [1, {t.context_length}], got {text_keep}")
        token_keep = random_keep_indices(batch, t.context_length, text_keep, "meta")

    def tower(encode, *args):
        def run():
            features = encode(*args)
            features.backward(torch.ones_like(features))
        return run

    def reconstruction():
        with torch.device("meta"):
            head = MAEDecoder(v, decoder)
        encoded = torch.zeros(batch, 1 + kept, v.width, device="meta", requires_grad=True)  # CLS + kept
        head.loss(encoded, keep, images).backward()

    def image_text_loss():
        image = torch.zeros(batch, cfg.embed_dim, device="meta", requires_grad=True)
        text = torch.zeros(batch, cfg.embed_dim, device="meta", requires_grad=True)
        scale = torch.zeros((), device="meta", requires_grad=True)
        bias = (torch.zeros((), device="meta", requires_grad=True),) if loss == "sigmoid" else ()
        make_loss(loss, loss_chunk)(image, text, scale.exp(), *bias).backward()

    counts = {
        "image": _count(tower(model.encode_image, images, keep)),
        "text": _count(tower(model.encode_text, tokens, token_keep)),
        "decoder": _count(reconstruction) if decoder is not None and keep is not None else 0,
        "loss": _count(image_text_loss),
    }
    counts["total"] = sum(counts.values())
    return counts


class StepKnobs(Protocol):
    """The settings of a run that change what its step computes (a `TrainConfig` has them all)."""

    mask_ratio: float
    text_mask: str
    text_mask_ratio: float
    recon_weight: float
    decoder_depth: int
    decoder_width: int
    decoder_heads: int
    # image_size (optional, None when absent): the training resolution, a reduced one has fewer patches
    # loss, loss_chunk (optional, "contrastive" and 0 when absent): the image-text loss and its chunking
    # accum_steps (optional, 1 when absent): > 1 adds gradient accumulation's feature pass
    # activation_checkpointing (optional, False when absent): adds the recomputed forward


def train_step_flops(cfg: ModelConfig, knobs: StepKnobs, batch: int) -> dict[str, int]:
    """`step_flops` of the step a run with these settings takes at `batch` (pass the global batch
    for the FLOPs of all processes together)."""
    decoder = None
    if knobs.recon_weight > 0:
        decoder = DecoderConfig(knobs.decoder_depth, knobs.decoder_width, knobs.decoder_heads)
    text_keep = text_kept(cfg.text.context_length, knobs.text_mask, knobs.text_mask_ratio)
    image_size = getattr(knobs, "image_size", None)
    counts = step_flops(cfg, knobs.mask_ratio, batch, text_keep=text_keep, decoder=decoder,
                        loss=getattr(knobs, "loss", "contrastive"), loss_chunk=getattr(knobs, "loss_chunk", 0),
                        image_size=image_size)

    def forward() -> int:  # one more forward of both towers over the batch
        return forward_flops(cfg, knobs.mask_ratio, text_keep, image_size=image_size)["total"] * batch

    if getattr(knobs, "accum_steps", 1) > 1:  # gradient accumulation's first pass: one more forward of both towers
        counts["accum_forward"] = forward()
        counts["total"] += counts["accum_forward"]
    if getattr(knobs, "activation_checkpointing", False):  # the blocks' forward again in backward (~ the towers')
        counts["recompute"] = forward()
        counts["total"] += counts["recompute"]
    return counts


def parameter_count(cfg: ModelConfig) -> dict[str, int]:
    model = _meta_model(cfg)
    image = sum(p.numel() for p in model.visual.parameters())
    text = sum(p.numel() for p in model.text.parameters())
    return {"image": image, "text": text, "total": image + text + 1}
