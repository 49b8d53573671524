"""The OpenCLIP reference: the same network as ours, built by open_clip with `patch_dropout`, and its step.

The model is what `flipctl export` writes for our model (`flip.export.open_clip`): open_clip's
`CustomTextCLIP` with our vision width / depth / heads / patch / image size, no LayerNorm before
the blocks, average pooling of the patch tokens, our text width / depth / heads / context /
vocabulary, bidirectional text attention read at the first token (ignoring padding only if our
text config does: `use_pad_mask`), and our embedding width - so with our weights loaded it
computes our function, and the comparison is of implementations, not architectures.
`vision_cfg.patch_dropout` is the masking ratio.

The step is open_clip_train's `train_one_epoch` for one batch: forward in train mode (its
PatchDropout acts only then, drawing keep indices with CPU `randn` + `topk`), `ClipLoss`,
backward, AdamW (fused where the device has the kernel, as ours), then the logit-scale clamp.
"""

from __future__ import annotations

import math

import torch
from open_clip.loss import ClipLoss
from open_clip.model import CustomTextCLIP

from flip.export.open_clip import convert_state_dict, open_clip_config
from flip.models import FLIP, ModelConfig


def build_open_clip(cfg: ModelConfig, mask_ratio: float, weights_from: FLIP | None = None) -> CustomTextCLIP:
    """open_clip's model of `cfg` with `patch_dropout=mask_ratio`; `weights_from` copies a FLIP model's weights."""
    config = open_clip_config(cfg)
    vision = {**config["vision_cfg"], "patch_dropout": mask_ratio}
    model = CustomTextCLIP(config["embed_dim"], vision, config["text_cfg"], quick_gelu=config["quick_gelu"])
    model.text.use_pad_mask = cfg.text.pad_mask
    if weights_from is not None:
        model.load_state_dict(convert_state_dict(weights_from))
    return model


def open_clip_param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """open_clip_train's split: no weight decay for gains, biases, norms and the logit scale."""
    def exclude(name: str, p: torch.nn.Parameter) -> bool:
        return p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name

    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [{"params": [p for n, p in named if not exclude(n, p)], "weight_decay": weight_decay},
            {"params": [p for n, p in named if exclude(n, p)], "weight_decay": 0.0}]


class OpenClipStep:
    """Callable `step(images, tokens, lr) -> loss`, the same contract as our `TrainStep`."""

    def __init__(self, model: CustomTextCLIP, precision: str = "fp32", compile: bool = False,
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


def open_clip_step_peak_memory(cfg: ModelConfig, mask_ratio: float, batch: int, device: torch.device,
                               precision: str = "fp32") -> int | None:
    """Peak bytes of one steady-state open_clip training step, measured as `peak_memory.step_peak_memory`."""
    from flip.bench.peak_memory import measure_peak
    from flip.bench.timing import synthetic_batch

    def run() -> None:
        step = OpenClipStep(build_open_clip(cfg, mask_ratio).to(device), precision)
        images, tokens = synthetic_batch(cfg, batch, device)
        for p in step.model.parameters():  # gradients and AdamW moments exist, as after any earlier step
            p.grad = torch.zeros_like(p)
        step.optimizer.step()
        step(images, tokens, 1e-3)

    return measure_peak(run, device)
