"""Launching: N processes through torchrun's launcher API, and SLURM jobs through submitit (its local
executor here, on CPU with gloo)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from flip.checkpoint import resolve_checkpoint
from flip.errors import ConfigError, DataError
from flip.launch import LocalLaunch, SlurmLaunch, TrainJob, launch_local, parse_time, submit
from flip.train.config import TrainConfig
from flip.train.trainer import resolve


def _config(ds, out, **kw):
    base = dict(data=str(ds / "train"), model="tiny", batch_size=16, samples=16 * 3, workers=0,
                periodic_eval=False, shuffle_buffer=20, ckpt_every=2, out=str(out))
    base.update(kw)
    return resolve(TrainConfig(**base)).to_dict()


def _ranks_saved(run):
    return len(torch.load(resolve_checkpoint(run) / "state.pt", weights_only=True)["ranks"])


def test_a_user_error_in_a_launched_process_is_raised_as_itself(tmp_path):
    cfg = _config(tmp_path, tmp_path / "run")
    cfg["data"] = str(tmp_path / "missing" / "{000..003}.tar")
    with pytest.raises(DataError):
        launch_local(TrainJob(cfg), LocalLaunch(nproc=2))


def test_submitit_local_executor_trains_as_one_job_of_two_tasks(small_dataset, tmp_path):
    """Two tasks of one submitit job form one process group (ranks from submitit's JobEnvironment),
    not two single-process runs."""
    run = tmp_path / "run"
    job = submit(TrainJob(_config(small_dataset, run)),
                 SlurmLaunch(cluster="local", gpus_per_node=0, tasks_per_node=2, time="10"))
    summaries = job.results()
    assert [s["world_size"] for s in summaries] == [2, 2]
    assert summaries[0]["samples_seen"] == 16 * 3 and _ranks_saved(run) == 2
    assert json.loads((run / "summary.json").read_text())["world_size"] == 2
    assert (run / "slurm").is_dir()  # submitit's logs sit in the run directory


def test_a_requeued_job_resumes_its_run(small_dataset, tmp_path):
    """submitit's checkpoint hook (called on preemption or timeout) requeues the job as a resume."""
    job = TrainJob(_config(small_dataset, tmp_path / "run"))
    assert job.checkpoint().function.resume is False  # no checkpoint written yet: start again
    job()
    requeued = job.checkpoint().function
    assert requeued.resume is True and requeued.config == job.config


@pytest.mark.parametrize("text, minutes", [("90", 90), ("1:30:00", 90), ("2-00", 2880), ("1-2:30", 1590),
                                            ("0:30", 1), ("00:10:30", 11)])
def test_slurm_time_limits(text, minutes):
    assert parse_time(text) == minutes


@pytest.mark.parametrize("spec, key", [
    (LocalLaunch(nproc=0), "nproc"),
    (LocalLaunch(nproc=2, nnodes=2), "rdzv_endpoint"),
    (LocalLaunch(nproc=2, nnodes=2, node_rank=2, rdzv_endpoint="node0:29500"), "node_rank"),
    (LocalLaunch(rdzv_endpoint="node0"), "rdzv_endpoint"),
    (SlurmLaunch(time="tomorrow"), "time"),
    (SlurmLaunch(nodes=0), "nodes"),
])
def test_bad_launch_settings_are_config_errors(spec, key):
    with pytest.raises(ConfigError) as info:
        spec.validate()
    assert info.value.key == key


def test_the_batch_must_split_over_the_processes(small_dataset, tmp_path):
    with pytest.raises(ConfigError, match="accum_steps"):
        launch_local(TrainJob(_config(small_dataset, tmp_path / "run", accum_steps=16)), LocalLaunch(nproc=2))


# -- the command line ---------------------------------------------------------------------------------------
def _flipctl_train(ds, out, *extra):
    return [sys.executable, "-m", "flipctl.main", "train", "--data", str(ds / "train"), "--model", "tiny",
            "--batch-size", "32", "--samples", str(32 * 8), "--workers", "1", "--no-periodic-eval",
            "--ckpt-every", "2", "--out", str(out), *extra]


def test_train_nproc_2_killed_then_resumed_completes(small_dataset, tmp_path):
    """`flipctl train --nproc 2` (with 2 accumulation steps): no torchrun line; SIGKILL mid-way,
    `--nproc 2 --resume` finishes it."""
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(_flipctl_train(small_dataset, run, "--nproc", "2", "--accum-steps", "2"), env=env,
                            start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = run / "latest"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and not (
            latest.exists() and int(latest.read_text().strip().split("-")[1]) >= 2):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run / "summary.json").exists(), "not killed mid-way"
    done = subprocess.run([sys.executable, "-m", "flipctl.main", "train", "--nproc", "2", "--resume", "--out", str(run)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["steps"], summary["world_size"], summary["per_device_batch"], summary["accum_steps"],
            summary["global_batch"]) == (8, 2, 8, 2, 32)
    assert _ranks_saved(run) == 2
    assert "world_size" in done.stdout  # the summary table


@pytest.mark.parametrize("args, needle", [
    (["--partition", "gpu"], "--partition is a setting of --launcher slurm"),
    (["--launcher", "slurm", "--nproc", "2"], "--nproc is a setting of --launcher local"),
    (["--launcher", "pbs"], "--launcher must be one of local, slurm"),
    (["--nproc", "2", "--nnodes", "2", "--out", "x"], "--rdzv-endpoint"),
    (["--nproc", "2", "--nnodes", "2", "--rdzv-endpoint", "node0:29500"], "--out on a filesystem every node sees"),
    (["--launcher", "slurm", "--time", "soon"], "--time must be a SLURM time limit"),
])
def test_bad_launch_flags_are_one_line_errors(args, needle, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from flipctl.main import app

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    result = CliRunner().invoke(app, ["train", "--data", str(tmp_path), "--samples", "512", *args])
    assert result.exit_code == 2, result.output
    assert needle in result.output and "Traceback" not in result.output


def test_slurm_without_sbatch_is_a_one_line_error(small_dataset, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from flipctl.main import app

    monkeypatch.setenv("PATH", str(tmp_path))
    result = CliRunner().invoke(app, ["train", "--launcher", "slurm", "--data", str(small_dataset / "train"),
                                      "--samples", "512", "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "sbatch" in result.output, result.output


def test_tune_unmasked_takes_the_launch_flags(tmp_path):
    from typer.testing import CliRunner

    from flipctl.main import app

    result = CliRunner().invoke(app, ["tune-unmasked", "--ckpt", str(tmp_path), "--qos", "high"])
    assert result.exit_code == 2 and "--qos is a setting of --launcher slurm" in result.output, result.output


def test_a_recorded_user_error_comes_back_as_its_kind():
    from flip.launch import _RecordedUserError, _user_error
    from flip.train.trainer import ResumeConflict

    back = _user_error(f"_RecordedUserError: {_RecordedUserError(ConfigError('must be at least 1', key='nproc'))}")
    assert isinstance(back, ConfigError) and back.key == "nproc" and back.detail == "must be at least 1"
    conflict = ResumeConflict("runs/x", [("mask_ratio", 0.75, 0.5)])
    back = _user_error(f"_RecordedUserError: {_RecordedUserError(conflict)}")
    assert type(back) is ConfigError and str(back) == str(conflict)
    assert _user_error("ValueError: a bug") is None


# -- a sweep's runs as SLURM jobs ------------------------------------------------------------------------------
ONE_RUN_SPEC = """
[sweep]
name = "one"
title = "One run"
baseline = "base"
seeds = 1

[base]
model = "tiny"
batch_size = 16
samples = 32
workers = 0
shuffle_buffer = 20
periodic_eval = false

[[rows]]
label = "base"

[eval]
zeroshot = true
retrieval = false
modes = ["full"]
batch_size = 64
"""


def test_a_sweeps_runs_go_through_submitit(small_dataset, tmp_path):
    """`run_jobs` with `SlurmSweepRuns` (here submitit's local executor): each run a job running the
    sweep worker, which trains, evaluates and records the run as done."""
    from flip.launch import SlurmSweepRuns
    from flip.sweep.execute import run_jobs
    from flip.sweep.plan import build_plan
    from flip.sweep.spec import load_spec, with_data
    from flip.sweep.store import RunStore

    (tmp_path / "one.toml").write_text(ONE_RUN_SPEC)
    spec = with_data(load_spec(tmp_path / "one.toml"), data=str(small_dataset / "train"), eval_data=None,
                     eval_zeroshot=str(small_dataset / "zeroshot"))
    store = RunStore(tmp_path / "store")
    jobs = build_plan(spec, store, {})
    spawn = SlurmSweepRuns(SlurmLaunch(cluster="local", gpus_per_node=0, time="10"))
    outcome = run_jobs(jobs, store, spawn=spawn, poll_s=0.2)
    (run_id,) = [job.run_id for job in jobs]
    assert outcome.states == {run_id: "done"} and outcome.ran == [run_id]
    assert store.summary(run_id)["steps"] == 2
    assert (store.sweep_dir(run_id) / "slurm").is_dir()  # submitit's logs beside the run's sweep files
    assert list((store.sweep_dir(run_id) / "evals").glob("*.json"))


@pytest.mark.parametrize("args, needle", [
    (["--max-parallel", "2"], "--max-parallel takes a number >= 1, with --launcher slurm"),
    (["--launcher", "slurm", "--gpus-per-node", "-1"], "--gpus-per-node must be at least 0"),
    (["--nproc", "2"], "No such option"),
])
def test_bad_sweep_launch_flags(args, needle):
    from typer.testing import CliRunner

    from flipctl.main import app

    result = CliRunner().invoke(app, ["sweep", "mask-ratio", "--preset", "smoke", "--dry-run", *args])
    assert result.exit_code == 2 and needle in result.output, result.output
