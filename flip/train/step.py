"""One training step - forward, loss, backward, optimizer - shared by the trainer and `flipctl bench`.

The step does device work only: masking noise is drawn on the device (no host RNG, no
sync), losses stay tensors (no `.item()`), and AdamW is the fused kernel.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from flip.loss import ContrastiveLoss
from flip.masking import num_kept, random_keep_indices
from flip.models import FLIP


@dataclass(frozen=True)
class StepConfig:
    mask_ratio: float = 0.5
    precision: str = "fp32"  # fp32 | bf16 (autocast)
    grad_clip: float | None = None


class TrainStep:
    """Callable `step(images, tokens, lr) -> {"loss": tensor}`; `model` is the FLIP module,
    `forward_model` what runs the forward (the same, or its DDP / compiled wrapper)."""

    def __init__(self, model: FLIP, optimizer: torch.optim.Optimizer, cfg: StepConfig,
                 forward_model: nn.Module | None = None):
        self.model, self.optimizer, self.cfg = model, optimizer, cfg
        self.forward_model = forward_model or model
        self.loss_fn = ContrastiveLoss()
        self.num_patches = model.cfg.vision.num_patches
        self.num_keep = num_kept(self.num_patches, cfg.mask_ratio)

    def image_keep(self, batch: int, device: torch.device) -> torch.Tensor | None:
        if self.num_keep == self.num_patches:
            return None  # mask 0: the plain path, no gather
        return random_keep_indices(batch, self.num_patches, self.num_keep, device)

    def forward_loss(self, images: torch.Tensor, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        keep = self.image_keep(images.shape[0], images.device)
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=self.cfg.precision == "bf16"):
            image_features, text_features, logit_scale = self.forward_model(images, tokens, keep)
            loss = self.loss_fn(image_features.float(), text_features.float(), logit_scale.float())
        return {"loss": loss}

    def __call__(self, images: torch.Tensor, tokens: torch.Tensor, lr: float) -> dict[str, torch.Tensor]:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        losses = self.forward_loss(images, tokens)
        self.optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        if self.cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.model.clamp_logit_scale()
        return {k: v.detach() for k, v in losses.items()}
