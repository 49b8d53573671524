"""Running a sweep's jobs: each in its own process, at most `jobs` at once, skipping what is done.

A job is done when its `status.json` says so and every evaluation it asks for has a record;
anything else - never started, killed mid-way, failed - is run (again), and the worker resumes a
killed training from its last checkpoint. A failed job is recorded with its error and the sweep
goes on; a tuning job whose parent failed is skipped.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from flip.run_dir import SweepFiles
from flip.sweep import claims
from flip.sweep.jobs import Job
from flip.sweep.store import RunStore, read_json, write_json_atomic
from flip.train.config import TrainConfig

TERMINAL = ("done", "failed", "skipped")


class SweepProgress(Protocol):
    """What a sweep tells whoever watches it (the CLI draws it with rich)."""

    def start(self, jobs: list[Job], todo: list[Job]) -> None: ...

    def update(self, running: dict[str, tuple[int, int, float | None]], finished: dict[str, str]) -> None:
        """`running`: run id -> (step, total steps, last logged samples/s); `finished`: run id -> state."""

    def close(self) -> None: ...


class NoProgress:
    def start(self, jobs, todo) -> None: ...

    def update(self, running, finished) -> None: ...

    def close(self) -> None: ...


def is_complete(job: Job, store: RunStore) -> bool:
    """Trained and every evaluation this job asks for recorded. Judged from the files, not from the
    run's status: another sweep may be adding its own evaluations to the same run (or have been killed
    while doing so) without making this job's work any less done."""
    return (store.summary(job.run_id) is not None
            and all(store.eval_path(job.run_id, ev.key).exists() for ev in job.evals))


def _toml_value(value) -> str:
    return json.dumps(value)  # str, int, float, bool and lists of them read back the same in TOML


def reproduce_command(job: Job, store: RunStore) -> str:
    run_dir = store.run_dir(job.run_id)
    if job.kind == "tune":
        return (f"flipctl tune-unmasked --ckpt {store.run_dir(job.parent)} --samples {job.tune_samples} "
                f"--lr {job.tune_lr:.6g} --out {run_dir}")
    return f"flipctl train --config {store.sweep_files(job.run_id).train_config} --out {run_dir}"


def write_job(job: Job, store: RunStore) -> Path:
    """The job file the worker reads, the train config as TOML, and the command that reproduces the run."""
    files = store.sweep_files(job.run_id)
    payload = job.to_dict()
    if job.parent:
        payload["parent_dir"] = str(store.run_dir(job.parent))
    write_json_atomic(files.job, payload)
    defaults = TrainConfig().to_dict()
    # The sweep evaluates on its eval sets itself; to a run without periodic evaluation they are no-ops.
    unused = {"out"} | (set() if job.config.periodic_eval else {"eval_data", "eval_zeroshot"})
    lines = [f"{k} = {_toml_value(v)}" for k, v in job.config.to_dict().items()
             if k not in unused and v is not None and v != defaults.get(k)]
    files.train_config.write_text(f"# the training config of this run (see {files.command.name})\n"
                                  + "\n".join(lines) + "\n")
    files.command.write_text(reproduce_command(job, store) + "\n")
    return files.job


@dataclass
class SweepOutcome:
    states: dict[str, str] = field(default_factory=dict)  # run id -> done | failed | skipped | interrupted
    ran: list[str] = field(default_factory=list)  # run ids this call executed
    skipped_done: list[str] = field(default_factory=list)  # already complete before this call
    done_elsewhere: list[str] = field(default_factory=list)  # finished meanwhile by another sweep on the store

    @property
    def failed(self) -> list[str]:
        return [rid for rid, state in self.states.items() if state != "done"]


