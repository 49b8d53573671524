"""The FLIP model: a masked ViT image tower and a bidirectional text tower.

Follows the official FLIP design (facebookresearch/flip `models_flip.py`):
- fixed 2D sin-cos position embeddings are added to the patches *before* masking,
  so a kept patch still knows where it came from;
- masking keeps a per-sample subset of patch tokens; the CLS token is concatenated
  *after* masking and carries no position embedding; no LayerNorm after the patch
  embedding;
- the image feature is the global average of the final (LayerNorm-ed) patch tokens,
  then a bias-free linear projection. FLIP averages over CLS too; we average over the
  patch tokens only, which OpenCLIP's `pool_type='avg'` can express, so an export
  to open_clip is exact;
- the text tower is a non-autoregressive Transformer read at its first token (SOT).

Blocks are timm's, so attention runs through `F.scaled_dot_product_attention`.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from timm.layers import PatchEmbed, resample_abs_pos_embed
from timm.layers.pos_embed_sincos import build_sincos2d_pos_embed
from timm.models.vision_transformer import Block
from torch import nn
from torch.utils.checkpoint import checkpoint

from flip.masking import gather_tokens
from flip.models.config import ModelConfig, TextConfig, VisionConfig


def _run_block(block, x: torch.Tensor, checkpointing: bool, *args, **kwargs) -> torch.Tensor:
    """`block(x, ...)`; with activation checkpointing (and a graph being built), its activations are not
    kept but recomputed in backward: the block's input is all it stores."""
    if checkpointing and torch.is_grad_enabled():
        return checkpoint(block, x, *args, use_reentrant=False, **kwargs)
    return block(x, *args, **kwargs)


def _blocks(width: int, depth: int, heads: int, mlp_ratio: float) -> nn.ModuleList:
    # nn.LayerNorm (eps 1e-5) and exact GELU: the same numerics as open_clip's blocks.
    return nn.ModuleList(
        Block(width, heads, mlp_ratio, qkv_bias=True, norm_layer=nn.LayerNorm, act_layer=nn.GELU)
        for _ in range(depth)
    )


