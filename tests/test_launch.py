"""Launching: N processes through torchrun's launcher API, and SLURM jobs through submitit (its local
executor here, on CPU with gloo)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from flip.errors import ConfigError, DataError
from flip.launch import LocalLaunch, SlurmLaunch, TrainJob, launch_local, parse_time, submit
from flip.saved_model import resolve_checkpoint
from flip.train.config import TrainConfig
from flip.train.trainer import resolve


def _config(ds, out, **kw):
    base = dict(data=str(ds / "train"), model="tiny", batch_size=16, samples=16 * 3, workers=0,
                periodic_eval=False, shuffle_buffer=20, out=str(out))  # one checkpoint, the last
    base.update(kw)
    return resolve(TrainConfig(**base)).to_dict()


def _ranks_saved(run):
    return len(torch.load(resolve_checkpoint(run) / "state.pt", weights_only=True)["ranks"])


@pytest.mark.integration  # launches processes
def test_a_user_error_in_a_launched_process_is_raised_as_itself(tmp_path):
    cfg = _config(tmp_path, tmp_path / "run")
    cfg["data"] = str(tmp_path / "missing" / "{000..003}.tar")
    with pytest.raises(DataError):
        launch_local(TrainJob(cfg), LocalLaunch(nproc=2))


@pytest.mark.integration  # trains in processes
def test_submitit_local_executor_trains_as_one_job_of_two_tasks(small_dataset, tmp_path):
    """Two tasks of one submitit job form one process group (ranks from submitit's JobEnvironment),
    not two single-process runs."""
    run = tmp_path / "run"
    job = submit(TrainJob(_config(small_dataset, run, keep_resume_state=True)),  # its ranks' state is read
                 SlurmLaunch(cluster="local", gpus_per_node=0, tasks_per_node=2, time="10"))
    summaries = job.results()
    assert [s["world_size"] for s in summaries] == [2, 2]
    assert summaries[0]["samples_seen"] == 16 * 3 and _ranks_saved(run) == 2
    assert json.loads((run / "summary.json").read_text())["world_size"] == 2
    assert (run / "slurm").is_dir()  # submitit's logs sit in the run directory


def _children(pid):
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(x) for x in f.read().split()]


@pytest.mark.integration  # trains in processes
def test_a_preempted_submitit_job_checkpoints_is_requeued_and_resumes(small_dataset, tmp_path):
    """submitit's preemption / timeout signal (USR2) on a 2-task job: the run finishes its step and
    checkpoints it (no other checkpoint is due), submitit's checkpoint hook requeues the job, and the
    requeued job resumes from that step and completes the run, as one job of world size 2 throughout."""
    run = tmp_path / "run"
    job = submit(TrainJob(_config(small_dataset, run, samples=16 * 16, ckpt_every=1000, log_every=1)),
                 SlurmLaunch(cluster="local", gpus_per_node=0, tasks_per_node=2, time="10"))
    metrics = run / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and job.state == "RUNNING" and not (
            metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
        time.sleep(0.1)
    tasks = _children(job._process.pid)  # the local executor's controller starts one process per task
    assert len(tasks) == 2 and not (run / "summary.json").exists()
    for pid in tasks:  # what SLURM (--signal USR2@90) does to every task before preemption or the time limit
        os.kill(pid, signal.SIGUSR2)
    summaries = job.results()
    assert [s["world_size"] for s in summaries] == [2, 2] and summaries[0]["steps"] == 16
    logs = "".join(p.read_text() for p in (run / "slurm").glob("*_0_log.*"))
    assert "Requeued" in logs, logs[-3000:]
    (stopped_at, last) = sorted(int(p.name.split("-")[1]) for p in run.glob("ckpt-*"))
    assert 3 <= stopped_at < 16 and last == 16  # the polite stop's checkpoint: none other was due
    logged = [json.loads(line)["step"] for line in metrics.read_text().splitlines() if '"loss"' in line]
    assert logged == list(range(1, 17))


def _latest_step_of(run):
    return int((run / "latest").read_text().strip().split("-")[1])


@pytest.mark.integration  # trains in processes
def test_a_requeued_job_resumes_its_run(small_dataset, tmp_path):
    """submitit's checkpoint hook (called on preemption or timeout) requeues the job as a resume."""
    job = TrainJob(_config(small_dataset, tmp_path / "run"))
    assert job.checkpoint().function.resume is False  # no checkpoint written yet: start again
    job()
    requeued = job.checkpoint().function
    assert requeued.resume is True and requeued.config == job.config
    # a new run never starts in a directory holding one (its jobs resume whatever they find there)
    for start in (lambda: submit(job, SlurmLaunch(cluster="local", gpus_per_node=0, time="10")),
                  lambda: launch_local(job, LocalLaunch(nproc=2))):
        with pytest.raises(ConfigError, match="already holds a run"):
            start()


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


@pytest.mark.integration  # launches processes
def test_the_batch_must_split_over_the_processes(small_dataset, tmp_path):
    with pytest.raises(ConfigError, match="accum_steps"):
        launch_local(TrainJob(_config(small_dataset, tmp_path / "run", accum_steps=16)), LocalLaunch(nproc=2))


# -- the command line ---------------------------------------------------------------------------------------
def _flipctl_train(ds, out, *extra):
    return [sys.executable, "-m", "flipctl.main", "train", "--data", str(ds / "train"), "--model", "tiny",
            "--batch-size", "32", "--samples", str(32 * 24), "--workers", "1", "--no-periodic-eval",
            "--ckpt-every", "4", "--log-every", "1", "--out", str(out), *extra]


def _wait_for_checkpoint(run, proc, step, timeout=240):
    latest = run / "latest"
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and not (
            latest.exists() and int(latest.read_text().strip().split("-")[1]) >= step):
        time.sleep(0.05)


def _latest_step(run):
    return int((run / "latest").read_text().strip().split("-")[1])


@pytest.mark.integration  # trains in processes
def test_train_nproc_2_killed_stopped_and_resumed(small_dataset, tmp_path):
    """`flipctl train --nproc 2` (with 2 accumulation steps), no torchrun line: SIGKILLed mid-way,
    `--nproc 2 --resume` continues it; a SIGTERM to the launcher stops its processes politely (the
    step in flight checkpointed, one line, exit 143); a last `--resume` completes the run."""
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    resume = [sys.executable, "-m", "flipctl.main", "train", "--nproc", "2", "--resume", "--out", str(run)]
    proc = subprocess.Popen(_flipctl_train(small_dataset, run, "--nproc", "2", "--accum-steps", "2",
                                           "--keep-resume-state"), env=env,  # its final resume state is read
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for_checkpoint(run, proc, 4)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 4 <= _latest_step(run) < 24 and not (run / "summary.json").exists(), "not killed mid-way"

    proc = subprocess.Popen(resume, env=env, start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    _wait_for_checkpoint(run, proc, 12)
    proc.send_signal(signal.SIGTERM)  # the launcher alone, as a scheduler's stop would reach it
    _, stderr = proc.communicate(timeout=240)
    stopped_at = _latest_step(run)
    assert proc.returncode == 143, stderr[-3000:]
    assert f"SIGTERM: run {run} stopped; its last checkpoint is {run / f'ckpt-{stopped_at:08d}'}" in stderr
    assert f"resume with: flipctl train --nproc 2 --resume --out {run}" in stderr
    assert 12 <= stopped_at < 24 and "Traceback" not in stderr

    done = subprocess.run(resume, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["steps"], summary["world_size"], summary["per_device_batch"], summary["accum_steps"],
            summary["global_batch"]) == (24, 2, 8, 2, 32)
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


def test_a_recorded_error_or_stop_comes_back_as_its_kind():
    from flip.launch import _raised_again, _Recorded
    from flip.train.faults import NonFiniteStop
    from flip.train.trainer import ResumeConflict

    back = _raised_again(f"_Recorded: {_Recorded(ConfigError('must be at least 1', key='nproc'))}")
    assert isinstance(back, ConfigError) and back.key == "nproc" and back.detail == "must be at least 1"
    conflict = ResumeConflict("runs/x", [("mask_ratio", 0.75, 0.5)])
    back = _raised_again(f"_Recorded: {_Recorded(conflict)}")
    assert type(back) is ConfigError and str(back) == str(conflict)
    stop = NonFiniteStop("a NaN at step 5", tmp := Path("runs/x"), 5, tmp / "ckpt-00000003")
    back = _raised_again(f"_Recorded: {_Recorded(stop)}")
    assert type(back) is NonFiniteStop and (back.step, back.checkpoint, str(back)) == (5, stop.checkpoint, str(stop))
    assert _raised_again("ValueError: a bug") is None


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


@pytest.mark.integration  # sweeps
def test_a_sweeps_runs_go_through_submitit(small_dataset, tmp_path):
    """`run_jobs` with `SlurmSweepRuns` (here submitit's local executor): each run a job running the
    sweep worker, which trains, evaluates and records the run as done."""
    from flip.launch import SlurmSweepRuns
    from flip.sweep.execute import run_jobs
    from flip.sweep.jobs import build_plan
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
