import math

import pytest
import torch

from flip.masking import complementary_views, gather_tokens, num_kept, random_keep_indices
from flip.models import FLIP, get_preset
from flip.models.config import PRESETS, ModelConfig


def test_num_kept_matches_paper():
    assert num_kept(196, 0.5) == 98
    assert num_kept(196, 0.75) == 49
    assert num_kept(64, 0.0) == 64
    with pytest.raises(ValueError):
        num_kept(64, 1.0)


@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.75, 0.9])
def test_random_masking_keeps_exactly_k_distinct_patches_per_sample(ratio):
    keep = random_keep_indices(16, 196, num_kept(196, ratio), "cpu")
    assert keep.shape == (16, num_kept(196, ratio))
    for row in keep:
        assert len(set(row.tolist())) == keep.shape[1]
        assert row.min() >= 0 and row.max() < 196
    # per-sample: rows differ
    assert len({tuple(sorted(r.tolist())) for r in keep}) > 1


def test_gather_tokens_picks_the_kept_rows():
    x = torch.arange(2 * 5 * 3).view(2, 5, 3).float()
    keep = torch.tensor([[4, 0], [1, 3]])
    out = gather_tokens(x, keep)
    assert torch.equal(out[0, 0], x[0, 4]) and torch.equal(out[1, 1], x[1, 3])


def test_complementary_views_cover_every_patch_once():
    views = complementary_views(64, 4, 3, "cpu")
    assert len(views) == 4
    cat = torch.cat(views, dim=1)
    for row in cat:
        assert sorted(row.tolist()) == list(range(64))


def test_mask_zero_equals_unmasked_path(tiny_cfg):
    torch.manual_seed(0)
    model = FLIP(tiny_cfg).eval()
    images = torch.randn(3, 3, 64, 64)
    full = model.encode_image(images)
    # Keeping every patch in a random order is the masked code path at ratio 0.
    perm = random_keep_indices(3, 64, num_kept(64, 0.0), "cpu")
    masked_path = model.encode_image(images, perm)
    torch.testing.assert_close(full, masked_path, atol=1e-5, rtol=1e-5)


def test_masked_forward_uses_only_kept_patches(tiny_cfg):
    torch.manual_seed(0)
    model = FLIP(tiny_cfg).eval()
    images = torch.randn(2, 3, 64, 64)
    keep = random_keep_indices(2, 64, 16, "cpu")
    out = model.encode_image(images, keep)
    # change a patch that was dropped for sample 0: its feature must not move
    dropped = sorted(set(range(64)) - set(keep[0].tolist()))[0]
    r, c = divmod(dropped, 8)
    images2 = images.clone()
    images2[0, :, r * 8:(r + 1) * 8, c * 8:(c + 1) * 8] += 5.0
    torch.testing.assert_close(model.encode_image(images2, keep)[0], out[0])
    kept = keep[0, 0].item()
    r, c = divmod(kept, 8)
    images3 = images.clone()
    images3[0, :, r * 8:(r + 1) * 8, c * 8:(c + 1) * 8] += 5.0
    assert not torch.allclose(model.encode_image(images3, keep)[0], out[0])


def test_pad_mask_makes_the_text_feature_ignore_padding_length(tiny_cfg):
    import dataclasses

    torch.manual_seed(0)
    tiny_cfg = dataclasses.replace(tiny_cfg, text=dataclasses.replace(tiny_cfg.text, pad_mask=True))
    model = FLIP(tiny_cfg).eval()
    tokens = torch.zeros(1, 32, dtype=torch.long)
    tokens[0, :5] = torch.tensor([49406, 320, 736, 7117, 49407])
    short = FLIP(tiny_cfg.with_context_length(16)).eval()
    short.load_state_dict({k: (v[:, :16] if k == "text.pos_embed" else v) for k, v in model.state_dict().items()})
    torch.testing.assert_close(model.encode_text(tokens), short.encode_text(tokens[:, :16]), atol=1e-5, rtol=1e-5)


def test_temperature_init_and_clamp(tiny_cfg):
    model = FLIP(tiny_cfg)
    assert math.isclose(model.logit_scale.exp().item(), 1 / 0.07, rel_tol=1e-5)
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    model.clamp_logit_scale()
    assert math.isclose(model.logit_scale.item(), math.log(100), rel_tol=1e-6)
    with torch.no_grad():
        model.logit_scale.fill_(-1.0)
    model.clamp_logit_scale()
    assert model.logit_scale.item() == 0.0


def test_only_the_sigmoid_loss_model_has_a_logit_bias(tiny_cfg):
    """SigLIP's init (t = 10, b = -10) for `--loss sigmoid`; the contrastive model, its saved config and
    its checkpoints are as they were before the bias existed."""
    plain = FLIP(tiny_cfg)
    assert plain.logit_bias is None and "logit_bias" not in plain.state_dict()
    assert "init_logit_bias" not in tiny_cfg.to_dict() and tiny_cfg.with_loss("contrastive") == tiny_cfg
    sigmoid_cfg = tiny_cfg.with_loss("sigmoid")
    sigmoid = FLIP(sigmoid_cfg)
    assert set(sigmoid.state_dict()) - set(plain.state_dict()) == {"logit_bias"}
    assert sigmoid.logit_bias.item() == -10.0
    assert math.isclose(sigmoid.logit_scale.exp().item(), 10.0, rel_tol=1e-6)
    assert ModelConfig.from_dict(sigmoid_cfg.to_dict()) == sigmoid_cfg
    assert "logit_bias" in sigmoid.no_weight_decay()


def test_projections_are_bias_free_and_no_ln_after_patch_embed(tiny_cfg):
    model = FLIP(tiny_cfg)
    assert model.visual.proj.bias is None and model.text.proj.bias is None
    assert isinstance(model.visual.patch_embed.norm, torch.nn.Identity)


def test_presets_resolve_and_tiny_text_is_cheap():
    from flip.flops import forward_flops

    assert get_preset("ViT-B-16").name == "B/16"
    with pytest.raises(KeyError):
        get_preset("Z/99")
    flops = forward_flops(PRESETS["tiny"], 0.0)
    assert flops["text"] <= 0.10 * flops["image"]


def test_image_flops_scale_with_kept_patches():
    from flip.flops import forward_flops

    cfg = PRESETS["B/16"]
    full, half, quarter = (forward_flops(cfg, r)["image"] for r in (0.0, 0.5, 0.75))
    # linear layers dominate: FLOPs track the token count (1 + kept) / (1 + L) within a few %
    # (attention shrinks quadratically, the patch embedding is not masked)
    assert abs(half / full - 99 / 197) < 0.02
    assert abs(quarter / full - 50 / 197) < 0.02


def test_default_text_tower_attends_to_padding(tiny_cfg):
    torch.manual_seed(0)
    model = FLIP(tiny_cfg).eval()
    tokens = torch.zeros(1, 32, dtype=torch.long)
    tokens[0, :5] = torch.tensor([49406, 320, 736, 7117, 49407])
    base = model.encode_text(tokens)
    with torch.no_grad():
        model.text.token_embedding.weight[0] += 1.0  # the padding embedding reaches the feature
    assert not torch.allclose(model.encode_text(tokens), base)
