"""The run store shared by every sweep: one directory per run, named by what the run is.

A run's id derives from its training config (only the fields that differ from the defaults, and of
those only the ones whose knob says `identity=True`: not bookkeeping such as the output path or log
interval) and seed, so the same run asked for by two sweeps - Table 1d and 1e evaluate the
checkpoints Table 1a trained - is trained once, a rerun finds it finished, and any changed setting
makes a new run. Layout (`StoreLayout`):

    STORE/runs/<run_id>/            the trainer's run directory (flip.run_dir.RunDir)
    STORE/runs/<run_id>/sweep/      what the sweep keeps about the run: job, status, evaluations, command
                                    (flip.run_dir.SweepFiles)
    STORE/probes.json               cached measurements (memory-matched batches, step timings)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from flip.errors import ConfigError
from flip.run_dir import RunDir, SweepFiles
from flip.train.config import TrainConfig

# The fields that change what a run learns: each knob declares it (`knob(..., identity=...)`).
IDENTITY = tuple(f.name for f in dataclasses.fields(TrainConfig) if f.metadata["identity"])


def _digest(payload: Any, n: int = 10) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:n]


def identity(cfg: TrainConfig) -> dict[str, Any]:
    """The settings that define a run: every identity field that is not at its default."""
    defaults = TrainConfig()
    return {name: getattr(cfg, name) for name in IDENTITY if getattr(cfg, name) != getattr(defaults, name)}


def run_id(cfg: TrainConfig) -> str:
    """Readable and stable: `tiny-m0.5-b128-s0-<hash of the identity>`."""
    model = cfg.model.replace("/", "-")
    return f"{model}-m{cfg.mask_ratio:g}-b{cfg.batch_size}-s{cfg.seed}-{_digest(identity(cfg))}"


def tuned_run_id(parent_id: str, samples: int, lr: float) -> str:
    return f"{parent_id}-tuned-{_digest({'samples': samples, 'lr': lr}, 6)}"


def eval_key(task: str, mode: str, data: str | None) -> str:
    return f"{task}-{mode}-{'builtin' if data is None else _digest(str(data), 8)}"


def write_json_atomic(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def read_json(path: Path) -> Any | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None  # absent or half-written by a killed process: treated as not there


class StoreLayout:
    """Where a run store's files are, under `root` as given (the commands a report shows keep it as the
    command line named it)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    @property
    def runs(self) -> Path:
        """The folder of the run directories."""
        return self.root / "runs"

    def run_dir(self, run_id: str) -> Path:
        return self.runs / run_id

    def sweep_files(self, run_id: str) -> SweepFiles:
        return RunDir(self.run_dir(run_id)).sweep

    def sweep_dir(self, run_id: str) -> Path:
        return self.sweep_files(run_id).path

    def eval_path(self, run_id: str, key: str) -> Path:
        return self.sweep_files(run_id).eval(key)

    @property
    def probes_path(self) -> Path:
        return self.root / "probes.json"


class RunStore(StoreLayout):
    """`read_only`: measurements are kept in memory, nothing is written (a dry run creates nothing)."""

    def __init__(self, root: str | Path, read_only: bool = False):
        super().__init__(Path(root).expanduser().absolute())  # resolved once: a later chdir cannot move it
        if self.root.exists() and not self.root.is_dir():  # also in a dry run, which writes nothing there
            raise ConfigError(f"{self.root} is a file, not a run store folder", key="store")
        self.read_only = read_only
        self._unsaved: dict[str, Any] = {}

    def status(self, run_id: str) -> dict | None:
        return read_json(self.sweep_files(run_id).status)

    def summary(self, run_id: str) -> dict | None:
        return read_json(RunDir(self.run_dir(run_id)).summary)

    def eval_record(self, run_id: str, key: str) -> dict | None:
        return read_json(self.eval_path(run_id, key))

    # -- cached measurements ---------------------------------------------------------------------------

    def probe(self, key: str) -> Any | None:
        if key in self._unsaved:
            return self._unsaved[key]
        return (read_json(self.probes_path) or {}).get(key)

    def save_probe(self, key: str, value: Any) -> None:
        if self.read_only:
            self._unsaved[key] = value
            return
        probes = read_json(self.probes_path) or {}
        probes[key] = value
        write_json_atomic(self.probes_path, probes)
