"""How a sweep runs its runs (issue 19, parts 2 and 4): each run is claimed before its worker starts, so two
sweeps sharing a store train every run once; a stale claim is recovered; Ctrl-C stops the runs at a
checkpoint, marks them interrupted and names the command that continues; bad data and outputs fail
before anything is trained or written."""

import io
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flip.sweep import claims, execute
from flip.sweep.jobs import Job
from flip.sweep.store import RunStore
from flip.train.config import TrainConfig
from flipctl.main import app

LOCK = "lock.json"  # a run's claim, in its sweep/ folder: the on-disk format the sweeps share

FLIPCTL = [sys.executable, "-m", "flipctl.main"]
SPEC = """
[sweep]
name = "pair"
seeds = 1

[base]
model = "tiny"
batch_size = 16
samples = {samples}
workers = 0
shuffle_buffer = 50
periodic_eval = false
ckpt_every = {ckpt_every}
log_every = 1

[[rows]]
label = "wd 0.2"
weight_decay = 0.2

[[rows]]
label = "wd 0"
weight_decay = 0.0

[eval]
zeroshot = true
retrieval = false
batch_size = 64

[report]
columns = ["weight_decay", "zeroshot"]
"""


def _spec(tmp_path, samples=48, ckpt_every=100):  # one checkpoint, at the end, unless a test is about them
    path = tmp_path / "pair.toml"
    path.write_text(SPEC.format(samples=samples, ckpt_every=ckpt_every))
    return path


def _sweep_args(spec, ds, store, out):
    return FLIPCTL + ["sweep", str(spec), "--store", str(store), "--out", str(out), "--data", str(ds / "train"),
                      "--eval-zeroshot", str(ds / "zeroshot")]


def _one_line_error(result):
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error:"), result.output
    return lines[0]


# -- claims --------------------------------------------------------------------------------------------------

def _dead_process() -> dict:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    who = claims.me(proc.pid)
    proc.wait()
    return who


def _plant(sweep_dir: Path, record, age_s: float = 0.0) -> Path:
    sweep_dir.mkdir(parents=True, exist_ok=True)
    path = sweep_dir / LOCK
    path.write_text(record if isinstance(record, str) else json.dumps(record))
    os.utime(path, (time.time() - age_s, time.time() - age_s))
    return path


@pytest.mark.parametrize("record, age_s, free", [
    ("dead owner", 0, True),
    ("dead owner, dead worker", 0, True),
    ("dead owner, live worker", 0, False),
    ("live owner", 0, False),
    ("reused pid", 0, True),
    ("other host", 10, False),
    ("other host", claims.REMOTE_STALE_S + 5, True),
    ("dead owner, SLURM worker", 10, False),
    ("dead owner, SLURM worker", claims.REMOTE_STALE_S + 5, True),
    ("half-written", 1, False),
    ("half-written", claims.WRITING_GRACE_S + 5, True),
])
def test_a_claim_is_taken_only_when_free_or_stale(record, age_s, free, tmp_path):
    live = claims.me()
    records = {
        "dead owner": {**_dead_process(), "claimed": 1.0},
        "dead owner, dead worker": {**_dead_process(), "claimed": 1.0, "worker": _dead_process()},
        "dead owner, live worker": {**_dead_process(), "claimed": 1.0, "worker": live},
        "live owner": {**live, "claimed": 1.0},
        "reused pid": {**live, "start": (live["start"] or 0) + 1, "claimed": 1.0},
        "other host": {"pid": 1, "host": "elsewhere", "claimed": 1.0},
        "dead owner, SLURM worker": {**_dead_process(), "claimed": 1.0, "worker": {"job": "123"}},
        "half-written": "",
    }
    path = _plant(tmp_path / "sweep", records[record], age_s)
    claim = claims.try_claim(tmp_path / "sweep")
    assert (claim is not None) == free
    if claim is None:
        assert claims.holder(tmp_path / "sweep") is not None
    if claim:
        assert json.loads(path.read_text())["pid"] == os.getpid() and not path.with_name(LOCK + ".break").exists()
        claim.release()
        assert not path.exists()


