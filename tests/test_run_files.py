"""What a run leaves on disk: files as readable as any other (the umask decides), and a finished run
holding only what evaluation, unmasked tuning and reports read (no resume state), unless asked."""

import json
import os
import stat

import pytest
import torch
from typer.testing import CliRunner

from flip.export.open_clip import export_open_clip
from flip.models import FLIP, get_preset
from flip.saved_model import resolve_checkpoint
from flip.train.checkpoint import save_checkpoint
from flip.train.config import TrainConfig
from flip.train.trainer import train
from flipctl.main import app

runner = CliRunner()


@pytest.fixture
def umask():
    """Set a umask for the test, restored after."""
    saved = os.umask(0o022)
    os.umask(saved)
    yield lambda mask: os.umask(mask)
    os.umask(saved)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_weights_are_written_with_the_umask_like_every_other_file(mask, umask, tmp_path):
    umask(mask)
    model = FLIP(get_preset("tiny"))
    ckpt = save_checkpoint(tmp_path / "run", 1, model, {"model": model.cfg.to_dict()}, {"step": torch.zeros(1)},
                           extra_modules={"decoder": torch.nn.Linear(2, 2)})
    expected = 0o666 & ~mask  # 0644 under 022: a teammate can read the weights
    for name in ("model.safetensors", "decoder.safetensors", "config.json", "state.pt"):
        assert _mode(ckpt / name) == expected, name
    exported = export_open_clip(model, tmp_path / "export")
    assert _mode(exported.weights) == expected and _mode(exported.config) == expected


def _train(small_dataset, run, **kw):
    return train(TrainConfig(data=str(small_dataset / "train"), batch_size=8, samples=8 * 4, workers=0, seed=1,
                             shuffle_buffer=10, ckpt_every=2, periodic_eval=False, out=str(run), **kw))


@pytest.mark.integration  # trains
def test_a_finished_run_keeps_only_what_evaluation_tuning_and_reports_need(small_dataset, tmp_path):
    run = tmp_path / "run"
    summary = _train(small_dataset, run)
    assert sorted(p.name for p in run.iterdir()) == ["ckpt-00000002", "ckpt-00000004", "config.json", "latest",
                                                     "metrics.jsonl", "summary.json"]
    for ckpt in run.glob("ckpt-*"):  # weights and config; no state.pt (optimizer moments, RNG, data positions)
        assert sorted(p.name for p in ckpt.iterdir()) == ["config.json", "model.safetensors"]
    load = summary["load"]  # the machine's load while it trained, for the reports
    assert load["cores"] >= 1 and load["own_cpu_s"] > 0 and load["shared"] in (True, False)

    # what reads a finished run still works from it: evaluation, unmasked tuning, resume (returns its summary)
    out = tmp_path / "zs.json"
    result = runner.invoke(app, ["eval", "zeroshot", "--ckpt", str(run), "--data", str(small_dataset / "zeroshot"),
                                 "--workers", "0", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["metrics"]["top1"] >= 0
    result = runner.invoke(app, ["tune-unmasked", "--ckpt", str(run), "--samples", "16", "--out",
                                 str(tmp_path / "tuned")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "tuned" / "summary.json").read_text())["steps"] == 2
    assert not list((tmp_path / "tuned").glob("ckpt-*/state.pt"))
    assert train(TrainConfig(out=str(run)), resume=True)["steps"] == 4


@pytest.mark.integration  # trains
def test_keep_resume_state_keeps_it_and_is_not_part_of_the_run_identity(small_dataset, tmp_path):
    from flip.sweep.store import run_id

    run = tmp_path / "run"
    _train(small_dataset, run, keep_resume_state=True)
    assert (resolve_checkpoint(run) / "state.pt").is_file()
    assert run_id(TrainConfig(keep_resume_state=True)) == run_id(TrainConfig())
