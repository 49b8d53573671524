"""Sweeps: a spec's runs planned, run on a shared store and reported. `run_sweep` does it all in one call.

- `spec`: a study's TOML file -> `SweepSpec` (its rows, seeds, evaluations, plots); `load_spec`.
- `jobs`: the spec -> the list of jobs (training, unmasked tuning, evaluations); `memory_match`:
  the batch per row that fits the reference row's memory; `estimate`: a dry run's time estimates.
- `store`: `RunStore`, one directory per run named by what it is; `claims`: which sweep trains a run.
- `execute`: the jobs run, each in its own process (`worker`), skipping what is done.
- `results`, `folder`, `tables`, `plots`, `fit`, `stats`, `names`, `html`, `report`: the sweep
  folder's records and the report built from them (`regenerate`: `flipctl report`).
- `runner`: `run_sweep` and its options, events and results.
"""

from flip._lazy import lazy_exports

__all__ = ["FailedRun", "RunStore", "SpecError", "SweepEvents", "SweepInterrupted", "SweepOptions", "SweepPlan",
           "SweepResult", "SweepSpec", "load_spec", "regenerate", "run_sweep"]

# Torch, pandas and submitit load once a sweep runs, not when the CLI imports this package.
__getattr__, __dir__ = lazy_exports(__name__, {
    "runner": ("FailedRun", "SweepEvents", "SweepInterrupted", "SweepOptions", "SweepPlan", "SweepResult",
               "run_sweep"),
    "spec": ("SpecError", "SweepSpec", "load_spec"),
    "store": ("RunStore",),
    "report": ("regenerate",),
})
