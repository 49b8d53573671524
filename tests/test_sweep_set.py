"""`flipctl sweep --set KEY=VALUE`: a base training setting over the spec and its preset, checked like the
spec's own fields, part of every run's identity, recorded in sweep.json and set again by `flipctl report`."""

import json
import sys

import pytest
from typer.testing import CliRunner

from flip.sweep import store as run_store
from flip.sweep.spec import SpecError, load_spec, parse_settings, with_data
from flipctl.main import app

SPEC = """
[sweep]
name = "set-check"
seeds = 1

[base]
model = "tiny"
batch_size = 8
samples = 16
workers = 0
shuffle_buffer = 20
periodic_eval = false

[[rows]]
label = "m50"
mask_ratio = 0.5

[eval]
zeroshot = false
retrieval = false
"""


def test_values_read_as_toml_else_as_text():
    assert parse_settings(["samples=46080", "base_lr=1e-3", "periodic_eval=false", "model=tiny",
                           'mask_strategy="block"', "data=/d/{00..09}.tar", "eval_templates = simple"]) == {
        "samples": 46080, "base_lr": 1e-3, "periodic_eval": False, "model": "tiny", "mask_strategy": "block",
        "data": "/d/{00..09}.tar", "eval_templates": "simple"}
    with pytest.raises(SpecError, match="KEY=VALUE"):
        parse_settings(["samples"])


def test_set_overrides_the_preset_in_every_run_and_its_identity():
    spec = load_spec("mask-ratio", "smoke")
    assert spec.base["samples"] != 4096
    changed = with_data(spec, None, None, None, {"samples": 4096, "weight-decay": 0.1})
    for row in spec.rows:
        cfg, before = changed.config(row, 0), spec.config(row, 0)
        assert (cfg.samples, cfg.weight_decay) == (4096, 0.1) and cfg.mask_ratio == before.mask_ratio
        assert run_store.run_id(cfg) != run_store.run_id(before)
    assert with_data(spec, None, None, None, {}).base == spec.base


@pytest.mark.parametrize("setting, needle", [
    ("mask_ration=0.5", "'mask_ration' is not a training config field"),
    ("weight_decay=high", "weight_decay: expected int/float"),
    ("text_mask_ratio=1.5", "text_mask_ratio"),
    ("mask_ratio=0.5", "--set mask_ratio: the sweep's rows set it"),
    ("out=elsewhere", "'out' is set by the sweep itself"),
    ("samples", "KEY=VALUE"),
    ("data=/x", "--set data and --data both given"),
])
def test_bad_set_is_one_line_exit_2_before_anything_runs(setting, needle, tmp_path):
    result = CliRunner().invoke(app, ["sweep", "mask-ratio", "--preset", "smoke", "--dry-run", "--store",
                                      str(tmp_path / "store"), "--set", setting, "--data", "/d", "--eval-data", "/e",
                                      "--eval-zeroshot", "/z"])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], result.stderr
    assert not (tmp_path / "store").exists()


@pytest.mark.integration  # sweeps
def test_set_is_recorded_and_report_sets_it_again(small_dataset, tmp_path, monkeypatch):
    spec, store, out = tmp_path / "set.toml", tmp_path / "store", tmp_path / "out"
    spec.write_text(SPEC)
    args = ["sweep", str(spec), "--store", str(store), "--out", str(out), "--data", str(small_dataset / "train"),
            "--set", "samples=24", "--set", "weight_decay=0"]
    monkeypatch.setattr(sys, "argv", ["flipctl", *args])  # the command line the sweep records
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "sweep.json").read_text())
    assert manifest["data"]["settings"] == {"samples": 24, "weight_decay": 0}
    assert "--set samples=24 --set weight_decay=0" in (out / "command.txt").read_text()
    (run_id,) = [job["run_id"] for job in manifest["jobs"]]
    saved = json.loads((store / "runs" / run_id / "config.json").read_text())["train"]
    assert (saved["samples"], saved["weight_decay"]) == (24, 0.0)
    assert json.loads((store / "runs" / run_id / "summary.json").read_text())["steps"] == 3
    (out / "results.csv").unlink()
    again = CliRunner().invoke(app, ["report", str(out)])
    assert again.exit_code == 0 and (out / "results.csv").is_file(), again.output
