"""Checkpoints as models: weights as safetensors, config as JSON.

A checkpoint is a directory `ckpt-00001200/` holding `model.safetensors` and
`config.json` (the model's and the run's settings). A run directory names its newest
complete checkpoint in `latest`. Reading them needs nothing from training, so
evaluation and export load checkpoints from here; the resume state (optimizer, RNG,
data positions) that training adds lives in `flip.train.checkpoint`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from flip.errors import CheckpointError, WriteError
from flip.files import chmod_as_umask
from flip.models import FLIP, ModelConfig
from flip.run_dir import CONFIG, WEIGHTS, RunDir, module_weights

__all__ = ["WEIGHTS", "CONFIG", "CheckpointError", "write_model", "write_atomic",
           "resolve_checkpoint", "read_config", "load_weights", "load_model"]


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_model(ckpt_dir: Path, model: FLIP, config: dict[str, Any],
                extra_modules: dict[str, torch.nn.Module] | None = None,
                states: dict[str, dict[str, torch.Tensor]] | None = None) -> None:
    """Write weights and config into `ckpt_dir`; `extra_modules` (e.g. a training-only decoder)
    go to `<name>.safetensors`. `states` ("model" or an extra module's name -> state dict) replaces a
    module's own `state_dict()`: a sharded (FSDP) model's weights, gathered whole."""
    states = states or {}

    def tensors(name: str, module: torch.nn.Module) -> dict[str, torch.Tensor]:
        state = states[name] if name in states else module.state_dict()
        return {k: v.detach().contiguous().cpu() for k, v in state.items()}

    try:
        save_file(tensors("model", model), str(ckpt_dir / WEIGHTS),
                  metadata={"format": "flip", "model": model.cfg.name})
        for name, module in (extra_modules or {}).items():
            save_file(tensors(name, module), str(ckpt_dir / module_weights(name)))
    except SafetensorError as exc:  # how safetensors reports a failed write (its message names the OS's error)
        raise WriteError.from_error(exc) from exc
    for weights in ckpt_dir.glob(module_weights("*")):
        chmod_as_umask(weights)  # safetensors writes 0600 through its temporary file; others read weights too
    (ckpt_dir / CONFIG).write_text(json.dumps(config, indent=2))


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory from a run directory (its latest), a checkpoint directory, or a weights file."""
    path = Path(path)
    if path.is_file() and path.name == WEIGHTS:
        path = path.parent
    path = RunDir(path).latest_checkpoint() or path
    missing = [name for name in (WEIGHTS, CONFIG) if not (path / name).is_file()]
    if missing:
        found = f" ({' and '.join(missing)} missing)" if path.is_dir() else ""
        raise CheckpointError(f"no checkpoint at {path}{found}: expected a run directory or a folder with "
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
                  + (f" (e.g. {wrong[0]}: {tuple(weights[wrong[0]].shape)} vs {tuple(own[wrong[0]].shape)})"
                     if wrong else ""))
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
