"""Sweeps: a spec's runs planned, run on a shared store and reported. `run_sweep` does it all in one call."""

from flip.sweep.runner import (FailedRun, SweepEvents, SweepInterrupted, SweepOptions, SweepPlan, SweepResult,
                               run_sweep)

__all__ = ["FailedRun", "SweepEvents", "SweepInterrupted", "SweepOptions", "SweepPlan", "SweepResult", "run_sweep"]
