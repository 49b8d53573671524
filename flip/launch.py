"""Start a training job on more processes than this one.

- `launch_local(job, LocalLaunch(nproc=N, ...))`: N processes on this machine (and, with `nnodes`,
  the same on every other node), started by torchrun's own launcher (`torch.distributed.launcher`),
  so that `flipctl train --nproc N` is `torchrun --nproc-per-node N -m flipctl.main train`.
- `submit(job, SlurmLaunch(...))`: a SLURM job through submitit, one task per GPU; each task takes
  its rank, world size, local rank and rendezvous address from submitit's `JobEnvironment`
  (`flip.distributed`). A preempted or timed-out job is requeued and resumes from its last
  checkpoint (`TrainJob.checkpoint`, submitit's checkpointing hook).

Every process of a job runs the same `TrainJob`: a resolved `TrainConfig` (resolved once, here,
so that every process trains the same run in the same directory) and whether to resume it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import signal
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import submitit

from flip.distributed import process_rank
from flip.errors import CheckpointError, ConfigError, DataError, FlipError
from flip.run_dir import RunDir, SweepFiles
from flip.train.config import TrainConfig
from flip.train.reporting import Reporter

SHUTDOWN_TIMEOUT_S = 300  # how long a stopped launch waits for its processes to finish a step and checkpoint


@dataclass
class TrainJob(submitit.helpers.Checkpointable):
    """What each process of a job runs: train the run `config` describes (a resolved TrainConfig as
    a dict), or with `resume` continue it from its last checkpoint. Returns the run's summary."""

    config: dict[str, Any]
    resume: bool = False
    reporter: type[Reporter] | None = None  # made on rank 0 only; the others report nothing
    settings: dict[str, Any] | None = None  # with resume: settings given again, checked against the saved ones

    @property
    def out(self) -> str:
        return self.config["out"]

    def __call__(self, stop=None) -> dict[str, Any]:
        """Train; `stop` (an Event) asks for a polite stop. In a submitit job, submitit's preemption /
        timeout signal does: the step in flight finishes and is checkpointed, then submitit requeues."""
        from flip.train.faults import StopRequested
        from flip.train.trainer import train  # the trainer imports torch.distributed's whole stack

        reporter = self.reporter() if self.reporter is not None and process_rank() == 0 else Reporter()
        requeue = None
        if stop is None and os.environ.get("SUBMITIT_EXECUTOR"):
            stop, requeue = _stop_then_requeue()
        try:
            if self.resume:
                return train(TrainConfig(out=self.out), resume=True, reporter=reporter, stop=stop,
                             settings=self.settings)
            # "auto": a job SLURM or submitit requeued finds its own checkpoint and resumes from it (the
            # launchers refuse a fresh run in a directory that already holds one)
            return train(TrainConfig.from_dict(self.config), resume="auto", reporter=reporter, stop=stop)
        except StopRequested:
            if requeue is not None:
                requeue()  # submitit's handler: on rank 0, checkpoint() below, requeue, exit
            raise

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """Preempted or out of time (submitit calls this on rank 0): requeue, resuming the run from its
        last checkpoint (or starting it again if it had written none yet)."""
        has_checkpoint = RunDir(self.out).has_checkpoint()
        return submitit.helpers.DelayedSubmission(dataclasses.replace(self, resume=self.resume or has_checkpoint))


def _stop_then_requeue():
    """Under submitit: its preemption / timeout signal now sets a stop event; the returned function
    then runs submitit's own handler (which calls `TrainJob.checkpoint` and requeues the job)."""
    sig = submitit.JobEnvironment._usr_sig()
    submitit_handler = signal.getsignal(sig)
    stop = threading.Event()
    signal.signal(sig, lambda signum, frame: stop.set())
    return stop, (lambda: submitit_handler(sig, None)) if callable(submitit_handler) else None


def check_fresh(out: str | Path) -> None:
    """A new run's directory must not hold a run already (the jobs resume whatever they find there)."""
    if RunDir(out).holds_run():
        raise ConfigError(f"run directory {out} already holds a run; pass --resume to continue it or choose "
                          f"another --out")


