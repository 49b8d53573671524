"""One sweep job in its own process: `python -m flip.sweep.worker STORE/runs/<id>/sweep/job.json`.

A fresh process per run gives each run clean data-loader workers, RNG, distributed and compile
state. The worker does only what is missing - training (resuming from the last checkpoint if a
previous attempt was killed), then each evaluation whose record is not yet written - and leaves
`status.json` saying `done`, or `failed` with the error, for the sweep to read.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

from flip.data import builtin
from flip.distributed import resolve_device
from flip.eval import evaluate_checkpoint
from flip.eval.features import Masking, Runtime
from flip.run_dir import RunDir, SweepFiles
from flip.sweep import claims
from flip.sweep.store import read_json, write_json_atomic
from flip.train.config import TrainConfig
from flip.train.faults import StopRequested
from flip.train.reporting import PlainReporter, Reporter
from flip.train.trainer import train, tune_unmasked


class FileReporter(Reporter):
    """Writes the step count and the last logged rate for the sweep's progress view (at most once a
    second), and plain progress lines to the worker's log (its stdout)."""

    def __init__(self, path: Path, log: Reporter | None = None):
        self.path, self.total, self.last, self.samples_per_s = path, 0, 0.0, None
        self.log = log or Reporter()

    def start(self, total_steps: int, done_steps: int, title: str) -> None:
        self.total = total_steps
        self.log.start(total_steps, done_steps, title)
        self.step(done_steps)

    def step(self, step: int, metrics: dict | None = None) -> None:
        self.log.step(step, metrics)
        if metrics and metrics.get("samples_per_s") is not None:
            self.samples_per_s = metrics["samples_per_s"]
        now = time.monotonic()
        if now - self.last >= 1.0 or step == self.total:
            self.last = now
            write_json_atomic(self.path, {"step": step, "total": self.total, "samples_per_s": self.samples_per_s})

    def message(self, text: str) -> None:
        self.log.message(text)


class Interrupted(Exception):
    """A stop signal arrived outside training (while evaluating): nothing of the evaluation is kept."""


def _train(job: dict, run_dir: Path, reporter: Reporter, stop=None) -> None:
    run = RunDir(run_dir)
    if run.summary.exists():
        return
    if run.has_checkpoint():
        train(TrainConfig(out=str(run_dir)), resume=True, reporter=reporter, stop=stop)
        return
    # No checkpoint: anything a killed attempt left (a metrics log) belongs to no run; start clean.
    for leftover in (run.metrics, run.config):
        leftover.unlink(missing_ok=True)
    if job["kind"] == "train":
        cfg = TrainConfig.from_dict({**job["config"], "out": str(run_dir)})
        train(cfg, reporter=reporter, stop=stop)
    else:
        parent = Path(job["parent_dir"])
        tune_unmasked(str(parent), samples=job["tune_samples"], lr=job["tune_lr"], out=str(run_dir),
                      reporter=reporter, stop=stop)


def _evaluate(job: dict, run_dir: Path, files: SweepFiles) -> None:
    cfg = job["config"]
    runtime = Runtime(resolve_device(cfg.get("device", "auto")), job.get("eval_batch", 256),
                      cfg.get("precision", "fp32"), cfg.get("workers", 2))
    for ev in job["evals"]:
        path = files.eval(ev["key"])
        if path.exists():
            continue
        masking = Masking(ev["mask_ratio"], ev["views"], seed=0)
        data = ev["data"]
        if data is None and ev["task"] == "linear-probe":  # probe the built-in zero-shot set, split per class
            data = str(builtin.zeroshot_dir(builtin.ensure_builtin()))
        print(f"evaluating {ev['key']}", flush=True)
        record = evaluate_checkpoint(run_dir, ev["task"], data=data, masking=masking, runtime=runtime)
        write_json_atomic(path, record)


def run_job(job_path: Path, stopper: "Stopper | None" = None) -> int:
    """Train and evaluate the job; 0 when done. A `stopper`'s signal makes training finish its step and
    write a checkpoint (or stops an evaluation), and the run is marked interrupted."""
    job = json.loads(job_path.read_text())
    files = SweepFiles(job_path.parent)
    run_dir = files.run_dir
    status_path = files.status
    previous = read_json(status_path) or {}
    attempts = previous.get("attempts", 0) + 1
    write_json_atomic(status_path, {"state": "running", "attempts": attempts, "started": time.time()})
    print(f"run {run_dir.name}: attempt {attempts}", flush=True)
    try:
        _train(job, run_dir, FileReporter(files.progress, PlainReporter(sys.stdout)),
               stopper.event if stopper else None)
        if stopper:
            stopper.evaluating()
        _evaluate(job, run_dir, files)
    except (StopRequested, Interrupted) as exc:
        where = f"at step {exc.step}, checkpoint {exc.checkpoint}" if isinstance(exc, StopRequested) else \
            "while evaluating"
        print(f"run {run_dir.name}: interrupted {where}", flush=True)
        write_json_atomic(status_path, {"state": "interrupted", "attempts": attempts, "finished": time.time(),
                                        "step": getattr(exc, "step", None)})
        return 130
    except BaseException as exc:  # noqa: BLE001 - recorded for the sweep's report, then re-raised as exit 1
        lines = [line for line in str(exc).strip().splitlines() if line.strip()]
        error = f"{type(exc).__name__}: {lines[-1] if lines else ''}".strip()
        files.error.write_text(traceback.format_exc())
        print(f"run {run_dir.name}: failed: {error}", flush=True)
        write_json_atomic(status_path, {"state": "failed", "attempts": attempts, "error": error,
                                        "finished": time.time()})
        return 1
    write_json_atomic(status_path, {"state": "done", "attempts": attempts, "finished": time.time()})
    print(f"run {run_dir.name}: done", flush=True)
    return 0


class Stopper:
    """SIGTERM / SIGINT while training: finish the step, checkpoint, stop (the event); while evaluating:
    stop at once. A second signal ends the process as the signal does."""

    def __init__(self):
        self.event, self.training = threading.Event(), True
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.event.is_set():
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)
            return
        self.event.set()
        if not self.training:
            raise Interrupted()

    def evaluating(self) -> None:
        """Training is over: from now on a signal interrupts at once (and one that came already does)."""
        self.training = False
        if self.event.is_set():
            raise Interrupted()


def start_heartbeat(job_path: Path) -> None:
    """Touch the run's claim while this process lives: the sweep that holds it may be on another host,
    or gone while this worker (a SLURM job) still runs."""
    def beat():
        while True:
            claims.touch(SweepFiles(job_path.parent).lock)
            time.sleep(claims.HEARTBEAT_S)

    threading.Thread(target=beat, daemon=True).start()


def main(job_path: Path) -> int:
    stopper = Stopper()
    start_heartbeat(job_path)
    return run_job(job_path, stopper)


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
