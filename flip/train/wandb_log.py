"""Training curves in Weights & Biases (`--report-to wandb`; the optional extra `flipctl[wandb]`).

The same scalars as the TensorBoard writer under the same names (`train/loss`, `eval/image_to_text_R1`),
each logged with the step and the samples seen (`step`, `samples`: either is an x-axis in W&B), and
the run's resolved config. Nothing leaves the machine unless the user asked for it: the run is offline
(files in `RUN/wandb`, for a later `wandb sync`) unless `WANDB_MODE` says otherwise or a W&B login is
configured (`WANDB_API_KEY`, or the netrc entry `wandb login` writes). The W&B run is named after the
run directory (a sweep's run id: the store keeps each run under its id) and grouped by
`WANDB_RUN_GROUP`, which `flipctl sweep` sets to the sweep's name, so a sweep's runs appear together.
A resumed run continues the same W&B run (its id is kept in `RUN/wandb/run-id`); the steps a killed
process logged past its checkpoint are logged again, so W&B shows them twice.
"""

from __future__ import annotations

import importlib.util
import netrc
import os
import uuid
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse

from flip.errors import ConfigError
from flip.run_dir import RunDir
from flip.train.tensorboard_log import tag

RUN_ID_FILE = "run-id"
DEFAULT_PROJECT = "flipctl"
INSTALL = "pip install 'flipctl[wandb]'"


def check_installed() -> None:
    """Refuse `--report-to wandb` without the package, before anything is generated or trained."""
    if importlib.util.find_spec("wandb") is None:
        raise ConfigError(f"wandb needs the wandb package: {INSTALL}", key="report_to")


def logged_in() -> bool:
    """Whether the user configured a W&B login: an API key in the environment or in netrc."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def mode() -> str:
    """`WANDB_MODE` when set, else online with a configured login, else offline."""
    return os.environ.get("WANDB_MODE") or ("online" if logged_in() else "offline")


class WandbLog:
    def __init__(self, run_dir: str | Path, config: dict[str, Any], step: int = 0,
                 say: Callable[[str], None] = print):
        """`step`: where a resumed run continues (0: a new run, which starts a new W&B run)."""
        check_installed()
        import wandb

        log_dir = RunDir(run_dir).wandb  # where wandb.init(dir=run_dir) writes its own files too
        log_dir.mkdir(parents=True, exist_ok=True)
        id_file = log_dir / RUN_ID_FILE
        run_id = id_file.read_text().strip() if step and id_file.exists() else uuid.uuid4().hex[:12]
        id_file.write_text(run_id + "\n")
        self.mode = mode()
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT, dir=str(run_dir), id=run_id,
            resume="allow", name=os.environ.get("WANDB_NAME") or Path(run_dir).resolve().name,
            group=os.environ.get("WANDB_RUN_GROUP"), config=config, mode=self.mode,
            settings=wandb.Settings(console="off", silent=True))  # the trainer's own output stays its own
        for axis in ("step", "samples"):
            self.run.define_metric(axis)
        for group in ("train", "eval"):
            self.run.define_metric(f"{group}/*", step_metric="step")
        where = f"offline in {log_dir} (upload: wandb sync {log_dir}/offline-run-*)" if self.mode == "offline" \
            else self.mode
        say(f"wandb: run {self.run.name} ({run_id}), {where}")

    def log(self, group: str, step: int, samples: int, scalars: dict[str, float]) -> None:
        """Write `scalars` as `group/name`, with the step and the samples seen."""
        values = {tag(group, name): value for name, value in scalars.items()
                  if isinstance(value, (int, float)) and not isinstance(value, bool)}
        if values:
            self.run.log({**values, "step": step, "samples": samples})

    def flush(self) -> None:
        pass  # W&B writes as it goes

    def close(self) -> None:
        self.run.finish()