# -- N processes on this machine (and maybe others): torchrun's launcher -------------------------------
@dataclass
class LocalLaunch:
    """torchrun's `--nproc-per-node`, `--nnodes`, `--node-rank` and `--rdzv-endpoint`."""

    nproc: int = 1
    nnodes: int = 1
    node_rank: int = 0
    rdzv_endpoint: str | None = None  # HOST:PORT of node 0; None on one node: a free local port

    @property
    def world_size(self) -> int:
        return self.nproc * self.nnodes

    def validate(self) -> "LocalLaunch":
        if self.nproc < 1:
            raise ConfigError(f"must be at least 1, got {self.nproc}", key="nproc")
        if self.nnodes < 1:
            raise ConfigError(f"must be at least 1, got {self.nnodes}", key="nnodes")
        if not 0 <= self.node_rank < self.nnodes:
            raise ConfigError(f"must be in [0, {self.nnodes}) for {self.nnodes} nodes, got {self.node_rank}",
                              key="node_rank")
        if self.nnodes > 1 and not self.rdzv_endpoint:
            raise ConfigError("HOST:PORT of node 0 is needed on every node of a multi-node run", key="rdzv_endpoint")
        if self.rdzv_endpoint and not re.fullmatch(r"[^\s:]+:\d+", self.rdzv_endpoint):
            raise ConfigError(f"must be HOST:PORT, got {self.rdzv_endpoint!r}", key="rdzv_endpoint")
        return self


def _run_in_process(job: TrainJob) -> dict[str, Any]:
    """A launched process: run the job, SIGTERM / SIGINT / SIGUSR1 being polite stops (the launcher
    forwards its signal to every process); a user error or an early stop is recorded for the launcher
    to raise again."""
    from torch.distributed.elastic.multiprocessing.errors import get_error_handler

    from flip.train.faults import TrainingStopped

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
        signal.signal(sig, lambda signum, frame: stop.set())
    try:
        return job(stop=stop)
    except (FlipError, TrainingStopped) as exc:
        get_error_handler().record_exception(_Recorded(exc))
        sys.exit(getattr(exc, "exit_code", 2))


class _Recorded(Exception):
    """A user error or an early stop as JSON, so that the launcher can raise it again as what it is."""

    def __init__(self, exc: Exception):
        fields = {"types": [cls.__name__ for cls in type(exc).__mro__], "message": str(exc)}
        for name in ("detail", "key", "run_dir", "step", "checkpoint"):
            value = getattr(exc, name, None)
            fields[name] = str(value) if isinstance(value, Path) else value
        super().__init__(json.dumps(fields))


def _raised_again(record: str) -> Exception | None:
    """The exception a `_Recorded` message describes; None for anything else (a bug)."""
    from flip.train import faults

    head, _, body = record.partition(": ")
    if head != _Recorded.__name__:
        return None
    data = json.loads(body)
    stops = (faults.StopRequested, faults.NonFiniteStop, faults.WriteFailed, faults.TooMuchBadData,
             faults.TrainingStopped)
    for cls in stops:
        if cls.__name__ in data["types"]:
            checkpoint = Path(data["checkpoint"]) if data["checkpoint"] else None
            return cls(data["message"], Path(data["run_dir"]), data["step"], checkpoint)
    cls = next(cls for cls in (ConfigError, DataError, CheckpointError, FlipError) if cls.__name__ in data["types"])
    if cls is ConfigError and data["key"] is not None:
        return ConfigError(data["detail"], key=data["key"])
    return cls(data["message"])


class LaunchStopped(Exception):
    """The launcher got a stop signal: its processes stopped (politely, each finishing its step and
    writing a checkpoint, within the launcher's shutdown timeout). `checkpoint`: the run's last one."""

    def __init__(self, signum: int, run_dir: Path, checkpoint: Path | None):
        self.signum, self.run_dir, self.checkpoint = signum, run_dir, checkpoint
        super().__init__(f"{signal.Signals(signum).name}: run {run_dir} stopped; "
                         + (f"its last checkpoint is {checkpoint}" if checkpoint else "no checkpoint was written yet"))


def check_world(cfg: TrainConfig, world_size: int) -> None:
    """The batch splits over `world_size` processes and each share into `accum_steps` chunks."""
    if cfg.batch_size % world_size:
        raise ConfigError(f"({cfg.batch_size}) must divide by the {world_size} processes", key="batch_size")
    if cfg.batch_size // world_size % cfg.accum_steps:
        raise ConfigError(f"({cfg.accum_steps}) must divide each process's share of the batch "
                          f"({cfg.batch_size // world_size} = {cfg.batch_size} / {world_size} processes)",
                          key="accum_steps")