@pytest.mark.integration  # processes
def test_only_one_of_many_claimants_wins(tmp_path):
    """Processes racing for one free run, and for one stale claim: exactly one gets each."""
    code = ("import sys, time; from pathlib import Path; from flip.sweep import claims\n"
            "print('ready', flush=True)\n"
            "while not Path(sys.argv[2]).exists(): time.sleep(0.001)\n"
            "c = claims.try_claim(Path(sys.argv[1]))\nprint(int(c is not None), flush=True); time.sleep(1)\n")
    for stale in (False, True):
        sweep_dir, go = tmp_path / f"run{int(stale)}" / "sweep", tmp_path / f"go{int(stale)}"
        if stale:
            _plant(sweep_dir, {**_dead_process(), "claimed": 1.0})
        procs = [subprocess.Popen([sys.executable, "-c", code, str(sweep_dir), str(go)], stdout=subprocess.PIPE,
                                  text=True) for _ in range(4)]
        assert all(p.stdout.readline().strip() == "ready" for p in procs)
        go.touch()  # all at once
        wins = [int(p.communicate(timeout=60)[0]) for p in procs]
        assert sum(wins) == 1, (stale, wins)


def _job(rid: str) -> Job:
    return Job(run_id=rid, kind="train", row=rid, seed=0, variant="base", config=TrainConfig(), steps=1, samples=1)


class _Finished:
    pid, returncode = None, 0

    def poll(self):
        return 0


@pytest.mark.integration  # processes
def test_a_run_another_sweep_holds_is_waited_for_and_not_run_again(tmp_path):
    store = RunStore(tmp_path)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        held = store.sweep_dir("held")
        _plant(held, {**claims.me(other.pid), "claimed": 1.0})
        spawned = []

        def spawn(job, store_):
            spawned.append(job.run_id)
            (store_.run_dir(job.run_id) / "summary.json").write_text("{}")
            (store_.sweep_dir(job.run_id) / "status.json").write_text('{"state": "done"}')
            if job.run_id == "free":  # meanwhile the other sweep finishes its run and lets it go
                (store_.run_dir("held") / "summary.json").write_text("{}")
                (held / LOCK).unlink()
            return _Finished()

        outcome = execute.run_jobs([_job("held"), _job("free")], store, parallel=2, poll_s=0.05, spawn=spawn)
    finally:
        other.kill()
        other.wait()
    assert spawned == ["free"] and outcome.ran == ["free"] and outcome.done_elsewhere == ["held"]
    assert outcome.states == {"free": "done", "held": "done"} and not (held / LOCK).exists()


def _check_run_trained_once(store: Path, rid: str, steps: int) -> None:
    run = store / "runs" / rid
    status = json.loads((run / "sweep" / "status.json").read_text())
    assert status["state"] == "done" and status["attempts"] == 1, (rid, status)
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]  # every line whole
    assert [r["step"] for r in logged if "loss" in r] == list(range(1, steps + 1)), rid
    log = (run / "sweep" / "worker.log").read_text()
    assert log.count("attempt 1") == 1 and f"run {rid}: done" in log and f"step {steps}/{steps}" in log, log
    assert not (run / "sweep" / LOCK).exists()


