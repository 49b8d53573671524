"""Text masking, the reconstruction loss and the masking strategies (paper Tables 1c, 1f)."""

import json

import pytest
import torch

from flip.masking import (MASK_STRATEGIES, block_keep_indices, grid_keep_indices, image_keep_indices, num_kept,
                          text_keep_indices)
from flip.models import FLIP
from flip.models.decoder import DecoderConfig, MAEDecoder, masked_mse, normalized_pixel_target, patchify
from flip.models.pretrainer import Pretrainer


def _tokens(real_lengths, length=32):
    tokens = torch.zeros(len(real_lengths), length, dtype=torch.long)
    for i, n in enumerate(real_lengths):
        tokens[i, 0] = 49406
        tokens[i, 1:n - 1] = torch.arange(100, 100 + n - 2)
        tokens[i, n - 1] = 49407
    return tokens


@pytest.mark.parametrize("strategy", ["random", "padding"])
def test_text_masking_keeps_sot_and_halves_the_length(strategy):
    tokens = _tokens([5, 12, 20, 32])
    keep = text_keep_indices(tokens, strategy, 0.5)
    assert keep.shape == (4, 16)
    assert (keep[:, 0] == 0).all()  # the token the feature is read from
    for row in keep:
        assert len(set(row.tolist())) == 16


def test_padding_masking_never_drops_real_tokens_while_padding_remains():
    torch.manual_seed(0)
    lengths = [3, 8, 16, 20, 24, 32]
    tokens = _tokens(lengths)
    for ratio in (0.25, 0.5, 0.75):
        keep = text_keep_indices(tokens, "padding", ratio)
        k = keep.shape[1]
        for row, n in zip(keep, lengths):
            kept = set(row.tolist())
            real = set(range(n))
            if k >= n:  # enough room: every real token is kept, only padding went
                assert real <= kept
            else:  # only real tokens remain, SOT among them
                assert kept <= real and 0 in kept


def test_random_text_masking_drops_real_and_padding_alike():
    torch.manual_seed(0)
    tokens = _tokens([16] * 200)
    keep = text_keep_indices(tokens, "random", 0.5)
    real_kept = (keep < 16).float().sum(1).mean().item()
    # 15 of the 31 non-SOT positions are kept at random: ~7.3 of 15 real ones besides SOT
    assert 6.5 < real_kept - 1 < 8.0


def test_text_tower_runs_on_the_shorter_sequence(tiny_cfg):
    model = FLIP(tiny_cfg)
    tokens = _tokens([10, 20])
    keep = text_keep_indices(tokens, "padding", 0.5)
    seen = {}
    model.text.blocks[0].register_forward_hook(lambda m, i, o: seen.update(shape=o.shape))
    model.encode_text(tokens, keep)
    assert seen["shape"][1] == 16


def test_reconstruction_target_and_loss_match_a_hand_computed_example():
    # one 4x4 single-channel-like image (3 identical channels), patch 2 -> 4 patches of 12 values
    image = torch.arange(16, dtype=torch.float32).view(1, 1, 4, 4).repeat(1, 3, 1, 1)
    patches = patchify(image, 2)
    assert patches.shape == (1, 4, 12)
    # patch 0 = pixels (0,0),(0,1),(1,0),(1,1) = 0,1,4,5, each repeated over 3 channels
    assert patches[0, 0].tolist() == [0, 0, 0, 1, 1, 1, 4, 4, 4, 5, 5, 5]
    target = normalized_pixel_target(image, 2, eps=0.0)
    values = torch.tensor([0, 0, 0, 1, 1, 1, 4, 4, 4, 5, 5, 5], dtype=torch.float32)
    expected = (values - values.mean()) / values.var(unbiased=True).sqrt()
    torch.testing.assert_close(target[0, 0], expected)
    # loss: mean over the masked patches only; keep patches 1 and 2 -> 0 and 3 are masked
    pred = torch.zeros(1, 4, 12)
    pred[0, 1] = 100.0  # errors on kept patches must not count
    keep = torch.tensor([[1, 2]])
    hand = ((target[0, 0] ** 2).mean() + (target[0, 3] ** 2).mean()) / 2
    torch.testing.assert_close(masked_mse(pred, target, keep), hand)


def test_reconstruction_gradient_reaches_the_encoder(tiny_cfg):
    torch.manual_seed(0)
    model = FLIP(tiny_cfg)
    decoder = MAEDecoder(tiny_cfg.vision, DecoderConfig(depth=1, width=64, heads=2))
    pretrainer = Pretrainer(model, decoder)
    images = torch.randn(2, 3, 64, 64)
    keep = image_keep_indices("random", 2, 8, 0.75, "cpu")
    out = pretrainer(images, _tokens([8, 9]), keep)
    out["recon_loss"].backward()
    assert model.visual.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert model.text.blocks[0].attn.qkv.weight.grad is None  # recon only touches the image side


