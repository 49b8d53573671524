"""One home per knob: TrainConfig's fields declare the flags, their help, validation and the step's settings."""

import dataclasses
import json
import re

import pytest
import typer
from typer.testing import CliRunner

from flip.errors import ConfigError
from flip.train.config import StepConfig, TrainConfig, knob_help
from flipctl.main import app
from flipctl.train_cmd import flag_help

runner = CliRunner()


def _train_options() -> dict[str, str]:
    """{flag: parameter name} of `flipctl train`."""
    command = typer.main.get_command(app).commands["train"]
    return {opt: param.name for param in command.params for opt in param.opts}


def test_every_field_has_a_flag_or_is_marked_file_only():
    options = _train_options()
    for f in dataclasses.fields(TrainConfig):
        # a field declared without knob() has no "flag" entry: it must say whether it has a flag
        assert "flag" in f.metadata, f"TrainConfig.{f.name}: declare it with knob(...)"
        flag = "--" + f.name.replace("_", "-")
        if f.metadata["flag"]:
            assert options.get(flag) == f.name, f"TrainConfig.{f.name} has no {flag} flag"
        else:
            assert flag not in options, f"TrainConfig.{f.name} is file-only but has a flag"
    assert "--decoder-heads" in options


def _plain(text: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[│╭╮╰╯─]", " ", text))



def test_every_knob_says_whether_it_is_part_of_a_runs_identity():
    """The run store's identity comes from the knobs: each states it, none inherits a default."""
    from flip.train.config import knob

    for f in dataclasses.fields(TrainConfig):
        assert isinstance(f.metadata.get("identity"), bool), \
            f"TrainConfig.{f.name}: say knob(..., identity=True) if it changes what is learned, else identity=False"
    with pytest.raises(TypeError, match="identity"):
        knob(1, "a knob that forgot to say")


def test_settings_that_do_not_change_what_is_learned_keep_the_run_id():
    from flip.sweep.store import IDENTITY, run_id

    # a committed run (results/sweeps/mask-ratio): its id must not move when knobs are added or reclassified
    table_1a = TrainConfig(mask_ratio=0.0, samples=60000, batch_size=64, workers=1)
    assert run_id(table_1a) == "tiny-m0-b64-s0-8f8d5d76b4"
    layout = dict(fsdp=True, activation_checkpointing=True, compile=True, device="cpu", ckpt_every=7, log_every=3,
                  keep_checkpoints=5, periodic_eval=False, report_to=["tensorboard"], out="elsewhere")
    assert not set(layout) & set(IDENTITY)
    assert run_id(dataclasses.replace(table_1a, **layout)) == run_id(table_1a)
    for learned in (dict(seed=1), dict(workers=2), dict(precision="bf16"), dict(on_nonfinite="skip")):
        assert run_id(dataclasses.replace(table_1a, **learned)) != run_id(table_1a), learned

def test_train_help_shows_each_flags_help_from_the_dataclass():
    # wide enough that the longest choice list (--text-mask's six) fits its column without wrapping into the help
    result = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "160", "TERMINAL_WIDTH": "160"})
    assert result.exit_code == 0, result.output
    def _words(text: str) -> str:  # a --no-X flag sits beside its help's second line
        return _plain(re.sub(r"--no-[\w-]+", " ", _plain(text)))

    shown = _words(result.output)
    for f in dataclasses.fields(TrainConfig):
        if f.metadata["flag"]:
            assert _words(flag_help(f)) in shown, f.name
    assert "Default: 0.5." in _plain(knob_help(next(f for f in dataclasses.fields(TrainConfig)
                                                   if f.name == "mask_ratio")))


@pytest.mark.parametrize("settings, needle", [
    ({"mask_ratio": 1.0}, "mask_ratio must be in [0, 1), got 1.0"),
    ({"mask_strategy": "diagonal"}, "mask_strategy must be one of random, block, grid"),
    ({"batch_size": 1}, "batch_size must be >= 2"),
    ({"samples": 6e4}, "samples must be an integer"),
    ({"report_to": ["mlflow"]}, "report_to must be one of jsonl, tensorboard, wandb"),
    ({"decoder_width": 100, "decoder_heads": 3}, "decoder_width must be a multiple of the decoder heads (3)"),
])
def test_validation_follows_the_declared_metadata(settings, needle):
    with pytest.raises(ConfigError) as info:
        TrainConfig(**settings).validate()
    assert needle in str(info.value)
    assert info.value.key in settings


