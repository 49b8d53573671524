"""`--report-to wandb`: offline unless a login is configured, the TensorBoard writer's scalars, the run's
config, the run directory's name as the run's name and WANDB_RUN_GROUP (a sweep's name) as its group.
Read back from the offline run's own record file, as `wandb sync` would upload it."""

import importlib.util
import json
import struct
import sys

import pytest
from typer.testing import CliRunner

from flipctl.main import app

needs_wandb = pytest.mark.skipif(importlib.util.find_spec("wandb") is None,
                                 reason="wandb is not installed (pip install 'flipctl[wandb]')")


def _records(path):
    """The protobuf records of a `.wandb` file: LevelDB's log format (32 KiB blocks of chunks with a
    7-byte header: CRC, length, kind) after wandb's 7-byte file header."""
    from wandb.proto import wandb_internal_pb2

    raw, block, pos, pending, records = path.read_bytes(), 32768, 7, b"", []
    assert raw[:4] == b":W&B"
    while pos + 7 <= len(raw):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", raw[pos:pos + 7])
        pending += raw[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a whole record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def _scalars(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


@pytest.mark.integration  # trains
@needs_wandb
def test_wandb_run_is_offline_and_holds_the_tensorboard_scalars(small_dataset, tmp_path, monkeypatch):
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_NAME", "WANDB_PROJECT", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc login: nothing may leave the machine
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_RUN_GROUP", "mask-ratio")  # what `flipctl sweep` sets for its runs
    run = tmp_path / "tiny-m0.5-s0-abc"
    result = CliRunner().invoke(app, [
        "train", "--data", str(small_dataset / "train"),
        "--eval-data", str(small_dataset / "retrieval" / "captions.csv"),
        "--samples", "64", "--batch-size", "16", "--workers", "0", "--log-every", "2", "--eval-every", "4",
        "--report-to", "tensorboard,wandb", "--out", str(run)])
    assert result.exit_code == 0, result.output
    assert "wandb: run tiny-m0.5-s0-abc" in result.output and "offline" in result.output

    [offline] = (run / "wandb").glob("offline-run-*")
    run_id = (run / "wandb" / "run-id").read_text().strip()
    records = _records(offline / f"run-{run_id}.wandb")
    [info] = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert (info.run_id, info.display_name, info.run_group, info.project) == (
        run_id, "tiny-m0.5-s0-abc", "mask-ratio", "flipctl")
    config = {u.key: json.loads(u.value_json) for u in info.config.update if u.key != "_wandb"}
    assert config == json.loads((run / "config.json").read_text())["train"]  # the resolved config, whole
    assert config["batch_size"] == 16 and config["report_to"] == ["tensorboard", "wandb"]

    history = [{i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
               for r in records if r.WhichOneof("record_type") == "history"]
    tensorboard = _scalars(run / "tensorboard")
    logged = {tag for row in history for tag in row if "/" in tag}
    assert logged == set(tensorboard), logged ^ set(tensorboard)  # the same scalars, by the same names
    for tag, points in tensorboard.items():
        ours = [(row["step"], row[tag]) for row in history if tag in row]
        assert [s for s, _ in ours] == [s for s, _ in points], tag
        assert [v for _, v in ours] == pytest.approx([v for _, v in points], rel=1e-6), tag
    assert [(row["step"], row["samples"]) for row in history if "train/loss" in row] == [(2, 32), (4, 64)]


def test_a_login_or_wandb_mode_decides_where_runs_go(tmp_path, monkeypatch):
    from flip.train.wandb_log import mode

    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    assert mode() == "offline"
    (tmp_path / "netrc").write_text("machine api.wandb.ai\n  login user\n  password abc\n")
    (tmp_path / "netrc").chmod(0o600)
    assert mode() == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert mode() == "disabled"


def test_without_wandb_the_flag_is_one_line_before_anything_runs(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed
    result = CliRunner().invoke(app, ["train", "--report-to", "wandb", "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert result.output.strip() == "error: --report-to wandb needs the wandb package: pip install 'flipctl[wandb]'"
    assert not (tmp_path / "run").exists()
