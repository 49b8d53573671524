"""The knobs of FLIP's successors around the trainer: `--image-size` (CLIPA's training at a reduced
resolution, and `tune-unmasked --image-size` back to full size), a sigmoid-loss run's checkpoints, and the
sweep estimate's timing of the new steps. The losses themselves: test_loss.py; text masks:
test_ablation_knobs.py; FLOPs: test_flops.py."""

import json

import pytest
import torch
from timm.layers import resample_abs_pos_embed
from typer.testing import CliRunner

from flip.errors import ConfigError
from flip.flops import train_step_flops
from flip.models import FLIP
from flip.models.pretrainer import Pretrainer
from flip.saved_model import load_model, resolve_checkpoint
from flip.train.config import StepConfig, TrainConfig
from flip.train.optim import make_optimizer
from flip.train.step import TrainStep
from flip.train.trainer import train, tune_unmasked
from flipctl.main import app


def _tokens_through_the_blocks(model, images, keep=None) -> int:
    seen = {}
    model.visual.blocks[0].register_forward_hook(lambda m, i, o: seen.update(length=o.shape[1]))
    model.encode_image(images, keep)
    return seen["length"]


def test_a_smaller_image_runs_on_fewer_patches_with_resampled_position_embeddings(tiny_cfg):
    model = FLIP(tiny_cfg)  # 64 px, patch 8: an 8x8 grid
    assert _tokens_through_the_blocks(model, torch.randn(2, 3, 64, 64)) == 1 + 64
    assert _tokens_through_the_blocks(model, torch.randn(2, 3, 32, 32)) == 1 + 16
    keep = torch.arange(8).expand(2, 8)  # and masking on top: 8 of the 16
    assert _tokens_through_the_blocks(model, torch.randn(2, 3, 32, 32), keep) == 1 + 8
    # the model's own size uses its own embeddings; a smaller one timm's bicubic resampling of them
    assert model.visual.pos_embed_at((64, 64)) is model.visual.pos_embed
    expected = resample_abs_pos_embed(model.visual.pos_embed, [4, 4], [8, 8], num_prefix_tokens=0)
    torch.testing.assert_close(model.visual.pos_embed_at((32, 32)), expected)
    assert expected.shape == (1, 16, 192)
    with pytest.raises(AssertionError, match="divisible by patch size"):
        model.encode_image(torch.randn(1, 3, 36, 36))


def test_a_training_step_at_the_reduced_size_masks_its_own_grid(tiny_cfg):
    torch.manual_seed(0)
    model = FLIP(tiny_cfg)
    optimizer = make_optimizer(Pretrainer(model), 1e-3, 0.2, (0.9, 0.95), 1e-8, torch.device("cpu"))
    step = TrainStep(model, optimizer, StepConfig(image_size=32, mask_ratio=0.5))
    assert step.grid_size == 4 and step.image_keep(3, torch.device("cpu")).shape == (3, 8)
    before = model.visual.patch_embed.proj.weight.detach().clone()
    seen = {}
    model.visual.blocks[0].register_forward_hook(lambda m, i, o: seen.update(length=o.shape[1]))
    tokens = torch.zeros(4, 32, dtype=torch.long)
    tokens[:, :6] = torch.randint(1, 1000, (4, 6))
    losses = step(torch.randn(4, 3, 32, 32), tokens, 1e-3)
    assert seen["length"] == 1 + 8 and torch.isfinite(losses["loss"])
    assert not torch.equal(before, model.visual.patch_embed.proj.weight)  # it trained
    assert model.visual.pos_embed.shape == (1, 64, 192)  # the model keeps its own shape


@pytest.mark.parametrize("size, needle", [(36, "image_size must be a multiple of tiny's patch size (8), got 36"),
                                          (0, "image_size must be >= 1, got 0")])
def test_an_image_size_off_the_patch_grid_is_refused(size, needle):
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        TrainConfig(image_size=size).validate()


def test_the_cli_says_so_in_one_line():
    result = CliRunner().invoke(app, ["train", "--image-size", "36", "--samples", "16", "--batch-size", "8"])
    assert result.exit_code == 2
    assert "--image-size must be a multiple of tiny's patch size (8), got 36" in result.output
    assert "Traceback" not in result.output


