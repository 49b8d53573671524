"""One training step - forward, losses, backward, optimizer - shared by the trainer and `flipctl bench`.

The step does device work only: masking noise is drawn on the device (no host RNG, no
sync; `block` masking, an ablation, is the exception), losses stay tensors (no `.item()`),
and AdamW is the fused kernel.
"""

from __future__ import annotations

import torch
from torch import nn

from flip.loss import ContrastiveLoss
from flip.masking import image_keep_indices, num_kept, text_keep_indices
from flip.models import FLIP
from flip.models.decoder import MAEDecoder
from flip.models.pretrainer import Pretrainer
from flip.train.config import StepConfig  # declared once, as TrainConfig's step=True knobs


class TrainStep:
    """Callable `step(images, tokens, lr) -> {"loss": ..., "contrastive": ..., ["recon": ...]}`.

    `forward_model` is what runs the forward: by default a `Pretrainer` over `model` (and
    `decoder`); the trainer passes its DDP / torch.compile wrapper of that Pretrainer.
    """

    def __init__(self, model: FLIP, optimizer: torch.optim.Optimizer, cfg: StepConfig,
                 forward_model: nn.Module | None = None, decoder: MAEDecoder | None = None):
        if cfg.recon_weight > 0 and decoder is None and forward_model is None:
            raise ValueError("a reconstruction weight > 0 needs a decoder")
        self.model, self.optimizer, self.cfg = model, optimizer, cfg
        self.forward_model = forward_model or Pretrainer(model, decoder)
        self.params = [p for group in optimizer.param_groups for p in group["params"]]
        self.loss_fn = ContrastiveLoss()
        self.grid_size = model.cfg.vision.grid_size
        self.masks_images = num_kept(self.grid_size**2, cfg.mask_ratio) < self.grid_size**2

    def image_keep(self, batch: int, device: torch.device) -> torch.Tensor | None:
        if not self.masks_images:
            return None  # mask 0: the plain path, no gather
        return image_keep_indices(self.cfg.mask_strategy, batch, self.grid_size, self.cfg.mask_ratio, device)

    def text_keep(self, tokens: torch.Tensor) -> torch.Tensor | None:
        return text_keep_indices(tokens, self.cfg.text_mask, self.cfg.text_mask_ratio, self.model.cfg.text.pad_id)

    def forward_loss(self, images: torch.Tensor, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        image_keep = self.image_keep(images.shape[0], images.device)
        text_keep = self.text_keep(tokens)
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=self.cfg.precision == "bf16"):
            out = self.forward_model(images, tokens, image_keep, text_keep)
            contrastive = self.loss_fn(out["image_features"].float(), out["text_features"].float(),
                                       out["logit_scale"].float())
        losses = {"loss": contrastive, "contrastive": contrastive}
        if "recon_loss" in out:
            losses["recon"] = out["recon_loss"]
            losses["loss"] = contrastive + self.cfg.recon_weight * out["recon_loss"]
        return losses

    def __call__(self, images: torch.Tensor, tokens: torch.Tensor, lr: float) -> dict[str, torch.Tensor]:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        losses = self.forward_loss(images, tokens)
        self.optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        if self.cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
        self.optimizer.step()
        self.model.clamp_logit_scale()
        return {k: v.detach() for k, v in losses.items()}


def time_text_tower(model: FLIP, tokens: torch.Tensor, text_mask: str, text_mask_ratio: float,
                    repeats: int = 5) -> dict[str, float]:
    """Median ms of a text-tower forward + backward on `tokens`, without and with text masking.

    Measured once at the end of a run (not in the step), with device synchronisation.
    """
    import statistics
    import time

    def sync():
        if tokens.device.type == "cuda":
            torch.cuda.synchronize(tokens.device)

    def run(keep_fn) -> float:
        times = []
        for _ in range(repeats + 1):
            keep = keep_fn()
            sync()
            start = time.perf_counter()
            model.encode_text(tokens, keep).sum().backward()
            sync()
            times.append(time.perf_counter() - start)
        model.zero_grad(set_to_none=True)
        return 1000 * statistics.median(times[1:])

    pad_id = model.cfg.text.pad_id
    full = run(lambda: None)
    masked = run(lambda: text_keep_indices(tokens, text_mask, text_mask_ratio, pad_id))
    return {"text_tower_ms_full": full, "text_tower_ms_masked": masked, "text_tower_speedup": full / masked}
