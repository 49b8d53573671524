"""`flipctl plan`: the memory estimate against measured step peaks, the settings it picks, bad input."""

import json

import pytest
import torch
from typer.testing import CliRunner

from flip.bench.peak_memory import measure_peak
from flip.bench.timing import synthetic_batch
from flip.capacity import activation_bytes, step_bytes
from flip.models import FLIP, get_preset
from flip.train.config import StepConfig
from flip.train.optim import make_optimizer
from flip.train.step import TrainStep
from flipctl.main import app


def _measured_peak(cfg, batch, mask_ratio, checkpointing, accum_steps):
    """Allocator-level peak of one steady-state training step on the CPU (flipctl bench's probe)."""
    def run():
        model = FLIP(cfg)
        model.set_grad_checkpointing(checkpointing)
        optimizer = make_optimizer(model, 1e-3, 0.2, (0.9, 0.95), 1e-6, torch.device("cpu"))
        step = TrainStep(model, optimizer, StepConfig(mask_ratio=mask_ratio, accum_steps=accum_steps))
        images, tokens = synthetic_batch(cfg, batch, torch.device("cpu"))
        for p in model.parameters():  # gradients and AdamW moments exist, as after any earlier step
            p.grad = torch.zeros_like(p)
        optimizer.step()
        step(images, tokens, 1e-3)

    return measure_peak(run, torch.device("cpu"))


@pytest.mark.integration  # runs steps to measure them
@pytest.mark.parametrize("preset, batch, checkpointing, accum_steps", [
    ("tiny", 64, False, 1), ("tiny", 64, True, 1), ("tiny", 64, False, 4), ("small", 32, False, 1)])
def test_estimate_is_within_25_percent_of_the_measured_peak(preset, batch, checkpointing, accum_steps):
    cfg = get_preset(preset)
    parameters = sum(p.numel() for p in FLIP(cfg).parameters())
    act, act_ckpt = activation_bytes(cfg, 0.5), activation_bytes(cfg, 0.5, checkpointing=True)
    estimate = step_bytes(cfg, parameters, act, act_ckpt, batch, 1, accum_steps, checkpointing, False)
    measured = _measured_peak(cfg, batch, 0.5, checkpointing, accum_steps)
    assert estimate == pytest.approx(measured, rel=0.25), (estimate / 2**20, measured / 2**20)


def _plan(tmp_path, *args):
    out = tmp_path / "plan.json"
    result = CliRunner().invoke(app, ["plan", *args, "--json", str(out)])
    assert result.exit_code == 0, result.output
    return result.output, json.loads(out.read_text())


@pytest.mark.integration  # traces L/16 steps on the meta device
def test_plan_prints_the_per_gpu_batch_and_the_flags(tmp_path):
    text, plan = _plan(tmp_path, "--model", "L/16", "--batch-size", "32768", "--gpus", "256", "--gpu-memory", "80GiB")
    assert plan["per_device_batch"] == 128 and plan["choice"]["accum_steps"] == 1
    assert "128 samples per GPU" in text
    assert "--launcher slurm --nodes 32 --gpus-per-node 8" in " ".join(text.split())
    # fewer, smaller GPUs: activation checkpointing first, then accumulation too
    _, plan = _plan(tmp_path, "--model", "L/16", "--batch-size", "32768", "--gpus", "64", "--gpu-memory", "40GiB",
                    "--mask-ratio", "0.75")
    assert plan["choice"]["checkpointing"] and plan["choice"]["accum_steps"] == 1
    text, plan = _plan(tmp_path, "--model", "L/16", "--batch-size", "32768", "--gpus", "8")
    assert plan["choice"]["accum_steps"] > 1 and f"--accum-steps {plan['choice']['accum_steps']}" in text
    assert plan["choice"]["bytes"] <= plan["usable_bytes"]
    # masking halves what each sample keeps for backward
    assert plan["activation_bytes"] < _plan(tmp_path, "--model", "L/16", "--batch-size", "32768", "--gpus", "8",
                                            "--mask-ratio", "0")[1]["activation_bytes"] * 0.6


