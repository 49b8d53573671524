"""The training recipe every sweep depends on: the lr schedule and its batch scaling, which
parameters get weight decay, and that the fast text tower is exact with text masking on."""

import math

import pytest
import torch
from torch import nn

from flip.masking import gather_tokens, text_keep_indices
from flip.models import FLIP
from flip.models.decoder import DecoderConfig, MAEDecoder
from flip.models.pretrainer import Pretrainer
from flip.train.config import TrainConfig
from flip.train.optim import lr_at, make_optimizer

# -- lr: linear warm-up, then cosine ---------------------------------------------------------------

PEAK, TOTAL, WARMUP = 1e-3, 110, 10


@pytest.mark.parametrize("step, expected", [
    (0, PEAK / 10),  # the first step already moves: (step + 1) / warmup
    (4, PEAK / 2),  # mid warm-up
    (9, PEAK),  # the last warm-up step reaches the peak
    (10, PEAK),  # the cosine starts at the peak
    (35, PEAK * 0.5 * (1 + math.cos(math.pi / 4))),  # a quarter into the cosine
    (60, PEAK / 2),  # mid-cosine
    (109, PEAK * 0.5 * (1 + math.cos(math.pi * 99 / 100))),  # the last step
    (110, 0.0),  # the end of the budget
])
def test_warmup_then_cosine(step, expected):
    assert lr_at(step, TOTAL, WARMUP, PEAK) == pytest.approx(expected, rel=1e-12, abs=1e-18)


def test_warmup_rises_linearly_and_cosine_falls_monotonically():
    lrs = [lr_at(s, TOTAL, WARMUP, PEAK) for s in range(TOTAL + 1)]
    assert all(b - a == pytest.approx(PEAK / WARMUP) for a, b in zip(lrs[:WARMUP], lrs[1:WARMUP]))
    assert all(b <= a for a, b in zip(lrs[WARMUP:], lrs[WARMUP + 1:]))


@pytest.mark.parametrize("step, expected", [
    (60, PEAK * (0.1 + 0.9 * 0.5)),  # mid-cosine: halfway between the peak and the floor
    (110, PEAK * 0.1),  # the floor at the end of the budget
    (500, PEAK * 0.1),  # and past it
    (4, PEAK / 2),  # the warm-up does not see the floor
])
def test_cosine_decays_to_min_lr_ratio(step, expected):
    assert lr_at(step, TOTAL, WARMUP, PEAK, min_lr_ratio=0.1) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("model, base", [("tiny", 1e-3), ("B/16", 4e-6), ("L/14", 4e-6)])
@pytest.mark.parametrize("batch", [256, 1024, 32768])
def test_peak_lr_scales_with_batch_over_256(model, base, batch):
    assert TrainConfig(model=model, batch_size=batch).peak_lr == pytest.approx(base * batch / 256, rel=1e-12)


def test_lr_settings_override_the_scaling():
    assert TrainConfig(model="B/16", batch_size=4096, base_lr=1e-5).peak_lr == pytest.approx(1e-5 * 16)
    assert TrainConfig(model="B/16", batch_size=4096, lr=3e-4).peak_lr == 3e-4  # absolute: not scaled


# -- weight decay ---------------------------------------------------------------------------------

def _groups(tiny_cfg, decoder: bool):
    torch.manual_seed(0)
    module = Pretrainer(FLIP(tiny_cfg), MAEDecoder(tiny_cfg.vision, DecoderConfig()) if decoder else None)
    optimizer = make_optimizer(module, 1e-3, 0.2, (0.9, 0.95), 1e-8, torch.device("cpu"))
    names = {id(p): n for n, p in module.named_parameters()}
    groups = {g["weight_decay"]: [names[id(p)] for p in g["params"]] for g in optimizer.param_groups}
    return module, groups


