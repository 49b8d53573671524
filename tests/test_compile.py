"""`--compile` end to end (train, resume, tune-unmasked, eval), the backend choice with its fallback
when inductor cannot build kernels, and the warning for a precision far slower than fp32.

Most runs here use the aot_eager fallback (traced forward and backward, no C++ build: seconds, not
minutes): the probe that picks inductor is replaced by one that reports no compiler. One subprocess
run hides the real C++ compiler from inductor and checks the whole fallback; the run with inductor
itself is marked slow.
"""

import json
import os
import subprocess
import sys
import threading

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

import flip.compile
from flip.compile import FALLBACK_BACKEND, INDUCTOR, choose_backend, inductor_error
from flip.models import FLIP, get_preset
from flip.models.pretrainer import Pretrainer
from flip.precision import SLOWDOWN_LIMIT, precision_warning, probe_seconds, slowdown_warning
from flip.saved_model import resolve_checkpoint
from flip.train.config import StepConfig, TrainConfig
from flip.train.faults import StopRequested
from flip.train.optim import make_optimizer
from flip.train.step import TrainStep
from flip.train.trainer import train
from flipctl.main import app

FLIPCTL = [sys.executable, "-m", "flipctl.main"]
NO_COMPILER = "InvalidCxxCompiler: no C++ compiler (test)"
runner = CliRunner()


@pytest.fixture
def no_inductor(monkeypatch):
    """Make inductor look unusable here, so --compile takes the (fast) fallback backend."""
    monkeypatch.setattr(flip.compile, "inductor_error", lambda device_type: NO_COMPILER)


def _cfg(ds, out, **kw):
    base = dict(data=str(ds / "train"), model="tiny", mask_ratio=0.5, batch_size=8, samples=8 * 4, workers=0,
                seed=5, out=str(out), log_every=1, shuffle_buffer=20, periodic_eval=False)  # one checkpoint, the last
    return TrainConfig(**{**base, **kw})


# -- the backend -----------------------------------------------------------------------------------

def test_backend_is_inductor_where_it_builds_else_the_fallback_with_its_reason():
    assert choose_backend("cpu", probe=lambda t: None) == flip.compile.Backend(INDUCTOR)
    fallback = choose_backend("cpu", probe=lambda t: NO_COMPILER)
    assert fallback.name == FALLBACK_BACKEND and NO_COMPILER in fallback.note and "cpu" in fallback.note
    never = lambda t: pytest.fail("a requested backend needs no probe")  # noqa: E731
    assert choose_backend("cpu", "eager", probe=never).name == "eager"


@pytest.mark.integration  # inductor imports and probes a C++ build: seconds
def test_inductor_probe_names_a_missing_compiler(monkeypatch):
    import torch._inductor.config as inductor_config

    monkeypatch.setattr(inductor_config.cpp, "cxx", ("/nonexistent/c++",))
    inductor_error.cache_clear()
    try:
        error = inductor_error("cpu")
    finally:
        inductor_error.cache_clear()  # the next caller probes the real compiler again
    assert error is not None and "c++" in error.lower()


@pytest.mark.integration  # dynamo traces the model: seconds
def test_train_step_runs_a_compiled_forward_like_the_eager_one(tiny_cfg):
    """The bug: `forward_model or Pretrainer(...)` called bool() on a compiled module (TypeError)."""
    images, tokens = torch.randn(4, 3, 64, 64), torch.randint(1, 1000, (4, tiny_cfg.text.context_length))
    losses = []
    for compiled in (False, True):
        torch.manual_seed(0)
        model = FLIP(tiny_cfg)
        optimizer = make_optimizer(Pretrainer(model), 1e-4, 0.2, (0.9, 0.95), 1e-6, torch.device("cpu"))
        forward = torch.compile(Pretrainer(model), backend=FALLBACK_BACKEND) if compiled else None
        step = TrainStep(model, optimizer, StepConfig(mask_ratio=0.0), forward_model=forward)
        losses.append([step(images, tokens, 1e-4)["loss"].item() for _ in range(2)])
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


# -- end to end --------------------------------------------------------------------------------------

