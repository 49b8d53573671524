"""Where training curves go besides `metrics.jsonl` (always written): the writers `report_to` names,
each given the same scalars at the trainer's log and eval intervals (never inside the step)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from flip.train.config import TrainConfig


class CurveLogs:
    """The `report_to` writers (TensorBoard, W&B), written to together."""

    def __init__(self, writers: list):
        self.writers = writers

    def log(self, group: str, step: int, samples: int, scalars: dict[str, float]) -> None:
        for writer in self.writers:
            writer.log(group, step, samples, scalars)

    def flush(self) -> None:
        for writer in self.writers:
            writer.flush()

    def close(self) -> None:
        for writer in self.writers:
            writer.close()


def open_curve_logs(cfg: TrainConfig, run_dir: str | Path, step: int, samples: int,
                    say: Callable[[str], None] = print) -> CurveLogs | None:
    """The writers `cfg.report_to` asks for, continuing at `step`/`samples` (0 for a new run); None if none."""
    writers = []
    if "tensorboard" in cfg.report_to:
        from flip.train.tensorboard_log import TensorBoardLog

        writers.append(TensorBoardLog(run_dir, step, samples))
    if "wandb" in cfg.report_to:
        from flip.train.wandb_log import WandbLog

        writers.append(WandbLog(run_dir, cfg.to_dict(), step, say=say))
    return CurveLogs(writers) if writers else None
