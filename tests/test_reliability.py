"""Fault injection for `flipctl train`: polite stops, requeued command lines, kills (inside a
checkpoint write and of a data-loader worker too), non-finite losses and gradients, failing
writes, corrupt data by kind, planted pickles and partial checkpoints.

A fault may cost the work since the last checkpoint, never more: every resumed run here must
end with weights bit-identical to an uninterrupted run with the same seed.

The kills at 21 random points are marked slow: `pytest -q -m slow tests/test_reliability.py`.
"""

import errno
import io
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load_file
from typer.testing import CliRunner

from flip.data.augment import AugmentConfig
from flip.data.pipeline import ShardStream, StreamConfig, train_transform
from flip.errors import WriteError
from flip.models import FLIP, get_preset
from flip.saved_model import load_model, resolve_checkpoint, write_model
from flip.train.checkpoint import PAUSE_ENV, load_state, save_checkpoint, save_state
from flip.train.config import TrainConfig
from flip.train.faults import StopRequested
from flip.train.step import TrainStep
from flip.train.trainer import Trainer, resolve, train
from flipctl.main import app

FLIPCTL = [sys.executable, "-m", "flipctl.main"]
METRICS_FILE = "metrics.jsonl"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
STEPS = 40
runner = CliRunner()


# -- helpers -----------------------------------------------------------------------------------------
def _cli_args(ds: Path, out: Path, steps: int = STEPS, ckpt_every: int = 10) -> list[str]:
    return ["train", "--data", str(ds / "train"), "--batch-size", "8", "--samples", str(8 * steps), "--seed", "5",
            "--workers", "2", "--log-every", "1", "--ckpt-every", str(ckpt_every), "--shuffle-buffer", "50",
            "--out", str(out)]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(resolve_checkpoint(run) / "model.safetensors"))