@pytest.mark.parametrize("decoder", [False, True])
def test_weight_decay_groups(tiny_cfg, decoder):
    module, groups = _groups(tiny_cfg, decoder)
    assert set(groups) == {0.2, 0.0}
    decayed, exempt = groups[0.2], groups[0.0]
    everything = [n for n, _ in module.named_parameters()]
    assert sorted(decayed + exempt) == sorted(everything)  # every parameter in exactly one group

    norms = {f"{m}.{p}" for m, mod in module.named_modules() if isinstance(mod, nn.LayerNorm)
             for p, _ in mod.named_parameters(recurse=False)}
    named = {"model.visual.cls_token", "model.text.pos_embed", "model.logit_scale"}
    if decoder:
        named.add("decoder.mask_token")
    for name, param in module.named_parameters():
        no_decay = name.endswith(".bias") or name in norms or name in named
        assert (name in exempt) == no_decay, name
        if not no_decay:  # what is left, and decayed, is the weight matrices (and the patch-embedding kernel)
            assert name.endswith(".weight") and param.ndim >= 2, name
    # spot checks, by name
    for name in ("model.visual.blocks.0.attn.qkv.weight", "model.visual.blocks.0.mlp.fc1.weight",
                 "model.visual.patch_embed.proj.weight", "model.visual.proj.weight", "model.text.proj.weight",
                 "model.text.token_embedding.weight", "model.text.blocks.1.attn.proj.weight"):
        assert name in decayed, name
    for name in ("model.visual.blocks.0.attn.qkv.bias", "model.visual.blocks.0.norm1.weight",
                 "model.text.norm.weight", "model.text.norm.bias", *named):
        assert name in exempt, name


# -- the fast last text block is exact with text masking on ------------------------------------------

def _captions(batch: int, length: int) -> torch.Tensor:
    """SOT, words, EOT, then padding (id 0): real lengths from 3 to the full context."""
    tokens = torch.zeros(batch, length, dtype=torch.long)
    for i, n in enumerate(torch.linspace(3, length, batch).long().tolist()):
        tokens[i, 0], tokens[i, n - 1] = 49406, 49407
        tokens[i, 1:n - 1] = torch.randint(300, 40000, (n - 2,))
    return tokens


@pytest.mark.parametrize("pad_mask", [False, True])
@pytest.mark.parametrize("strategy, ratio", [("padding", 0.5), ("random", 0.5), ("random", 0.75)])
def test_fast_text_tower_matches_every_block_on_every_kept_token(tiny_cfg, pad_mask, strategy, ratio):
    import dataclasses

    cfg = dataclasses.replace(tiny_cfg, text=dataclasses.replace(tiny_cfg.text, pad_mask=pad_mask))
    torch.manual_seed(0)
    text = FLIP(cfg).text.double().eval()  # float64: the two paths' sums differ only in rounding
    tokens = _captions(6, cfg.text.context_length)
    keep = text_keep_indices(tokens, strategy, ratio, cfg.text.pad_id)
    assert keep is not None and keep.shape[1] < tokens.shape[1]

    def reference():  # drop the masked positions, run every block on every kept one, read position 0
        x = gather_tokens(text.token_embedding(tokens) + text.pos_embed[:, : tokens.shape[1]], keep)
        kept = torch.gather(tokens, 1, keep)
        mask = (kept != cfg.text.pad_id)[:, None, None, :] if pad_mask else None
        for block in text.blocks:
            x = block(x, attn_mask=mask)
        return text.proj(text.norm(x)[:, 0])

    fast, slow = text(tokens, keep), reference()
    torch.testing.assert_close(fast, slow, atol=1e-12, rtol=1e-10)
    grad = torch.randn_like(fast)
    params = [p for p in text.parameters()]
    fast_grads = torch.autograd.grad(fast, params, grad, allow_unused=True)
    slow_grads = torch.autograd.grad(slow, params, grad, allow_unused=True)
    for p, a, b in zip(params, fast_grads, slow_grads):
        if b is None:
            assert a is None
        else:
            torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)
    # and masking mattered: the unmasked tower gives another feature
    assert not torch.allclose(text(tokens), fast, atol=1e-4)
