"""`--accum-steps`: the batch in K chunks, and the gradient still that of the whole batch's loss."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from flip.bench.timing import synthetic_batch
from flip.flops import train_step_flops
from flip.models import FLIP, get_preset
from flip.models.decoder import DecoderConfig, MAEDecoder
from flip.models.pretrainer import Pretrainer
from flip.train.config import ConfigError, StepConfig, TrainConfig
from flip.train.step import TrainStep

BATCH = 16


def _model(recon: bool):
    torch.manual_seed(0)
    cfg = get_preset("tiny")
    model = FLIP(cfg)
    decoder = MAEDecoder(cfg.vision, DecoderConfig(1, 64, 2)) if recon else None
    return model, decoder


def _gradients(step_cfg: StepConfig, images, tokens, seed: int = 5, wrap=None):
    """Gradients and losses of one step's backward, from a fresh model and a fixed RNG state."""
    model, decoder = _model(step_cfg.recon_weight > 0)
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


@pytest.mark.parametrize("knobs", [
    dict(mask_ratio=0.5),
    dict(mask_ratio=0.0),
    dict(mask_ratio=0.75, text_mask="random", text_mask_ratio=0.5, recon_weight=1.0),
], ids=["mask0.5", "mask0", "text-mask+recon"])
def test_chunked_gradient_equals_the_whole_batch_gradient(knobs):
    images, tokens = synthetic_batch(get_preset("tiny"), BATCH, torch.device("cpu"))
    whole, whole_losses = _gradients(StepConfig(**knobs), images, tokens)
    for k in (2, 4):
        chunked, losses = _gradients(StepConfig(**knobs, accum_steps=k), images, tokens)
        _assert_same(whole, chunked)
        assert losses == pytest.approx(whole_losses, rel=1e-5)
    # every parameter got a gradient (the temperature and, with --recon-weight, the decoder too)
    assert "model.logit_scale" in whole and any(name.startswith("decoder.") for name in whole) == ("recon_weight" in knobs)


def _worker(rank, world, port, images, tokens, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    n = images.shape[0] // world
    local = images[rank * n:(rank + 1) * n], tokens[rank * n:(rank + 1) * n]
    results = {}
    for name, cfg in (("masked", StepConfig(mask_ratio=0.5)), ("masked_accum", StepConfig(mask_ratio=0.5, accum_steps=2)),
                      ("plain_accum", StepConfig(mask_ratio=0.0, accum_steps=4))):
        # the same masking noise on a rank whether it chunks or not
        results[name] = _gradients(cfg, *local, seed=10 + rank, wrap=DistributedDataParallel)
    out[rank] = results
    dist.destroy_process_group()


def test_chunked_gradient_in_two_processes_equals_the_global_batch_gradient():
    """2 processes (gloo, DDP): K chunks per process give the unchunked distributed gradient, and
    without masking noise both equal one process's gradient over the whole global batch."""
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


def test_a_run_with_accumulation_reports_its_batches(small_dataset, tmp_path):
    from flip.train.trainer import train

    summary = train(TrainConfig(data=str(small_dataset / "train"), model="tiny", batch_size=16, accum_steps=4,
                                samples=32, workers=0, periodic_eval=False, out=str(tmp_path / "run"),
                                shuffle_buffer=20))
    assert summary["steps"] == 2 and summary["final_loss"] > 0
    assert (summary["world_size"], summary["accum_steps"], summary["per_device_batch"], summary["global_batch"]) \
        == (1, 4, 4, 16)