def _two_sweeps_at_once(ds, tmp_path) -> None:
    spec, store = _spec(tmp_path), tmp_path / "store"
    procs = [subprocess.Popen(_sweep_args(spec, ds, store, tmp_path / f"out{i}") + ["--progress-every", "1"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    executed = [int(" ".join(o.split()).split(" runs executed")[0].rsplit(" ", 1)[1]) for o in outputs]
    assert sum(executed) == 2, outputs  # each run was executed by exactly one of them
    rids = [p.name for p in (store / "runs").iterdir()]
    assert len(rids) == 2
    for rid in rids:
        _check_run_trained_once(store, rid, steps=3)
        # Off a terminal, the sweep that ran it logged its progress and a line when it finished.
        output = next(o for o in outputs if f"progress {rid}: step" in o)
        assert re.search(rf"progress {rid}: step \d/3 \(\d+%\)  (-|[\d.]+) samples/s  ETA ", output), output
        assert re.search(rf"done  {rid}  \(wd 0(.2)?, seed 0, in 0:00:\d\d\)", output), output


@pytest.mark.integration  # sweeps
def test_two_sweeps_on_one_store_train_each_run_once(small_dataset, tmp_path):
    _two_sweeps_at_once(small_dataset, tmp_path)


@pytest.mark.slow
@pytest.mark.timeout(1200)  # minutes on 2 cores, twice that under load
def test_two_sweeps_on_one_store_train_each_run_once_five_times(small_dataset, tmp_path):
    for i in range(5):
        (tmp_path / str(i)).mkdir()
        _two_sweeps_at_once(small_dataset, tmp_path / str(i))


@pytest.mark.integration  # sweeps
def test_ctrl_c_stops_runs_at_a_checkpoint_marks_them_and_names_the_command_that_continues(small_dataset, tmp_path):
    spec, store, out = _spec(tmp_path, samples=192, ckpt_every=3), tmp_path / "store", tmp_path / "out"
    args = _sweep_args(spec, small_dataset, store, out)
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    deadline, run = time.time() + 300, None
    while time.time() < deadline and run is None:  # Ctrl-C once the first run has a checkpoint
        run = next((p for p in (store / "runs").glob("*") if (p / "latest").exists()), None)
        time.sleep(0.05)
    assert run is not None, "no run checkpointed"
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stdout + stderr
    line = next(line for line in stderr.splitlines() if line.startswith("interrupted"))
    assert "--resume" not in stderr and "Traceback" not in stderr
    command = line.split("continue the sweep with: ", 1)[1]
    assert command == f"cd {tmp_path} && flipctl " + " ".join(args[3:])
    status = json.loads((run / "sweep" / "status.json").read_text())
    assert status["state"] == "interrupted" and status["step"] >= 3, status
    assert not (run / "sweep" / LOCK).exists()
    assert "interrupted at step" in (run / "sweep" / "worker.log").read_text()

    again = subprocess.run(FLIPCTL + command.split(" && ", 1)[1].split()[1:], capture_output=True, text=True,
                           timeout=600, cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    status = json.loads((run / "sweep" / "status.json").read_text())
    assert status["state"] == "done" and status["attempts"] == 2
    logged = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines() if "loss" in line]
    assert logged.count(1) == 1 and logged[-1] == 12  # resumed from its checkpoint


# -- mistakes caught before anything runs --------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["missing", "empty dir", "text file"])
def test_sweep_checks_its_data_before_anything_is_written(kind, small_dataset, tmp_path):
    data = {"missing": tmp_path / "no" / "such" / "path", "empty dir": tmp_path / "empty",
            "text file": tmp_path / "notes.txt"}[kind]
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("not a shard\n")
    store, out = tmp_path / "store", tmp_path / "out"
    result = CliRunner().invoke(app, ["sweep", str(_spec(tmp_path)), "--store", str(store), "--out", str(out),
                                      "--data", str(data), "--eval-zeroshot", str(small_dataset / "zeroshot")])
    line = _one_line_error(result)
    assert str(data) in line
    assert not store.exists() and not out.exists()


def test_train_leaves_nothing_behind_on_a_failed_start(tmp_path):
    """A text file given as --data fails before the run directory is made; shards with no sample in them
    fail at the first batch, and the run directory the failed start made is removed."""
    (tmp_path / "notes.txt").write_text("not a shard\n")
    (tmp_path / "hollow").mkdir()
    with tarfile.open(tmp_path / "hollow" / "000.tar", "w") as tar:  # a tar, holding no sample
        info = tarfile.TarInfo("readme.md")
        tar.addfile(info)
    for data, needle in ((tmp_path / "notes.txt", "not a webdataset shard"),
                         (tmp_path / "hollow", "no readable samples")):
        out = tmp_path / f"run-{data.name}"
        result = CliRunner().invoke(app, ["train", "--data", str(data), "--samples", "32", "--batch-size", "16",
                                          "--workers", "0", "--out", str(out)])
        assert result.exit_code == 2 and needle in result.output, result.output
        assert not out.exists(), list(out.iterdir())


def test_eval_json_into_an_unwritable_place_fails_before_evaluating(ckpt, tmp_path, monkeypatch):
    import flip.eval.api as api  # the command imports it when an evaluation runs

    monkeypatch.setattr(api, "evaluate_checkpoint", lambda *a, **k: pytest.fail("evaluated"))
    (tmp_path / "file.txt").write_text("")
    for target in (tmp_path / "file.txt" / "out.json", tmp_path):  # under a file; a directory
        result = CliRunner().invoke(app, ["eval", "zeroshot", "--ckpt", str(ckpt), "--json", str(target)])
        assert "cannot write there" in _one_line_error(result)
    good = tmp_path / "new" / "zs.json"
    monkeypatch.setattr(api, "evaluate_checkpoint", lambda *a, **k: (_ for _ in ()).throw(SystemExit(5)))
    CliRunner().invoke(app, ["eval", "zeroshot", "--ckpt", str(ckpt), "--json", str(good)])
    assert not good.exists()  # the probe of a writable place leaves no empty record


# -- estimates and progress ----------------------------------------------------------------------------------

MASKS_SPEC = """
[sweep]
name = "masks"
[base]
model = "tiny"
batch_size = 16
samples = 1600
[axes]
mask_ratio = [0.0, 0.5, 0.75]
"""


def test_estimates_rank_runs_of_one_model_by_their_flops(tmp_path, monkeypatch):
    """Whatever a probe measured (here: a machine getting faster between probes, as a busy one does), runs of
    one model that differ only in mask ratio are ranked by their FLOPs, in proportion to them."""
    import torch

    from flip.sweep import estimate
    from flip.sweep.jobs import build_plan
    from flip.sweep.spec import load_spec

    (tmp_path / "masks.toml").write_text(MASKS_SPEC)
    store = RunStore(tmp_path / "store")
    jobs = build_plan(load_spec(tmp_path / "masks.toml"), store, {})
    timings = iter([1.0, 0.1, 0.01])
    monkeypatch.setattr(estimate, "time_step", lambda cfg, device: next(timings))
    est = estimate.estimate(jobs, store, torch.device("cpu"))
    seconds = {job.config.mask_ratio: est[job.run_id][0] for job in jobs}
    assert {how for _, how in est.values()} == {"timed"}
    assert seconds[0.0] > seconds[0.5] > seconds[0.75]
    flops = {job.config.mask_ratio: estimate.flops_per_sample(job.config) for job in jobs}
    assert seconds[0.5] / seconds[0.0] == pytest.approx(flops[0.5] / flops[0.0])
    assert next(timings) == 0.1  # one probe for the model, not one per mask ratio


@pytest.mark.integration  # probes each row's step
def test_dry_run_plan_follows_flops(tmp_path):
    (tmp_path / "masks.toml").write_text(MASKS_SPEC)
    result = CliRunner().invoke(app, ["sweep", str(tmp_path / "masks.toml"), "--store", str(tmp_path / "store"),
                                      "--dry-run"])
    assert result.exit_code == 0, result.output
    shown = {}
    for line in result.output.splitlines():
        found = re.search(r"tiny-m(0|0\.5|0\.75)-b16\S*.*?(\d+(?:\.\d+)?) (s|min)\b", line)
        if found:
            shown[float(found[1])] = float(found[2]) * (60 if found[3] == "min" else 1)
    assert len(shown) == 3 and shown[0.0] >= shown[0.5] >= shown[0.75], result.output


def test_plain_progress_prints_a_line_per_finished_run_and_progress_at_intervals():
    from rich.console import Console

    from flipctl.sweep_cmd import PlainSweepProgress

    out, now = io.StringIO(), [0.0]
    progress = PlainSweepProgress(Console(file=out, width=10_000), every_s=60, clock=lambda: now[0])
    jobs = [_job("run-a"), _job("run-b")]
    progress.start(jobs, jobs)
    progress.update({"run-a": (1, 10, None)}, {})
    now[0] = 30.0
    progress.update({"run-a": (3, 10, 64.0)}, {})  # not yet a minute
    now[0] = 61.0
    progress.update({"run-a": (6, 10, 64.0)}, {})
    now[0] = 90.0
    progress.update({"run-b": (0, 10, None)}, {"run-a": "done"})
    lines = out.getvalue().splitlines()
    assert lines == ["sweep: 2 runs, 0 already done, 2 to run",
                     "progress run-a: step 6/10 (60%)  64.0 samples/s  ETA 0:00:49",
                     "sweep: 0/2 runs finished, 1 running, elapsed 0:01:01",
                     "       done  run-a  (run-a, seed 0, in 0:01:30)"]
