"""Where `flipctl train` and `flipctl tune-unmasked` run: the launch flags, and running a job by them.

`--launcher local` (the default) trains in this process, or with `--nproc N` in N processes
started by torchrun's launcher (`--nnodes`, `--node-rank`, `--rdzv-endpoint` for several
machines); `--launcher slurm` submits a SLURM job through submitit (`--partition`, `--nodes`,
`--gpus-per-node`, ...). The work itself is `flip.launch`'s.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import os
import shlex
import typing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional

import typer

from flip.choices import LAUNCHERS
from flip.errors import ConfigError
from flipctl.errors import flag

if TYPE_CHECKING:  # flip.launch (submitit, torch) loads when a job is launched, not for --help
    from flip.launch import LocalLaunch, SlurmLaunch, TrainJob

TORCHRUN_FLAGS = ("nproc", "nnodes", "node_rank", "rdzv_endpoint")
SLURM_FLAGS = ("partition", "nodes", "gpus_per_node", "cpus_per_task", "time", "account", "qos", "constraint")


@dataclass
class LaunchFlags:
    """The launch flags as given (None: not given)."""

    launcher: str = "local"
    nproc: Optional[int] = None
    nnodes: Optional[int] = None
    node_rank: Optional[int] = None
    rdzv_endpoint: Optional[str] = None
    partition: Optional[str] = None
    nodes: Optional[int] = None
    gpus_per_node: Optional[int] = None
    cpus_per_task: Optional[int] = None
    time: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    constraint: Optional[str] = None

    def given(self, names) -> list[str]:
        return [name for name in names if getattr(self, name) is not None]

    def check(self) -> "LaunchFlags":
        if self.launcher not in LAUNCHERS:
            raise ConfigError(f"must be one of {', '.join(LAUNCHERS)}, got {self.launcher!r}", key="launcher")
        wrong = self.given(SLURM_FLAGS if self.launcher == "local" else TORCHRUN_FLAGS)
        if wrong:
            other = "slurm" if self.launcher == "local" else "local"
            raise ConfigError(f"is a setting of --launcher {other} (this is --launcher {self.launcher})", key=wrong[0])
        if self.node_rank is not None and (self.nnodes or 1) == 1:
            raise ConfigError("does nothing with one node: give {other} > 1 too, or leave it out", key="node_rank",
                              other="nnodes")
        if self.rdzv_endpoint is not None and (self.nproc or 1) * (self.nnodes or 1) == 1:
            raise ConfigError("does nothing for one process (it is where the processes meet): give {other} > 1 "
                              "or --nnodes > 1 too, or leave it out", key="rdzv_endpoint", other="nproc")
        if (self.launcher == "local" and self.given(TORCHRUN_FLAGS) and self.local().world_size > 1
                and "WORLD_SIZE" in os.environ):
            raise ConfigError("starts processes itself: do not also launch flipctl with torchrun", key="nproc")
        return self

    def command_line(self) -> str:
        """The launch flags given, as a command line (to repeat them)."""
        return " ".join(f"--{name.replace('_', '-')} {shlex.quote(str(getattr(self, name)))}"
                        for name in self.given(TORCHRUN_FLAGS + SLURM_FLAGS))

    @property
    def elsewhere(self) -> bool:
        """Whether the job runs in other processes than this one."""
        return self.launcher == "slurm" or bool(self.given(TORCHRUN_FLAGS)) and self.local().world_size > 1

    def local(self) -> LocalLaunch:
        from flip.launch import LocalLaunch

        given = {name: getattr(self, name) for name in self.given(TORCHRUN_FLAGS)}
        return LocalLaunch(**given).validate()

    def slurm(self) -> SlurmLaunch:
        from flip.launch import SlurmLaunch

        given = {name: getattr(self, name) for name in self.given(SLURM_FLAGS)}
        return SlurmLaunch(**given).validate()


_HELP = {
    "launcher": f"where the processes run: {' or '.join(LAUNCHERS)} (local: here, --nproc of them; slurm: a SLURM "
                f"job through submitit, one task per GPU, requeued and resumed when preempted or out of time).",
    "nproc": "processes on this machine, one per GPU (torchrun's --nproc-per-node): the batch is split over all "
             "processes of all nodes. Default: 1, this process.",
    "nnodes": "machines of a multi-node run; start the same command on each, with its --node-rank. Default: 1.",
    "node_rank": "this machine's index in [0, --nnodes). Default: 0.",
    "rdzv_endpoint": "HOST:PORT of node 0, where the processes meet (multi-node). Default: a free local port.",
    "partition": "SLURM partition.",
    "nodes": "SLURM nodes. Default: 1.",
    "gpus_per_node": "GPUs per node, one task each. Default: 1.",
    "cpus_per_task": "CPU cores per task (data-loader workers need them).",
    "time": "SLURM time limit: MM, HH:MM:SS or D-HH:MM:SS. Default: 24:00:00. A job out of time is requeued "
            "and resumes from its last checkpoint.",
    "account": "SLURM account to charge.",
    "qos": "SLURM quality of service.",
    "constraint": "SLURM node constraint (e.g. a GPU type).",
}


_METAVARS = {"launcher": "|".join(LAUNCHERS), "rdzv_endpoint": "HOST:PORT", "partition": "NAME", "time": "TIME",
             "account": "NAME", "qos": "NAME", "constraint": "FEATURE"}


def _parameters(names: list[str]) -> list[inspect.Parameter]:
    params, hints = [], typing.get_type_hints(LaunchFlags)
    for name in names:
        default = LaunchFlags.__dataclass_fields__[name].default
        option = typer.Option(default, help=_HELP[name], show_default=name == "launcher", rich_help_panel="Launch",
                              metavar=_METAVARS.get(name))
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option,
                                        annotation=hints[name]))
    return params


def with_launch_flags(fn=None, *, torchrun: bool = True):
    """Give a command the launch flags (without --nproc & co. when not `torchrun`); it receives them as
    one `launch: LaunchFlags` argument."""
    if fn is None:
        return functools.partial(with_launch_flags, torchrun=torchrun)
    names = [f.name for f in dataclasses.fields(LaunchFlags) if torchrun or f.name not in TORCHRUN_FLAGS]

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        launch = LaunchFlags(**{name: kwargs.pop(name) for name in names if name in kwargs})
        return fn(*args, launch=launch.check(), **kwargs)

    own = [p for p in inspect.signature(fn, eval_str=True).parameters.values() if p.name != "launch"]
    keyword = [p for p in own if p.kind == p.VAR_KEYWORD]
    plain = [p.replace(kind=p.KEYWORD_ONLY) for p in own if p.kind != p.VAR_KEYWORD]
    wrapper.__signature__ = inspect.Signature([*plain, *_parameters(names), *keyword])
    return wrapper


def run_job(job: TrainJob, launch: LaunchFlags, here: Callable[[], dict[str, Any]], echo=print) -> dict | None:
    """Run `job` as `launch` says: `here()` in this process, in --nproc processes, or submitted to SLURM
    (then None: the job runs on; `echo` says where its logs and run are)."""
    from flip.launch import LaunchStopped, launch_local, submit

    if launch.launcher == "slurm":
        spec = launch.slurm()
        handle = submit(job, spec, name=f"flipctl-{os.path.basename(os.path.normpath(job.out))}")
        echo(f"submitted SLURM job {handle.job_id}: {spec.nodes} node(s) x {spec.tasks} task(s); logs in "
             f"{handle.paths.folder}; the run: {job.out} (`flipctl train --launcher slurm --resume --out {job.out}` "
             f"continues it after a failure)")
        return None
    if launch.elsewhere:
        try:
            return launch_local(job, launch.local())
        except LaunchStopped as exc:
            again = f"flipctl train {launch.command_line()} --resume --out {shlex.quote(job.out)}"
            typer.echo(f"{exc}; resume with: {again}", err=True)
            raise typer.Exit(128 + exc.signum) from None
    return here()


def needs_shared_out(launch: LaunchFlags, out_given: bool) -> None:
    """A run on several machines writes one run directory: its path must be given, the same on every node."""
    if launch.launcher == "local" and (launch.nnodes or 1) > 1 and not out_given:
        raise ConfigError(f"a multi-node run needs {flag('out')} on a filesystem every node sees",
                          key="nnodes")
