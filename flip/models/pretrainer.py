"""What a training step runs forward: the FLIP model plus, for the Table 1f ablation, a decoder.

One module, so DDP and torch.compile wrap a single forward that returns everything the losses need.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from flip.models.decoder import MAEDecoder
from flip.models.flip_model import FLIP


class Pretrainer(nn.Module):
    def __init__(self, model: FLIP, decoder: MAEDecoder | None = None):
        super().__init__()
        self.model = model
        self.decoder = decoder

    def forward(self, images: torch.Tensor, tokens: torch.Tensor, image_keep: torch.Tensor | None = None,
                text_keep: torch.Tensor | None = None, recon: bool = True) -> dict[str, torch.Tensor]:
        """The features, the logit scale, the logit bias (a sigmoid-loss model's) and (with a decoder, when
        patches are masked and `recon`) the reconstruction loss. `recon=False`: no reconstruction loss
        (gradient accumulation's first pass)."""
        visual = self.model.visual
        image_tokens = visual.forward_tokens(images, image_keep)
        out = {
            "image_features": F.normalize(visual.pool_project(image_tokens), dim=-1),
            "text_features": self.model.encode_text(tokens, text_keep),
            "logit_scale": self.model.logit_scale.exp(),
        }
        if self.model.logit_bias is not None:  # the sigmoid loss's b
            out["logit_bias"] = self.model.logit_bias
        if recon and self.decoder is not None and image_keep is not None:
            out["recon_loss"] = self.decoder.loss(image_tokens, image_keep, images)
        return out

    def no_weight_decay(self) -> set[str]:
        names = {f"model.{n}" for n in self.model.no_weight_decay()}
        if self.decoder is not None:
            names |= {f"decoder.{n}" for n in self.decoder.no_weight_decay()}
        return names