def _cfg(ds, out, **kw):
    return TrainConfig(**{**dict(data=str(ds / "train"), eval_data=str(ds / "retrieval" / "captions.csv"),
                                 model="tiny", batch_size=8, samples=16, workers=0, seed=3, eval_images=8,
                                 shuffle_buffer=20, out=str(out)), **kw})


@pytest.mark.integration  # trains
def test_train_small_then_tune_unmasked_at_full_size(small_dataset, tmp_path, tiny_cfg):
    """CLIPA's schedule at toy scale: 32 px and 50% masking (8 patches a sample), then unmasked tuning back at
    64 px from the same checkpoint, which keeps the model's full-size shapes; FLOPs follow each stage's tokens."""
    parent_cfg = _cfg(small_dataset, tmp_path / "small", image_size=32, mask_ratio=0.5)
    parent = train(parent_cfg)
    per_sample = train_step_flops(tiny_cfg, parent_cfg, 8)["total"] / 8
    assert parent["train_flops_per_sample"] == per_sample
    model, saved = load_model(tmp_path / "small")  # evaluated (here and by `flipctl eval`) at its own 64 px
    assert saved["train"]["image_size"] == 32 and model.cfg.vision.image_size == 64
    assert "image_to_text_R@1" in parent["eval"]

    tuned = tune_unmasked(str(tmp_path / "small"), samples=8, out=str(tmp_path / "full"))
    saved = json.loads((tmp_path / "full" / "config.json").read_text())["train"]
    assert saved["image_size"] is None and saved["mask_ratio"] == 0.0
    assert tuned["train_flops_per_sample"] > 3 * per_sample  # 64 unmasked patches against 8
    assert tuned["parent"] == str(resolve_checkpoint(tmp_path / "small"))

    # `--image-size` on tune-unmasked: another size (here up, as CLIPA-v2's last stage), checked like train's
    cli = CliRunner()
    result = cli.invoke(app, ["tune-unmasked", "--ckpt", str(tmp_path / "small"), "--samples", "8",
                              "--image-size", "48", "--out", str(tmp_path / "tuned48")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "tuned48" / "config.json").read_text())["train"]["image_size"] == 48
    result = cli.invoke(app, ["tune-unmasked", "--ckpt", str(tmp_path / "small"), "--image-size", "50"])
    assert result.exit_code == 2 and "--image-size must be a multiple of tiny's patch size (8), got 50" in result.output


def test_a_step_refuses_images_of_another_size(tiny_cfg):
    model = FLIP(tiny_cfg)
    optimizer = make_optimizer(Pretrainer(model), 1e-3, 0.2, (0.9, 0.95), 1e-8, torch.device("cpu"))
    step = TrainStep(model, optimizer, StepConfig(image_size=32))
    with pytest.raises(ValueError, match=r"images of \(64, 64\) px for a step at 32 px"):
        step(torch.randn(2, 3, 64, 64), torch.ones(2, 32, dtype=torch.long), 1e-3)


@pytest.mark.integration  # trains (the shared run, if no test has yet)
def test_a_contrastive_checkpoint_does_not_start_a_sigmoid_run(small_dataset, trained_run, tmp_path):
    assert json.loads((resolve_checkpoint(trained_run) / "config.json").read_text())["train"]["loss"] == "contrastive"
    no_eval = dict(samples=8, periodic_eval=False, eval_images=1000)  # eval settings would be no-ops here
    with pytest.raises(Exception, match="was trained with the contrastive loss: continue it with the same --loss"):
        train(_cfg(small_dataset, tmp_path / "sig", loss="sigmoid", init_from=str(trained_run), **no_eval))


def test_the_sweep_estimate_times_the_new_knobs_and_counts_their_flops():
    """A dry run can time a step with every new knob, and ranks runs of one model by counted FLOPs that
    follow them: at 32 px a step costs about a quarter of one at 64 px (16 of 64 patches)."""
    from flip.sweep import estimate

    cpu = torch.device("cpu")
    cfg = TrainConfig(image_size=32, loss="sigmoid", loss_chunk=4, text_mask="syntax", text_mask_ratio=0.5)
    assert estimate.time_step(cfg, cpu, batch=4, steps=1) > 0
    full = estimate.flops_per_sample(TrainConfig(mask_ratio=0.0))
    assert 0.25 < estimate.flops_per_sample(TrainConfig(mask_ratio=0.0, image_size=32)) / full < 0.35
    assert estimate.flops_per_sample(TrainConfig(mask_ratio=0.0, loss="sigmoid")) != full
