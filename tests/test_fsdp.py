"""`--fsdp`: FSDP2 (`fully_shard` per transformer block, then the root) gives DDP's losses, gradients and
updates on the tiny preset (2 CPU processes, gloo), its checkpoints hold whole weights and optimizer
state in the same format as an unwrapped run's, and they resume, evaluate and export whatever
wrapping trained them."""

import copy
import json
import os
import shutil
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel

from flip.bench.timing import synthetic_batch
from flip.distributed import full_model_state, full_optimizer_state, load_optimizer_state, shard_model
from flip.models import FLIP, get_preset
from flip.models.decoder import DecoderConfig, MAEDecoder
from flip.models.pretrainer import Pretrainer
from flip.saved_model import resolve_checkpoint
from flip.train.checkpoint import save_checkpoint
from flip.train.config import StepConfig
from flip.train.optim import make_optimizer
from flip.train.step import TrainStep
from flip.train.trainer import fsdp_blocks

BATCH, WORLD, TOL = 8, 2, 1e-5
CPU = torch.device("cpu")
VARIANTS = {  # name: (step settings, activation checkpointing, with a decoder)
    "masked+clip": (StepConfig(mask_ratio=0.5, grad_clip=0.5), False, False),
    "checkpointing+accum+recon": (StepConfig(mask_ratio=0.75, accum_steps=2, recon_weight=1.0), True, True),
    "sigmoid-chunked": (StepConfig(mask_ratio=0.5, loss="sigmoid", loss_chunk=3), False, False),
}


def _build(wrapping: str, step_cfg: StepConfig, checkpointing: bool, decoder: bool, seed: int):
    # A different initialisation on each rank: both wrappings must start from rank 0's weights.
    torch.manual_seed(seed)
    model = FLIP(get_preset("tiny").with_loss(step_cfg.loss))
    model.set_grad_checkpointing(checkpointing)
    pretrainer = Pretrainer(model, MAEDecoder(model.cfg.vision, DecoderConfig(1, 64, 2)) if decoder else None)
    if wrapping == "fsdp":
        shard_model(pretrainer, fsdp_blocks(pretrainer), CPU)
        forward_model = pretrainer
    else:
        forward_model = DistributedDataParallel(pretrainer)
    optimizer = _optimizer(pretrainer)
    return pretrainer, optimizer, TrainStep(model, optimizer, step_cfg, forward_model=forward_model,
                                           guard_nonfinite=True)


def _optimizer(pretrainer):
    # Fused AdamW, as training uses. eps 1e-6: a gradient that is zero up to rounding (the attention
    # keys' bias: softmax ignores it) would otherwise take lr-sized steps whose sign is the rounding's,
    # which differs with the summation order (under accumulation FSDP reduces each chunk, DDP their sum).
    return make_optimizer(pretrainer, 1e-3, 0.2, (0.9, 0.95), 1e-6, CPU)


def _whole(t: torch.Tensor) -> torch.Tensor:
    return (t.full_tensor() if isinstance(t, DTensor) else t).detach().clone()


