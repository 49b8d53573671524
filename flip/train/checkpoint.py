"""Run checkpoints: the model (see `flip.saved_model`) plus the state a resumed run needs.

A checkpoint is a directory `ckpt-00001200/` written under a temporary name and renamed
into place, and `latest` (a one-line file, itself replaced atomically) names the newest
complete one, so a run killed at any instant leaves a loadable checkpoint behind. Beside
the weights and config, `state.pt` holds what only training reads back: the optimizer
state, and per process the RNG states and data-stream positions. It holds tensors and
plain Python values only, so it loads with `torch.load(weights_only=True)`, which
unpickles no code.
"""

from __future__ import annotations

import os
import pickle
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from flip.errors import CheckpointError
from flip.models import FLIP
from flip.run_dir import STATE, RunDir
from flip.saved_model import write_atomic, write_model

PAUSE_ENV = "FLIP_FAULT_CKPT_PAUSE_S"  # tests only: see _fault_pause


def save_checkpoint(run_dir: Path, step: int, model: FLIP, config: dict[str, Any],
                    state: dict[str, Any] | None, keep_last: int = 1,
                    extra_modules: dict[str, torch.nn.Module] | None = None,
                    states: dict[str, dict[str, torch.Tensor]] | None = None) -> Path:
    """Write a checkpoint; `extra_modules` (e.g. a training-only decoder) go to `<name>.safetensors`,
    `states` replaces modules' own state dicts (see `flip.saved_model.write_model`).

    `state` must hold only tensors and plain values (dicts, lists, tuples, numbers, strings, None).
    """
    run = RunDir(run_dir)
    final, tmp = run.checkpoint(step), run.partial_checkpoint(step)
    for stale in run.partial_checkpoints():  # left by a process killed while writing
        shutil.rmtree(stale, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        write_model(tmp, model, config, extra_modules, states)
        if state is not None:
            save_state(state, tmp / STATE)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # give back the space a failed write took
        raise
    _fault_pause()
    shutil.rmtree(final, ignore_errors=True)
    tmp.replace(final)
    write_atomic(run.latest, final.name + "\n")
    # Older checkpoints go only once the new one is complete and named in `latest`.
    older = [p for p in run.checkpoints() if p != final]
    for path in older[: max(0, len(older) - (keep_last - 1))]:
        shutil.rmtree(path, ignore_errors=True)
    return final


class _WriteWatch:
    """The file `torch.save` writes the state to, noting a write that fails: torch reports the failure
    as a RuntimeError ("unexpected pos ...") that names neither the cause nor the file, and such a
    RuntimeError may also be something else surfacing there (a data-loader worker's death is raised
    in the main process wherever it is)."""

    def __init__(self, file):
        self.file = file
        self.failure: OSError | None = None

    def write(self, data) -> int:
        return self._watched(self.file.write, data)

    def flush(self) -> None:
        self._watched(self.file.flush)

    def _watched(self, call, *args):
        try:
            return call(*args)
        except OSError as exc:
            self.failure = exc
            raise


def save_state(state: dict[str, Any], path: Path) -> None:
    """torch.save `state` to `path`; a failed write raises the OSError it is (see `_WriteWatch`)."""
    with open(path, "wb") as file:
        watch = _WriteWatch(file)
        try:
            torch.save(state, watch)
        except RuntimeError:
            if watch.failure is None:
                raise  # not a write's failure
        if watch.failure is not None:
            raise watch.failure


def drop_resume_state(run_dir: Path) -> None:
    """A finished run's checkpoints keep their weights and config; the resume state (3x the weights
    on disk, with the optimizer's moments) is of no further use."""
    for state in RunDir(run_dir).resume_states():
        state.unlink(missing_ok=True)


def checkpoint_bytes(ckpt_dir: Path) -> int:
    """The size of a checkpoint directory's files."""
    return sum(f.stat().st_size for f in Path(ckpt_dir).iterdir() if f.is_file())


def _fault_pause() -> None:
    """Fault injection for the kill tests: sleep between writing a checkpoint's files and renaming
    it into place, so a test can SIGKILL the process inside a checkpoint write."""
    pause = os.environ.get(PAUSE_ENV)
    if pause:
        time.sleep(float(pause))


def load_state(ckpt_dir: Path) -> dict[str, Any]:
    path = Path(ckpt_dir) / STATE
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's message runs over several lines; the one naming what was refused is the useful one
        refused = next((line.strip() for line in str(exc).splitlines() if "GLOBAL" in line or "Unsupported" in line),
                       str(exc).strip().splitlines()[-1] if str(exc).strip() else "not a flipctl state file")
        raise CheckpointError(f"cannot resume from {ckpt_dir}: training state unreadable: {path} holds more than "
                              f"tensors and plain values, which flipctl never writes, and was not loaded "
                              f"({refused})") from None
    except (OSError, RuntimeError, EOFError) as exc:
        reason = " ".join(str(exc).split())
        raise CheckpointError(f"cannot resume from {ckpt_dir}: training state unreadable ({reason})") from None
