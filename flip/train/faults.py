"""How a training run ends early without losing its work.

Each of these exceptions leaves the run directory resumable: the checkpoint it names (the
last complete one) is intact and loadable, and `--resume` continues from it. Each message is
one line written for the person running the job; `exit_code` is what `flipctl train` exits
with (a polite stop on a signal exits with 128 + the signal's number instead, as a shell
reports a process that signal ended).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


class TrainingStopped(Exception):
    """The run stopped before its end; `checkpoint` (None if none was written yet) is kept."""

    exit_code = 3

    def __init__(self, message: str, run_dir: Path, step: int, checkpoint: Path | None):
        super().__init__(message)
        self.run_dir, self.step, self.checkpoint = Path(run_dir), step, checkpoint


class StopRequested(TrainingStopped):
    """The caller asked the run to stop (a signal, through the `stop` event): the step in flight was
    finished and checkpointed."""


class NonFiniteStop(TrainingStopped):
    """A loss or gradient was NaN or infinite (`on_nonfinite = "stop"`); that step's update was not applied."""


class WriteFailed(TrainingStopped):
    """A checkpoint or log could not be written (a full disk, a quota, a vanished mount)."""


class TooMuchBadData(TrainingStopped):
    """More than `max_bad_fraction` of the samples read were unusable."""

    exit_code = 2  # the data is the user's to fix, like any other bad input


def describe_checkpoint(checkpoint: Path | None) -> str:
    return f"the last checkpoint, {checkpoint}, is intact" if checkpoint else "no checkpoint was written yet"


class NonFiniteSteps:
    """Which steps had a NaN or infinite loss or gradient, tracked on the device.

    The training step skips such a step's update on the device (`TrainStep.guarded_update`);
    this only counts them, so that the host reads the count (a sync) at log intervals and
    before each checkpoint, never per step.
    """

    def __init__(self, device: torch.device):
        import torch  # here, not at the top: the CLI catches these exceptions without loading torch

        self._count = torch.zeros((), device=device)
        self._first = torch.full((), -1, dtype=torch.long, device=device)

    def add(self, step: int, nonfinite: torch.Tensor) -> None:
        import torch

        self._count += nonfinite
        self._first = torch.where((self._first < 0) & (nonfinite > 0), step, self._first)

    def read(self) -> tuple[int, int | None]:
        """(how many, the first one's step or None)."""
        count = int(self._count.item())
        return count, (int(self._first.item()) if count else None)