def _assert_identical(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key  # bit-identical


def _logged_steps(run: Path) -> list[int]:
    path = run / METRICS_FILE
    steps = []
    for line in (path.read_text().splitlines() if path.exists() else []):
        try:
            steps.append(json.loads(line)["step"])
        except (json.JSONDecodeError, KeyError):
            pass  # a line being written
    return steps


def _last_step(run: Path) -> int:
    return max(_logged_steps(run), default=0)


def _checkpoint_step(run: Path) -> int:
    latest = run / "latest"
    return int(latest.read_text().split("-")[1]) if latest.exists() else 0


def _start(args: list[str], log: Path, **env: str) -> subprocess.Popen:
    # Its own process group, as a job's: a signal to the group reaches the data-loader workers too.
    return subprocess.Popen(FLIPCTL + args, env={**ENV, **env}, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def _wait(proc: subprocess.Popen, condition, what: str, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        if proc.poll() is not None:
            raise AssertionError(f"flipctl exited ({proc.returncode}) before {what}")
        time.sleep(0.01)
    _kill(proc)
    raise AssertionError(f"timed out waiting for {what}")


def _kill(proc: subprocess.Popen) -> None:
    """SIGKILL the process and its data-loader workers."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=60)


def _children(pid: int) -> list[int]:
    return [int(c) for task in Path(f"/proc/{pid}/task").iterdir()
            for c in (task / "children").read_text().split()]


def _kill_a_worker(proc: subprocess.Popen) -> None:
    os.kill(_children(proc.pid)[0], signal.SIGKILL)
    proc.wait(timeout=120)
    assert proc.returncode != 0
    _kill(proc)  # whatever is left of its group


def _one_line_error(result, code: int, *needles: str) -> str:
    output = result.output
    assert result.exit_code == code, output
    assert "Traceback" not in output
    line = next(line for line in output.splitlines() if line.startswith("error: "))
    for needle in needles:
        assert needle in line, line
    return line


@pytest.fixture(scope="module")
def reference(small_dataset, tmp_path_factory):
    """Final weights of the uninterrupted run that every interrupted one must reproduce."""
    run = tmp_path_factory.mktemp("reference") / "run"
    subprocess.run(FLIPCTL + _cli_args(small_dataset, run), env=ENV, check=True, capture_output=True)
    return _weights(run)


# -- polite stops and requeues -------------------------------------------------------------------------
@pytest.mark.integration  # trains in processes
def test_sigterm_sigint_sigusr1_checkpoint_first_and_resume_to_the_same_weights(small_dataset, tmp_path,
                                                                                reference):
    run = tmp_path / "run"
    args = _cli_args(small_dataset, run)
    # the resume the stop line suggests, then the identical command line with --resume (a requeue)
    commands = [args, ["train", "--resume", "--out", str(run)], args + ["--resume"], args + ["--resume"]]
    # SIGTERM and SIGINT to the whole process group, as SLURM and a terminal's Ctrl-C send them
    stops = [(signal.SIGTERM, 6, True), (signal.SIGINT, 16, True), (signal.SIGUSR1, 26, False)]
    stopped_at = 0
    for i, (sig, target, group) in enumerate(stops):
        log = tmp_path / f"{i}.log"
        proc = _start(commands[i], log)
        _wait(proc, lambda: _last_step(run) >= target, f"step {target}")
        (os.killpg if group else os.kill)(proc.pid, sig)
        assert proc.wait(timeout=120) == 128 + sig
        output = log.read_text()
        assert "Traceback" not in output
        line = next(line for line in output.splitlines() if line.startswith(f"{signal.Signals(sig).name}: "))
        step = int(re.search(r"stopped at step (\d+)", line).group(1))
        assert target <= step < STEPS and step > stopped_at
        assert f"{run}/ckpt-{step:08d}" in line and f"resume with: flipctl train --resume --out {run}" in line
        assert _checkpoint_step(run) == step and not (run / "summary.json").exists()
        stopped_at = step
    subprocess.run(FLIPCTL + commands[3], env=ENV, check=True, capture_output=True)
    _assert_identical(_weights(run), reference)
    assert _logged_steps(run) == list(range(1, STEPS + 1))  # nothing logged twice, nothing lost


@pytest.mark.integration  # trains in processes
def test_the_identical_command_survives_kills_anywhere(small_dataset, tmp_path, reference):
    """One command line with `--resume auto`, rerun after each SIGKILL as a requeue would: before the
    first checkpoint (so it starts afresh), inside a checkpoint write (between writing the temporary
    files and the rename) and of a data-loader worker."""
    run = tmp_path / "run"
    command = _cli_args(small_dataset, run) + ["--resume", "auto"]

    proc = _start(command, tmp_path / "1.log")
    _wait(proc, lambda: _last_step(run) >= 4, "step 4")
    _kill(proc)
    assert not (run / "latest").exists()

    proc = _start(command, tmp_path / "2.log", **{PAUSE_ENV: "2"})
    _wait(proc, lambda: (run / ".ckpt-00000020.tmp" / "state.pt").exists(), "the checkpoint write of step 20")
    _kill(proc)
    assert _checkpoint_step(run) == 10  # the previous checkpoint, whole
    load_model(run)
    load_state(run / "ckpt-00000010")

    proc = _start(command, tmp_path / "3.log")
    _wait(proc, lambda: _last_step(run) >= 25, "step 25")
    _kill_a_worker(proc)

    subprocess.run(FLIPCTL + command, env=ENV, check=True, capture_output=True)
    _assert_identical(_weights(run), reference)
    assert _logged_steps(run) == list(range(1, STEPS + 1))
    assert not list(run.glob(".ckpt-*.tmp"))
    assert sorted(p.name for p in run.glob("ckpt-*")) == ["ckpt-00000030", "ckpt-00000040"]  # --keep-checkpoints 2
    # Requeued once more after it finished: nothing is trained again.
    result = runner.invoke(app, command)
    assert result.exit_code == 0 and "already finished" in result.output, result.output


@pytest.mark.slow
@pytest.mark.timeout(1200)  # minutes on 2 cores, twice that under load
def test_twenty_one_random_kills_lose_nothing(small_dataset, tmp_path):
    steps, every = 100, 4
    subprocess.run(FLIPCTL + _cli_args(small_dataset, tmp_path / "reference", steps, every), env=ENV, check=True,
                   capture_output=True)
    run = tmp_path / "run"
    command = _cli_args(small_dataset, run, steps, every) + ["--resume", "auto"]
    rng = random.Random(2024)
    kills: Counter = Counter()
    while sum(kills.values()) < 21:
        log = tmp_path / f"{sum(kills.values())}.log"
        kind = rng.choice(["step", "checkpoint write", "worker"])
        if kind == "checkpoint write":
            due = (_checkpoint_step(run) // every + 1) * every
            proc = _start(command, log, **{PAUSE_ENV: "1"})
            _wait(proc, lambda: (run / f".ckpt-{due:08d}.tmp" / "state.pt").exists(), f"checkpoint write {due}")
            _kill(proc)
        else:
            # past anything a killed process logged after its checkpoint: the kill lands in this process
            target = max(_checkpoint_step(run), _last_step(run)) + rng.randint(1, 4)
            assert target < steps, "the run finished before 21 kills"
            proc = _start(command, log)
            _wait(proc, lambda: _last_step(run) >= target, f"step {target}")
            _kill_a_worker(proc) if kind == "worker" else _kill(proc)
        kills[kind] += 1
    subprocess.run(FLIPCTL + command, env=ENV, check=True, capture_output=True)
    _assert_identical(_weights(run), _weights(tmp_path / "reference"))
    assert _logged_steps(run) == list(range(1, steps + 1))
    print(f"kills survived: {dict(kills)}")


# -- the library's stop, and no code from a run directory ------------------------------------------------
class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.integration  # trains
def test_a_stop_event_checkpoints_and_a_planted_pickle_is_refused_not_run(small_dataset, tmp_path):
    run = tmp_path / "run"
    stop = threading.Event()
    stop.set()  # as a signal handler would, before the first step ends
    cfg = TrainConfig(data=str(small_dataset / "train"), batch_size=8, samples=8 * 5, workers=0, seed=1,
                      shuffle_buffer=10, out=str(run))
    with pytest.raises(StopRequested) as info:
        train(cfg, stop=stop)
    assert info.value.step == 1 and info.value.checkpoint == run / "ckpt-00000001"
    assert load_state(run / "ckpt-00000001")["ranks"][0]["progress"]["step"] == 1

    marker = tmp_path / "code-ran"
    torch.save({"optimizer": _Payload(marker), "ranks": []}, run / "ckpt-00000001" / "state.pt")
    result = runner.invoke(app, ["train", "--resume", "--out", str(run)])
    _one_line_error(result, 2, "training state unreadable", str(run / "ckpt-00000001" / "state.pt"),
                    "posix.system")
    assert not marker.exists()


# -- numerical faults ---------------------------------------------------------------------------------------
class _InfGrad(torch.autograd.Function):
    """The identity, whose gradient is infinite: a finite loss with a non-finite gradient."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("inf")


def _inject_nonfinite(monkeypatch, steps: set[int], into: str) -> None:
    original = TrainStep.forward_loss
    calls = Counter()

    def forward_loss(self, images, tokens, *rest):
        losses = original(self, images, tokens, *rest)
        calls["n"] += 1
        if calls["n"] in steps:
            losses["loss"] = losses["loss"] * float("nan") if into == "loss" else _InfGrad.apply(losses["loss"])
        return losses

    monkeypatch.setattr(TrainStep, "forward_loss", forward_loss)


def _small_args(ds: Path, out: Path, samples: int, *extra: str) -> list[str]:
    return ["train", "--data", str(ds / "train"), "--batch-size", "8", "--samples", str(samples), "--workers", "0",
            "--seed", "1", "--shuffle-buffer", "10", "--out", str(out), *extra]


@pytest.mark.integration  # trains
def test_a_nan_loss_stops_and_names_the_step_and_the_last_good_checkpoint(small_dataset, tmp_path, monkeypatch):
    _inject_nonfinite(monkeypatch, {5}, into="loss")
    run = tmp_path / "run"
    result = runner.invoke(app, _small_args(small_dataset, run, 8 * 8, "--ckpt-every", "3", "--log-every", "4"))
    _one_line_error(result, 3, "step 5: the loss or a gradient is NaN or infinite",
                    f"{run}/ckpt-00000003, is intact", "--on-nonfinite skip")
    assert _checkpoint_step(run) == 3 and not (run / "summary.json").exists()
    model, _ = load_model(run)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert load_state(run / "ckpt-00000003")["ranks"][0]["progress"]["step"] == 3


@pytest.mark.integration  # trains
def test_skip_drops_non_finite_updates_and_counts_them(small_dataset, tmp_path, monkeypatch):
    _inject_nonfinite(monkeypatch, {2, 5}, into="gradient")
    run = tmp_path / "run"
    summary = train(TrainConfig(data=str(small_dataset / "train"), batch_size=8, samples=8 * 6, workers=0, seed=1,
                                shuffle_buffer=10, out=str(run), log_every=3, on_nonfinite="skip",
                                keep_resume_state=True))
    assert summary["nonfinite_steps"] == 2 and summary["steps"] == 6
    model, _ = load_model(run)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    adam = load_state(resolve_checkpoint(run))["optimizer"]["state"]
    assert {float(s["step"]) for s in adam.values()} == {4.0}  # 6 steps, 2 never applied
    logged = [json.loads(line) for line in (run / METRICS_FILE).read_text().splitlines()]
    assert [r["nonfinite_steps"] for r in logged] == [1, 2] and all(r["loss"] == r["loss"] for r in logged)


# -- failing writes -----------------------------------------------------------------------------------------
def _fail_second_call(monkeypatch, target: str, error: Exception) -> None:
    module, name = target.rsplit(".", 1)
    real = getattr(__import__(module, fromlist=[name]), name)
    calls = Counter()

    def write(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise error
        return real(*args, **kwargs)

    monkeypatch.setattr(target, write)


def _state_on_a_full_disk(monkeypatch, calls: int = 2) -> None:
    """The resume state (state.pt) of the `calls`-th checkpoint is written to /dev/full, where every write
    fails with ENOSPC as on a full disk; torch.save reports that as a RuntimeError of its own."""
    opened = Counter()

    def open_(path, mode="r", *args, **kwargs):
        opened["n"] += 1
        return open("/dev/full" if opened["n"] == calls else path, mode, *args, **kwargs)

    monkeypatch.setattr("flip.train.checkpoint.open", open_, raising=False)


@pytest.mark.integration  # trains
@pytest.mark.parametrize("fault", ["weights", "state"])
def test_a_failing_checkpoint_write_stops_and_keeps_the_last_checkpoint(small_dataset, tmp_path, monkeypatch, fault):
    if fault == "weights":
        _fail_second_call(monkeypatch, "flip.saved_model.save_file",
                          OSError(errno.ENOSPC, "No space left on device", "model.safetensors"))
    else:
        _state_on_a_full_disk(monkeypatch)
    run = tmp_path / "run"
    result = runner.invoke(app, _small_args(small_dataset, run, 8 * 4, "--ckpt-every", "2"))
    _one_line_error(result, 3, f"cannot write checkpoint {run}/ckpt-00000004", "free there",
                    "a checkpoint needs about", f"{run}/ckpt-00000002, is intact")
    assert _checkpoint_step(run) == 2 and not list(run.glob(".ckpt-*"))  # the failed write's space given back
    load_model(run)
    load_state(run / "ckpt-00000002")


@pytest.mark.integration  # trains
def test_a_failing_metrics_write_stops_with_one_line(small_dataset, tmp_path, monkeypatch):
    class FullDisk(io.StringIO):
        def write(self, text):
            if self.getvalue():
                raise OSError(errno.ENOSPC, "No space left on device", str(run / METRICS_FILE))
            return super().write(text)

    run = tmp_path / "run"
    real_open = Trainer._open_metrics
    monkeypatch.setattr(Trainer, "_open_metrics", lambda self: (real_open(self).close(), FullDisk())[1])
    result = runner.invoke(app, _small_args(small_dataset, run, 8 * 4, "--ckpt-every", "1", "--log-every", "1"))
    _one_line_error(result, 3, f"cannot write the metrics log {run}/{METRICS_FILE}", "No space left on device",
                    f"{run}/ckpt-00000001, is intact")


@pytest.mark.parametrize("size", [1_000, 1_000_000])  # fits torch's writes in the file's buffer, or not
def test_a_failed_state_write_is_the_oserror_it_is(tmp_path, monkeypatch, size):
    """torch.save reports a failed write as a RuntimeError that names neither the cause nor the file; the
    state's writes are watched, so the checkpoint's writer sees the OSError (ENOSPC) itself."""
    _state_on_a_full_disk(monkeypatch, calls=1)
    with pytest.raises(OSError) as failed:
        save_state({"moments": torch.zeros(size)}, tmp_path / "state.pt")
    assert failed.value.errno == errno.ENOSPC


def test_a_runtime_error_in_a_state_write_that_did_not_fail_is_not_a_failed_write(tmp_path, monkeypatch):
    """A data-loader worker's death is raised in the main process wherever it is, inside torch.save too:
    it stays what it is (a bug's traceback), not a full disk's one line."""
    def worker_died(*args, **kwargs):
        raise RuntimeError("DataLoader worker (pid(s) 4242) exited unexpectedly")

    monkeypatch.setattr(torch, "save", worker_died)
    with pytest.raises(RuntimeError, match="DataLoader worker"):
        save_state({"moments": torch.zeros(10)}, tmp_path / "state.pt")


def test_a_failed_weights_write_is_a_write_error(tmp_path, monkeypatch):
    """safetensors reports a failed write as its own SafetensorError: it is raised as a WriteError, an OSError."""
    def full_disk(*args, **kwargs):
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: '
                              '"No space left on device" })')

    monkeypatch.setattr("flip.saved_model.save_file", full_disk)
    with pytest.raises(WriteError) as failed:
        write_model(tmp_path, FLIP(get_preset("tiny")), {})
    assert isinstance(failed.value, OSError) and "No space left on device" in failed.value.strerror


@pytest.mark.integration  # trains
def test_keep_checkpoints_bounds_the_checkpoints_on_disk(small_dataset, tmp_path):
    run = tmp_path / "run"
    train(TrainConfig(data=str(small_dataset / "train"), batch_size=8, samples=8 * 4, workers=0, seed=1,
                      shuffle_buffer=10, out=str(run), ckpt_every=1, keep_checkpoints=3))
    assert sorted(p.name for p in run.glob("ckpt-*")) == ["ckpt-00000002", "ckpt-00000003", "ckpt-00000004"]


# -- corrupt data -------------------------------------------------------------------------------------------
def _png(size: int = 64) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (40, 160, 90)).save(buf, format="PNG")
    return buf.getvalue()


def _shard(path: Path, samples: list[dict[str, bytes]], start: int = 0) -> None:
    with tarfile.open(path, "w") as tar:
        for i, sample in enumerate(samples, start):
            for ext, data in sample.items():
                info = tarfile.TarInfo(f"{i:06d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def _bad_samples(png: bytes) -> dict[str, list[dict[str, bytes]]]:
    return {
        "no_image": [{"txt": b"a caption", "pdf": b"%PDF-1.4"}],  # a non-image member, no image
        "empty_image": [{"jpg": b"", "txt": b"a caption"}],
        "undecodable_image": [{"png": b"not a png", "txt": b"a caption"}, {"jpg": png[:40], "txt": b"cut short"}],
        "no_caption": [{"png": png}],
        "empty_caption": [{"png": png, "txt": b" \n"}],
        "non_utf8_caption": [{"png": png, "txt": b"\xff\xfe a caption"}],
    }


def test_each_kind_of_bad_sample_is_recognised():
    png = _png()
    stream = ShardStream(StreamConfig(urls=(), batch_size=1))
    transform = train_transform(AugmentConfig(64))
    for kind, samples in _bad_samples(png).items():
        for sample in samples:
            assert stream._decode({"__key__": "k", **sample}, 0, transform) == kind
    pixels, caption = stream._decode({"__key__": "k", "png": png, "txt": b"a caption"}, 0, transform)
    assert pixels.shape == (3, 64, 64) and caption == "a caption"


@pytest.mark.integration  # trains
def test_corrupt_data_is_skipped_and_counted_by_kind(tmp_path):
    png = _png()
    data = tmp_path / "data"
    data.mkdir()
    bad = _bad_samples(png)
    good = [{"png": png, "txt": f"a green square {i}".encode()} for i in range(16)]
    _shard(data / "a.tar", [s for samples in bad.values() for s in samples] + good)
    _shard(data / "b.tar", good[:6], start=100)
    cut = (data / "b.tar").read_bytes()
    (data / "b.tar").write_bytes(cut[:len(cut) // 2 // 512 * 512])  # cut at a header: a silent end to tarfile
    _shard(data / "c.tar", good[:4], start=200)
    cfg = resolve(TrainConfig(data=str(data), batch_size=8, samples=8 * 8, workers=0, seed=1, shuffle_buffer=1,
                              out=str(tmp_path / "run"), max_bad_fraction=1.0))
    trainer = Trainer(cfg)
    (data / "c.tar").unlink()  # a shard that disappears while training
    summary = trainer.run()
    by_kind = summary["skipped_by_kind"]
    for kind, samples in bad.items():
        assert by_kind.get(kind, 0) >= len(samples), (kind, by_kind)
    assert by_kind["truncated_shard"] >= 1 and by_kind["unreadable_shard"] >= 1
    assert summary["skipped_samples"] == sum(by_kind.values())
    assert summary["steps"] == 8
    # a source with no shards at all is bad input
    (tmp_path / "empty").mkdir()
    result = runner.invoke(app, ["train", "--data", f"{data}::{tmp_path / 'empty'}", "--samples", "16",
                                 "--batch-size", "8", "--out", str(tmp_path / "run2")])
    _one_line_error(result, 2, "no .tar shards match")


@pytest.mark.integration  # trains
def test_too_much_bad_data_stops_with_a_clear_message(tmp_path):
    png = _png(32)
    samples = [{"png": png, "txt": b"a caption"} if i % 10 == 0 else {"png": b"not a png", "txt": b"a caption"}
               for i in range(1200)]
    _shard(tmp_path / "bad.tar", samples)
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", "--data", str(tmp_path / "bad.tar"), "--batch-size", "8", "--samples", "800",
                                 "--workers", "0", "--shuffle-buffer", "1", "--log-every", "1", "--ckpt-every", "5",
                                 "--out", str(run)])
    line = _one_line_error(result, 2, "samples read so far are unusable", "above --max-bad-fraction 0.05",
                           "undecodable_image", "is intact")
    assert int(re.search(r"of the (\d+) samples", line).group(1)) >= 1000
    load_model(run)  # the last checkpoint before the stop


# -- evaluation on partial checkpoints --------------------------------------------------------------------
@pytest.mark.integration  # trains
def test_evaluation_and_export_refuse_partial_checkpoints(small_dataset, tmp_path):
    model = FLIP(get_preset("tiny"))
    run = tmp_path / "run"
    save_checkpoint(run, 1, model, {"model": model.cfg.to_dict(), "train": {"mask_ratio": 0.5}}, None)
    good = run / "ckpt-00000001"

    def broken(name: str, damage) -> Path:
        path = tmp_path / name
        shutil.copytree(good, path)
        damage(path)
        return path

    weights = (good / "model.safetensors").read_bytes()
    config = json.loads((good / "config.json").read_text())
    cases = {
        "(model.safetensors missing)": broken("no-weights", lambda p: (p / "model.safetensors").unlink()),
        "unreadable weights": broken("truncated", lambda p: (p / "model.safetensors").write_bytes(
            weights[:len(weights) // 2])),
        "is for another model": broken("other-preset", lambda p: (p / "config.json").write_text(
            json.dumps({**config, "model": get_preset("small").to_dict()}))),
        "no valid model section": broken("no-model", lambda p: (p / "config.json").write_text("{}")),
        "unreadable checkpoint config": broken("half-config", lambda p: (p / "config.json").write_text(
            json.dumps(config)[:50])),
    }
    gone = tmp_path / "gone"
    shutil.copytree(run, gone)
    (gone / "latest").write_text("ckpt-00000009\n")  # a run directory naming a checkpoint that is not there
    for needle, path in [*cases.items(), ("no checkpoint at", gone)]:
        for command in (["eval", "zeroshot", "--ckpt", str(path), "--data", str(small_dataset / "zeroshot")],
                        ["eval", "retrieval", "--ckpt", str(path), "--data",
                         str(small_dataset / "retrieval" / "captions.csv")],
                        ["export", str(tmp_path / "out"), "--ckpt", str(path)]):
            _one_line_error(runner.invoke(app, command), 2, needle)
