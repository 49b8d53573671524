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
from flip.train.step import StepConfig, TrainStep
from flip.train.trainer import train

BATCH = 8
PLAIN = TrainConfig(model="tiny", mask_ratio=0.5)
TEXT_MASKED = dataclasses.replace(PLAIN, text_mask="padding", text_mask_ratio=0.5)
DECODER = dataclasses.replace(PLAIN, recon_weight=1.0, decoder_depth=1, decoder_width=64, decoder_heads=2)
RANDOM_TEXT_AND_DECODER = dataclasses.replace(DECODER, text_mask="random", text_mask_ratio=0.75, mask_ratio=0.75)


def _real_step_flops(model_cfg, cfg: TrainConfig) -> int:
    """FLOPs `FlopCounterMode` sees in one real `TrainStep` (forward, backward, AdamW) on the CPU.

    Attention runs as its math (QK^T, softmax, AV) so the counter sees its matmuls: the CPU's fused
    attention kernel has no FLOP formula in the counter, and the meta count uses the math form too.
    """
    torch.manual_seed(0)
    model = FLIP(model_cfg)
    decoder = None
    if cfg.recon_weight > 0:
        decoder = MAEDecoder(model_cfg.vision, DecoderConfig(cfg.decoder_depth, cfg.decoder_width, cfg.decoder_heads))
    optimizer = make_optimizer(Pretrainer(model, decoder), 1e-3, 0.2, (0.9, 0.95), 1e-8, torch.device("cpu"))
    step = TrainStep(model, optimizer, StepConfig(mask_ratio=cfg.mask_ratio, text_mask=cfg.text_mask,
                                                  text_mask_ratio=cfg.text_mask_ratio,
                                                  recon_weight=cfg.recon_weight), decoder=decoder)
    v = model_cfg.vision
    images = torch.randn(BATCH, 3, v.image_size, v.image_size)
    tokens = torch.zeros(BATCH, model_cfg.text.context_length, dtype=torch.long)
    tokens[:, :10] = torch.randint(1, 1000, (BATCH, 10))
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        losses = step(images, tokens, 1e-3)
    assert ("recon" in losses) == (cfg.recon_weight > 0)  # the decoder really ran
    return counter.get_total_flops()


@pytest.mark.parametrize("cfg", [PLAIN, TEXT_MASKED, DECODER, RANDOM_TEXT_AND_DECODER],
                         ids=["plain", "text-masked", "decoder", "random-text-and-decoder"])
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
