"""A setting that does nothing without another one is an error naming both, never a silent run
(issue 19, part 3): on the command line (one line, exit code 2, before any data is made), in a TOML
config, and in a sweep spec (an axis over such a setting fails at spec load)."""

import pytest
from typer.testing import CliRunner

from flip.errors import ConfigError
from flip.sweep.spec import SpecError, load_spec
from flip.train.config import TrainConfig
from flipctl.main import app

runner = CliRunner()


def _one_line_error(args, *names):
    result = runner.invoke(app, args)
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


TRAIN_PAIRS = [
    (["--text-mask", "random"], "--text-mask random", "--text-mask-ratio"),
    (["--text-mask", "padding"], "--text-mask padding", "--text-mask-ratio"),
    (["--text-mask-ratio", "0.5"], "--text-mask-ratio 0.5", "--text-mask none"),
    (["--decoder-depth", "3"], "--decoder-depth 3", "--recon-weight"),
    (["--decoder-width", "64"], "--decoder-width 64", "--recon-weight"),
    (["--decoder-heads", "2"], "--decoder-heads 2", "--recon-weight"),
    (["--warmup", "100", "--warmup-fraction", "0.1"], "--warmup-fraction", "--warmup "),
    (["--lr", "1e-3", "--base-lr", "2e-3"], "--base-lr", "--lr "),
    (["--mask-strategy", "block", "--mask-ratio", "0"], "--mask-strategy block", "--mask-ratio 0"),
    (["--mask-strategy", "grid", "--mask-ratio", "0"], "--mask-strategy grid", "--mask-ratio 0"),
    (["--no-periodic-eval", "--eval-every", "5"], "--eval-every 5", "--no-periodic-eval"),
    (["--no-periodic-eval", "--eval-images", "5"], "--eval-images 5", "--no-periodic-eval"),
    (["--no-periodic-eval", "--eval-zeroshot-images", "5"], "--eval-zeroshot-images 5", "--no-periodic-eval"),
    (["--no-periodic-eval", "--eval-templates", "simple"], "--eval-templates simple", "--no-periodic-eval"),
    (["--no-periodic-eval", "--eval-data", "/x/captions.csv"], "--eval-data", "--no-periodic-eval"),
    (["--no-periodic-eval", "--eval-zeroshot", "/x/zeroshot"], "--eval-zeroshot", "--no-periodic-eval"),
    (["--data", "/x/shards", "--samples", "512", "--eval-images", "5"], "--eval-images 5", "--eval-data"),
    (["--data", "/x/shards", "--samples", "512", "--eval-templates", "simple"], "--eval-templates", "--eval-zeroshot"),
    (["--data", "/x/shards", "--samples", "512", "--eval-zeroshot-images", "5"], "--eval-zeroshot-images",
     "--eval-zeroshot"),
    (["--node-rank", "0"], "--node-rank", "--nnodes"),
    (["--rdzv-endpoint", "node0:29500"], "--rdzv-endpoint", "--nproc"),
    (["--partition", "gpu"], "--partition", "--launcher slurm"),
]


@pytest.mark.parametrize("args, first, second", TRAIN_PAIRS, ids=[" ".join(a) for a, _, _ in TRAIN_PAIRS])
def test_train_refuses_a_setting_that_does_nothing(args, first, second, tmp_path, monkeypatch):
    monkeypatch.setenv("FLIP_CACHE", str(tmp_path / "cache"))
    _one_line_error(["train", "--out", str(tmp_path / "run"), *args], first, second)
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()  # checked before any data


def test_a_toml_config_names_its_own_keys(tmp_path):
    config = tmp_path / "run.toml"
    config.write_text('text_mask = "random"\n')
    _one_line_error(["train", "--config", str(config)], f"text_mask (in {config}) random", "--text-mask-ratio 0")
    config.write_text("decoder_depth = 3\nrecon_weight = 0.0\n")
    _one_line_error(["train", "--config", str(config)], f"decoder_depth (in {config}) 3",
                    f"recon_weight (in {config}) 0")


