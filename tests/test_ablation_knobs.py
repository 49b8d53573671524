"""Text masking, the reconstruction loss and the masking strategies (paper Tables 1c, 1f)."""

import json
import math

import pytest
import torch

from flip.choices import MASK_STRATEGIES
from flip.masking import block_keep_indices, grid_keep_indices, image_keep_indices, num_kept, text_keep_indices
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


def _classes(tokens):
    """Word classes as the tokenizer gives them: SOT 0, every real token a noun (1) here, padding 5."""
    classes = torch.where(tokens != 0, 1, 5).to(torch.uint8)
    classes[:, 0] = 0
    return classes


@pytest.mark.parametrize("strategy", ["random", "padding", "truncate", "block", "syntax"])
def test_text_masking_keeps_sot_and_halves_the_length(strategy):
    tokens = _tokens([5, 12, 20, 32])
    keep = text_keep_indices(tokens, strategy, 0.5, word_classes=_classes(tokens))
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


def test_truncation_keeps_the_first_positions():
    keep = text_keep_indices(_tokens([5, 32]), "truncate", 0.75)
    assert keep.tolist() == [list(range(8))] * 2


def test_block_masking_keeps_one_contiguous_run_inside_the_caption():
    torch.manual_seed(0)
    lengths = [32, 24, 20, 16, 12, 5] * 300  # SOT ... EOT, then padding
    keep = text_keep_indices(_tokens(lengths), "block", 0.5)  # SOT + 15 positions
    starts = {}
    for row, n in zip(keep.tolist(), lengths):
        assert row[0] == 0 and row[1:] == list(range(row[1], row[1] + 15))
        if n - 1 >= 15:  # the caption (without SOT) fills the run: it stays inside, every start possible
            assert 1 <= row[1] <= n - 15
        else:  # a short caption: the run starts after SOT and takes the whole caption
            assert row[1] == 1
        starts.setdefault(n, set()).add(row[1])
    assert starts[32] == set(range(1, 18)) and starts[20] == set(range(1, 6)) and starts[5] == {1}


def test_block_masking_finds_the_caption_end_past_a_token_with_the_padding_id():
    tokens = _tokens([20])
    tokens[0, 5] = 0  # "!" is BPE id 0, the padding id: the caption still ends at its EOT (position 19)
    torch.manual_seed(0)
    assert max(text_keep_indices(tokens.expand(200, -1), "block", 0.5)[:, 1].tolist()) == 20 - 15


def test_syntax_masking_keeps_by_word_class_then_position():
    tokens = _tokens([12])
    classes = torch.tensor([[0, 4, 2, 1, 4, 3, 1, 2, 4, 4, 1, 4] + [5] * 20], dtype=torch.uint8)
    keep = text_keep_indices(tokens, "syntax", 0.75, word_classes=classes)  # 8 of 32
    assert keep.tolist() == [[0, 3, 6, 10, 2, 7, 5, 1]]  # SOT, nouns, adjectives, the verb, then the first other
    with pytest.raises(ValueError, match="word class"):
        text_keep_indices(tokens, "syntax", 0.5)


def test_syntax_masking_of_a_real_caption_keeps_its_nouns_and_adjectives():
    from flip.data.tokenizer import WORD_CLASSES, Tokenizer, tag_words

    tokenizer = Tokenizer(32)
    caption = "A small red circle to the left of a large blue square."
    tokens, classes = tokenizer.with_word_classes([caption, ""])
    assert torch.equal(tokens, tokenizer([caption, ""])) and tokenizer.truncated == 0
    words = "a small red circle to the left of a large blue square .".split()
    tags = tag_words(words)
    assert tags == ["DT", "JJ", "JJ", "NN", "TO", "DT", "VBN", "IN", "DT", "JJ", "JJ", "NN", "."]  # "left": VBN
    # one BPE piece per word here: the classes follow the words, EOT is "other", then padding
    assert classes[0, :15].tolist() == [0, 4, 2, 2, 1, 4, 4, 3, 4, 4, 2, 2, 1, 4, 4]
    assert (classes[0, 15:] == WORD_CLASSES["padding"]).all() and classes[1, :2].tolist() == [0, 4]
    keep = text_keep_indices(tokens, "syntax", 0.75, word_classes=classes)[0]  # 8 positions
    kept_words = {words[i - 1] for i in keep.tolist()[1:]}
    assert kept_words == {"circle", "square", "small", "red", "large", "blue", "left"}


