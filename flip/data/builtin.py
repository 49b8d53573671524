"""The built-in dataset: generated once from a seed into a cache directory, then reused."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from flip.data.synth import SynthConfig, is_complete, write_builtin_dataset

CACHE_ENV = "FLIP_CACHE"


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "flipctl")


def builtin_dir(cfg: SynthConfig = SynthConfig()) -> Path:
    scenes = "" if cfg.scenes == "mixed" else f"-{cfg.scenes}"
    return cache_root() / f"builtin-seed{cfg.seed}-n{cfg.train_samples}-px{cfg.image_size}{scenes}"


def ensure_builtin(cfg: SynthConfig = SynthConfig(),
                   progress: Callable[[int], None] | None = None) -> Path:
    """Path of the built-in dataset, generating it first if the cache lacks a complete copy."""
    out = builtin_dir(cfg)
    if not is_complete(out, cfg):
        write_builtin_dataset(out, cfg, progress=progress)
    return out


def train_spec(root: Path) -> str:
    return str(root / "train")


def retrieval_csv(root: Path) -> Path:
    return root / "retrieval" / "captions.csv"


def zeroshot_dir(root: Path) -> Path:
    return root / "zeroshot"
