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
import os
import re
import shutil
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import submitit

from flip import checkpoint as ckpt
from flip.distributed import process_rank
from flip.errors import CheckpointError, ConfigError, DataError, FlipError
from flip.train.config import TrainConfig
from flip.train.reporting import Reporter

LAUNCHERS = ("local", "slurm")


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

    def __call__(self) -> dict[str, Any]:
        from flip.train.trainer import train  # the trainer imports torch.distributed's whole stack

        reporter = self.reporter() if self.reporter is not None and process_rank() == 0 else Reporter()
        if self.resume:
            return train(TrainConfig(out=self.out), resume=True, reporter=reporter, settings=self.settings)
        return train(TrainConfig.from_dict(self.config), reporter=reporter)

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """Preempted or out of time (submitit calls this on rank 0): requeue, resuming the run from its
        last checkpoint (or starting it again if it had written none yet)."""
        has_checkpoint = (Path(self.out) / ckpt.LATEST).exists()
        return submitit.helpers.DelayedSubmission(dataclasses.replace(self, resume=self.resume or has_checkpoint))


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
    """A launched process: run the job; a user error is recorded for the launcher to show as one line."""
    try:
        return job()
    except FlipError as exc:
        from torch.distributed.elastic.multiprocessing.errors import get_error_handler

        get_error_handler().record_exception(_RecordedUserError(exc))
        sys.exit(2)


class _RecordedUserError(Exception):
    """A user error as JSON, so that the launcher can raise it again (as the flip.errors class it is)."""

    def __init__(self, exc: FlipError):
        super().__init__(json.dumps({"types": [cls.__name__ for cls in type(exc).__mro__], "message": str(exc),
                                     "detail": getattr(exc, "detail", None), "key": getattr(exc, "key", None)}))


def _user_error(record: str) -> FlipError | None:
    """The FlipError a `_RecordedUserError` message describes; None for anything else."""
    head, _, body = record.partition(": ")
    if head != _RecordedUserError.__name__:
        return None
    data = json.loads(body)
    cls = next(cls for cls in (ConfigError, DataError, CheckpointError, FlipError) if cls.__name__ in data["types"])
    if cls is ConfigError and data["key"] is not None:
        return ConfigError(data["detail"], key=data["key"])
    return cls(data["message"])


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
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    spec.validate()
    if not job.resume:
        check_world(TrainConfig.from_dict(job.config), spec.world_size)
    if spec.rdzv_endpoint is None:  # one node: torchrun --standalone (a free local port)
        rdzv = dict(rdzv_backend="c10d", rdzv_endpoint="localhost:0", run_id=str(uuid.uuid4()))
    else:  # torchrun's default static rendezvous at node 0's address, this node at --node-rank
        rdzv = dict(rdzv_backend="static", rdzv_endpoint=spec.rdzv_endpoint, run_id="flipctl",
                    rdzv_configs={"rank": spec.node_rank})
    config = LaunchConfig(min_nodes=spec.nnodes, max_nodes=spec.nnodes, nproc_per_node=spec.nproc,
                          max_restarts=0, start_method="spawn", **rdzv)
    # As torchrun: without OMP_NUM_THREADS, the processes share this machine's cores (torchrun: 1 each).
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // spec.nproc)))
    try:
        results = elastic_launch(config, _run_in_process)(job)
    except ChildFailedError as exc:
        for failure in exc.failures.values():
            message = failure.message.get("message", "") if isinstance(failure.message, dict) else failure.message
            user_error = _user_error(message)
            if user_error is not None:
                raise user_error from None
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
        executor = submitit.AutoExecutor(folder=str(folder), cluster=self.cluster,
                                         slurm_max_num_timeout=self.max_requeues)
        params: dict[str, Any] = dict(name=name, nodes=self.nodes, tasks_per_node=self.tasks,
                                      timeout_min=parse_time(self.time))
        if self.cluster == "local":
            params["gpus_per_node"] = self.gpus_per_node
        else:
            params.update(gpus_per_node=self.gpus_per_node, slurm_partition=self.partition,
                          cpus_per_task=self.cpus_per_task, slurm_account=self.account, slurm_qos=self.qos,
                          slurm_constraint=self.constraint)
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
    folder = spec.folder or Path(job.out) / "slurm"
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
        executor = self.spec.executor(job_path.parent / "slurm", name=f"flip-{job.run_id}")
        with submitit.helpers.clean_env():
            return SubmittedRun(executor.submit(SweepRunJob(str(job_path))))
