"""Bad input gets one line on stderr and exit code 2, never a traceback."""

import json
import shutil

import pytest
import typer
from typer.testing import CliRunner

from flipctl.main import app

runner = CliRunner()


def _run(*args):
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def _assert_one_line_error(code, output, needle):
    assert code == 2, output
    assert "Traceback" not in output
    assert needle.lower() in output.lower(), output


@pytest.mark.parametrize("args, needle", [
    (["--data", "/nonexistent/shards-{0..3}.tar", "--samples", "512"], "not found"),
    (["--data", "", "--samples", "512"], "empty data pattern"),
    (["--model", "Z/99"], "unknown model preset"),
    (["--mask-ratio", "1.0"], "mask-ratio"),
    (["--mask-ratio", "-0.1"], "mask-ratio"),
    (["--batch-size", "1"], "batch-size"),
    (["--precision", "fp8"], "precision"),
    (["--resume"], "--out"),
])
def test_train_rejects_bad_input(args, needle, tmp_path):
    code, output = _run("train", "--out", str(tmp_path / "run"), *args) if "--resume" not in args \
        else _run("train", *args)
    _assert_one_line_error(code, output, needle)


def test_train_rejects_unknown_flag():
    code, output = _run("train", "--mask-ratioo", "0.5")
    assert code == 2 and "Traceback" not in output


def test_bad_config_key_and_missing_config(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("mask_ratio = 0.5\nmask_ration = 0.75\n")
    _assert_one_line_error(*_run("train", "--config", str(cfg)), "unknown config key")
    _assert_one_line_error(*_run("train", "--config", str(tmp_path / "none.toml")), "not found")
    cfg.write_text("mask_ratio = [\n")
    _assert_one_line_error(*_run("train", "--config", str(cfg)), "not valid TOML")


def test_resume_without_checkpoint(tmp_path):
    _assert_one_line_error(*_run("train", "--resume", "--out", str(tmp_path)), "nothing to resume")


def test_resume_refuses_settings_that_differ_from_the_saved_run(tmp_path):
    """A requeued command line may repeat the run's settings; one that differs is named with both values."""
    from flip.models import FLIP, get_preset
    from flip.train.checkpoint import save_checkpoint
    from flip.train.config import TrainConfig

    saved = TrainConfig(data="shards", samples=960, batch_size=16, out=str(tmp_path))
    model = FLIP(get_preset("tiny"))
    save_checkpoint(tmp_path, 5, model, {"model": model.cfg.to_dict(), "train": saved.to_dict()}, None)
    code, output = _run("train", "--resume", "--out", str(tmp_path), "--data", "shards", "--batch-size", "16",
                        "--samples", "100", "--mask-ratio", "0.75", "--keep-checkpoints", "3")
    _assert_one_line_error(code, output, "--samples 100 (saved: 960)")
    assert "--mask-ratio 0.75 (saved: 0.5)" in output and len(output.strip().splitlines()) == 1
    assert "--batch-size" not in output and "--data" not in output and "--keep" not in output
    toml = tmp_path / "run.toml"
    toml.write_text("seed = 4\n")
    _assert_one_line_error(*_run("train", "--resume", "--out", str(tmp_path), "--config", str(toml)),
                           f"seed (in {toml}) 4 (saved: 0)")
    _assert_one_line_error(*_run("train", "--resume", "--out", str(tmp_path), "--keep-checkpoints", "0"),
                           "--keep-checkpoints must be >= 1")
    _assert_one_line_error(*_run("train", "auto", "--out", str(tmp_path)), "unexpected argument 'auto'")


def test_existing_run_directory_is_not_overwritten(small_dataset, tmp_path):
    from flip.train.config import TrainConfig
    from flip.train.trainer import train

    out = tmp_path / "run"
    train(TrainConfig(data=str(small_dataset / "train"), eval_data=str(small_dataset / "retrieval/captions.csv"),
                      batch_size=8, samples=16, workers=0, out=str(out), shuffle_buffer=10))
    code, output = _run("train", "--data", str(small_dataset / "train"), "--samples", "16", "--batch-size", "8",
                        "--out", str(out))
    _assert_one_line_error(code, output, "already holds a run")

    # unreadable and mismatched checkpoints
    _assert_one_line_error(*_run("tune-unmasked", "--ckpt", str(tmp_path / "nothing")), "no checkpoint")
    ckpt = out / (out / "latest").read_text().strip()
    broken = tmp_path / "broken"
    shutil.copytree(ckpt, broken)
    (broken / "model.safetensors").write_bytes(b"garbage")
    _assert_one_line_error(*_run("tune-unmasked", "--ckpt", str(broken)), "unreadable weights")
    other = tmp_path / "other"
    shutil.copytree(ckpt, other)
    config = json.loads((other / "config.json").read_text())
    config["model"]["vision"]["width"] = 96
    (other / "config.json").write_text(json.dumps(config))
    _assert_one_line_error(*_run("tune-unmasked", "--ckpt", str(other)), "another model")


def test_train_on_shards_with_nothing_readable_is_an_error(tmp_path):
    bad = tmp_path / "bad.tar"
    bad.write_bytes(b"\x00garbage" * 100)
    code, output = _run("train", "--data", str(bad), "--samples", "16", "--batch-size", "8", "--workers", "0",
                        "--out", str(tmp_path / "run"))
    _assert_one_line_error(code, output, "not a webdataset shard")  # found before the run starts
    assert not (tmp_path / "run").exists()


def test_shipped_configs_are_valid():
    from pathlib import Path

    from flip.train.config import TrainConfig, load_toml

    configs = sorted((Path(__file__).parent.parent / "sweeps" / "configs").glob("*.toml"))
    assert configs
    for path in configs:
        TrainConfig.from_dict(load_toml(path)).validate()


# -- user errors and bugs ---------------------------------------------------------------------------
def test_an_internal_value_error_is_a_bug_with_its_traceback(monkeypatch, tmp_path):
    """Only FlipErrors are the user's: any other exception, a plain ValueError too, keeps its traceback."""
    import traceback

    import flip.eval.api

    def broken(*args, **kwargs):
        raise ValueError("boom")

    monkeypatch.setattr(flip.eval.api, "load_model", broken)
    from flip.models import FLIP, get_preset
    from flip.train.checkpoint import save_checkpoint

    model = FLIP(get_preset("tiny"))
    save_checkpoint(tmp_path, 1, model, {"model": model.cfg.to_dict()}, None)
    result = runner.invoke(app, ["eval", "zeroshot", "--ckpt", str(tmp_path), "--data", str(tmp_path)])
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, ValueError) and str(result.exception) == "boom"
    assert "error:" not in result.output
    assert "broken" in "".join(traceback.format_exception(result.exception))


