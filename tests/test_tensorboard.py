"""`--report-to tensorboard`: training curves as event files that TensorBoard's own reader finds."""

import json
import shutil
import time

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from typer.testing import CliRunner

from flip.train.config import TrainConfig, load_toml
from flipctl.main import app


def _scalars(log_dir):
    events = EventAccumulator(str(log_dir))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


@pytest.mark.integration  # trains
def test_train_writes_tensorboard_scalars_by_step_and_by_samples(small_dataset, tmp_path):
    run = tmp_path / "run"
    result = CliRunner().invoke(app, [
        "train", "--data", str(small_dataset / "train"),
        "--eval-data", str(small_dataset / "retrieval" / "captions.csv"),
        "--samples", "64", "--batch-size", "16", "--workers", "0", "--log-every", "2", "--eval-every", "4",
        "--recon-weight", "0.5", "--report-to", "tensorboard", "--out", str(run)])
    assert result.exit_code == 0, result.output
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]  # still written
    train_lines = [r for r in logged if "loss" in r]

    by_step = _scalars(run / "tensorboard")
    for name in ("loss", "contrastive", "recon", "lr", "temperature", "samples_per_s", "data_wait_fraction"):
        points = by_step[f"train/{name}"]
        assert [s for s, _ in points] == [2, 4]
        assert [v for _, v in points] == pytest.approx([r[name] for r in train_lines], rel=1e-6)
    assert [s for s, _ in by_step["eval/image_to_text_R1"]] == [4]
    assert by_step["eval/text_to_image_R5"][0][1] == pytest.approx(logged[-1]["eval"]["text_to_image_R@5"])

    by_samples = _scalars(run / "tensorboard" / "by_samples")
    assert [s for s, _ in by_samples["by_samples/train/loss"]] == [32, 64]
    assert [s for s, _ in by_samples["by_samples/eval/image_to_text_R1"]] == [64]


def test_report_to_in_toml(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('report_to = ["tensorboard"]\n')
    cfg = TrainConfig.from_dict(load_toml(path))
    cfg.validate()
    assert cfg.report_to == ["tensorboard"]


@pytest.mark.integration  # trains
def test_resumed_run_logs_every_step_once(small_dataset, tmp_path):
    """A process killed after a checkpoint logged steps past it; the resumed run logs them again. The
    curves hold each step once, with the resumed run's values, and keep the checkpoint's own step.
    A fresh run drops the events of a process killed before its first checkpoint."""
    from torch.utils.tensorboard import SummaryWriter

    run = tmp_path / "run"
    stale = SummaryWriter(str(run / "tensorboard"))  # a killed process's curve, no checkpoint
    for step in (2, 4, 6):
        stale.add_scalar("train/loss", 999.0, step)
    stale.close()
    args = ["train", "--data", str(small_dataset / "train"), "--samples", "64", "--batch-size", "8",
            "--workers", "0", "--log-every", "2", "--ckpt-every", "4", "--keep-checkpoints", "3",
            "--report-to", "tensorboard", "--out", str(run), "--resume", "auto"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    first = _scalars(run / "tensorboard")["train/loss"]
    assert [s for s, _ in first] == [2, 4, 6, 8] and 999.0 not in [v for _, v in first]

    # as if killed after step 8's log but before its checkpoint: resume from step 4
    shutil.rmtree(run / "ckpt-00000008")
    (run / "latest").write_text("ckpt-00000004\n")
    time.sleep(1.1)  # event files are named by the second; the resumed run's must sort after
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    by_step = _scalars(run / "tensorboard")
    assert [s for s, _ in by_step["train/loss"]] == [2, 4, 6, 8]
    assert [v for _, v in by_step["train/loss"]] == pytest.approx([v for _, v in first], rel=1e-6)  # same seed
    assert [s for s, _ in _scalars(run / "tensorboard" / "by_samples")["by_samples/train/loss"]] == [16, 32, 48, 64]