def launch_local(job: TrainJob, spec: LocalLaunch) -> dict[str, Any]:
    """Run `job` in `spec.nproc` processes here (this node's share of `spec.world_size`) and return the
    summary of this node's first process. A user error in a process is raised here as itself."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    spec.validate()
    if not job.resume:
        check_world(TrainConfig.from_dict(job.config), spec.world_size)
        check_fresh(job.out)
    if spec.rdzv_endpoint is None:  # one node: torchrun --standalone (a free local port)
        rdzv = dict(rdzv_backend="c10d", rdzv_endpoint="localhost:0", run_id=str(uuid.uuid4()))
    else:  # torchrun's default static rendezvous at node 0's address, this node at --node-rank
        rdzv = dict(rdzv_backend="static", rdzv_endpoint=spec.rdzv_endpoint, run_id="flipctl",
                    rdzv_configs={"rank": spec.node_rank})
    if "shutdown_timeout" in {f.name for f in dataclasses.fields(LaunchConfig)}:  # torch >= 2.9
        rdzv["shutdown_timeout"] = SHUTDOWN_TIMEOUT_S
    config = LaunchConfig(min_nodes=spec.nnodes, max_nodes=spec.nnodes, nproc_per_node=spec.nproc,
                          max_restarts=0, start_method="spawn", **rdzv)
    # As torchrun: without OMP_NUM_THREADS, the processes share this machine's cores (torchrun: 1 each).
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // spec.nproc)))
    # The agent logs a process's non-zero exit with the agent's own traceback: the process has said what
    # went wrong (a user error or an early stop is raised again below as one line, a bug prints its traceback).
    logging.getLogger("torch.distributed.elastic.multiprocessing.api").setLevel(logging.CRITICAL)
    try:
        results = elastic_launch(config, _run_in_process)(job)
    except SignalException as exc:  # the launcher's agent passed the signal on and waited for the processes
        raise LaunchStopped(exc.sigval, Path(job.out), RunDir(job.out).latest_checkpoint()) from None
    except ChildFailedError as exc:
        for failure in sorted(exc.failures.values(), key=lambda f: f.timestamp):
            message = failure.message.get("message", "") if isinstance(failure.message, dict) else failure.message
            again = _raised_again(message)
            if again is not None:
                raise again from None
        raise
    return results[min(results)]


# -- SLURM through submitit ------------------------------------------------------------------------------
@dataclass
class SlurmLaunch:
    """A SLURM allocation: `nodes` x `gpus_per_node` GPUs, one task per GPU.

    `cluster="local"` runs the same job through submitit's local executor (tests, a quick check
    on a workstation); `tasks_per_node` then sets the number of tasks (default: one per GPU, at
    least one).
    """

    partition: str | None = None
    nodes: int = 1
    gpus_per_node: int = 1
    cpus_per_task: int | None = None
    time: str = "24:00:00"
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    folder: str | None = None  # submitit's logs and pickles; default: <run>/slurm
    max_requeues: int = 3  # timeouts a job may be requeued after
    cluster: str = "slurm"
    tasks_per_node: int | None = None
    signal_delay_s: int | None = None  # the preemption signal this long before the time limit (submitit: 90 s)

    @property
    def tasks(self) -> int:
        return self.tasks_per_node or max(1, self.gpus_per_node)

    @property
    def world_size(self) -> int:
        return self.nodes * self.tasks

    def validate(self) -> "SlurmLaunch":
        for key in ("nodes", "cpus_per_task", "tasks_per_node"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ConfigError(f"must be at least 1, got {value}", key=key)
        if self.gpus_per_node < 0:
            raise ConfigError(f"must be at least 0, got {self.gpus_per_node}", key="gpus_per_node")
        parse_time(self.time)
        if self.cluster == "slurm" and shutil.which("sbatch") is None:
            raise ConfigError("slurm needs SLURM's sbatch, which is not on this machine's PATH: submit from a "
                              "machine of the cluster (a login node)", key="launcher")
        return self

    def executor(self, folder: str | Path, name: str) -> submitit.Executor:
        timeout = parse_time(self.time)
        if self.cluster == "local":
            executor = submitit.LocalExecutor(folder=str(folder), max_num_timeout=self.max_requeues)
            params: dict[str, Any] = dict(timeout_min=timeout, tasks_per_node=self.tasks,
                                          gpus_per_node=self.gpus_per_node, signal_delay_s=self.signal_delay_s)
        else:
            executor = submitit.AutoExecutor(folder=str(folder), cluster=self.cluster,
                                             slurm_max_num_timeout=self.max_requeues)
            params = dict(name=name, nodes=self.nodes, tasks_per_node=self.tasks, timeout_min=timeout,
                          gpus_per_node=self.gpus_per_node, slurm_partition=self.partition,
                          cpus_per_task=self.cpus_per_task, slurm_account=self.account, slurm_qos=self.qos,
                          slurm_constraint=self.constraint, slurm_signal_delay_s=self.signal_delay_s)
        executor.update_parameters(**{k: v for k, v in params.items() if v is not None})
        return executor


def parse_time(text: str) -> int:
    """SLURM's time limit (`MM`, `HH:MM:SS`, `D-HH`, `D-HH:MM`, `D-HH:MM:SS`, `MM:SS`) in whole minutes."""
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", str(text).strip())
    if not match:
        raise ConfigError(f"must be a SLURM time limit (MM, HH:MM:SS or D-HH:MM:SS), got {text!r}", key="time")
    days, first, second, third = match.groups()
    numbers = [int(x) for x in (first, second, third) if x is not None]
    if days is not None:  # D-HH[:MM[:SS]]
        hours, minutes, seconds = (numbers + [0, 0])[:3]
        total = int(days) * 1440 + hours * 60 + minutes + seconds / 60
    elif len(numbers) == 3:
        total = numbers[0] * 60 + numbers[1] + numbers[2] / 60
    elif len(numbers) == 2:  # MM:SS
        total = numbers[0] + numbers[1] / 60
    else:
        total = numbers[0]
    minutes = -int(-total // 1)  # round up: never ask for less than was given
    if minutes < 1:
        raise ConfigError(f"must be at least one minute, got {text!r}", key="time")
    return minutes


def submit(job: TrainJob, spec: SlurmLaunch, name: str = "flipctl-train") -> submitit.Job:
    """Submit `job` as one SLURM job of `spec.world_size` tasks; returns submitit's handle (its
    `job_id`, and `results()` to wait for every task's summary)."""
    spec.validate()
    if not job.resume:
        check_world(TrainConfig.from_dict(job.config), spec.world_size)
        check_fresh(job.out)
    folder = spec.folder or RunDir(job.out).slurm
    executor = spec.executor(folder, name)
    with submitit.helpers.clean_env():  # submitted from inside a job: none of its variables leak in
        return executor.submit(job)


# -- a sweep's runs as SLURM jobs ---------------------------------------------------------------------------
@dataclass
class SweepRunJob(submitit.helpers.Checkpointable):
    """One sweep run (`flip.sweep.worker`'s job file: train or resume, then its evaluations) as a SLURM
    job. With several tasks, the run trains on all of them and rank 0 alone does the rest (status,
    evaluations). Preempted or out of time: requeued, and the worker resumes the run."""

    job_path: str

    def __call__(self) -> int:
        from flip.sweep import worker

        if process_rank() == 0:
            worker.start_heartbeat(Path(self.job_path))
            return worker.run_job(Path(self.job_path))
        job = json.loads(Path(self.job_path).read_text())
        # the worker's own choice of train / resume / nothing, made the same way on every rank
        worker._train(job, Path(self.job_path).parent.parent, Reporter())
        return 0


class SubmittedRun:
    """A submitted sweep run, watched as `run_jobs` watches a worker process."""

    def __init__(self, job: submitit.Job):
        self.job, self.returncode = job, None

    def poll(self) -> int | None:
        if self.returncode is None and self.job.done():
            try:
                self.returncode = int(self.job.results()[0])  # rank 0's: the worker's exit code
            except Exception:  # noqa: BLE001 - cancelled, killed, node failure: the sweep records a failure
                self.returncode = 1
        return self.returncode

    def terminate(self) -> None:
        self.job.cancel(check=False)

    def wait(self) -> int:
        while self.poll() is None:
            time.sleep(1.0)
        return self.returncode


@dataclass
class SlurmSweepRuns:
    """`flip.sweep.execute.run_jobs`'s `spawn`: each run a SLURM job of `spec` (submitit's logs beside the
    run's sweep files), instead of a process here. The sweep's `--jobs` caps how many are queued at once."""

    spec: SlurmLaunch

    def __call__(self, job, store) -> SubmittedRun:
        from flip.sweep.execute import write_job

        self.spec.validate()
        job_path = write_job(job, store)
        executor = self.spec.executor(SweepFiles(job_path.parent).slurm, name=f"flip-{job.run_id}")
        with submitit.helpers.clean_env():
            return SubmittedRun(executor.submit(SweepRunJob(str(job_path))))
