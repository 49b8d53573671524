"""Patch and token masking: which positions a sample keeps.

Masking is expressed as *keep indices* `[B, k]` into a sequence of length L, so
every sample in a batch keeps exactly k positions and batches stay dense. The
model gathers the kept tokens; the masked ones are never computed (that is
where FLIP's speed-up comes from). All random numbers are drawn on the device of
the batch, so masking costs no host round-trip.
"""

from __future__ import annotations

import math
import random

import torch

from flip.choices import MASK_STRATEGIES, TEXT_MASKS, grid_strides
from flip.errors import ConfigError


def num_kept(length: int, mask_ratio: float) -> int:
    """Positions kept at `mask_ratio`, as FLIP/MAE count them: int(L * (1 - r))."""
    if not 0.0 <= mask_ratio < 1.0:
        raise ConfigError(f"mask ratio must be in [0, 1), got {mask_ratio}")
    return max(1, int(length * (1.0 - mask_ratio)))


def random_keep_indices(batch: int, length: int, keep: int, device: torch.device | str,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-sample uniform random subset (MAE's `random_masking`): noise -> argsort -> first k."""
    noise = torch.rand(batch, length, device=device, generator=generator)  # [B, L]
    return noise.argsort(dim=1)[:, :keep]  # [B, k]


def gather_tokens(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """x: [B, L, D], keep: [B, k] -> [B, k, D].

    A row `index_select` on the flattened [B*L, D] tokens rather than `torch.gather`: autograd
    keeps gather's whole input alive until backward (its backward formula takes the tensor),
    i.e. every *masked* token too; index_select's backward needs only the input's shape.
    """
    b, length, d = x.shape
    rows = (keep + torch.arange(b, device=keep.device).unsqueeze(1) * length).reshape(-1)  # [B*k]
    return x.reshape(b * length, d).index_select(0, rows).view(b, keep.shape[1], d)


def complementary_views(length: int, views: int, batch: int, device: torch.device | str,
                        generator: torch.Generator | None = None) -> list[torch.Tensor]:
    """`views` disjoint keep-index sets that together cover every position exactly once.

    One random permutation per sample is cut into `views` near-equal parts (the paper's
    Table 1d ensemble of complementary masked views).
    """
    if not 1 <= views <= length:
        raise ConfigError(f"views must be in [1, {length}], got {views}")
    perm = torch.rand(batch, length, device=device, generator=generator).argsort(dim=1)
    return list(perm.tensor_split(views, dim=1))


# -- image masking strategies ---------------------------------------------------------------------
# Each returns keep indices [B, k] with the same k = num_kept(L, r) for every sample.


def image_keep_indices(strategy: str, batch: int, grid_size: int, mask_ratio: float,
                       device: torch.device | str) -> torch.Tensor:
    length = grid_size * grid_size
    keep = num_kept(length, mask_ratio)
    if strategy == "random":
        return random_keep_indices(batch, length, keep, device)
    if strategy == "grid":
        return grid_keep_indices(batch, grid_size, mask_ratio, device)
    if strategy == "block":
        return block_keep_indices(batch, grid_size, length - keep, device)
    raise ConfigError(f"unknown mask strategy {strategy!r}; choose one of {', '.join(MASK_STRATEGIES)}")


def grid_keep_indices(batch: int, grid_size: int, mask_ratio: float, device: torch.device | str) -> torch.Tensor:
    """Keep one patch of every sy x sx cell, at a random offset per sample (on the device)."""
    sy, sx = grid_strides(grid_size, mask_ratio)
    rows = torch.arange(0, grid_size, sy, device=device)
    cols = torch.arange(0, grid_size, sx, device=device)
    base = (rows[:, None] * grid_size + cols[None, :]).flatten()  # [k]
    offset_y = torch.randint(0, sy, (batch, 1), device=device)
    offset_x = torch.randint(0, sx, (batch, 1), device=device)
    return base[None, :] + offset_y * grid_size + offset_x  # [B, k]


def _block_mask(rng, grid_size: int, num_masked: int, min_block: int = 4,
                aspect: tuple[float, float] = (0.3, 1 / 0.3)) -> list[bool]:
    """BEiT's blockwise masking, made exact: rectangles no larger than what is left to mask,
    then, if fewer than `min_block` patches remain, single patches next to masked ones."""
    mask = [False] * (grid_size * grid_size)
    masked = 0
    log_aspect = (math.log(aspect[0]), math.log(aspect[1]))
    failures = 0
    while num_masked - masked >= min_block and failures < 10:
        area = rng.uniform(min_block, num_masked - masked)
        ratio = math.exp(rng.uniform(*log_aspect))
        h, w = int(round(math.sqrt(area * ratio))), int(round(math.sqrt(area / ratio)))
        if not (1 <= h <= grid_size and 1 <= w <= grid_size) or h * w > num_masked - masked:
            failures += 1
            continue
        top, left = rng.randint(0, grid_size - h), rng.randint(0, grid_size - w)
        new = [(top + i) * grid_size + left + j for i in range(h) for j in range(w)
               if not mask[(top + i) * grid_size + left + j]]
        if not new:
            failures += 1
            continue
        for idx in new:
            mask[idx] = True
        masked += len(new)
        failures = 0
    while masked < num_masked:  # grow the existing blocks by their free neighbours
        frontier = [i for i in range(len(mask)) if not mask[i]
                    and (masked == 0 or any(mask[j] for j in _neighbours(i, grid_size)))]
        mask[rng.choice(frontier)] = True
        masked += 1
    return mask


def _neighbours(index: int, grid_size: int):
    row, col = divmod(index, grid_size)
    if row > 0:
        yield index - grid_size
    if row < grid_size - 1:
        yield index + grid_size
    if col > 0:
        yield index - 1
    if col < grid_size - 1:
        yield index + 1


def block_keep_indices(batch: int, grid_size: int, num_masked: int, device: torch.device | str) -> torch.Tensor:
    """Blockwise masking (BEiT): contiguous rectangles masked until exactly `num_masked` patches are.

    Generated on the CPU with a Python RNG seeded from torch's generator (so a seed and a resumed
    run reproduce it); an ablation strategy, not the fast path.
    """
    rng = random.Random(int(torch.randint(0, 2**62, (1,)).item()))
    keep = []
    for _ in range(batch):
        mask = _block_mask(rng, grid_size, num_masked)
        keep.append([i for i, m in enumerate(mask) if not m])
    return torch.tensor(keep, device=device)


# -- text masking -----------------------------------------------------------------------------------
# Tokens are dropped, not replaced: the text encoder runs on the shorter sequence.


def text_keep_indices(tokens: torch.Tensor, strategy: str, mask_ratio: float, pad_id: int = 0,
                      word_classes: torch.Tensor | None = None) -> torch.Tensor | None:
    """Keep indices [B, k] into tokens [B, T], k = num_kept(T, r); None when nothing is dropped.

    Position 0 (SOT, where the text feature is read) is always kept, and first. `random` drops a random r
    of the other positions, real and padding alike; `padding` drops padding first and real tokens only if
    more must go (FLIP's Table 1c). CLIPA's: `truncate` keeps the first k positions; `block` one random
    contiguous run of k - 1 positions after SOT, inside the caption when it is longer than that;
    `syntax` keeps by the words' classes (`word_classes` [B, T], `flip.data.tokenizer.WORD_CLASSES`: SOT,
    nouns, adjectives, verbs, the rest, padding), earlier positions first within a class.
    All on the device, without a host sync.
    """
    if strategy == "none" or mask_ratio == 0:
        return None
    if strategy not in TEXT_MASKS:
        raise ConfigError(f"unknown text mask {strategy!r}; choose one of {', '.join(TEXT_MASKS)}")
    batch, length = tokens.shape
    keep = num_kept(length, mask_ratio)
    positions = torch.arange(length, device=tokens.device)
    if strategy == "truncate":
        return positions[:keep].expand(batch, keep)
    if strategy == "block":
        return _text_block(tokens, keep, pad_id)
    if strategy == "syntax":
        if word_classes is None:
            raise ConfigError("syntax text masking needs each token's word class, which the data loader computes "
                              "(flip.data.tokenizer.Tokenizer.with_word_classes)")
        # class first, then position: a stable order without a stable sort
        return (word_classes.long() * length + positions).argsort(dim=1)[:, :keep]
    score = torch.rand(batch, length, device=tokens.device)
    if strategy == "padding":
        score = score + (tokens != pad_id).float()
    score[:, 0] = 3.0
    return score.argsort(dim=1, descending=True)[:, :keep]


def _text_block(tokens: torch.Tensor, keep: int, pad_id: int) -> torch.Tensor:
    """SOT and a contiguous run of keep - 1 positions from 1 on, its start uniform over those that keep the
    run inside the caption (SOT ... EOT) when the caption is longer, else 1 (open_clip's `simple` reduction)."""
    batch, length = tokens.shape
    positions = torch.arange(length, device=tokens.device)
    span = keep - 1
    # the caption ends after its last non-padding token (a real token may share the padding id mid-caption)
    end = ((tokens != pad_id) * (positions + 1)).amax(dim=1)  # [B]
    starts = (end - span).clamp(min=1)  # how many starts keep the run inside the caption
    start = 1 + (torch.rand(batch, device=tokens.device) * starts).long().clamp(max=starts - 1)
    run = start[:, None] + positions[:span]  # [B, k - 1]
    return torch.cat([positions[:1].expand(batch, 1), run], dim=1)
