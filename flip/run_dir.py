"""Where a run's files are: the layout of a run directory (`flipctl train --out RUN`), in one place.

    RUN/config.json            the model's and the run's settings, written when the run starts
    RUN/metrics.jsonl          a record per log step and per periodic evaluation
    RUN/summary.json           written when the run finishes: a run directory holding it is finished
    RUN/latest                 one line naming the newest complete checkpoint
    RUN/ckpt-00001200/         a checkpoint: model.safetensors, config.json, state.pt (the resume state)
                               and a training-only module's weights (decoder.safetensors)
    RUN/.ckpt-00001200.tmp/    a checkpoint being written, renamed into place once complete
    RUN/tensorboard/, wandb/   training curves for `--report-to`
    RUN/slurm/                 submitit's files of a run submitted to SLURM
    RUN/sweep/                 what a sweep keeps about the run (`SweepFiles`)

The trainer, the checkpoint readers, the launchers and the sweep all name these files through
`RunDir` and `SweepFiles`, so a name changes here or nowhere. Importing this module loads nothing
but the standard library: the command line uses it before any heavy import.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# A checkpoint directory's files (flip.saved_model writes and reads them; flip.train.checkpoint adds STATE).
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
STATE = "state.pt"  # optimizer moments, RNG states and data positions: what only a resume reads
DECODER = "decoder"  # the training-only MAE decoder, saved as an extra module (`module_weights`)

_CHECKPOINT = "ckpt-{step:08d}"  # zero-padded: the names sort in step order


def module_weights(name: str) -> str:
    """The file of an extra module's weights in a checkpoint (`decoder` -> `decoder.safetensors`)."""
    return f"{name}.safetensors"


@dataclass(frozen=True)
class RunDir:
    """The files of the run directory at `path`."""

    path: Path

    def __post_init__(self):
        object.__setattr__(self, "path", Path(self.path))

    @property
    def config(self) -> Path:
        return self.path / "config.json"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def summary(self) -> Path:
        return self.path / "summary.json"

    @property
    def latest(self) -> Path:
        return self.path / "latest"

    @property
    def tensorboard(self) -> Path:
        return self.path / "tensorboard"

    @property
    def wandb(self) -> Path:
        return self.path / "wandb"

    @property
    def slurm(self) -> Path:
        return self.path / "slurm"

    @property
    def sweep(self) -> SweepFiles:
        return SweepFiles(self.path / "sweep")

    def checkpoint(self, step: int) -> Path:
        return self.path / _CHECKPOINT.format(step=step)

    def partial_checkpoint(self, step: int) -> Path:
        """Where the checkpoint of `step` is written before it is renamed into place."""
        return self.path / f".{_CHECKPOINT.format(step=step)}.tmp"

    def checkpoints(self) -> list[Path]:
        """The complete checkpoints, oldest first."""
        return sorted(p for p in self.path.glob("ckpt-*") if p.is_dir())

    def partial_checkpoints(self) -> list[Path]:
        """Checkpoints a process killed while writing them left behind."""
        return sorted(self.path.glob(".ckpt-*.tmp"))

    def resume_states(self) -> list[Path]:
        return sorted(self.path.glob(f"ckpt-*/{STATE}"))

    def has_checkpoint(self) -> bool:
        return self.latest.exists()

    def holds_run(self) -> bool:
        """Whether a run was trained here (it checkpointed or finished): a fresh run must go elsewhere."""
        return self.has_checkpoint() or self.summary.exists()

    def latest_checkpoint(self) -> Path | None:
        """The checkpoint `latest` names, or None before the first one."""
        if not self.latest.is_file():
            return None
        return self.path / self.latest.read_text().strip()


@dataclass(frozen=True)
class SweepFiles:
    """What a sweep keeps about one run, in the run's `sweep/` folder (`path`)."""

    path: Path

    def __post_init__(self):
        object.__setattr__(self, "path", Path(self.path))

    @property
    def run_dir(self) -> Path:
        """The run's directory, which holds this folder."""
        return self.path.parent

    @property
    def job(self) -> Path:
        """What the worker is to do: the run's config and its evaluations."""
        return self.path / "job.json"

    @property
    def status(self) -> Path:
        """running, done, failed, skipped or interrupted, with the attempts and the error."""
        return self.path / "status.json"

    @property
    def progress(self) -> Path:
        """The step the worker is at, for the sweep's progress view."""
        return self.path / "progress.json"

    @property
    def lock(self) -> Path:
        """A sweep's claim on the run (flip.sweep.claims)."""
        return self.path / "lock.json"

    @property
    def command(self) -> Path:
        """The command that reproduces the run."""
        return self.path / "command.txt"

    @property
    def train_config(self) -> Path:
        """The run's training config as TOML, for `flipctl train --config`."""
        return self.path / "train.toml"

    @property
    def worker_log(self) -> Path:
        return self.path / "worker.log"

    @property
    def error(self) -> Path:
        """The traceback of a failed attempt."""
        return self.path / "error.txt"

    @property
    def slurm(self) -> Path:
        return self.path / "slurm"

    @property
    def evals(self) -> Path:
        return self.path / "evals"

    def eval(self, key: str) -> Path:
        """The record of one evaluation (`flip.sweep.store.eval_key`)."""
        return self.evals / f"{key}.json"
