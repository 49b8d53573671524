"""Training configuration: one plain dataclass, resolved once, saved with the run.

Fields left as None are filled in by `resolve()` from the model and data (the lr from
the batch size, the built-in dataset's paths, the budget's warm-up), and the resolved
config is what the run directory records and what `--resume` reads back.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flip.models.config import get_preset

PAPER_PRESETS = {"B/16", "L/16", "L/14", "H/14"}
PRECISIONS = ("fp32", "bf16")


class ConfigError(ValueError):
    """A configuration value is invalid; the message says which and how to fix it."""


@dataclass
class TrainConfig:
    # what to train on
    data: str | None = None  # webdataset spec; None = the built-in dataset
    eval_data: str | None = None  # retrieval CSV for the periodic quick eval; None = built-in
    model: str = "tiny"
    context_length: int = 32
    # masking (image), and the paper's ablation knobs (Table 1c, 1f)
    mask_ratio: float = 0.5
    mask_strategy: str = "random"  # random | block | grid
    text_mask: str = "none"  # none | random | padding
    text_mask_ratio: float = 0.0
    recon_weight: float = 0.0  # MAE reconstruction loss weight; 0 = no decoder
    decoder_depth: int = 2
    decoder_width: int = 128
    decoder_heads: int = 4
    # budget: samples, or epochs of the training data
    samples: int | None = None
    epochs: float | None = None
    batch_size: int = 256  # global batch
    # optimisation (the paper's recipe, lr scaled per 256)
    lr: float | None = None  # absolute peak lr; None = base_lr * batch / 256
    base_lr: float | None = None  # None = 4e-6 for the paper's presets, 1e-3 for tiny/small
    warmup: int | None = None  # warm-up samples; None = warmup_fraction of the budget
    warmup_fraction: float = 0.05
    min_lr_ratio: float = 0.0
    weight_decay: float = 0.2
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float | None = None
    precision: str = "fp32"
    compile: bool = False
    seed: int = 0
    # data pipeline
    workers: int = 2
    shuffle_buffer: int = 2000
    resampled: bool = False
    crop_scale_min: float | None = None  # None: 0.5 (paper); 0.9 on the built-in data
    hflip: bool | None = None  # None: on (paper); off on the built-in data, whose captions say left/right
    # bookkeeping
    out: str | None = None
    log_every: int = 10
    eval_every: int = 100
    ckpt_every: int = 100
    eval_images: int = 1000
    device: str = "auto"
    # lineage: weights to start from (unmasked tuning), and the run they came from
    init_from: str | None = None
    parent: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown config key(s): {', '.join(unknown)}; valid keys: {', '.join(sorted(names))}")
        return cls(**d)

    def validate(self) -> None:
        try:
            get_preset(self.model)
        except KeyError as exc:
            raise ConfigError(exc.args[0]) from None
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ConfigError(f"--mask-ratio must be in [0, 1), got {self.mask_ratio}")
        from flip.masking import MASK_STRATEGIES, TEXT_MASKS, grid_strides

        if self.mask_strategy not in MASK_STRATEGIES:
            raise ConfigError(f"--mask-strategy must be one of {', '.join(MASK_STRATEGIES)}, got {self.mask_strategy!r}")
        if self.mask_strategy == "grid" and self.mask_ratio > 0:
            try:
                grid_strides(get_preset(self.model).vision.grid_size, self.mask_ratio)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
        if self.text_mask not in TEXT_MASKS:
            raise ConfigError(f"--text-mask must be one of {', '.join(TEXT_MASKS)}, got {self.text_mask!r}")
        if not 0.0 <= self.text_mask_ratio < 1.0:
            raise ConfigError(f"--text-mask-ratio must be in [0, 1), got {self.text_mask_ratio}")
        if self.recon_weight < 0:
            raise ConfigError(f"--recon-weight must be >= 0, got {self.recon_weight}")
        if self.recon_weight > 0 and self.mask_ratio == 0:
            raise ConfigError("--recon-weight needs masked patches to reconstruct: set --mask-ratio > 0")
        if self.decoder_depth < 1 or self.decoder_width < 1 or self.decoder_width % self.decoder_heads:
            raise ConfigError("--decoder-depth must be >= 1 and --decoder-width a positive multiple of decoder_heads")
        if self.batch_size < 2:
            raise ConfigError(f"--batch-size must be at least 2 (a contrastive batch needs negatives), got {self.batch_size}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.samples is not None and self.samples < self.batch_size:
            raise ConfigError(f"--samples ({self.samples}) must be at least one batch ({self.batch_size})")
        if self.epochs is not None and self.epochs <= 0:
            raise ConfigError(f"--epochs must be positive, got {self.epochs}")
        if self.samples is not None and self.epochs is not None:
            raise ConfigError("give the budget as --samples or --epochs, not both")
        if self.workers < 0:
            raise ConfigError(f"--workers must be >= 0, got {self.workers}")
        if self.context_length < 3:
            raise ConfigError(f"--context-length must be at least 3, got {self.context_length}")
        for name in ("log_every", "eval_every", "ckpt_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1")

    def default_base_lr(self) -> float:
        return 4e-6 if get_preset(self.model).name in PAPER_PRESETS else 1e-3

    @property
    def peak_lr(self) -> float:
        if self.lr is not None:
            return self.lr
        return (self.base_lr or self.default_base_lr()) * self.batch_size / 256


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML config file into a flat dict of TrainConfig fields (`-` and `_` both accepted)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    flat = {}
    for key, value in raw.items():
        if isinstance(value, dict) and key in ("train", "data", "model", "optim"):
            flat.update({k.replace("-", "_"): v for k, v in value.items()})
        else:
            flat[key.replace("-", "_")] = value
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(flat) - names)
    if unknown:
        raise ConfigError(f"{path}: unknown config key(s): {', '.join(unknown)}")
    return flat