@pytest.mark.integration  # a flipctl process
def test_train_compile_without_a_cpp_compiler_falls_back_and_says_why(small_dataset, tmp_path):
    """The real thing: inductor finds no C++ compiler (CXX points nowhere), one line says so, the run trains."""
    env = {**os.environ, "CXX": "/nonexistent/c++", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(FLIPCTL + ["train", "--data", str(small_dataset / "train"), "--samples", "16",
                                       "--batch-size", "8", "--workers", "0", "--no-periodic-eval", "--compile",
                                       "--out", str(tmp_path / "run")],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    notes = [line for line in result.stderr.splitlines() if line.startswith("--compile:")]
    assert len(notes) == 1 and "C++ compiler" in notes[0] and f"backend {FALLBACK_BACKEND}" in notes[0]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["steps"] == 2


@pytest.mark.integration  # trains
def test_resume_with_compile_continues_the_same_run(small_dataset, tmp_path, no_inductor):
    """A run stopped eager and resumed with --compile ends where the uninterrupted eager run ends, and its
    checkpoints keep the plain parameter names (no `_orig_mod.` prefix from the compiled wrapper)."""
    train(_cfg(small_dataset, tmp_path / "full"))
    stop = threading.Event()
    stop.set()  # stop after the first step, with a checkpoint
    with pytest.raises(StopRequested):
        train(_cfg(small_dataset, tmp_path / "stopped"), stop=stop)
    summary = train(TrainConfig(out=str(tmp_path / "stopped")), resume=True, settings={"compile": True})
    assert summary["steps"] == 4
    saved = json.loads((resolve_checkpoint(tmp_path / "stopped") / "config.json").read_text())
    assert saved["train"]["compile"] is True
    full = load_file(str(resolve_checkpoint(tmp_path / "full") / "model.safetensors"))
    resumed = load_file(str(resolve_checkpoint(tmp_path / "stopped") / "model.safetensors"))
    assert set(resumed) == set(full) and not any("_orig_mod" in key for key in resumed)
    for key in full:
        torch.testing.assert_close(resumed[key], full[key], rtol=1e-4, atol=1e-5)


@pytest.mark.integration  # trains
def test_tune_unmasked_compile_from_the_cli(trained_run, tmp_path, no_inductor):
    result = runner.invoke(app, ["tune-unmasked", "--ckpt", str(trained_run), "--samples", "16",
                                 "--out", str(tmp_path / "tuned"), "--compile"])
    assert result.exit_code == 0, result.output
    assert NO_COMPILER in result.output
    saved = json.loads((resolve_checkpoint(tmp_path / "tuned") / "config.json").read_text())["train"]
    assert saved["compile"] is True and saved["mask_ratio"] == 0.0
    assert not any("_orig_mod" in key for key in load_file(str(resolve_checkpoint(tmp_path / "tuned")
                                                                 / "model.safetensors")))


@pytest.mark.integration  # trains
@pytest.mark.parametrize("task, data", [("zeroshot", "zeroshot"), ("retrieval", "retrieval/captions.csv")])
def test_eval_compile_gives_the_eager_metrics(small_dataset, tmp_path, no_inductor, task, data):
    from flip.train.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = FLIP(get_preset("tiny"))
    save_checkpoint(tmp_path / "run", 1, model, {"model": model.cfg.to_dict(), "train": {"mask_ratio": 0.5}}, None)
    records = {}
    for flag in ("--no-compile", "--compile"):
        out = tmp_path / f"{flag}.json"
        result = runner.invoke(app, ["eval", task, "--ckpt", str(tmp_path / "run"), "--data",
                                     str(small_dataset / data), "--workers", "0", "--batch-size", "8", flag,
                                     "--json", str(out)])
        assert result.exit_code == 0, result.output
        assert (NO_COMPILER in result.output) == (flag == "--compile")
        records[flag] = json.loads(out.read_text())
    assert records["--compile"]["settings"]["compile"] == FALLBACK_BACKEND
    assert records["--no-compile"]["settings"]["compile"] is None
    assert records["--compile"]["metrics"] == pytest.approx(records["--no-compile"]["metrics"])


@pytest.mark.slow
@pytest.mark.timeout(1200)  # minutes on 2 cores, twice that under load
def test_train_compile_with_inductor(small_dataset, tmp_path):
    """Inductor itself, where it builds kernels here (a few minutes on 2 CPU cores: slow)."""
    if inductor_error("cpu") is not None:
        pytest.skip(f"inductor does not build kernels here: {inductor_error('cpu')}")
    result = subprocess.run(FLIPCTL + ["train", "--data", str(small_dataset / "train"), "--samples", "16",
                                       "--batch-size", "8", "--workers", "0", "--no-periodic-eval", "--compile",
                                       "--out", str(tmp_path / "run")],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "--compile:" not in result.stderr  # no fallback note: inductor compiled
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["steps"] == 2


# -- a precision far slower than fp32 ------------------------------------------------------------------

def test_slowdown_warning_from_injected_timings():
    assert slowdown_warning("bf16", 0.010, 0.280, "this CPU", "no native bf16") == (
        "warning: bf16 is 28x slower than fp32 on this CPU (no native bf16), measured on a small transformer "
        "block's forward and backward; training will be several times slower: use --precision fp32")
    assert "2.5x slower" in slowdown_warning("bf16", 0.010, 0.025, "this CPU")
    assert slowdown_warning("bf16", 0.010, SLOWDOWN_LIMIT * 0.010, "this CPU") is None  # at the limit: quiet
    assert slowdown_warning("bf16", 0.010, 0.004, "this CPU") is None  # faster: quiet
    assert slowdown_warning("fp32", 0.010, 1.0, "this CPU") is None
    assert precision_warning("cpu", "fp32") is None  # nothing measured for fp32


def test_precision_probe_times_both_precisions_on_one_thread():
    threads = torch.get_num_threads()
    seconds = probe_seconds(torch.device("cpu"), ("fp32", "bf16"), repeats=1)
    assert set(seconds) == {"fp32", "bf16"} and all(0 < s < 30 for s in seconds.values())
    assert torch.get_num_threads() == threads  # restored


@pytest.mark.integration  # trains
def test_trainer_prints_the_precision_warning_once(small_dataset, tmp_path, monkeypatch):
    import flip.train.trainer as trainer_module
    from flip.train.reporting import Reporter

    class Messages(Reporter):
        def __init__(self):
            self.lines = []

        def message(self, text):
            self.lines.append(text)

    warning = slowdown_warning("bf16", 0.01, 0.28, "this CPU", "no native bf16")
    monkeypatch.setattr(trainer_module, "precision_warning", lambda device, precision: warning
                        if precision == "bf16" else None)
    reporter = Messages()
    train(_cfg(small_dataset, tmp_path / "bf16", precision="bf16", samples=8), reporter=reporter)
    assert reporter.lines.count(warning) == 1