def test_report_to_takes_a_name_a_list_or_commas():
    assert TrainConfig().report_to == ["jsonl"]
    assert TrainConfig(report_to="tensorboard").report_to == ["tensorboard"]
    assert TrainConfig(report_to=["jsonl,tensorboard"]).report_to == ["jsonl", "tensorboard"]


def test_step_settings_and_unmasked_reset_come_from_the_fields():
    cfg = TrainConfig(mask_ratio=0.75, text_mask="padding", text_mask_ratio=0.5, recon_weight=1.0, grad_clip=1.0)
    step = cfg.step_config()
    assert isinstance(step, StepConfig)
    for f in dataclasses.fields(StepConfig):
        assert getattr(step, f.name) == getattr(cfg, f.name)
        assert f.default == TrainConfig.__dataclass_fields__[f.name].default  # one default, not a copy
    assert {f.name for f in dataclasses.fields(StepConfig)} >= {"mask_ratio", "text_mask", "recon_weight"}
    reset = TrainConfig.ablation_defaults()
    assert reset["text_mask"] == "none" and reset["recon_weight"] == 0.0 and "decoder_heads" in reset
    assert "extra" not in TrainConfig.__dataclass_fields__



def test_computed_defaults_are_described_by_the_rule_that_computes_them():
    """A knob whose default resolve() or the trainer computes says it in its rule's words, made from the
    numbers the rule computes with, and nowhere else: the help cannot drift from the value."""
    from flip.train import config

    rules = {"samples": config.BUDGET_RULE, "lr": config.LR_RULE, "base_lr": config.BASE_LR_RULE,
             "warmup": config.WARMUP_RULE, "crop_scale_min": config.CROP_SCALE_RULE, "hflip": config.HFLIP_RULE}
    for f in dataclasses.fields(TrainConfig):
        rule = f.metadata["default_rule"]
        assert rule is rules.get(f.name), f"TrainConfig.{f.name}: default_rule"
        if rule:
            assert "Default" not in f.metadata["help"], f"TrainConfig.{f.name}: the rule says the default, once"
            assert knob_help(f).endswith(f"Default: {rule.describe()}."), f.name
            assert f"Default: {rule.describe()}." in _plain(flag_help(f))
    assert config.BUDGET_RULE.describe().startswith("60k for tiny, 40k for the other presets")
    assert config.BASE_LR_RULE.describe() == ("4e-6 for the paper's presets (B/16, L/16, L/14, H/14), "
                                              "1e-3 for the others")
    # a changed number moves the value and the words together
    moved = dataclasses.replace(config.BUDGET_RULE, values={"tiny": 30_000, "other": 40_000})
    assert moved(TrainConfig()) == 30_000 and moved.describe().startswith("30k for tiny")



def test_unmasked_tuning_defaults_are_described_by_their_rules(tmp_path):
    """tune-unmasked's budget, lr and warm-up defaults: computed by a rule, and its --help says the rule's words."""
    from flip.train import config
    from flip.train.trainer import unmasked_tuning_config

    command = typer.main.get_command(app).commands["tune-unmasked"]
    helps = {param.name: param.help for param in command.params}
    for name, rule in [("samples", config.TUNE_BUDGET_RULE), ("lr", config.TUNE_LR_RULE),
                       ("warmup", config.TUNE_WARMUP_RULE)]:
        assert helps[name].endswith(f"Default: {rule.describe()}."), name
    assert config.TUNE_BUDGET_RULE.describe().startswith("10% of the parent's budget")
    assert config.TUNE_LR_RULE.describe().startswith("the parent's peak lr / 100")
    assert config.TUNE_WARMUP_RULE.describe() == "20% of the tuning budget"

    parent = TrainConfig(samples=60_000, batch_size=64, lr=2e-3, out=str(tmp_path / "parent"))
    assert config.TUNE_BUDGET_RULE(parent) == (6000, None)
    assert config.TUNE_BUDGET_RULE(dataclasses.replace(parent, samples=None, epochs=3.0)) == (None, 0.32)
    assert config.TUNE_BUDGET_RULE(dataclasses.replace(parent, samples=300)) == (64, None)  # at least a batch
    assert config.TUNE_LR_RULE(parent) == pytest.approx(2e-5)
    assert config.TUNE_WARMUP_RULE(parent) == 0.2
    # and the tuning run is made with them (the parent's config read from a checkpoint's config.json)
    ckpt = tmp_path / "parent" / "ckpt-00000001"
    ckpt.mkdir(parents=True)
    (ckpt / "config.json").write_text(json.dumps({"train": parent.to_dict()}))
    (ckpt / "model.safetensors").touch()  # only its presence is checked here
    tuned = unmasked_tuning_config(str(ckpt))
    assert (tuned.samples, tuned.epochs, tuned.lr, tuned.warmup_fraction, tuned.mask_ratio) == \
        (6000, None, pytest.approx(2e-5), 0.2, 0.0)

