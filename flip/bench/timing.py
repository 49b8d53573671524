"""Timing training steps: interleaved repetitions and medians, and the per-part time split.

Everything compared is timed in one process, round-robin: repetition i runs every step function
once, in forward order on even i and reversed order on odd i, so slow drifts of a shared machine
(other jobs, thermal state) hit every configuration alike. The device is synchronised around each
timed call; that is the bench's business only - the training step itself never syncs.

The time split measures each part of a step on its own - forward + backward of the image tower,
of the text tower, of the loss on detached features, and the optimizer update - also interleaved.
The parts do not add up exactly to the step: the rest ("other") is zero_grad, drawing the mask,
the autograd engine joining the two towers, and timing noise.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from flip.loss import ContrastiveLoss
from flip.masking import num_kept, random_keep_indices
from flip.models import FLIP, ModelConfig

SOT, EOT = 49406, 49407  # CLIP BPE start/end of text


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synthetic_batch(cfg: ModelConfig, batch: int, device: torch.device,
                    seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Images [B, 3, H, W] (normalised-pixel statistics) and tokens [B, T] laid out like the
    tokenizer's: SOT, 8-24 BPE ids, EOT, zero padding. Compute does not depend on the values."""
    g = torch.Generator().manual_seed(seed)
    v, t = cfg.vision, cfg.text
    images = torch.randn(batch, 3, v.image_size, v.image_size, generator=g)
    tokens = torch.zeros(batch, t.context_length, dtype=torch.long)
    lengths = torch.randint(8, min(24, t.context_length - 2) + 1, (batch,), generator=g)
    for i, n in enumerate(lengths.tolist()):
        tokens[i, 0] = SOT
        tokens[i, 1:n + 1] = torch.randint(1, min(SOT, t.vocab_size), (n,), generator=g)
        tokens[i, n + 1] = EOT
    return images.to(device), tokens.to(device)


@dataclass
class Timings:
    """Seconds of each timed call, per key, in the order they ran."""

    seconds: dict[str, list[float]]

    def median(self, key: str) -> float:
        return statistics.median(self.seconds[key])


def time_interleaved(fns: dict[str, Callable[[], object]], steps: int, warmup: int,
                     device: torch.device, on_progress: Callable[[str], None] | None = None) -> Timings:
    """Run every function `warmup` times untimed, then `steps` timed times, round-robin."""
    names = list(fns)
    for i in range(warmup):
        for name in names:
            if on_progress:
                on_progress(f"warm-up {i + 1}/{warmup}: {name}")
            fns[name]()
    synchronize(device)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for i in range(steps):
        for name in (names if i % 2 == 0 else reversed(names)):
            if on_progress:
                on_progress(f"step {i + 1}/{steps}: {name}")
            synchronize(device)
            start = time.perf_counter()
            fns[name]()
            synchronize(device)
            seconds[name].append(time.perf_counter() - start)
    return Timings(seconds)


def autocast(device: torch.device, precision: str):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def part_functions(model: FLIP, optimizer: torch.optim.Optimizer, images: torch.Tensor, tokens: torch.Tensor,
                   mask_ratio: float, precision: str) -> dict[str, Callable[[], object]]:
    """One closure per part of a training step, each forward + backward of that part alone.

    A tower's part first drops that tower's gradients, as the step's zero_grad does, so backward
    assigns them instead of accumulating; the optimizer part updates the latest gradients of both.
    """
    device = images.device
    cfg = model.cfg
    batch = images.shape[0]
    length = cfg.vision.num_patches
    keep_count = num_kept(length, mask_ratio)
    loss_fn = ContrastiveLoss()
    feature_grad = torch.randn(batch, cfg.embed_dim, device=device) / batch

    def drop_grads(module: torch.nn.Module) -> None:
        for p in module.parameters():
            p.grad = None

    def image() -> None:
        drop_grads(model.visual)
        keep = random_keep_indices(batch, length, keep_count, device) if keep_count < length else None
        with autocast(device, precision):
            features = model.encode_image(images, keep)
        features.backward(feature_grad.to(features.dtype))

    def text() -> None:
        drop_grads(model.text)
        with autocast(device, precision):
            features = model.encode_text(tokens)
        features.backward(feature_grad.to(features.dtype))

    leaf_image = torch.nn.functional.normalize(torch.randn(batch, cfg.embed_dim, device=device), dim=-1)
    leaf_text = torch.nn.functional.normalize(torch.randn(batch, cfg.embed_dim, device=device), dim=-1)
    leaf_image.requires_grad_(True)
    leaf_text.requires_grad_(True)

    def loss() -> None:
        with autocast(device, precision):
            value = loss_fn(leaf_image, leaf_text, model.logit_scale.exp().float())
        value.backward()

    def optimizer_step() -> None:
        optimizer.step()
        model.clamp_logit_scale()

    return {"image": image, "text": text, "loss": loss, "optimizer": optimizer_step}
