"""MAE-style reconstruction head for the paper's Table 1f ablation (FLIP + reconstruction loss).

Only built when the reconstruction weight is > 0; it is a training-time module, never part of
an evaluated or exported model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from timm.layers.pos_embed_sincos import build_sincos2d_pos_embed
from torch import nn

from flip.models.config import VisionConfig
from flip.models.flip_model import _blocks


@dataclass(frozen=True)
class DecoderConfig:
    depth: int = 2
    width: int = 128
    heads: int = 4


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """[B, 3, H, W] -> [B, L, p*p*3], patches in row-major order (the encoder's token order)."""
    b, c, h, w = images.shape
    p = patch_size
    x = images.reshape(b, c, h // p, p, w // p, p)
    return torch.einsum("bchpwq->bhwpqc", x).reshape(b, (h // p) * (w // p), p * p * c)


def normalized_pixel_target(images: torch.Tensor, patch_size: int, eps: float = 1e-6) -> torch.Tensor:
    """Each patch's pixels normalised by that patch's mean and variance (MAE's norm_pix_loss)."""
    target = patchify(images, patch_size)
    mean = target.mean(dim=-1, keepdim=True)
    var = target.var(dim=-1, keepdim=True)
    return (target - mean) / (var + eps) ** 0.5


def masked_mse(pred: torch.Tensor, target: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the masked (dropped) patches only. pred/target [B, L, P], keep [B, k]."""
    masked = torch.ones(pred.shape[:2], device=pred.device, dtype=pred.dtype)
    masked.scatter_(1, keep, 0.0)  # 1 = dropped
    per_patch = ((pred - target) ** 2).mean(dim=-1)
    return (per_patch * masked).sum() / masked.sum()


class MAEDecoder(nn.Module):
    def __init__(self, vision: VisionConfig, cfg: DecoderConfig):
        super().__init__()
        self.patch_size = vision.patch_size
        self.embed = nn.Linear(vision.width, cfg.width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.width))
        pos = build_sincos2d_pos_embed([vision.grid_size, vision.grid_size], dim=cfg.width)
        self.register_buffer("pos_embed", pos.unsqueeze(0), persistent=False)  # [1, L, Dd]
        self.blocks = _blocks(cfg.width, cfg.depth, cfg.heads, 4.0)
        self.norm = nn.LayerNorm(cfg.width)
        self.head = nn.Linear(cfg.width, vision.patch_size**2 * 3)
        nn.init.normal_(self.mask_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, encoder_tokens: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """encoder_tokens [B, 1 + k, D] (CLS first), keep [B, k] -> predicted pixels [B, L, p*p*3]."""
        x = self.embed(encoder_tokens)
        cls, kept = x[:, :1], x[:, 1:]
        batch, length, width = x.shape[0], self.pos_embed.shape[1], x.shape[2]
        # The mask token at every position, the encoded tokens scattered back where they came from.
        full = self.mask_token.expand(batch, length, width)
        full = torch.scatter(full, 1, keep.unsqueeze(-1).expand(-1, -1, width), kept)
        x = torch.cat([cls, full + self.pos_embed], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))[:, 1:]

    def loss(self, encoder_tokens: torch.Tensor, keep: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        pred = self.forward(encoder_tokens, keep)
        return masked_mse(pred.float(), normalized_pixel_target(images.float(), self.patch_size), keep)

    def no_weight_decay(self) -> set[str]:
        return {"mask_token"}
