"""Training curves as TensorBoard event files (`report_to = ["tensorboard"]`), offline.

Each scalar is written twice: against the step (`train/loss`, `eval/...` in `RUN/tensorboard`)
and against samples seen (`by_samples/train/loss`, ... in `RUN/tensorboard/by_samples`), so
runs of different batch sizes line up. The two x-axes are two writers, because a resumed
run tells each writer where to cut the curves the killed process wrote past its checkpoint
(`purge_step`), in that writer's own unit. As with `metrics.jsonl`, what was logged up to
the checkpoint stays and what came after it is hidden (the resumed run logs those steps
again), so every step appears once; a fresh run removes the event files of a process killed
before its first checkpoint. The trainer calls `log` at its log and eval intervals only,
never inside the step.
"""

from __future__ import annotations

import re
from pathlib import Path

from flip.errors import ConfigError
from flip.run_dir import RunDir

BY_SAMPLES = "by_samples"
EVENT_FILES = "events.out.tfevents.*"


def tag(group: str, name: str) -> str:
    """A TensorBoard-safe tag: `image_to_text_R@1` -> `image_to_text_R1`."""
    return f"{group}/" + re.sub(r"[^\w./-]", "", name)


class TensorBoardLog:
    def __init__(self, run_dir: str | Path, step: int = 0, samples: int = 0):
        """`step`/`samples`: where a resumed run continues, its checkpoint's (0 for a new run)."""
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError("tensorboard needs the tensorboard package: pip install tensorboard",
                              key="report_to") from None
        log_dir = RunDir(run_dir).tensorboard
        if not step:
            for old in [*log_dir.glob(EVENT_FILES), *(log_dir / BY_SAMPLES).glob(EVENT_FILES)]:
                old.unlink()
        # TensorBoard hides the events at steps >= purge_step written before it: those after the checkpoint.
        self.by_step = SummaryWriter(str(log_dir), purge_step=step + 1 if step else None)
        self.by_samples = SummaryWriter(str(log_dir / BY_SAMPLES), purge_step=samples + 1 if step else None)

    def log(self, group: str, step: int, samples: int, scalars: dict[str, float]) -> None:
        """Write `scalars` as `group/name` at `step`, and as `by_samples/group/name` at `samples`."""
        for name, value in scalars.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.by_step.add_scalar(tag(group, name), value, step)
                self.by_samples.add_scalar(tag(f"{BY_SAMPLES}/{group}", name), value, samples)

    def flush(self) -> None:
        self.by_step.flush()
        self.by_samples.flush()

    def close(self) -> None:
        self.by_step.close()
        self.by_samples.close()
