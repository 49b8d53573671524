"""The OpenCLIP reference: open_clip's `CLIP` with our dimensions and `patch_dropout`, and its step.

The model is built as close to ours as open_clip's config allows, so that the comparison is of
implementations, not of architectures: same vision width / depth / heads / patch / image size,
fixed 2D sin-cos position embeddings, no LayerNorm before the blocks, average pooling of the patch
tokens, the same text width / depth / heads / context / vocabulary, bidirectional text attention
read at the first token, the same embedding width, exact GELU and LayerNorm eps 1e-5.

The step is open_clip_train's `train_one_epoch` for one batch: forward in train mode (its
PatchDropout acts only then, drawing keep indices with CPU `randn` + `topk`), `ClipLoss`,
backward, AdamW (fused where the device has the kernel, as ours), then the logit-scale clamp.
"""

from __future__ import annotations

import math

import torch
from open_clip.loss import ClipLoss
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

from flip.models import ModelConfig


def build_open_clip(cfg: ModelConfig, mask_ratio: float) -> CLIP:
    v, t = cfg.vision, cfg.text
    vision = CLIPVisionCfg(
        layers=v.depth, width=v.width, head_width=v.width // v.heads, mlp_ratio=v.mlp_ratio,
        patch_size=v.patch_size, image_size=v.image_size, patch_dropout=mask_ratio,
        no_ln_pre=True, pos_embed_type="sin_cos_2d", pool_type="avg",
    )
    text = CLIPTextCfg(
        context_length=t.context_length, vocab_size=t.vocab_size, width=t.width, heads=t.heads,
        layers=t.depth, mlp_ratio=t.mlp_ratio, pad_id=t.pad_id, no_causal_mask=True, pool_type="first",
    )
    return CLIP(cfg.embed_dim, vision, text, init_logit_scale=math.log(1 / cfg.init_temperature))


def open_clip_param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """open_clip_train's split: no weight decay for gains, biases, norms and the logit scale."""
    def exclude(name: str, p: torch.nn.Parameter) -> bool:
        return p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name

    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [{"params": [p for n, p in named if not exclude(n, p)], "weight_decay": weight_decay},
            {"params": [p for n, p in named if exclude(n, p)], "weight_decay": 0.0}]


class OpenClipStep:
    """Callable `step(images, tokens, lr) -> loss`, the same contract as our `TrainStep`."""

    def __init__(self, model: CLIP, precision: str = "fp32", compile: bool = False,
                 compile_backend: str = "inductor", weight_decay: float = 0.2,
                 betas: tuple[float, float] = (0.9, 0.95), eps: float = 1e-6):
        device = next(model.parameters()).device
        self.model = model.train()
        self.forward_model = torch.compile(model, backend=compile_backend) if compile else model
        self.precision = precision
        self.loss_fn = ClipLoss()
        self.optimizer = torch.optim.AdamW(open_clip_param_groups(model, weight_decay), lr=1e-3, betas=betas,
                                           eps=eps, fused=device.type in ("cpu", "cuda"))

    def __call__(self, images: torch.Tensor, tokens: torch.Tensor, lr: float) -> torch.Tensor:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            image_features, text_features, logit_scale = self.forward_model(images, tokens)
            loss = self.loss_fn(image_features, text_features, logit_scale)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        with torch.no_grad():
            self.model.logit_scale.clamp_(0, math.log(100))
        return loss.detach()
