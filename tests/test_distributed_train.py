import json
import os
import signal
import subprocess
import sys
import time

import torch
from safetensors.torch import load_file

from flip.checkpoint import resolve_checkpoint

STEPS = 12


def _cmd(dataset, out, *extra):
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "flipctl.main",
            "train", "--data", str(dataset / "train"), "--eval-data", str(dataset / "retrieval" / "captions.csv"),
            "--batch-size", "16", "--samples", str(16 * STEPS), "--workers", "1", "--eval-every", "1000",
            "--ckpt-every", "3", "--out", str(out), *extra]


def _latest_step(run):
    latest = run / "latest"
    return int(latest.read_text().strip().split("-")[1]) if latest.exists() else -1


def test_torchrun_two_processes_killed_and_resumed_match_an_uninterrupted_run(small_dataset, tmp_path):
    """Two CPU processes (gloo, local-loss over all-gathered features): SIGKILL mid-way, --resume,
    and the weights equal those of an uninterrupted run; each rank's data and RNG state is saved."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    full = tmp_path / "full"
    subprocess.run(_cmd(small_dataset, full), env=env, check=True, capture_output=True, timeout=300)
    summary = json.loads((full / "summary.json").read_text())
    assert summary["samples_seen"] == 16 * STEPS
    state = torch.load(resolve_checkpoint(full) / "state.pt", weights_only=True)
    assert len(state["ranks"]) == 2

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_cmd(small_dataset, killed), env=env, start_new_session=True,
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
