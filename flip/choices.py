"""The names a setting chooses between, and checks of setting values, importable without torch.

The command line offers these as choices and a config is validated against them (`flipctl train
--help`, `flipctl sweep --list`) without loading the model and data code that acts on them, which
re-exports them from where they are used (`flip.masking`, `flip.data.decode`, `flip.distributed`).
"""

from __future__ import annotations

from flip.errors import ConfigError

MASK_STRATEGIES = ("random", "block", "grid")  # image masking, flip.masking.image_keep_indices
TEXT_MASKS = ("none", "random", "padding", "truncate", "block", "syntax")  # text token dropping, flip.masking.text_keep_indices
LOSSES = ("contrastive", "sigmoid")  # the image-text loss, flip.loss
DECODE_MODES = ("worker", "device", "legacy")  # where images are decoded, flip.data.decode
LAUNCHERS = ("local", "slurm")  # where training processes run, flip.launch


def check_device_name(name: str) -> None:
    """Refuse a device name other than `auto`, `cpu`, `cuda` or `cuda:N` (without looking for the device)."""
    if name not in ("auto", "cpu", "cuda") and not (name.startswith("cuda:") and name[5:].isdigit()):
        raise ConfigError(f"must be auto, cpu, cuda or cuda:N, got {name!r}", key="device")
