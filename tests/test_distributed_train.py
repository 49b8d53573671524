import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from flip.saved_model import resolve_checkpoint

pytestmark = pytest.mark.integration  # torchrun: two training processes

STEPS = 12


def _cmd(dataset, out, *extra):
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "flipctl.main",
            "train", "--data", str(dataset / "train"), "--eval-data", str(dataset / "retrieval" / "captions.csv"),
            "--batch-size", "16", "--samples", str(16 * STEPS), "--workers", "1", "--eval-every", "1000",
            "--out", str(out), *extra]


def _latest_step(run):
    latest = run / "latest"
    return int(latest.read_text().strip().split("-")[1]) if latest.exists() else -1


def test_torchrun_two_processes_killed_and_resumed_match_an_uninterrupted_run(small_dataset, tmp_path):
    """Two CPU processes (gloo, local-loss over all-gathered features): SIGKILL mid-way, --resume,
    and the weights equal those of an uninterrupted run; each rank's data and RNG state is saved."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    full = tmp_path / "full"
    # the uninterrupted run checkpoints once, at its end, keeping its resume state to be read; the killed run
    # checkpoints every 3 steps, to be resumed
    subprocess.run(_cmd(small_dataset, full, "--keep-resume-state"), env=env, check=True, capture_output=True,
                   timeout=300)
    summary = json.loads((full / "summary.json").read_text())
    assert summary["samples_seen"] == 16 * STEPS
    state = torch.load(resolve_checkpoint(full) / "state.pt", weights_only=True)
    assert len(state["ranks"]) == 2

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_cmd(small_dataset, killed, "--ckpt-every", "3"), env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and _latest_step(killed) < 3 and proc.poll() is None:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 3 <= _latest_step(killed) < STEPS, "not killed mid-way"

    resume = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "flipctl.main",
              "train", "--resume", "--out", str(killed)]
    subprocess.run(resume, env=env, check=True, capture_output=True, timeout=300)
    a = load_file(str(resolve_checkpoint(full) / "model.safetensors"))
    b = load_file(str(resolve_checkpoint(killed) / "model.safetensors"))
    assert _latest_step(killed) == STEPS
    for key in a:
        assert torch.equal(a[key], b[key]), key


# Loaded by every process of the run through PYTHONPATH: process 0's checkpoint (its second) or metrics-log
# write fails with ENOSPC, the other process's writes succeed.
_FAIL_ON_RANK_0 = '''
import errno, os, sys

class _Hook:
    def find_spec(self, name, path=None, target=None):
        if name != "flip.train.trainer":
            return None
        sys.meta_path.remove(self)
        import importlib.util
        spec = importlib.util.find_spec(name)
        run_module = spec.loader.exec_module
        def exec_module(module):
            run_module(module)
            _patch(module)
        spec.loader.exec_module = exec_module
        return spec

def _patch(trainer):
    calls = []
    def fail_second_call(real, error):
        def failing(*args, **kwargs):
            calls.append(1)
            if os.environ.get("RANK") == "0" and len(calls) == 2:
                raise error
            return real(*args, **kwargs)
        return failing
    enospc = OSError(errno.ENOSPC, "No space left on device")
    if os.environ["FLIP_TEST_FAIL_WRITE"] == "checkpoint":  # after the checkpoint's collectives, as a real one
        trainer.save_checkpoint = fail_second_call(trainer.save_checkpoint, enospc)
    else:
        trainer.Trainer._log = fail_second_call(trainer.Trainer._log, enospc)

sys.meta_path.insert(0, _Hook())
'''


@pytest.mark.parametrize("what", ["checkpoint", pytest.param("metrics", marks=pytest.mark.slow)])
def test_a_failed_write_on_process_0_stops_every_process(small_dataset, tmp_path, what):
    """`flipctl train --nproc 2`: process 0's write fails (ENOSPC), and both processes stop at once with
    its one line and exit code 3 (none waits in a collective for the other); the last checkpoint is kept."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(_FAIL_ON_RANK_0)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FLIP_TEST_FAIL_WRITE": what,
           "PYTHONPATH": os.pathsep.join([str(hook), os.environ.get("PYTHONPATH", "")])}
    run = tmp_path / "run"
    cmd = ["flipctl", "train", "--nproc", "2", "--data", str(small_dataset / "train"), "--batch-size", "16",
           "--samples", str(16 * STEPS), "--workers", "0", "--no-periodic-eval", "--ckpt-every", "3",
           "--log-every", "3", "--out", str(run)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=150)
    finally:
        if proc.poll() is None:  # a process waits in a collective: the bug; end all of them
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 3, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "No space left on device" in errors[0] and "Traceback" not in stderr, stderr
    if what == "checkpoint":
        assert "cannot write checkpoint" in errors[0] and "ckpt-00000003, is intact" in errors[0]
    assert _latest_step(run) == 3 and load_file(str(run / "ckpt-00000003" / "model.safetensors"))
