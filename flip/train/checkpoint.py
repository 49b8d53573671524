"""Run checkpoints: the model (see `flip.checkpoint`) plus the state a resumed run needs.

A checkpoint is a directory `ckpt-00001200/` written under a temporary name and renamed
into place, and `latest` (a one-line file, itself replaced atomically) names the newest
complete one, so a run killed at any instant leaves a loadable checkpoint behind. Beside
the weights and config, `state.pt` holds what only training reads back: the optimizer
state, and per process the RNG states and data-stream positions. It holds tensors and
plain Python values only, so it loads with `torch.load(weights_only=True)`, which
unpickles no code.
"""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path
from typing import Any

import torch

from flip.checkpoint import LATEST, CheckpointError, write_atomic, write_model
from flip.models import FLIP

STATE = "state.pt"


def save_checkpoint(run_dir: Path, step: int, model: FLIP, config: dict[str, Any],
                    state: dict[str, Any] | None, keep_last: int = 1,
                    extra_modules: dict[str, torch.nn.Module] | None = None) -> Path:
    """Write a checkpoint; `extra_modules` (e.g. a training-only decoder) go to `<name>.safetensors`.

    `state` must hold only tensors and plain values (dicts, lists, tuples, numbers, strings, None).
    """
    run_dir = Path(run_dir)
    final = run_dir / f"ckpt-{step:08d}"
    tmp = run_dir / f".ckpt-{step:08d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write_model(tmp, model, config, extra_modules)
    if state is not None:
        torch.save(state, tmp / STATE)
    shutil.rmtree(final, ignore_errors=True)
    tmp.replace(final)
    write_atomic(run_dir / LATEST, final.name + "\n")
    older = sorted(p for p in run_dir.glob("ckpt-*") if p.is_dir() and p != final)
    for path in older[: max(0, len(older) - (keep_last - 1))]:
        shutil.rmtree(path, ignore_errors=True)
    return final


def load_state(ckpt_dir: Path) -> dict[str, Any]:
    try:
        return torch.load(ckpt_dir / STATE, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:
        raise CheckpointError(f"cannot resume from {ckpt_dir}: training state unreadable ({exc})") from None
