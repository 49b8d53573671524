import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from flip.saved_model import load_model, resolve_checkpoint
from flip.train.config import TrainConfig
from flip.train.trainer import train, tune_unmasked

FLIPCTL = [sys.executable, "-m", "flipctl.main"]


def _cfg(ds, out, **kw):
    base = dict(data=str(ds / "train"), eval_data=str(ds / "retrieval" / "captions.csv"), model="tiny",
                mask_ratio=0.5, batch_size=16, samples=16 * 12, workers=2, seed=3, out=str(out),
                log_every=2, eval_every=6, shuffle_buffer=50)  # one checkpoint, the last: none of these is about them
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.integration  # trains twice
def test_train_writes_run_directory_and_is_repeatable(small_dataset, tmp_path):
    a = train(_cfg(small_dataset, tmp_path / "a"))
    b = train(_cfg(small_dataset, tmp_path / "b"))
    run = tmp_path / "a"
    for name in ("config.json", "metrics.jsonl", "summary.json", "latest"):
        assert (run / name).exists()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["samples_seen"] == 16 * 12 and summary["steps"] == 12
    assert summary["train_flops_total"] > 0 and "image_to_text_R@1" in summary["eval"]
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {"loss", "lr", "temperature", "samples_per_s", "data_wait_fraction"} <= set(logged[0])
    wa = load_file(str(resolve_checkpoint(run) / "model.safetensors"))
    wb = load_file(str(resolve_checkpoint(tmp_path / "b") / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert a["final_loss"] == b["final_loss"]


@pytest.mark.integration  # trains in processes
def test_sigkill_then_resume_matches_uninterrupted_run(small_dataset, tmp_path):
    args = ["train", "--data", str(small_dataset / "train"), "--eval-data",
            str(small_dataset / "retrieval" / "captions.csv"), "--batch-size", "16", "--samples", str(16 * 60),
            "--eval-every", "1000", "--seed", "11", "--workers", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # the uninterrupted reference checkpoints once, at its end; the killed run every 5 steps, to resume from
    subprocess.run(FLIPCTL + args + ["--out", str(tmp_path / "full")], check=True, env=env,
                   capture_output=True)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(FLIPCTL + args + ["--ckpt-every", "5", "--out", str(killed)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        latest = killed / "latest"
        if latest.exists() and int(latest.read_text().strip().split("-")[1]) >= 15:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = int((killed / "latest").read_text().strip().split("-")[1])
    assert 15 <= killed_at < 60, "the run was not killed mid-way"
    assert not (killed / "summary.json").exists()

    subprocess.run(FLIPCTL + ["train", "--resume", "--out", str(killed)], check=True, env=env,
                   capture_output=True)
    full = load_file(str(resolve_checkpoint(tmp_path / "full") / "model.safetensors"))
    resumed = load_file(str(resolve_checkpoint(killed) / "model.safetensors"))
    assert resolve_checkpoint(killed).name == "ckpt-00000060"
    for key in full:
        assert torch.equal(full[key], resumed[key]), key  # bit-identical
    assert json.loads((killed / "summary.json").read_text())["samples_seen"] == 16 * 60


@pytest.mark.integration  # trains
def test_tune_unmasked_records_parent_and_uses_mask_zero(trained_run, tmp_path):
    parent = json.loads((resolve_checkpoint(trained_run) / "config.json").read_text())["train"]
    assert parent["mask_ratio"] > 0 and parent["text_mask"] != "none"  # knobs for the tuning to reset
    summary = tune_unmasked(str(trained_run), samples=16 * 3, out=str(tmp_path / "tuned"))
    assert summary["mask_ratio"] == 0.0
    assert summary["parent"] == str(resolve_checkpoint(trained_run))
    saved = json.loads((tmp_path / "tuned" / "config.json").read_text())["train"]
    assert saved["mask_ratio"] == 0.0 and saved["parent"]
    assert saved["text_mask"] == "none" and saved["text_mask_ratio"] == 0.0  # ablation knobs back to plain CLIP
    assert saved["lr"] == pytest.approx(1e-3 * parent["batch_size"] / 256 / 100)  # 1/100 of its peak
    model, _ = load_model(tmp_path / "tuned")
    assert model.cfg.name == "tiny"
