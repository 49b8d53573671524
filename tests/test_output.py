"""Output that a log file or a script can read: with stdout and stderr captured (a file, a pipe,
SLURM, CI), tables print whole and training writes plain progress lines."""

import io
import json
import os
import re
import subprocess
import sys

import pytest

from flip.train.reporting import PlainReporter
from flipctl.progress import RichReporter

FLIPCTL = [sys.executable, "-m", "flipctl.main"]
# A narrow COLUMNS as a terminal's shell may export: off a terminal it must not squeeze the tables.
ENV = {**os.environ, "COLUMNS": "60", "OMP_NUM_THREADS": "1"}


def _run(args, tmp_path):
    result = subprocess.run(FLIPCTL + args, capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.mark.integration  # a flipctl process
def test_models_table_prints_every_number_whole(tmp_path):
    result = _run(["models", "--json", str(tmp_path / "models.json")], tmp_path)
    out = result.stdout
    assert "…" not in out and "..." not in out
    rows = json.loads((tmp_path / "models.json").read_text())
    lines = out.splitlines()
    for row in rows:  # each preset's row holds each of its numbers, as the table formats them
        line = next(line for line in lines if re.search(rf"[│|]\s*{re.escape(row['name'])}\s*[│|]", line))
        for cell in (f"{row['params_M']:.1f}", f"{row['gflops_mask0']:.2f}", f"{row['gflops_mask50']:.2f}",
                     f"{row['gflops_mask75']:.2f}", f"{100 * row['text_share']:.1f}%", row["vision"], row["text"]):
            assert re.search(rf"[│|]\s*{re.escape(cell)}\s*[│|]", line), (cell, line)
    assert max(len(line) for line in lines) > 80  # wider than rich's 80 columns off a terminal


@pytest.mark.integration  # a flipctl process
def test_bench_tables_print_every_number_whole(tmp_path):
    result = _run(["bench", "--batch-size", "4", "--mask-ratios", "0.5", "--steps", "1", "--warmup", "0",
                   "--threads", "1", "--json", str(tmp_path / "bench.json")], tmp_path)
    assert "…" not in result.stdout
    report = json.loads((tmp_path / "bench.json").read_text())
    for row in report["results"]:  # the widest table, the time split, holds every part whole
        line = next(line for line in result.stdout.splitlines()
                    if re.match(rf"[│|]\s*{row['mask_ratio']:g}\s*[│|].*%\)", line))
        assert line.count("%)") == 5, line


@pytest.mark.integration  # trains
def test_train_writes_plain_progress_lines_when_captured(small_dataset, tmp_path):
    result = _run(["train", "--data", str(small_dataset / "train"), "--eval-data",
                   str(small_dataset / "retrieval" / "captions.csv"), "--samples", "64", "--batch-size", "8",
                   "--workers", "0", "--log-every", "2", "--eval-every", "1000", "--eval-images", "8",
                   "--out", str(tmp_path / "run")], tmp_path)
    text = result.stdout + result.stderr
    progress = re.findall(r"^step (\d+)/8 \(\d+%\)  samples (\d+)  loss (\d+\.\d+)  lr (\d\.\d\de[+-]\d+)  "
                          r"T (\d\.\d+)  (\d+\.\d) samples/s  elapsed (\d+:\d\d:\d\d)  ETA (\d+:\d\d:\d\d)$",
                          text, flags=re.MULTILINE)
    assert [int(p[0]) for p in progress] == [2, 4, 6, 8], text
    assert [int(p[1]) for p in progress] == [16, 32, 48, 64]
    assert progress[-1][-1] == "0:00:00"  # nothing left at the last step
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [f"{m['loss']:.4f}" for m in logged if "loss" in m]
    assert [p[2] for p in progress] == losses  # the same figures as metrics.jsonl
    assert "━" not in result.stderr and "…" not in text  # no progress bar, no number cut


def test_plain_reporter_lines_and_messages():
    out = io.StringIO()
    reporter = PlainReporter(out)
    reporter.start(10, 4, "train tiny mask 0.5")
    reporter.step(5)  # no metrics: nothing to print
    metrics = {"step": 6, "samples": 96, "loss": 2.5, "contrastive": 2.0, "recon": 0.5, "lr": 1e-3,
               "temperature": 0.07, "samples_per_s": 123.45}
    reporter.step(6, metrics)
    reporter.message("step 6: retrieval image_to_text_R@1 10.0")
    reporter.close()
    lines = out.getvalue().splitlines()
    assert lines[0] == "train tiny mask 0.5: 10 steps, resuming at step 4"
    assert re.fullmatch(r"step 6/10 \(60%\)  samples 96  loss 2\.5000  contrastive 2\.0000  recon 0\.5000  "
                        r"lr 1\.00e-03  T 0\.0700  123\.5 samples/s  elapsed \d+:\d\d:\d\d  ETA \d+:\d\d:\d\d",
                        lines[1]), lines[1]
    assert lines[2] == "step 6: retrieval image_to_text_R@1 10.0" and len(lines) == 3


def test_rich_reporter_falls_back_to_plain_lines_off_a_terminal():
    from rich.console import Console

    out = io.StringIO()
    reporter = RichReporter(Console(file=out))  # a StringIO is no terminal
    assert reporter.plain is not None
    reporter.start(2, 0, "train")
    reporter.step(2, {"step": 2, "samples": 16, "loss": 1.0, "lr": 1e-3, "temperature": 0.07, "samples_per_s": 8.0})
    reporter.close()
    assert "step 2/2 (100%)  samples 16  loss 1.0000" in out.getvalue()
    assert RichReporter(Console(file=io.StringIO(), force_terminal=True)).plain is None
