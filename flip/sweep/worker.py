"""One sweep job in its own process: `python -m flip.sweep.worker STORE/runs/<id>/sweep/job.json`.

A fresh process per run gives each run clean data-loader workers, RNG, distributed and compile
state. The worker does only what is missing - training (resuming from the last checkpoint if a
previous attempt was killed), then each evaluation whose record is not yet written - and leaves
`status.json` saying `done`, or `failed` with the error, for the sweep to read.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path

from flip.checkpoint import LATEST
from flip.data import builtin
from flip.distributed import resolve_device
from flip.eval import evaluate_checkpoint
from flip.eval.features import Masking, Runtime
from flip.sweep.store import LOCK, STATUS, read_json, write_json_atomic
from flip.train.config import TrainConfig
from flip.train.reporting import Reporter
from flip.train.trainer import SUMMARY_FILE, train, tune_unmasked

PROGRESS = "progress.json"


class FileReporter(Reporter):
    """Writes the step count for the sweep's progress view, at most once a second."""

    def __init__(self, path: Path):
        self.path, self.total, self.last = path, 0, 0.0

    def start(self, total_steps: int, done_steps: int, title: str) -> None:
        self.total = total_steps
        self.step(done_steps)

    def step(self, step: int, metrics: dict | None = None) -> None:
        now = time.monotonic()
        if now - self.last >= 1.0 or step == self.total:
            self.last = now
            write_json_atomic(self.path, {"step": step, "total": self.total})


def _train(job: dict, run_dir: Path, reporter: Reporter) -> None:
    if (run_dir / SUMMARY_FILE).exists():
        return
    if (run_dir / LATEST).exists():
        train(TrainConfig(out=str(run_dir)), resume=True, reporter=reporter)
        return
    # No checkpoint: anything a killed attempt left (a metrics log) belongs to no run; start clean.
    for leftover in ("metrics.jsonl", "config.json"):
        (run_dir / leftover).unlink(missing_ok=True)
    if job["kind"] == "train":
        cfg = TrainConfig.from_dict({**job["config"], "out": str(run_dir)})
        train(cfg, reporter=reporter)
    else:
        parent = Path(job["parent_dir"])
        tune_unmasked(str(parent), samples=job["tune_samples"], lr=job["tune_lr"], out=str(run_dir),
                      reporter=reporter)


def _evaluate(job: dict, run_dir: Path, sweep_dir: Path) -> None:
    cfg = job["config"]
    runtime = Runtime(resolve_device(cfg.get("device", "auto")), job.get("eval_batch", 256),
                      cfg.get("precision", "fp32"), cfg.get("workers", 2))
    for ev in job["evals"]:
        path = sweep_dir / "evals" / f"{ev['key']}.json"
        if path.exists():
            continue
        masking = Masking(ev["mask_ratio"], ev["views"], seed=0)
        data = ev["data"]
        if data is None and ev["task"] == "linear-probe":  # probe the built-in zero-shot set, split per class
            data = str(builtin.zeroshot_dir(builtin.ensure_builtin()))
        record = evaluate_checkpoint(run_dir, ev["task"], data=data, masking=masking, runtime=runtime)
        write_json_atomic(path, record)


def run_job(job_path: Path) -> int:
    job = json.loads(job_path.read_text())
    sweep_dir = job_path.parent
    run_dir = sweep_dir.parent
    status_path = sweep_dir / STATUS
    previous = read_json(status_path) or {}
    attempts = previous.get("attempts", 0) + 1
    write_json_atomic(status_path, {"state": "running", "attempts": attempts, "started": time.time()})
    write_json_atomic(sweep_dir / LOCK, {"pid": os.getpid()})  # while this lives, no one else runs this job
    try:
        _train(job, run_dir, FileReporter(sweep_dir / PROGRESS))
        _evaluate(job, run_dir, sweep_dir)
    except BaseException as exc:  # noqa: BLE001 - recorded for the sweep's report, then re-raised as exit 1
        lines = [line for line in str(exc).strip().splitlines() if line.strip()]
        error = f"{type(exc).__name__}: {lines[-1] if lines else ''}".strip()
        (sweep_dir / "error.txt").write_text(traceback.format_exc())
        write_json_atomic(status_path, {"state": "failed", "attempts": attempts, "error": error,
                                        "finished": time.time()})
        return 1
    finally:
        (sweep_dir / LOCK).unlink(missing_ok=True)
    write_json_atomic(status_path, {"state": "done", "attempts": attempts, "finished": time.time()})
    return 0


if __name__ == "__main__":
    sys.exit(run_job(Path(sys.argv[1])))
