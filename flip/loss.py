"""Symmetric InfoNCE over the global batch.

Single process: the plain form, logits = s * I @ T^T over the batch.
Under torch.distributed: each rank all-gathers the features *with gradients* and
computes the local-loss form, logits = s * I_local @ T_all^T with labels offset by
rank (OpenCLIP's `gather_with_grad=True, local_loss=True`). The mean over ranks of
the local losses equals the global loss exactly, and with DDP's gradient averaging so
do the gradients, while each rank only materialises an [n, N] block of logits.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def _gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x), dim=0)


class ContrastiveLoss(nn.Module):
    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor,
                logit_scale: torch.Tensor) -> torch.Tensor:
        n = image_features.shape[0]
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            all_images = _gather_with_grad(image_features)
            all_texts = _gather_with_grad(text_features)
            offset = n * dist.get_rank()
        else:
            all_images, all_texts, offset = image_features, text_features, 0
        logits_per_image = logit_scale * image_features @ all_texts.T  # [n, N]
        logits_per_text = logit_scale * text_features @ all_images.T  # [n, N]
        labels = torch.arange(offset, offset + n, device=image_features.device)
        return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2