@pytest.mark.integration  # a flipctl process
def test_the_flipctl_process_prints_a_bugs_traceback_and_exits_1(tmp_path):
    import subprocess
    import sys

    code = ("import flip.eval.api as api\n"
            "def broken(*a, **k): raise ValueError('boom')\n"
            "api.resolve_checkpoint = broken\n"
            "from flipctl.main import app\n"
            f"app(['eval', 'retrieval', '--ckpt', {str(tmp_path)!r}])\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "ValueError: boom" in result.stderr and "error:" not in result.stderr


def test_user_errors_from_data_loader_workers_stay_one_line(capsys):
    from torch.utils.data import DataLoader, Dataset

    from flip.errors import DataError
    from flipctl.errors import user_errors

    class Broken(Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            raise DataError("sample.tar: no images in it")

    @user_errors
    def command():
        list(DataLoader(Broken(), num_workers=1))

    with pytest.raises(typer.Exit) as exc:
        command()
    assert exc.value.exit_code == 2
    assert capsys.readouterr().err == "error: sample.tar: no images in it\n"


def test_settings_are_named_as_the_user_gave_them():
    from flip.errors import ConfigError
    from flipctl.errors import error_line, setting_name, settings_from_file

    exc = ConfigError("must be in [0, 1), got 1.0", key="mask_ratio")
    assert str(exc) == "mask_ratio must be in [0, 1), got 1.0"
    assert error_line(exc) == "--mask-ratio must be in [0, 1), got 1.0"
    with pytest.raises(ConfigError) as caught, settings_from_file("run.toml", {"mask_ratio"}):
        raise exc
    assert error_line(caught.value) == "mask_ratio (in run.toml) must be in [0, 1), got 1.0"
    assert setting_name("batch_size", {"mask_ratio"}, "run.toml") == "--batch-size"
    assert isinstance(exc, ValueError)  # `except ValueError` in library code keeps working