def test_a_word_of_several_bpe_pieces_gives_each_its_class():
    from flip.data.tokenizer import Tokenizer

    tokenizer = Tokenizer(32)
    tokens, classes = tokenizer.with_word_classes(["a hippopotamus"])
    pieces = int((tokens[0] != 0).sum()) - 3  # SOT, "a", EOT
    assert pieces > 1 and classes[0, 2:2 + pieces].tolist() == [1] * pieces


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


@pytest.mark.integration  # trains
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
    from flip.saved_model import load_model

    model, _ = load_model(out)
    assert isinstance(model, FLIP)


@pytest.mark.integration  # trains
def test_the_cheaper_clip_knobs_train_together_from_the_cli(small_dataset, tmp_path):
    """CLIPA's resizing and syntax text masking with SigLIP's chunked sigmoid loss, one run: the data loader's
    worker (a process of its own) crops to 32 px and tags the captions; the checkpoint is a full-size sigmoid
    model whose periodic evaluation ran at 64 px; the FLOPs are those of 16 patches and 16 text tokens."""
    from typer.testing import CliRunner

    from flip.flops import train_step_flops
    from flip.models import get_preset
    from flip.saved_model import load_model
    from flip.train.config import TrainConfig
    from flipctl.main import app

    out = tmp_path / "run"
    result = CliRunner().invoke(app, [
        "train", "--data", str(small_dataset / "train"),
        "--eval-data", str(small_dataset / "retrieval" / "captions.csv"),
        "--eval-images", "8", "--samples", "16", "--batch-size", "8", "--workers", "1", "--shuffle-buffer", "20",
        "--loss", "sigmoid", "--loss-chunk", "4", "--image-size", "32", "--mask-ratio", "0",
        "--text-mask", "syntax", "--text-mask-ratio", "0.5", "--log-every", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "config.json").read_text())
    assert (saved["train"]["loss"], saved["train"]["loss_chunk"], saved["train"]["image_size"],
            saved["train"]["text_mask"]) == ("sigmoid", 4, 32, "syntax")
    assert saved["model"]["init_logit_bias"] == -10.0 and saved["model"]["vision"]["image_size"] == 64
    summary = json.loads((out / "summary.json").read_text())
    cfg = TrainConfig.from_dict(saved["train"])
    assert summary["train_flops_per_step"] == train_step_flops(get_preset("tiny"), cfg, 8)["total"]
    assert summary["text_masking"]["text_tower_ms_masked"] > 0 and "image_to_text_R@1" in summary["eval"]
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert len(logged) == 2 and all(math.isfinite(r["loss"]) for r in logged) and "logit_bias" in logged[0]
    model, _ = load_model(out)
    assert model.logit_bias is not None and model.logit_bias.item() != -10.0  # it learnt


def test_bad_knob_values_are_one_line_errors(tmp_path):
    from typer.testing import CliRunner

    from flipctl.main import app

    for args, needle in ((["--mask-strategy", "spiral"], "mask-strategy"), (["--text-mask", "all"], "text-mask"),
                         (["--text-mask-ratio", "1.5"], "text-mask-ratio"),
                         (["--recon-weight", "1", "--mask-ratio", "0"], "recon-weight"),
                         (["--mask-strategy", "grid", "--mask-ratio", "0.6"], "sub-grid"),
                         (["--loss", "softmax"], "--loss must be one of contrastive, sigmoid"),
                         (["--loss-chunk", "-1"], "--loss-chunk must be >= 0"),
                         (["--text-mask", "syntactic"], "truncate, block, syntax")):
        result = CliRunner().invoke(app, ["train", "--out", str(tmp_path / "r"), *args])
        assert result.exit_code == 2 and needle in result.output and "Traceback" not in result.output
