"""The image-text losses over the global batch: FLIP's softmax InfoNCE and SigLIP's pairwise sigmoid.

Single process: the plain form over the batch.
Under torch.distributed: each rank all-gathers the features *with gradients* and
computes the local-loss form over its own images (and, for InfoNCE, its own texts)
against all N of the other side (OpenCLIP's `gather_with_grad=True, local_loss=True`).
Each local loss is normalised so that the mean over ranks equals the global loss exactly,
and with DDP's gradient averaging so do the gradients, while each rank only materialises
an [n, N] block of logits (the chunked sigmoid form: [n, chunk] at a time).
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from flip.choices import LOSSES


def _gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x), dim=0)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class ContrastiveLoss(nn.Module):
    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor,
                logit_scale: torch.Tensor) -> torch.Tensor:
        n = image_features.shape[0]
        if _distributed():
            all_images = _gather_with_grad(image_features)
            all_texts = _gather_with_grad(text_features)
            offset = n * dist.get_rank()
        else:
            all_images, all_texts, offset = image_features, text_features, 0
        logits_per_image = logit_scale * image_features @ all_texts.T  # [n, N]
        logits_per_text = logit_scale * text_features @ all_images.T  # [n, N]
        labels = torch.arange(offset, offset + n, device=image_features.device)
        return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2


def _signs(rows: int, first_row: int, first_col: int, cols: int, device: torch.device) -> torch.Tensor:
    """z_ij of the block [first_row, +rows) x [first_col, +cols): +1 where image i and text j are a pair, else -1."""
    i = torch.arange(first_row, first_row + rows, device=device)
    j = torch.arange(first_col, first_col + cols, device=device)
    return (i[:, None] == j[None, :]).float() * 2 - 1  # [rows, cols]


class SigmoidLoss(nn.Module):
    """SigLIP's pairwise sigmoid loss: -1/n sum_i sum_j log sigmoid(z_ij (t x_i.y_j + b)), z = +1 for the
    image's own text and -1 for every other text of the global batch.

    n is the number of local images: under torch.distributed a rank scores its n images against all N
    texts (gathered with gradients), so the local losses sum the global loss's N x N terms once and
    their mean over the N/n ranks is the single-process loss. `chunk` > 0 computes the [n, N] block
    `chunk` texts at a time, forward and backward (`ChunkedSigmoidLoss`): the same loss and gradients,
    at most [n, chunk] logits alive.
    """

    def __init__(self, chunk: int = 0):
        super().__init__()
        self.chunk = chunk

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
                logit_bias: torch.Tensor) -> torch.Tensor:
        n = image_features.shape[0]
        if _distributed():
            all_texts, offset = _gather_with_grad(text_features), n * dist.get_rank()
        else:
            all_texts, offset = text_features, 0
        # In the inputs' precision (float32 from the step) even under bf16 autocast: the chunked form's
        # backward runs outside autocast, and both forms must give the same numbers.
        device = image_features.device.type
        with torch.autocast(device, enabled=False) if torch.amp.is_autocast_available(device) else nullcontext():
            return self._loss(image_features, all_texts, logit_scale, logit_bias, offset)

    def _loss(self, image_features, all_texts, logit_scale, logit_bias, offset: int) -> torch.Tensor:
        n = image_features.shape[0]
        if 0 < self.chunk < all_texts.shape[0]:
            return ChunkedSigmoidLoss.apply(image_features, all_texts, logit_scale, logit_bias, offset, self.chunk)
        logits = logit_scale * image_features @ all_texts.T + logit_bias  # [n, N]
        signs = _signs(n, offset, 0, all_texts.shape[0], image_features.device)
        return -F.logsigmoid(signs * logits).sum() / n


class ChunkedSigmoidLoss(torch.autograd.Function):
    """The sigmoid loss of images [n, d] against texts [N, d], `chunk` texts at a time.

    Forward keeps only the inputs; backward recomputes each [n, chunk] block of logits and adds its
    gradients: d/dl of -log sigmoid(z l) is -z sigmoid(-z l). `offset`: the global index of image 0.
    """

    @staticmethod
    def forward(ctx, images, texts, scale, bias, offset: int, chunk: int):
        ctx.save_for_backward(images, texts, scale, bias)
        ctx.offset, ctx.chunk = offset, chunk
        n, total = images.shape[0], images.new_zeros(())
        for start in range(0, texts.shape[0], chunk):
            block = texts[start:start + chunk]
            logits = scale * images @ block.T + bias
            total = total - F.logsigmoid(_signs(n, offset, start, block.shape[0], images.device) * logits).sum()
        return total / n

    @staticmethod
    def backward(ctx, grad_out):
        images, texts, scale, bias = ctx.saved_tensors
        n = images.shape[0]
        d_images, d_texts = torch.zeros_like(images), torch.empty_like(texts)
        d_scale, d_bias = torch.zeros_like(scale), torch.zeros_like(bias)
        for start in range(0, texts.shape[0], ctx.chunk):
            block = texts[start:start + ctx.chunk]
            similarity = images @ block.T  # [n, chunk]
            signs = _signs(n, ctx.offset, start, block.shape[0], images.device)
            grad = -signs * torch.sigmoid(-signs * (scale * similarity + bias)) * (grad_out / n)
            d_images += scale * grad @ block
            d_texts[start:start + ctx.chunk] = scale * grad.T @ images
            d_scale += (grad * similarity).sum()
            d_bias += grad.sum()
        return d_images, d_texts, d_scale, d_bias, None, None


def make_loss(name: str, chunk: int = 0) -> nn.Module:
    """The loss a run's `--loss` names (`chunk`: the sigmoid loss's text block, 0 = all at once)."""
    if name == "contrastive":
        return ContrastiveLoss()
    if name == "sigmoid":
        return SigmoidLoss(chunk)
    raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")
