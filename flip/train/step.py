"""One training step - forward, losses, backward, optimizer - shared by the trainer and `flipctl bench`.

The step does device work only: masking noise is drawn on the device (no host RNG, no
sync; `block` masking, an ablation, is the exception), losses stay tensors (no `.item()`),
and AdamW is the fused kernel.

With `accum_steps` K > 1 the batch goes through the model in K chunks and the gradient is still
exactly that of the contrastive loss over the whole (global) batch, as GradCache and OpenCLIP's
`--accum-freq` do it: a first pass computes every chunk's features without a graph, the loss is
formed over all of them and its gradient with respect to the features (and the temperature) is
kept, then each chunk runs again with a graph and is backpropagated with its rows of those
gradients. Only one chunk's activations are alive at a time.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import nn
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel

from flip.loss import make_loss
from flip.masking import image_keep_indices, num_kept, text_keep_indices
from flip.models import FLIP
from flip.models.decoder import MAEDecoder
from flip.models.pretrainer import Pretrainer
from flip.train.config import StepConfig  # declared once, as TrainConfig's step=True knobs


class TrainStep:
    """Callable `step(images, tokens, lr) -> {"loss": ..., "contrastive": ..., ["recon": ...]}`; with
    `--text-mask syntax`, `step(images, tokens, lr, word_classes)` (the data loader's, see `text_keep`).

    `forward_model` is what runs the forward: by default a `Pretrainer` over `model` (and
    `decoder`); the trainer passes its DDP / torch.compile wrapper of that Pretrainer.
    `guard_nonfinite`: skip the update of a step whose loss or gradient is NaN or infinite, and
    return `"nonfinite"` (1.0 for such a step) with the losses (see `guarded_update`).
    """

    def __init__(self, model: FLIP, optimizer: torch.optim.Optimizer, cfg: StepConfig,
                 forward_model: nn.Module | None = None, decoder: MAEDecoder | None = None,
                 guard_nonfinite: bool = False):
        if cfg.recon_weight > 0 and decoder is None and forward_model is None:
            raise ValueError("a reconstruction weight > 0 needs a decoder")
        self.model, self.optimizer, self.cfg = model, optimizer, cfg
        self.guard_nonfinite = guard_nonfinite
        # `is None`, not `or`: a torch.compile'd module refuses bool()/len().
        self.forward_model = forward_model if forward_model is not None else Pretrainer(model, decoder)
        self.params = [p for group in optimizer.param_groups for p in group["params"]]
        if (cfg.loss == "sigmoid") != (model.logit_bias is not None):
            raise ValueError(f"the {cfg.loss} loss needs a model {'with' if cfg.loss == 'sigmoid' else 'without'} a "
                             f"logit bias: build its config with ModelConfig.with_loss({cfg.loss!r})")
        self.loss_fn = make_loss(cfg.loss, cfg.loss_chunk)
        self.loss_inputs = ("image_features", "text_features", "logit_scale") + (
            ("logit_bias",) if cfg.loss == "sigmoid" else ())
        vision = model.cfg.vision.at_image_size(cfg.image_size)  # at the training size (--image-size)
        self.image_size, self.grid_size = vision.image_size, vision.grid_size
        self.masks_images = num_kept(self.grid_size**2, cfg.mask_ratio) < self.grid_size**2

    def image_keep(self, batch: int, device: torch.device) -> torch.Tensor | None:
        if not self.masks_images:
            return None  # mask 0: the plain path, no gather
        return image_keep_indices(self.cfg.mask_strategy, batch, self.grid_size, self.cfg.mask_ratio, device)

    def text_keep(self, tokens: torch.Tensor, word_classes: torch.Tensor | None = None) -> torch.Tensor | None:
        """Text keep indices; `word_classes` [B, T]: each token's class for syntax masking
        (`flip.data.tokenizer.Tokenizer.with_word_classes`, computed by the data loader's workers)."""
        return text_keep_indices(tokens, self.cfg.text_mask, self.cfg.text_mask_ratio, self.model.cfg.text.pad_id,
                                 word_classes)

    def autocast(self, device: torch.device):
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.cfg.precision == "bf16")

    def forward_loss(self, images: torch.Tensor, tokens: torch.Tensor,
                     word_classes: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        image_keep = self.image_keep(images.shape[0], images.device)
        text_keep = self.text_keep(tokens, word_classes)
        with self.autocast(images.device):
            out = self.forward_model(images, tokens, image_keep, text_keep)
            contrastive = self.loss_fn(*(out[name].float() for name in self.loss_inputs))
        losses = {"loss": contrastive, "contrastive": contrastive}
        if "recon_loss" in out:
            losses["recon"] = out["recon_loss"]
            losses["loss"] = contrastive + self.cfg.recon_weight * out["recon_loss"]
        return losses

    def backward(self, images: torch.Tensor, tokens: torch.Tensor,
                 word_classes: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Set the parameters' gradients to those of this batch's loss; returns the losses."""
        if images.shape[-2:] != (self.image_size, self.image_size):  # masks index this size's patch grid
            raise ValueError(f"images of {tuple(images.shape[-2:])} px for a step at {self.image_size} px")
        if self.cfg.accum_steps > 1:
            self.optimizer.zero_grad(set_to_none=True)
            return self.accumulate(images, tokens, word_classes)
        losses = self.forward_loss(images, tokens, word_classes)
        self.optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        return losses

    def accumulate(self, images: torch.Tensor, tokens: torch.Tensor,
                   word_classes: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The batch's gradient in `accum_steps` chunks, exactly (GradCache; see the module docstring)."""
        k = self.cfg.accum_steps
        if images.shape[0] % k:
            raise ValueError(f"a batch of {images.shape[0]} does not split into {k} equal chunks")
        # Masks are drawn once, for the whole batch, so both passes of a chunk see the same patches
        # and tokens (and an unchunked step from the same RNG state would see them too).
        image_keep = self.image_keep(images.shape[0], images.device)
        text_keep = self.text_keep(tokens, word_classes)
        chunks = list(zip(images.chunk(k), tokens.chunk(k), _chunks(image_keep, k), _chunks(text_keep, k)))

        with torch.no_grad(), self.autocast(images.device):
            cached = [self.forward_model(*chunk, recon=False) for chunk in chunks]
        # The loss's inputs as new leaves (detached: the bias is the parameter itself): the features of every
        # chunk, the scale (and the sigmoid loss's bias).
        leaves = {name: (torch.cat([out[name].float() for out in cached]) if name.endswith("features")
                         else cached[0][name].float()).detach().requires_grad_() for name in self.loss_inputs}
        del cached
        # No parameter is in this graph: its backward only fills the leaves' gradients (under
        # torch.distributed, through the all-gather, so every rank's loss reaches these features).
        contrastive = self.loss_fn(*leaves.values())
        contrastive.backward()

        ddp = _ddp_module(self.forward_model)
        recon_sum, start = None, 0
        for i, chunk in enumerate(chunks):
            rows = slice(start, start + chunk[0].shape[0])
            start = rows.stop
            # DDP all-reduces once, in the last chunk's backward, what the chunks accumulated.
            with ddp.no_sync() if ddp is not None and i < k - 1 else nullcontext():
                with self.autocast(images.device):
                    out = self.forward_model(*chunk)
                # A scalar whose gradient with respect to this chunk's outputs is the loss's: the
                # temperature's (and bias's) share is split evenly over the chunks.
                surrogate = sum((out[name].float() * leaf.grad[rows]).sum() if name.endswith("features")
                                else out[name].float() * (leaf.grad / k) for name, leaf in leaves.items())
                if "recon_loss" in out:  # a mean over each chunk's samples: the batch's is the chunks' mean
                    surrogate = surrogate + self.cfg.recon_weight / k * out["recon_loss"]
                    recon = out["recon_loss"].detach()
                    recon_sum = recon if recon_sum is None else recon_sum + recon
                surrogate.backward()
        contrastive = contrastive.detach()
        losses = {"loss": contrastive, "contrastive": contrastive}
        if recon_sum is not None:
            losses["recon"] = recon_sum / k
            losses["loss"] = contrastive + self.cfg.recon_weight * losses["recon"]
        return losses

    def __call__(self, images: torch.Tensor, tokens: torch.Tensor, lr: float,
                 word_classes: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        losses = self.backward(images, tokens, word_classes)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip) if self.cfg.grad_clip else None
        out = {k: v.detach() for k, v in losses.items()}
        if self.guard_nonfinite:
            out["nonfinite"] = self.guarded_update(out["loss"], grad_norm)
        else:
            self.optimizer.step()
        self.model.clamp_logit_scale()
        return out

    def guarded_update(self, loss: torch.Tensor, grad_norm: torch.Tensor | None) -> torch.Tensor:
        """The optimizer step, skipped when the loss or the gradient is NaN or infinite; returns 1.0 for
        a skipped step, else 0.0, as a device tensor.

        No host sync: the fused AdamW takes the flag as `found_inf` (as under a GradScaler) and skips
        the whole update on the device, moments and step count included. Under DDP the gradients are
        all-reduced, so every process sees the same gradient norm and skips the same steps.
        """
        if grad_norm is None:
            grads = [p.grad for p in self.params if p.grad is not None]
            grad_norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
        if isinstance(grad_norm, DTensor):  # under FSDP: the norm over every process's shards, a plain tensor
            grad_norm = grad_norm.full_tensor()
        nonfinite = (~(torch.isfinite(loss) & torch.isfinite(grad_norm))).float()
        if self.optimizer.defaults.get("fused"):
            self.optimizer.found_inf = nonfinite
            self.optimizer.step()
        elif not nonfinite.item():  # other optimizers cannot skip on the device: one sync per step
            self.optimizer.step()
        return nonfinite


def _chunks(x: torch.Tensor | None, k: int) -> list[torch.Tensor | None]:
    return [None] * k if x is None else list(x.chunk(k))


def _ddp_module(module: nn.Module) -> DistributedDataParallel | None:
    """The DDP wrapper inside `module` (possibly torch.compile'd), if any."""
    module = getattr(module, "_orig_mod", module)
    return module if isinstance(module, DistributedDataParallel) else None


def time_text_tower(model: FLIP, tokens: torch.Tensor, text_mask: str, text_mask_ratio: float,
                    repeats: int = 5, word_classes: torch.Tensor | None = None) -> dict[str, float]:
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
    masked = run(lambda: text_keep_indices(tokens, text_mask, text_mask_ratio, pad_id, word_classes))
    return {"text_tower_ms_full": full, "text_tower_ms_masked": masked, "text_tower_speedup": full / masked}