def run_jobs(jobs: list[Job], store: RunStore, parallel: int = 1, progress: SweepProgress | None = None,
             poll_s: float = 0.5, spawn=None) -> SweepOutcome:
    """Run every incomplete job (parents before their tuning jobs), `parallel` processes at a time.

    Each job is claimed (`flip.sweep.claims`) before it starts, so a job another sweep on the store is
    running waits for that sweep, and one it finished meanwhile is not run again. `spawn(job, store)`
    starts one job and returns a handle with `subprocess.Popen`'s `poll`, `returncode`, `terminate`
    and `wait`: by default a worker process here; `flip.launch.SlurmSweepRuns` submits each job to
    SLURM instead. On an exception (Ctrl-C) the running workers are stopped politely: each writes a
    checkpoint and marks its run interrupted.
    """
    progress = progress or NoProgress()
    spawn = spawn or _spawn
    outcome = SweepOutcome()
    todo = []
    for job in jobs:
        if is_complete(job, store):
            outcome.states[job.run_id] = "done"
            outcome.skipped_done.append(job.run_id)
        elif job.run_id not in {j.run_id for j in todo}:
            todo.append(job)
    progress.start(jobs, todo)
    running: dict[str, tuple[Job, Any, claims.Claim]] = {}
    waiting = list(todo)
    try:
        while waiting or running:
            for rid, (job, proc, claim) in list(running.items()):
                if proc.poll() is None:
                    claim.heartbeat()
                    continue
                outcome.states[rid] = _final_state(store, rid, proc.returncode)
                claim.release()
                del running[rid]
            for job in list(waiting):
                if len(running) >= max(1, parallel):
                    break
                started = _start(job, store, spawn, outcome)
                if started is not None:
                    waiting.remove(job)
                    if started is not True:
                        running[job.run_id] = started
            progress.update({rid: _steps(store, job) for rid, (job, _, _) in running.items()}, dict(outcome.states))
            if running or waiting:
                time.sleep(poll_s)
    except BaseException:
        _stop(running, store)
        raise
    finally:
        progress.close()
    return outcome


def _start(job: Job, store: RunStore, spawn, outcome: SweepOutcome):
    """Claim and start one job: (job, handle, claim) when started, True when settled without starting it
    (finished by another sweep, or skipped for a failed parent), None when it must wait (its parent is
    still to run, or another sweep holds it)."""
    parent_state = outcome.states.get(job.parent) if job.parent else "done"
    if parent_state is None:
        return None
    claim = claims.try_claim(store.sweep_dir(job.run_id))
    if claim is None:
        return None  # another sweep sharing the store runs it: look again next round
    try:
        if is_complete(job, store):  # another sweep finished it meanwhile
            outcome.states[job.run_id] = "done"
            outcome.done_elsewhere.append(job.run_id)
        elif parent_state != "done":
            outcome.states[job.run_id] = "skipped"
            write_json_atomic(store.sweep_files(job.run_id).status,
                              {"state": "skipped", "error": f"parent run {job.parent} did not finish"})
        else:
            handle = spawn(job, store)
            outcome.ran.append(job.run_id)
            claim.set_worker(_worker_of(handle))
            return job, handle, claim
    except BaseException:
        claim.release()
        raise
    claim.release()
    return True


def _final_state(store: RunStore, run_id: str, returncode: int) -> str:
    state = (store.status(run_id) or {}).get("state")
    if returncode == 0 and state == "done":
        return "done"
    return "interrupted" if state == "interrupted" else "failed"


def _stop(running: dict, store: RunStore) -> None:
    """Stop the running workers (each finishes its step and writes a checkpoint), wait, free their runs."""
    for _, proc, _ in running.values():
        proc.terminate()
    for rid, (_, proc, claim) in running.items():
        proc.wait()
        status = store.status(rid) or {}
        if status.get("state") == "running":  # a worker that could not say so itself (killed, or on SLURM)
            write_json_atomic(store.sweep_files(rid).status, {**status, "state": "interrupted",
                                                              "finished": time.time()})
        claim.release()


def _die_with_parent() -> None:
    """In the child, before exec: ask Linux to SIGTERM it when the sweep process dies (even by SIGKILL),
    so no orphaned run keeps writing into the store; elsewhere, a no-op."""
    try:
        import ctypes
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def _worker_of(handle) -> dict[str, Any]:
    """Who runs a started job, for its claim: a process here, or a SLURM job."""
    if isinstance(handle, subprocess.Popen):
        return claims.me(handle.pid)
    return {"job": str(getattr(getattr(handle, "job", None), "job_id", "?"))}


def _spawn(job: Job, store: RunStore) -> subprocess.Popen:
    job_path = write_job(job, store)
    log = SweepFiles(job_path.parent).worker_log.open("ab")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # Its own session: a Ctrl-C at the terminal reaches the sweep alone, which stops the worker politely once.
    return subprocess.Popen([sys.executable, "-m", "flip.sweep.worker", str(job_path)], stdout=log,
                            stderr=subprocess.STDOUT, env=env, preexec_fn=_die_with_parent, start_new_session=True)


def _steps(store: RunStore, job: Job) -> tuple[int, int, float | None]:
    progress = read_json(store.sweep_files(job.run_id).progress) or {}
    return progress.get("step", 0), progress.get("total", job.steps) or job.steps, progress.get("samples_per_s")
