"""The names a setting chooses between, and checks of setting values, importable without torch.

The command line offers these as choices and a config is validated against them (`flipctl train
--help`, `flipctl sweep --list`) without loading the model and data code that acts on them
(`flip.masking`, `flip.loss`, `flip.data.decode`, `flip.launch`); import them from here.
"""

from __future__ import annotations

from flip.errors import ConfigError

MASK_STRATEGIES = ("random", "block", "grid")  # image masking, flip.masking.image_keep_indices
# text token dropping, flip.masking.text_keep_indices
TEXT_MASKS = ("none", "random", "padding", "truncate", "block", "syntax")
LOSSES = ("contrastive", "sigmoid")  # the image-text loss, flip.loss
DECODE_MODES = ("worker", "device", "legacy")  # where images are decoded, flip.data.decode
LAUNCHERS = ("local", "slurm")  # where training processes run, flip.launch


def check_device_name(name: str) -> None:
    """Refuse a device name other than `auto`, `cpu`, `cuda` or `cuda:N` (without looking for the device)."""
    if name not in ("auto", "cpu", "cuda") and not (name.startswith("cuda:") and name[5:].isdigit()):
        raise ConfigError(f"must be auto, cpu, cuda or cuda:N, got {name!r}", key="device")


def grid_strides(grid_size: int, mask_ratio: float) -> tuple[int, int]:
    """The sub-grid strides (sy, sx) that keep 1 of every sy*sx patches, e.g. (2, 2) at 75%."""
    for sy, sx in ((1, 1), (1, 2), (2, 2), (2, 4), (4, 4), (4, 8), (8, 8)):
        if abs((1 - mask_ratio) - 1 / (sy * sx)) < 1e-9:
            if grid_size % sy or grid_size % sx:
                break
            return sy, sx
    raise ConfigError(f"grid masking keeps a regular sub-grid: mask ratio must be 1 - 1/n for n in 1, 2, 4, 8, "
                     f"16, 32, 64 dividing the {grid_size}x{grid_size} patch grid, got {mask_ratio}")
