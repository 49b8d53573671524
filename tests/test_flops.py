"""Training-step FLOPs follow every knob: the meta-device count of `flip.flops` against
`torch.utils.flop_counter` around one real training step, and what a run's summary records."""

import dataclasses
import json

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from flip.flops import step_flops, text_kept, train_step_flops
from flip.models import FLIP
from flip.models.decoder import DecoderConfig, MAEDecoder
from flip.models.pretrainer import Pretrainer
from flip.train.config import TrainConfig
from flip.train.optim import make_optimizer
from flip.train.step import TrainStep
from flip.train.trainer import train

BATCH = 8
PLAIN = TrainConfig(model="tiny", mask_ratio=0.5)
TEXT_MASKED = dataclasses.replace(PLAIN, text_mask="padding", text_mask_ratio=0.5)
DECODER = dataclasses.replace(PLAIN, recon_weight=1.0, decoder_depth=1, decoder_width=64, decoder_heads=2)
RANDOM_TEXT_AND_DECODER = dataclasses.replace(DECODER, text_mask="random", text_mask_ratio=0.75, mask_ratio=0.75)
REDUCED_SIZE_AND_DECODER = dataclasses.replace(DECODER, image_size=32)  # CLIPA's resizing, with masking
SIGMOID_CHUNKED = dataclasses.replace(PLAIN, loss="sigmoid", loss_chunk=3, text_mask="block", text_mask_ratio=0.5)


def _real_step_flops(model_cfg, cfg: TrainConfig) -> int:
    """FLOPs `FlopCounterMode` sees in one real `TrainStep` (forward, backward, AdamW) on the CPU.

    Attention runs as its math (QK^T, softmax, AV) so the counter sees its matmuls: the CPU's fused
    attention kernel has no FLOP formula in the counter, and the meta count uses the math form too.
    """
    torch.manual_seed(0)
    model_cfg = model_cfg.with_loss(cfg.loss)
    model = FLIP(model_cfg)
    v = model_cfg.vision.at_image_size(cfg.image_size)  # the training size
    decoder = None
    if cfg.recon_weight > 0:
        decoder = MAEDecoder(v, DecoderConfig(cfg.decoder_depth, cfg.decoder_width, cfg.decoder_heads))
    optimizer = make_optimizer(Pretrainer(model, decoder), 1e-3, 0.2, (0.9, 0.95), 1e-8, torch.device("cpu"))
    step = TrainStep(model, optimizer, cfg.step_config(), decoder=decoder)
    images = torch.randn(BATCH, 3, v.image_size, v.image_size)
    tokens = torch.zeros(BATCH, model_cfg.text.context_length, dtype=torch.long)
    tokens[:, :10] = torch.randint(1, 1000, (BATCH, 10))
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        losses = step(images, tokens, 1e-3)
    assert ("recon" in losses) == (cfg.recon_weight > 0)  # the decoder really ran
    return counter.get_total_flops()


@pytest.mark.parametrize("cfg", [PLAIN, TEXT_MASKED, DECODER, RANDOM_TEXT_AND_DECODER, REDUCED_SIZE_AND_DECODER,
                                 SIGMOID_CHUNKED],
                         ids=["plain", "text-masked", "decoder", "random-text-and-decoder", "32px-and-decoder",
                              "sigmoid-chunked-block-text"])
def test_counted_step_agrees_with_a_real_step(tiny_cfg, cfg):
    counted = train_step_flops(tiny_cfg, cfg, BATCH)
    assert counted["total"] == counted["image"] + counted["text"] + counted["decoder"] + counted["loss"]
    real = _real_step_flops(tiny_cfg, cfg)
    assert abs(counted["total"] - real) <= 0.02 * real