def test_resolve_and_the_trainer_fill_in_what_the_rules_say(tmp_path):
    from flip.train import config
    from flip.train.trainer import resolve

    builtin_b16 = resolve(TrainConfig(model="B/16", batch_size=512, out=str(tmp_path / "a")))
    assert (builtin_b16.samples, builtin_b16.base_lr, builtin_b16.crop_scale_min, builtin_b16.hflip) == \
        (40_000, 4e-6, 0.9, False)
    assert builtin_b16.peak_lr == pytest.approx(8e-6)
    own = resolve(TrainConfig(data=str(tmp_path), epochs=2.0, out=str(tmp_path / "b")))
    assert (own.samples, own.base_lr, own.crop_scale_min, own.hflip) == (None, 1e-3, 0.5, True)
    assert resolve(TrainConfig(out=str(tmp_path / "c"))).samples == 60_000
    assert config.WARMUP_RULE(TrainConfig(warmup_fraction=0.1), 60_000) == 6000

def test_cli_names_the_setting_as_given(tmp_path):
    result = runner.invoke(app, ["train", "--decoder-heads", "3", "--out", str(tmp_path / "a")])
    assert result.exit_code == 2 and "--decoder-width must be a multiple of the decoder heads (3)" in result.output
    cfg = tmp_path / "run.toml"
    cfg.write_text("mask_ratio = 1.5\n")
    result = runner.invoke(app, ["train", "--config", str(cfg), "--out", str(tmp_path / "b")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert f"mask_ratio (in {cfg}) must be in [0, 1), got 1.5" in _plain(result.output)
    result = runner.invoke(app, ["train", "--config", str(cfg), "--mask-ratio", "2", "--out", str(tmp_path / "c")])
    assert result.exit_code == 2 and "--mask-ratio must be in [0, 1), got 2.0" in result.output


def test_builtin_scenes_pick_their_own_dataset_and_keep_default_run_ids(tmp_path):
    """`--builtin-scenes large` trains and evaluates on its own generated copy; a run that leaves it at the
    default keeps the run id it had before the knob existed (committed results name those ids)."""
    from flip.data import builtin
    from flip.data.synth import SynthConfig
    from flip.sweep.store import run_id
    from flip.train.trainer import resolve

    large = resolve(TrainConfig(builtin_scenes="large", out=str(tmp_path / "run")))
    root = builtin.builtin_dir(SynthConfig(scenes="large"))
    assert root != builtin.builtin_dir() and large.data == builtin.train_spec(root)
    assert large.eval_data == str(builtin.retrieval_csv(root)) and large.hflip is False
    assert resolve(large) == large  # a resolved config (as a resume reads it) resolves to itself
    assert run_id(TrainConfig(model="tiny", mask_ratio=0.0, batch_size=64, samples=20000, workers=1)) == \
        "tiny-m0-b64-s0-5b5ef1a5e5"  # Table 1a's first version (results/ history)
    with pytest.raises(ConfigError, match="built-in dataset only") as info:
        resolve(TrainConfig(builtin_scenes="large", data=str(tmp_path)))
    assert info.value.key == "builtin_scenes"