def test_settings_that_act_together_still_pass():
    for settings in (dict(text_mask="padding", text_mask_ratio=0.5), dict(recon_weight=1.0, decoder_depth=1),
                     dict(warmup=100), dict(warmup_fraction=0.1), dict(lr=1e-3), dict(base_lr=1e-3),
                     dict(mask_strategy="block", mask_ratio=0.5), dict(periodic_eval=False),
                     dict(eval_every=5, eval_images=8, eval_templates="simple"),
                     dict(data="/x", eval_data="/y.csv", eval_images=8)):
        TrainConfig(**settings).validate()


def test_unmasked_tuning_with_a_warmup_in_samples_is_not_a_conflict(ckpt, tmp_path):
    """Tuning sets its own warm-up fraction; a --warmup replaces it rather than clashing with it."""
    from flip.train.trainer import unmasked_tuning_config

    cfg = unmasked_tuning_config(str(ckpt), samples=512, warmup=16, out=str(tmp_path / "tuned"))
    assert cfg.warmup == 16
    assert unmasked_tuning_config(str(ckpt), samples=512, out=str(tmp_path / "t2")).warmup_fraction == 0.2


def test_library_error_names_both_settings():
    with pytest.raises(ConfigError, match="text_mask_ratio 0.5 does nothing with text_mask none"):
        TrainConfig(text_mask_ratio=0.5).validate()


# -- sweeps -------------------------------------------------------------------------------------------------

SPEC = """
[sweep]
name = "noop"
[base]
model = "tiny"
batch_size = 16
samples = 32
{base}
[axes]
{axes}
"""


@pytest.mark.parametrize("base, axes, needle", [
    ("", "text_mask_ratio = [0.0, 0.5]", "text_mask_ratio 0.5 does nothing with text_mask none"),
    ("", 'text_mask = ["none", "random"]', "text_mask random drops no text tokens at text_mask_ratio 0"),
    ("", "decoder_depth = [1, 2]", "decoder_depth 1 does nothing at recon_weight 0"),
    ("periodic_eval = false", "eval_every = [10, 100]", "eval_every 10 does nothing with --no-periodic-eval"),
    ("", "ckpt_every = [10, 20]", "are the same run: ckpt_every does not change what is trained"),
    ("", "compile = [false, true]", "are the same run: compile does not change what is trained"),
    ("", "fsdp = [false, true]", "are the same run: fsdp does not change what is trained"),
], ids=["text-mask-ratio", "text-mask", "decoder", "eval-every", "ckpt-every", "compile", "fsdp"])
def test_an_axis_over_a_no_op_setting_fails_at_spec_load(base, axes, needle, tmp_path):
    spec = tmp_path / "noop.toml"
    spec.write_text(SPEC.format(base=base, axes=axes))
    with pytest.raises(SpecError, match=needle.replace("(", r"\(")):
        load_spec(spec)
    line = _one_line_error(["sweep", str(spec), "--store", str(tmp_path / "store"), "--out", str(tmp_path / "out")])
    assert needle in line and not (tmp_path / "store").exists() and not (tmp_path / "out").exists()


def test_sweep_flags_that_do_nothing(tmp_path):
    store = ["--store", str(tmp_path / "store")]
    _one_line_error(["sweep", "mask-ratio", "--preset", "smoke", "--jobs", "2", "--launcher", "slurm", *store],
                    "--jobs", "--launcher slurm", "--max-parallel")
    # Table 1d evaluates zero-shot only: a retrieval set would be ignored.
    _one_line_error(["sweep", "inference", "--preset", "smoke", "--eval-data", str(tmp_path / "c.csv"), *store],
                    "--eval-data", "retrieval = false")
    assert not (tmp_path / "store").exists()


def test_eval_flags_that_do_nothing():
    _one_line_error(["eval", "zeroshot", "--ckpt", "nowhere", "--seed", "3"], "--seed", "--mask-ratio", "--views")
    _one_line_error(["eval", "retrieval", "--ckpt", "nowhere", "--seed", "3"], "--seed", "--mask-ratio")
    _one_line_error(["eval", "retrieval", "--ckpt", "nowhere", "--images-root", "/x"], "--images-root", "--data")