def _worker(rank, port, images, tokens, out, ckpt_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    n = images.shape[0] // WORLD
    local = images[rank * n:(rank + 1) * n], tokens[rank * n:(rank + 1) * n]
    results = {}
    for name, (step_cfg, checkpointing, decoder) in VARIANTS.items():
        for wrapping in ("ddp", "fsdp"):
            pretrainer, optimizer, step = _build(wrapping, step_cfg, checkpointing, decoder, seed=rank)
            torch.manual_seed(10 + rank)  # the masking noise: the same for both wrappings
            losses = [step(*local, 1e-3)["loss"].item()]
            grads = {k: _whole(p.grad) for k, p in pretrainer.named_parameters() if p.grad is not None}  # step 1's
            losses.append(step(*local, 1e-3)["loss"].item())
            # copies: on the CPU these may share memory with the live parameters, which go on training
            weights = copy.deepcopy(full_model_state(pretrainer))
            optim_state = copy.deepcopy(full_optimizer_state(pretrainer, optimizer))
            results[name, wrapping] = (losses, grads, weights, optim_state)
            if wrapping == "fsdp" and decoder and rank == 0:  # what the trainer writes, from the gathered state
                save_checkpoint(ckpt_dir, 2, pretrainer.model, {"model": pretrainer.model.cfg.to_dict()},
                                {"optimizer": optim_state, "ranks": []}, extra_modules={"decoder": pretrainer.decoder},
                                states={part: {k.removeprefix(part + "."): v for k, v in weights.items()
                                               if k.startswith(part + ".")} for part in ("model", "decoder")})
        # The DDP run's state, saved whole (rank 0's), loads into a fresh sharded run: it goes on as the
        # sharded run that never stopped does.
        saved = [copy.deepcopy(results[name, "ddp"][2:]) if rank == 0 else None]  # loading may alias it
        dist.broadcast_object_list(saved, src=0)
        resumed = _resume_step(step_cfg, checkpointing, decoder, *saved[0], local, seed=20 + rank)
        torch.manual_seed(20 + rank)
        continued = step(*local, 1e-3)["loss"].item()
        results[name, "resumed"] = (resumed[0], continued, resumed[1], full_model_state(pretrainer))
    if rank == 0:
        out.update(results)
    dist.destroy_process_group()


def _resume_step(step_cfg, checkpointing, decoder, weights, optim_state, local, seed):
    """One step of a sharded run resumed from whole weights and a whole optimizer state."""
    model = FLIP(get_preset("tiny").with_loss(step_cfg.loss))
    model.set_grad_checkpointing(checkpointing)
    pretrainer = Pretrainer(model, MAEDecoder(model.cfg.vision, DecoderConfig(1, 64, 2)) if decoder else None)
    pretrainer.load_state_dict(weights)
    shard_model(pretrainer, fsdp_blocks(pretrainer), CPU)
    optimizer = _optimizer(pretrainer)
    load_optimizer_state(pretrainer, optimizer, optim_state)
    step = TrainStep(model, optimizer, step_cfg, forward_model=pretrainer, guard_nonfinite=True)
    torch.manual_seed(seed)  # the masking noise
    loss = step(*local, 1e-3)["loss"].item()
    return loss, full_model_state(pretrainer)


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def _max_state_diff(a: dict, b: dict) -> float:
    assert a["state"].keys() == b["state"].keys()
    assert [g["params"] for g in a["param_groups"]] == [g["params"] for g in b["param_groups"]]
    return max(_max_diff(a["state"][i], b["state"][i]) for i in a["state"])


@pytest.fixture(scope="module")
def sharded_ckpt(tmp_path_factory):
    return tmp_path_factory.mktemp("fsdp-ckpt")


@pytest.fixture(scope="module")
def results(sharded_ckpt):
    images, tokens = synthetic_batch(get_preset("tiny"), BATCH, CPU)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = mp.Manager().dict()
    mp.spawn(_worker, args=(port, images, tokens, out, sharded_ckpt), nprocs=WORLD, join=True)
    return dict(out)


@pytest.mark.integration  # two processes
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_fsdp_gives_ddps_losses_gradients_and_updates(results, variant):
    (ddp_losses, ddp_grads, ddp_weights, ddp_optim), (losses, grads, weights, optim) = (
        results[variant, "ddp"], results[variant, "fsdp"])
    assert losses == pytest.approx(ddp_losses, abs=TOL)
    assert _max_diff(ddp_grads, grads) <= TOL  # every parameter's whole gradient, the temperature's too
    assert "model.logit_scale" in grads and any(k.startswith("decoder.") for k in grads) == VARIANTS[variant][2]
    assert ("model.logit_bias" in grads) == (VARIANTS[variant][0].loss == "sigmoid")
    # two AdamW steps later: the same weights, with the keys of an unwrapped model, and optimizer state
    assert _max_diff(ddp_weights, weights) <= TOL
    assert set(weights) == set(Pretrainer(*_unwrapped(variant)).state_dict())
    assert _max_state_diff(ddp_optim, optim) <= TOL


@pytest.mark.integration  # two processes
def test_a_sharded_run_resumes_from_whole_weights_and_optimizer_state(results):
    """Weights and optimizer state saved whole (here: the DDP run's) load into a fresh sharded run, whose
    next step equals the step of the run that never stopped."""
    for variant in VARIANTS:
        resumed_loss, continued_loss, resumed_weights, continued_weights = results[variant, "resumed"]
        assert resumed_loss == pytest.approx(continued_loss, abs=TOL)
        assert _max_diff(continued_weights, resumed_weights) <= TOL


@pytest.mark.integration  # two processes
def test_a_sharded_runs_checkpoint_evaluates_and_exports(results, sharded_ckpt, small_dataset, tmp_path):
    """Written from the gathered state, the checkpoint is an unwrapped model's: `flipctl eval` and
    `flipctl export` load it as any other, and its weights are the DDP run's."""
    from typer.testing import CliRunner

    from flipctl.main import app

    weights = load_file(str(resolve_checkpoint(sharded_ckpt) / "model.safetensors"))
    ddp_weights = results["checkpointing+accum+recon", "ddp"][2]
    assert set(weights) == set(FLIP(get_preset("tiny")).state_dict())
    assert max((weights[k] - ddp_weights["model." + k]).abs().max().item() for k in weights) <= TOL
    assert set(load_file(str(resolve_checkpoint(sharded_ckpt) / "decoder.safetensors"))) == set(
        _unwrapped("checkpointing+accum+recon")[1].state_dict())
    cli = CliRunner()
    evaluated = cli.invoke(app, ["eval", "retrieval", "--ckpt", str(sharded_ckpt), "--data",
                                 str(small_dataset / "retrieval" / "captions.csv"), "--workers", "0"])
    assert evaluated.exit_code == 0, evaluated.output
    exported = cli.invoke(app, ["export", "--ckpt", str(sharded_ckpt), "--format", "open_clip",
                                str(tmp_path / "export")])
    assert exported.exit_code == 0, exported.output
    assert (tmp_path / "export" / "open_clip_model.safetensors").is_file()


def _unwrapped(variant):
    model = FLIP(get_preset("tiny").with_loss(VARIANTS[variant][0].loss))
    return model, MAEDecoder(model.cfg.vision, DecoderConfig(1, 64, 2)) if VARIANTS[variant][2] else None


# -- the trainer: `flipctl train --nproc 2 --fsdp` ---------------------------------------------------------------
def _train(dataset, out, *extra):
    return [sys.executable, "-m", "flipctl.main", "train", "--nproc", "2", "--data", str(dataset / "train"),
            "--eval-data", str(dataset / "retrieval" / "captions.csv"), "--no-hflip", "--batch-size", "8",
            "--samples", "32", "--workers", "0", "--shuffle-buffer", "20", "--eval-every", "2", "--eval-images", "8",
            "--ckpt-every", "2", "--keep-checkpoints", "2", "--keep-resume-state", "--out", str(out), *extra]


@pytest.mark.slow  # two 2-process launches: about 90 s on 2 loaded cores
@pytest.mark.timeout(1200)  # minutes on 2 cores, twice that under load
def test_fsdp_training_checkpoints_whole_and_resumes_exactly(small_dataset, tmp_path):
    """A 4-step `--nproc 2 --fsdp` run (periodic evaluation on the gathered weights), resumed from its
    step-2 checkpoint, ends with the same weights; its checkpoints have an unwrapped model's keys and an
    unwrapped run's optimizer state."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = tmp_path / "fsdp"
    done = subprocess.run(_train(small_dataset, run, "--fsdp"), env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["world_size"], summary["fsdp"], summary["per_device_batch"], summary["global_batch"]) \
        == (2, True, 4, 8)
    assert summary["eval_step"] == 4 and "image_to_text_R@1" in summary["eval"]

    final = resolve_checkpoint(run)
    weights = load_file(str(final / "model.safetensors"))
    assert set(weights) == set(FLIP(get_preset("tiny")).state_dict())
    optimizer = torch.load(final / "state.pt", weights_only=True)["optimizer"]
    assert sorted(optimizer["state"]) == list(range(len(list(FLIP(get_preset("tiny")).parameters()))))

    # Resume from step 2: the run goes on to the same step-4 weights.
    resumed = tmp_path / "resumed"
    shutil.copytree(run, resumed)
    shutil.rmtree(resumed / final.name)
    (resumed / "summary.json").unlink()
    (resumed / "latest").write_text("ckpt-00000002\n")
    again = subprocess.run([sys.executable, "-m", "flipctl.main", "train", "--nproc", "2", "--resume", "--out",
                            str(resumed)], env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    rerun = load_file(str(resolve_checkpoint(resumed) / "model.safetensors"))
    assert all(torch.equal(weights[k], rerun[k]) for k in weights)


@pytest.mark.integration  # trains
def test_fsdp_with_one_process_trains_unsharded_with_a_note(small_dataset, tmp_path):
    from flip.train.config import TrainConfig
    from flip.train.reporting import Reporter
    from flip.train.trainer import train

    class Notes(Reporter):
        def __init__(self):
            self.lines = []

        def message(self, text):
            self.lines.append(text)

    notes = Notes()
    summary = train(TrainConfig(data=str(small_dataset / "train"), batch_size=8, samples=8, workers=0, fsdp=True,
                                periodic_eval=False, shuffle_buffer=20, out=str(tmp_path / "run")), reporter=notes)
    assert summary["steps"] == 1 and summary["fsdp"] is False
    assert any("--fsdp" in line and "one process" in line for line in notes.lines)
