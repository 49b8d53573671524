"""Run checkpoints: weights as safetensors, config as JSON, training state as a torch file.

A checkpoint is a directory `ckpt-00001200/` written under a temporary name and renamed
into place, and `latest` (a one-line file, itself replaced atomically) names the newest
complete one, so a run killed at any instant leaves a loadable checkpoint behind.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from flip.models import FLIP, ModelConfig

WEIGHTS, CONFIG, STATE, LATEST = "model.safetensors", "config.json", "state.pt", "latest"


class CheckpointError(ValueError):
    """A checkpoint cannot be read or does not fit the model asked for."""


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_checkpoint(run_dir: Path, step: int, model: FLIP, config: dict[str, Any],
                    state: dict[str, Any] | None, keep_last: int = 1,
                    extra_modules: dict[str, torch.nn.Module] | None = None) -> Path:
    """Write a checkpoint; `extra_modules` (e.g. a training-only decoder) go to `<name>.safetensors`."""
    run_dir = Path(run_dir)
    final = run_dir / f"ckpt-{step:08d}"
    tmp = run_dir / f".ckpt-{step:08d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    weights = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(weights, str(tmp / WEIGHTS), metadata={"format": "flip", "model": model.cfg.name})
    for name, module in (extra_modules or {}).items():
        save_file({k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()},
                  str(tmp / f"{name}.safetensors"))
    (tmp / CONFIG).write_text(json.dumps(config, indent=2))
    if state is not None:
        torch.save(state, tmp / STATE)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    _write_atomic(run_dir / LATEST, final.name + "\n")
    older = sorted(p for p in run_dir.glob("ckpt-*") if p.is_dir() and p != final)
    for path in older[: max(0, len(older) - (keep_last - 1))]:
        shutil.rmtree(path, ignore_errors=True)
    return final


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory from a run directory (its latest), a checkpoint directory, or a weights file."""
    path = Path(path)
    if path.is_file() and path.name == WEIGHTS:
        path = path.parent
    if (path / LATEST).is_file():
        path = path / (path / LATEST).read_text().strip()
    if not (path / WEIGHTS).is_file() or not (path / CONFIG).is_file():
        raise CheckpointError(f"no checkpoint at {path}: expected a run directory or a folder with "
                              f"{WEIGHTS} and {CONFIG}")
    return path


def read_config(ckpt_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((ckpt_dir / CONFIG).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"unreadable checkpoint config {ckpt_dir / CONFIG}: {exc}") from None


def load_weights(model: torch.nn.Module, ckpt_dir: Path, file: str = WEIGHTS) -> None:
    """Load weights, refusing (with the reason) a checkpoint of another architecture."""
    try:
        weights = load_file(str(ckpt_dir / file))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"unreadable weights {ckpt_dir / file}: {exc}") from None
    own = model.state_dict()
    missing = sorted(set(own) - set(weights))
    unexpected = sorted(set(weights) - set(own))
    wrong = [k for k in own if k in weights and weights[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        detail = (f"{len(missing)} missing, {len(unexpected)} unexpected, {len(wrong)} with other shapes"
                  + (f" (e.g. {wrong[0]}: {tuple(weights[wrong[0]].shape)} vs {tuple(own[wrong[0]].shape)})" if wrong else ""))
        raise CheckpointError(f"checkpoint {ckpt_dir} is for another model ({detail})")
    model.load_state_dict(weights)


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[FLIP, dict[str, Any]]:
    """Build the model a checkpoint describes and load its weights. Returns (model, saved config)."""
    ckpt_dir = resolve_checkpoint(path)
    config = read_config(ckpt_dir)
    try:
        model_cfg = ModelConfig.from_dict(config["model"])
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"checkpoint config {ckpt_dir / CONFIG} has no valid model section ({exc})") from None
    model = FLIP(model_cfg)
    load_weights(model, ckpt_dir)
    return model.to(device), config


def load_state(ckpt_dir: Path) -> dict[str, Any]:
    try:
        return torch.load(ckpt_dir / STATE, map_location="cpu", weights_only=False)
    except (OSError, RuntimeError, EOFError) as exc:
        raise CheckpointError(f"cannot resume from {ckpt_dir}: training state unreadable ({exc})") from None
