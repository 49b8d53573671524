"""Patch and token masking: which positions a sample keeps.

Masking is expressed as *keep indices* `[B, k]` into a sequence of length L, so
every sample in a batch keeps exactly k positions and batches stay dense. The
model gathers the kept tokens; the masked ones are never computed (that is
where FLIP's speed-up comes from). All random numbers are drawn on the device of
the batch, so masking costs no host round-trip.
"""

from __future__ import annotations

import torch


def num_kept(length: int, mask_ratio: float) -> int:
    """Positions kept at `mask_ratio`, as FLIP/MAE count them: int(L * (1 - r))."""
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask ratio must be in [0, 1), got {mask_ratio}")
    return max(1, int(length * (1.0 - mask_ratio)))


def random_keep_indices(batch: int, length: int, keep: int, device: torch.device | str,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-sample uniform random subset (MAE's `random_masking`): noise -> argsort -> first k."""
    noise = torch.rand(batch, length, device=device, generator=generator)  # [B, L]
    return noise.argsort(dim=1)[:, :keep]  # [B, k]


def gather_tokens(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """x: [B, L, D], keep: [B, k] -> [B, k, D]."""
    return torch.gather(x, 1, keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def complementary_views(length: int, views: int, batch: int, device: torch.device | str,
                        generator: torch.Generator | None = None) -> list[torch.Tensor]:
    """`views` disjoint keep-index sets that together cover every position exactly once.

    One random permutation per sample is cut into `views` near-equal parts (the paper's
    Table 1d ensemble of complementary masked views).
    """
    if not 1 <= views <= length:
        raise ValueError(f"views must be in [1, {length}], got {views}")
    perm = torch.rand(batch, length, device=device, generator=generator).argsort(dim=1)
    return list(perm.tensor_split(views, dim=1))
