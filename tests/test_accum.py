"""`--accum-steps`: the batch in K chunks, and the gradient still that of the whole batch's loss."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from flip.bench.timing import synthetic_batch
from flip.errors import ConfigError
from flip.flops import train_step_flops
from flip.models import FLIP, get_preset
from flip.models.decoder import DecoderConfig, MAEDecoder
from flip.models.pretrainer import Pretrainer
from flip.train.config import StepConfig, TrainConfig
from flip.train.step import TrainStep

BATCH = 16


def _model(recon: bool, loss: str = "contrastive"):
    torch.manual_seed(0)
    cfg = get_preset("tiny").with_loss(loss)
    model = FLIP(cfg)
    decoder = MAEDecoder(cfg.vision, DecoderConfig(1, 64, 2)) if recon else None
    return model, decoder


def _gradients(step_cfg: StepConfig, images, tokens, seed: int = 5, wrap=None, checkpointing=False):
    """Gradients and losses of one step's backward, from a fresh model and a fixed RNG state."""
    model, decoder = _model(step_cfg.recon_weight > 0, step_cfg.loss)
    model.set_grad_checkpointing(checkpointing)
    pretrainer = Pretrainer(model, decoder)
    optimizer = torch.optim.SGD(pretrainer.parameters(), lr=0.0)
    forward_model = wrap(pretrainer) if wrap else pretrainer
    step = TrainStep(model, optimizer, step_cfg, forward_model=forward_model)
    torch.manual_seed(seed)  # the masking noise
    losses = step.backward(images, tokens)
    grads = {name: p.grad.clone() for name, p in pretrainer.named_parameters() if p.grad is not None}
    return grads, {k: v.item() for k, v in losses.items()}


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.integration  # 3 backward passes a case, ~30 s in all
@pytest.mark.parametrize("knobs", [
    dict(mask_ratio=0.5),
    dict(mask_ratio=0.0),
    dict(mask_ratio=0.75, text_mask="random", text_mask_ratio=0.5, recon_weight=1.0),
    dict(mask_ratio=0.5, loss="sigmoid"),
    dict(mask_ratio=0.5, loss="sigmoid", loss_chunk=5),
], ids=["mask0.5", "mask0", "text-mask+recon", "sigmoid", "sigmoid-chunked"])
def test_chunked_gradient_equals_the_whole_batch_gradient(knobs):
    images, tokens = synthetic_batch(get_preset("tiny"), BATCH, torch.device("cpu"))
    whole, whole_losses = _gradients(StepConfig(**knobs), images, tokens)
    for k in (2, 4):
        chunked, losses = _gradients(StepConfig(**knobs, accum_steps=k), images, tokens)
        _assert_same(whole, chunked)
        assert losses == pytest.approx(whole_losses, rel=1e-5)
    # every parameter got a gradient (the temperature and, with --recon-weight, the decoder too)
    assert ("model.logit_scale" in whole
            and any(name.startswith("decoder.") for name in whole) == ("recon_weight" in knobs))
    assert ("model.logit_bias" in whole) == (knobs.get("loss") == "sigmoid")  # the sigmoid loss's bias learns too