class VisionTower(nn.Module):
    def __init__(self, cfg: VisionConfig, embed_dim: int):
        super().__init__()
        self.cfg = cfg
        # Not strict: images of another size (a multiple of the patch) run at their own grid (see `pos_embed_at`).
        self.patch_embed = PatchEmbed(cfg.image_size, cfg.patch_size, 3, cfg.width, strict_img_size=False)
        pos = build_sincos2d_pos_embed([cfg.grid_size, cfg.grid_size], dim=cfg.width)
        # Fixed, so not saved: rebuilt from the config on load.
        self.register_buffer("pos_embed", pos.unsqueeze(0), persistent=False)  # [1, L, D]
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.width))
        self.blocks = _blocks(cfg.width, cfg.depth, cfg.heads, cfg.mlp_ratio)
        self.norm = nn.LayerNorm(cfg.width)
        self.proj = nn.Linear(cfg.width, embed_dim, bias=False)
        self.grad_checkpointing = False  # FLIP.set_grad_checkpointing

    def forward_tokens(self, images: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """images [B, 3, H, W], keep [B, k] patch indices (None = all) -> tokens [B, 1 + k, D], CLS first.

        H and W are the model's image size or other multiples of the patch size (a reduced training size)."""
        x = self.patch_embed(images) + self.pos_embed_at(images.shape[-2:])  # [B, L, D]
        if keep is not None:
            x = gather_tokens(x, keep)  # [B, k, D]
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        for block in self.blocks:
            x = _run_block(block, x, self.grad_checkpointing)
        return self.norm(x)

    def pos_embed_at(self, size: tuple[int, int]) -> torch.Tensor:
        """The position embeddings for images of `size` (H, W): the model's own at its image size, else
        resampled (bicubic, antialiased: timm's `resample_abs_pos_embed`, as open_clip and CLIPA resize
        them) from the model's grid to the images' grid, so a patch's embedding says where in the image
        it is whatever the resolution (CLIPA's training at a reduced size). A fixed buffer: no gradient."""
        grid = [size[0] // self.cfg.patch_size, size[1] // self.cfg.patch_size]
        native = [self.cfg.grid_size, self.cfg.grid_size]
        if grid == native:
            return self.pos_embed
        return resample_abs_pos_embed(self.pos_embed, new_size=grid, old_size=native, num_prefix_tokens=0)

    def pool_project(self, tokens: torch.Tensor) -> torch.Tensor:
        """Average of the patch tokens (CLS excluded), then the bias-free projection."""
        return self.proj(tokens[:, 1:].mean(dim=1))

    def forward(self, images: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        return self.pool_project(self.forward_tokens(images, keep))


class TextTower(nn.Module):
    """Bidirectional Transformer over BPE tokens; the feature is read at the first (SOT) token.

    Padding: by default (`pad_mask=False`) padding positions are ordinary tokens - every
    position attends to every other, padding included - exactly open_clip's bidirectional
    text tower (`no_causal_mask=True`), so an exported model is the same model under plain
    `create_model_and_transforms` and CLIP_benchmark. With `pad_mask=True`, padding is
    excluded as attention keys (the feature then ignores how much padding there is); open_clip
    has that too (`use_pad_mask`) but no config key for it. Text masking drops positions,
    padding included, before the blocks either way.
    The last block computes position 0's output only: nothing reads the others.
    """

    def __init__(self, cfg: TextConfig, embed_dim: int):
        super().__init__()
        self.cfg = cfg
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.width)
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.context_length, cfg.width))
        self.blocks = _blocks(cfg.width, cfg.depth, cfg.heads, cfg.mlp_ratio)
        self.norm = nn.LayerNorm(cfg.width)
        self.proj = nn.Linear(cfg.width, embed_dim, bias=False)
        self.grad_checkpointing = False  # FLIP.set_grad_checkpointing

    def forward(self, tokens: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """tokens [B, T]; keep [B, k] positions to keep (text masking), position 0 among them."""
        x = self.token_embedding(tokens) + self.pos_embed[:, : tokens.shape[1]]
        if keep is not None:
            x = gather_tokens(x, keep)
            tokens = torch.gather(tokens, 1, keep)
        attn_mask = None
        if self.cfg.pad_mask:
            attn_mask = (tokens != self.cfg.pad_id)[:, None, None, :]  # [B, 1, 1, T]: True = may be attended to
        for block in self.blocks[:-1]:
            x = _run_block(block, x, self.grad_checkpointing, attn_mask=attn_mask)
        if len(self.blocks):  # [B, 1, D]: only position 0 is read
            x = _run_block(functools.partial(_block_at_first_token, self.blocks[-1]), x, self.grad_checkpointing,
                           attn_mask)
        return self.proj(self.norm(x[:, 0]))


def _block_at_first_token(block: Block, x: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
    """`block(x, attn_mask)[:, :1]` without computing the other positions' outputs.

    Position 0's query still attends to every position's key and value, but its attention output,
    projection and MLP run on one token instead of T: the text tower's last block costs ~1/4 of a
    full one, in FLOPs and in activations kept for backward. For the blocks `_blocks` builds:
    no attention gate, dropout or drop-path.
    """
    attn = block.attn
    b, n, _ = x.shape
    qkv = attn.qkv(block.norm1(x)).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)  # [B, H, T, hd] each
    out = F.scaled_dot_product_attention(attn.q_norm(q[:, :, :1]), attn.k_norm(k), v, attn_mask=attn_mask)
    x = x[:, :1] + block.ls1(attn.proj(attn.norm(out.transpose(1, 2).reshape(b, 1, attn.attn_dim))))
    return x + block.ls2(block.mlp(block.norm2(x)))


class FLIP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.visual = VisionTower(cfg.vision, cfg.embed_dim)
        self.text = TextTower(cfg.text, cfg.embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / cfg.init_temperature)))
        # Only the sigmoid loss's model has a bias: a contrastive model's parameters are as they were.
        bias = None if cfg.init_logit_bias is None else nn.Parameter(torch.tensor(float(cfg.init_logit_bias)))
        self.register_parameter("logit_bias", bias)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        # MAE/FLIP init: xavier-uniform linears (patch embed treated as a linear), zero biases.
        def init(m: nn.Module) -> None:
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

        self.apply(init)
        w = self.visual.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.visual.cls_token, std=0.02)
        nn.init.normal_(self.text.token_embedding.weight, std=0.02)
        nn.init.normal_(self.text.pos_embed, std=0.01)

    def encode_image(self, images: torch.Tensor, keep: torch.Tensor | None = None,
                     normalize: bool = True) -> torch.Tensor:
        features = self.visual(images, keep)
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text(self, tokens: torch.Tensor, keep: torch.Tensor | None = None,
                    normalize: bool = True) -> torch.Tensor:
        features = self.text(tokens, keep)
        return F.normalize(features, dim=-1) if normalize else features

    def forward(self, images: torch.Tensor, tokens: torch.Tensor, image_keep: torch.Tensor | None = None,
                text_keep: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns L2-normalised image and text features and the logit scale exp(s)."""
        return (self.encode_image(images, image_keep), self.encode_text(tokens, text_keep),
                self.logit_scale.exp())

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Activation checkpointing: each transformer block of both towers keeps only its input for
        backward and recomputes the rest (open_clip's `set_grad_checkpointing`). Same results, less
        activation memory, one more forward of the blocks per step."""
        self.visual.grad_checkpointing = self.text.grad_checkpointing = enable

    @torch.no_grad()
    def clamp_logit_scale(self) -> None:
        """Keep log(scale) in [0, ln max]; called after each optimizer step, as OpenCLIP does."""
        self.logit_scale.clamp_(0.0, math.log(self.cfg.max_logit_scale))

    def no_weight_decay(self) -> set[str]:
        """Parameter names exempt from weight decay besides biases and norms (handled by shape)."""
        return {"visual.cls_token", "text.pos_embed", "logit_scale", "logit_bias"}