@pytest.mark.integration  # traces L/16 and H/14 steps on the meta device
def test_plan_says_when_fsdp_is_needed(tmp_path):
    text, plan = _plan(tmp_path, "--model", "L/16", "--batch-size", "32768", "--gpus", "256")
    assert not plan["choice"]["fsdp"] and "--fsdp needed: no" in text and "--fsdp" not in text.split("use:")[1]
    # replicated weights, gradients and AdamW moments alone (16 GB) overflow a 16 GiB GPU: only sharding fits
    text, plan = _plan(tmp_path, "--model", "H/14", "--batch-size", "32768", "--gpus", "8", "--gpu-memory", "16GiB")
    assert plan["choice"]["fsdp"] and plan["choice"]["bytes"] <= plan["usable_bytes"]
    assert "--fsdp needed: yes" in text and "--fsdp --nproc 8" in " ".join(text.split())
    text, plan = _plan(tmp_path, "--model", "H/14", "--batch-size", "32768", "--gpus", "8", "--gpu-memory", "4GiB")
    assert plan["choice"] is None and "does not fit" in text and "use more GPUs" in text


@pytest.mark.integration  # traces full-size steps on the meta device
def test_plan_prints_the_loader_cores_each_gpu_needs(tmp_path):
    """Samples/s a GPU's step consumes = peak x MFU / counted FLOPs per sample; cores = that / per-core rate."""
    from flip.bench.data import step_needs
    from flip.capacity import LEGACY_LOADER_SAMPLES_PER_CORE, measured_loader_rate

    args = ("--model", "B/16", "--batch-size", "4096", "--gpus", "8", "--mask-ratio", "0.5")
    text, plan = _plan(tmp_path, *args, "--loader-samples-per-core", "146")
    need = step_needs(get_preset("B/16"), (0.5,), 989.0, 0.45)["0.5"]
    assert plan["loader"]["samples_per_s"] == pytest.approx(need["samples_per_s"])
    assert (plan["loader"]["cores"] == -(-need["samples_per_s"] // 146)
            and f"{plan['loader']['cores']} loader cores" in text)
    # masking more: fewer FLOPs a sample, so more samples/s to feed; a slower GPU needs fewer
    _, masked = _plan(tmp_path, *args[:-1], "0.75", "--loader-samples-per-core", "146")
    _, slower = _plan(tmp_path, *args, "--loader-samples-per-core", "146", "--gpu-peak-tflops", "312")
    assert masked["loader"]["cores"] > plan["loader"]["cores"] > slower["loader"]["cores"]
    # the default rate: a committed data-path measurement, else issue 13's figure for the original loader
    assert measured_loader_rate(tmp_path) == (LEGACY_LOADER_SAMPLES_PER_CORE,
                                              "measured: issue 13, the original loader, per core")
    (tmp_path / "data-paths-x.json").write_text(json.dumps({"paths": {"worker": {"per_core_cpu": 400.0}}}))
    assert measured_loader_rate(tmp_path)[0] == 400.0


@pytest.mark.parametrize("args, needle", [
    (["--gpu-memory", "lots"], "--gpu-memory must be a size"),
    (["--gpus", "3"], "--batch-size (256) must be at least 2 and split evenly over the 3 GPUs"),
    (["--model", "Z/99"], "Z/99"),
    (["--mask-ratio", "1"], "--mask-ratio must be in [0, 1)"),
    (["--loader-samples-per-core", "0"], "--loader-samples-per-core must be > 0"),
    (["--gpu-peak-tflops", "-1"], "--gpu-peak-tflops must be > 0"),
])
def test_plan_bad_input_is_one_line(args, needle):
    base = {"--model": "tiny", "--batch-size": "256", "--gpus": "2"}
    for flag, value in zip(args[::2], args[1::2]):
        base[flag] = value
    result = CliRunner().invoke(app, ["plan", *[x for kv in base.items() for x in kv]])
    assert result.exit_code == 2 and needle in result.output, result.output