@pytest.mark.parametrize("strategy", MASK_STRATEGIES)
@pytest.mark.parametrize("ratio", [0.5, 0.75])
def test_every_strategy_keeps_exactly_k_distinct_patches(strategy, ratio):
    torch.manual_seed(1)
    keep = image_keep_indices(strategy, 16, 8, ratio, "cpu")
    assert keep.shape == (16, num_kept(64, ratio))
    for row in keep:
        assert len(set(row.tolist())) == keep.shape[1] and 0 <= row.min() and row.max() < 64


def _components(mask, g):
    seen, comps = set(), []
    for start in (i for i in range(g * g) if mask[i]):
        if start in seen:
            continue
        stack, comp = [start], 0
        seen.add(start)
        while stack:
            i = stack.pop()
            comp += 1
            r, c = divmod(i, g)
            for j, ok in ((i - g, r > 0), (i + g, r < g - 1), (i - 1, c > 0), (i + 1, c < g - 1)):
                if ok and mask[j] and j not in seen:
                    seen.add(j)
                    stack.append(j)
        comps.append(comp)
    return comps


def test_block_masks_are_contiguous():
    torch.manual_seed(2)
    g = 14
    keep = block_keep_indices(32, g, num_kept(g * g, 0.0) - num_kept(g * g, 0.5), "cpu")
    for row in keep:
        mask = [True] * (g * g)
        for i in row.tolist():
            mask[i] = False
        comps = _components(mask, g)
        assert sum(comps) == 98
        assert min(comps) >= 2 and len(comps) <= 98 // 4  # rectangles, not scattered patches


def test_grid_keeps_a_regular_subgrid_with_a_random_offset():
    torch.manual_seed(3)
    keep = grid_keep_indices(64, 8, 0.75, "cpu")
    offsets = set()
    for row in keep:
        rows, cols = (row // 8), (row % 8)
        assert len(set((rows % 2).tolist())) == 1 and len(set((cols % 2).tolist())) == 1
        offsets.add((rows[0].item() % 2, cols[0].item() % 2))
    assert len(offsets) == 4
    with pytest.raises(ValueError, match="sub-grid"):
        grid_keep_indices(2, 8, 0.6, "cpu")


def test_knobs_work_from_cli_and_config_and_are_recorded(small_dataset, tmp_path):
    from typer.testing import CliRunner

    from flipctl.main import app

    config = tmp_path / "ablation.toml"
    config.write_text('text_mask = "padding"\ntext_mask_ratio = 0.5\nrecon_weight = 1.0\nmask_strategy = "grid"\n'
                      'mask_ratio = 0.75\ndecoder_depth = 1\ndecoder_width = 64\n')
    out = tmp_path / "run"
    result = CliRunner().invoke(app, [
        "train", "--config", str(config), "--data", str(small_dataset / "train"), "--eval-data",
        str(small_dataset / "retrieval" / "captions.csv"), "--samples", "32", "--batch-size", "16",
        "--workers", "0", "--out", str(out), "--decoder-width", "32"])
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "config.json").read_text())["train"]
    assert (saved["text_mask"], saved["text_mask_ratio"], saved["recon_weight"], saved["mask_strategy"],
            saved["decoder_depth"], saved["decoder_width"]) == ("padding", 0.5, 1.0, "grid", 1, 32)
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["final_losses"]) == {"contrastive", "recon"}
    assert summary["text_masking"]["text_tower_ms_masked"] > 0
    logged = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert "recon" in logged and "contrastive" in logged
    # a decoder checkpoint sits beside the model weights, which stay a plain FLIP model
    ckpt = out / (out / "latest").read_text().strip()
    assert (ckpt / "decoder.safetensors").exists()
    from flip.checkpoint import load_model

    model, _ = load_model(out)
    assert isinstance(model, FLIP)


def test_bad_knob_values_are_one_line_errors(tmp_path):
    from typer.testing import CliRunner

    from flipctl.main import app

    for args, needle in ((["--mask-strategy", "spiral"], "mask-strategy"), (["--text-mask", "all"], "text-mask"),
                         (["--text-mask-ratio", "1.5"], "text-mask-ratio"),
                         (["--recon-weight", "1", "--mask-ratio", "0"], "recon-weight"),
                         (["--mask-strategy", "grid", "--mask-ratio", "0.6"], "sub-grid")):
        result = CliRunner().invoke(app, ["train", "--out", str(tmp_path / "r"), *args])
        assert result.exit_code == 2 and needle in result.output and "Traceback" not in result.output