def test_text_masking_costs_less_and_the_decoder_more(tiny_cfg):
    plain = train_step_flops(tiny_cfg, PLAIN, BATCH)
    text_masked = train_step_flops(tiny_cfg, TEXT_MASKED, BATCH)
    decoder = train_step_flops(tiny_cfg, DECODER, BATCH)
    assert plain["decoder"] == 0
    assert text_masked["total"] < plain["total"]
    assert text_masked["image"] == plain["image"] and text_masked["text"] < 0.6 * plain["text"]  # 16 of 32 tokens
    assert decoder["total"] > plain["total"] and decoder["decoder"] > 0
    assert decoder["image"] == plain["image"] and decoder["text"] == plain["text"]
    # a wider decoder costs more; with nothing masked there is nothing to reconstruct and no decoder runs
    wide = train_step_flops(tiny_cfg, dataclasses.replace(DECODER, decoder_width=128), BATCH)
    assert wide["decoder"] > decoder["decoder"]
    assert step_flops(tiny_cfg, 0.0, BATCH, decoder=DecoderConfig())["decoder"] == 0


def test_kept_text_tokens_are_fixed_by_the_ratio(tiny_cfg):
    assert text_kept(32, "none", 0.5) is None and text_kept(32, "padding", 0.0) is None
    assert text_kept(32, "padding", 0.5) == 16 and text_kept(32, "random", 0.75) == 8
    with pytest.raises(ValueError, match="text_keep"):
        step_flops(tiny_cfg, 0.5, 2, text_keep=0)


@pytest.mark.integration  # trains
def test_run_summary_counts_the_step_its_knobs_make(small_dataset, tmp_path, tiny_cfg):
    cfg = dataclasses.replace(
        RANDOM_TEXT_AND_DECODER, data=str(small_dataset / "train"), batch_size=8, samples=16, workers=0,
        eval_data=str(small_dataset / "retrieval" / "captions.csv"), eval_images=8, out=str(tmp_path / "run"))
    train(cfg)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    expected = step_flops(tiny_cfg.with_context_length(cfg.context_length), 0.75, 8, text_keep=8,
                          decoder=DecoderConfig(1, 64, 2))["total"]
    assert summary["train_flops_per_step"] == expected
    assert summary["train_flops_per_sample"] == expected / 8
    assert summary["train_flops_total"] == expected * summary["steps"] == expected * 2
    # not what the same run would count without its text masking and decoder
    assert expected != step_flops(tiny_cfg, 0.75, 8)["total"]


def test_flops_follow_the_training_image_size(tiny_cfg):
    """tiny (patch 8) at 32 px runs on 16 patches instead of 64: the tower's cost is that of 64 px at 75%
    masking (the same 16 patches + CLS through the blocks) less the patch embedding of the 48 patches a
    64 px image embeds and then drops; about a quarter of the full-size tower."""
    full, small = step_flops(tiny_cfg, 0.0, 1), step_flops(tiny_cfg, 0.0, 1, image_size=32)
    masked = step_flops(tiny_cfg, 0.75, 1)
    patch_embed = 2 * 2 * 192 * 3 * 8 * 8  # per patch: forward and weight gradient, 2 FLOPs a multiply-add
    assert masked["image"] - small["image"] == 48 * patch_embed
    assert (full["image"], small["image"]) == (1_103_132_160, 277_231_104)  # 0.251x
    assert small["text"] == full["text"] and small["loss"] == full["loss"]
    cfg = dataclasses.replace(PLAIN, image_size=32, mask_ratio=0.5)  # resizing and masking together: 8 patches
    assert train_step_flops(tiny_cfg, cfg, 1)["image"] == step_flops(tiny_cfg, 0.5, 1, image_size=32)["image"]
    assert step_flops(tiny_cfg, 0.5, 1, image_size=32)["image"] < small["image"]


def test_the_sigmoid_loss_counts_one_logits_matmul_and_its_chunked_form_one_more():
    from flip.models import get_preset

    cfg = get_preset("tiny")  # embed 128: a [B, 128] x [128, B] matmul is 2 * 128 * B^2 FLOPs
    matmul = 2 * 128 * 64 * 64
    assert step_flops(cfg, 0.5, 64)["loss"] == 6 * matmul  # two logits blocks, forward and two gradients
    assert step_flops(cfg, 0.5, 64, loss="sigmoid")["loss"] == 3 * matmul
    assert step_flops(cfg, 0.5, 64, loss="sigmoid", loss_chunk=16)["loss"] == 4 * matmul  # recomputed in backward