def _worker(rank, world, port, images, tokens, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    n = images.shape[0] // world
    local = images[rank * n:(rank + 1) * n], tokens[rank * n:(rank + 1) * n]
    results = {}
    for name, cfg, checkpointing in (
            ("masked", StepConfig(mask_ratio=0.5), False),
            ("masked_accum", StepConfig(mask_ratio=0.5, accum_steps=2), False),
            ("masked_checkpointing", StepConfig(mask_ratio=0.5), True),
            ("plain_accum", StepConfig(mask_ratio=0.0, accum_steps=4), False)):
        # the same masking noise on a rank whether it chunks or not
        results[name] = _gradients(cfg, *local, seed=10 + rank, wrap=DistributedDataParallel,
                                   checkpointing=checkpointing)
    out[rank] = results
    dist.destroy_process_group()


@pytest.mark.integration  # two processes
def test_chunked_gradient_in_two_processes_equals_the_global_batch_gradient():
    """2 processes (gloo, DDP): K chunks per process give the unchunked distributed gradient, and
    without masking noise both equal one process's gradient over the whole global batch; activation
    checkpointing gives the same gradient too."""
    world = 2
    images, tokens = synthetic_batch(get_preset("tiny"), BATCH, torch.device("cpu"))
    reference, reference_losses = _gradients(StepConfig(mask_ratio=0.0), images, tokens)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = mp.Manager().dict()
    mp.spawn(_worker, args=(world, port, images, tokens, out), nprocs=world, join=True)
    for rank in range(world):
        # DDP averages the ranks' gradients: every rank holds the same, that of the global loss
        masked, masked_losses = out[rank]["masked"]
        chunked, chunked_losses = out[rank]["masked_accum"]
        _assert_same(masked, chunked)
        assert chunked_losses["contrastive"] == pytest.approx(masked_losses["contrastive"], rel=1e-5)
        _assert_same(masked, out[rank]["masked_checkpointing"][0])  # activation checkpointing under DDP
        plain, _ = out[rank]["plain_accum"]
        _assert_same(reference, plain)
    assert out[0]["masked_accum"][0].keys() == out[1]["masked_accum"][0].keys()


def test_accum_steps_must_split_the_batch():
    with pytest.raises(ConfigError, match="accum_steps"):
        TrainConfig(batch_size=16, accum_steps=3).validate()


def test_accumulation_counts_its_feature_pass_in_the_flops():
    cfg = get_preset("tiny")
    plain = train_step_flops(cfg, TrainConfig(), 64)
    chunked = train_step_flops(cfg, TrainConfig(accum_steps=4), 64)
    assert chunked["accum_forward"] > 0
    assert chunked["total"] == plain["total"] + chunked["accum_forward"]


@pytest.mark.integration  # trains
def test_a_run_with_accumulation_reports_its_batches(small_dataset, tmp_path):
    from flip.train.trainer import train

    summary = train(TrainConfig(data=str(small_dataset / "train"), model="tiny", batch_size=16, accum_steps=4,
                                samples=32, workers=0, periodic_eval=False, out=str(tmp_path / "run"),
                                shuffle_buffer=20))
    assert summary["steps"] == 2 and summary["final_loss"] > 0
    assert (summary["world_size"], summary["accum_steps"], summary["per_device_batch"], summary["global_batch"]) \
        == (1, 4, 4, 16)


@pytest.mark.integration  # 3 backward passes a case
@pytest.mark.parametrize("knobs", [dict(mask_ratio=0.5),
                                   dict(mask_ratio=0.75, text_mask="random", text_mask_ratio=0.5, recon_weight=1.0)],
                         ids=["mask0.5", "text-mask+recon"])
def test_activation_checkpointing_gives_the_same_gradient(knobs):
    images, tokens = synthetic_batch(get_preset("tiny"), BATCH, torch.device("cpu"))
    plain, plain_losses = _gradients(StepConfig(**knobs), images, tokens)
    recomputed, losses = _gradients(StepConfig(**knobs), images, tokens, checkpointing=True)
    _assert_same(plain, recomputed)
    assert losses == pytest.approx(plain_losses, rel=1e-6)
    both, _ = _gradients(StepConfig(**knobs, accum_steps=2), images, tokens, checkpointing=True)
    _assert_same(plain, both)


def test_activation_checkpointing_keeps_less_for_backward():
    """What autograd saves for backward (the activation memory) shrinks to the blocks' inputs."""
    images, tokens = synthetic_batch(get_preset("tiny"), BATCH, torch.device("cpu"))

    def saved_bytes(checkpointing):
        model, _ = _model(False)
        model.set_grad_checkpointing(checkpointing)
        total = 0

        def pack(t):
            nonlocal total
            total += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(images, tokens)
        return total

    assert saved_bytes(True) < saved_bytes(False) / 3


@pytest.mark.integration  # trains
def test_a_run_with_activation_checkpointing_saves_a_plain_checkpoint(small_dataset, tmp_path):
    from flip.saved_model import load_model
    from flip.train.trainer import train

    summary = train(TrainConfig(data=str(small_dataset / "train"), model="tiny", batch_size=16, samples=32,
                                workers=0, periodic_eval=False, out=str(tmp_path / "run"), shuffle_buffer=20,
                                activation_checkpointing=True))
    plain = train_step_flops(get_preset("tiny"), TrainConfig(), 16)["total"]
    assert summary["train_flops_per_step"] > plain  # the recomputed forward is counted
    model, _ = load_model(tmp_path / "run")  # what eval and export read
    assert isinstance(model, FLIP) and not model.visual.grad_checkpointing


@pytest.mark.integration  # times a step
def test_bench_reports_its_batches(tmp_path):
    """`flipctl bench` times one process's step without accumulation, and says so as a run's summary does."""
    import json

    from typer.testing import CliRunner

    from flipctl.main import app

    out = tmp_path / "bench.json"
    result = CliRunner().invoke(app, ["bench", "--batch-size", "4", "--steps", "1", "--warmup", "0", "--mask-ratios",
                                      "0.5", "--no-split", "--threads", "1", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["batch"] == {"per_device": 4, "accum_steps": 1, "world_size": 1, "global": 4}
    assert ("batch 4 per device x 1 accumulation step(s) x 1 process(es) = global batch 4"
            in " ".join(result.output.split()))
