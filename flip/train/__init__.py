"""Training: one run, from its settings to checkpoints, logs and a summary.

- `config`: `TrainConfig`, where every setting is declared once (its flag, help, checks, TOML key,
  identity), and `StepConfig`, the step's share of it; no torch.
- `trainer`: `train` (a run, fresh or resumed), `tune_unmasked` (the paper's unmasked tuning).
- `step`: `TrainStep`, one step (forward, losses, backward, optimizer), shared with `flipctl bench`;
  `optim`: AdamW and the schedule; `input_stage`: the batch onto the device.
- `checkpoint`: a run's checkpoints and resume state; `faults`: how a run stops early
  (`TrainingStopped`); `periodic_eval`: the evaluation during a run; `load`: was the machine busy.
- `reporting`, `curves`, `tensorboard_log`, `wandb_log`: where a run's progress and curves go.
"""

from flip._lazy import lazy_exports

__all__ = ["StepConfig", "StopRequested", "TrainConfig", "TrainStep", "TrainingStopped", "make_optimizer", "train",
           "tune_unmasked"]

__getattr__, __dir__ = lazy_exports(__name__, {
    "config": ("StepConfig", "TrainConfig"),
    "trainer": ("train", "tune_unmasked"),
    "step": ("TrainStep",),
    "optim": ("make_optimizer",),
    "faults": ("StopRequested", "TrainingStopped"),
})
