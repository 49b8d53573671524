"""`flipctl sweep` and `flip.sweep`: specs and their errors, run ids, skip / resume / failure, tables, report."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from flip.sweep import store as run_store
from flip.sweep.spec import load_spec, shipped_specs
from flip.sweep.tables import build_table
from flip.train.config import TrainConfig
from flipctl.main import app

FLIPCTL = [sys.executable, "-m", "flipctl.main"]
SHIPPED = ["mask-ratio", "batch-size", "text-mask", "inference", "unmasked-tuning", "recon-loss",
           "time-accuracy", "scaling", "mask-ratio-equal-batch", "token-reduction", "text-reduction", "loss-batch"]


def _write_spec(path: Path, body: str) -> Path:
    path.write_text(body)
    return path


SPEC = """
[sweep]
name = "wd"
title = "Weight decay"
baseline = "wd 0.2"
seeds = 1

[base]
model = "tiny"
batch_size = 16
samples = 48
workers = 0
shuffle_buffer = 50
periodic_eval = false
{extra_base}

[[rows]]
label = "wd 0.2"
weight_decay = 0.2
paper = {{ zeroshot = 50.0 }}

[[rows]]
label = "wd 0"
weight_decay = 0.0
{extra_row}

[eval]
zeroshot = true
retrieval = true
modes = ["full", "views:2"]
batch_size = 64

[report]
columns = ["weight_decay", "steps", "time_rel", "zeroshot", "zeroshot@views2", "retrieval_i2t"]

[[plots]]
kind = "metric_vs_axis"
x = "weight_decay"
y = "zeroshot"
"""


def _user_spec(tmp_path, extra_base="", extra_row=""):
    return _write_spec(tmp_path / "wd.toml", SPEC.format(extra_base=extra_base, extra_row=extra_row))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as stat:  # a zombie has exited; only its parent has not reaped it
            return stat.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def _data_args(ds):
    return ["--data", str(ds / "train"), "--eval-data", str(ds / "retrieval" / "captions.csv"),
            "--eval-zeroshot", str(ds / "zeroshot")]


# -- specs ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", SHIPPED)
@pytest.mark.parametrize("preset", ["smoke", "tiny", "paper"])
def test_shipped_specs_load_with_every_preset(name, preset):
    assert name in shipped_specs()
    spec = load_spec(name, preset)
    assert spec.rows and spec.seeds >= 1 and spec.paper
    for row in spec.rows:
        spec.config(row, 0).validate()


@pytest.mark.parametrize("preset", ["smoke", "tiny"])
def test_data_check_spec_loads_and_trains_its_rows_on_their_scenes(preset):
    """masking-scenes checks the built-in data (no paper preset): its rows pick their scene kind."""
    spec = load_spec("masking-scenes", preset)
    assert "masking-scenes" in shipped_specs()
    scenes = {row.label: spec.config(row, 0).builtin_scenes for row in spec.rows}
    assert scenes == {f"{kind}, {m}%": kind for kind in ("mixed", "large") for m in (0, 50, 75)}
    assert len({spec.config(row, 0).batch_size for row in spec.rows}) == 1  # equal batch, not memory-matched


@pytest.mark.parametrize("preset", ["smoke", "tiny"])
def test_text_mask_context_check_keeps_every_caption_whole_when_dropping_padding_first(preset):
    """At a 64-token context, half the positions hold every built-in caption, so "padding first" drops
    padding only (the paper's setting), which the 32-token Table 1c cannot give."""
    from flip.data.synth import MAX_CAPTION_TOKENS
    from flip.masking import num_kept

    spec = load_spec("text-mask-context", preset)
    for row in spec.rows:
        cfg = spec.config(row, 0)
        assert cfg.context_length == 64 and cfg.mask_ratio == 0.75
        if cfg.text_mask != "none":
            assert num_kept(cfg.context_length, cfg.text_mask_ratio) >= MAX_CAPTION_TOKENS + 2  # with SOT / EOT
    assert num_kept(32, 0.5) < MAX_CAPTION_TOKENS + 2  # Table 1c's context: words must go


def _image_tokens(cfg):
    from flip.masking import num_kept
    from flip.models import get_preset

    vision = get_preset(cfg.model).vision.at_image_size(cfg.image_size)
    return num_kept(vision.grid_size ** 2, cfg.mask_ratio)


@pytest.mark.parametrize("preset", ["smoke", "tiny", "paper"])
def test_token_reduction_rows_keep_equal_image_tokens_and_tune_at_the_native_size(preset):
    """CLIPA's comparison: every reduced row shows the encoder a quarter of the full row's tokens
    (tiny: 16 of 64, L/16: 49 of 196), at one batch; tuning resets the size and the mask strategy."""
    spec = load_spec("token-reduction", preset)
    configs = {row.label: spec.config(row, 0) for row in spec.rows}
    full = _image_tokens(configs.pop("full"))
    assert {label: _image_tokens(cfg) for label, cfg in configs.items()} == dict.fromkeys(configs, full // 4)
    assert {cfg.mask_strategy for cfg in configs.values()} == {"random", "grid", "block"}
    assert configs["resize to half"].image_size and configs["resize to half"].mask_ratio == 0
    assert len({cfg.batch_size for cfg in configs.values()}) == 1 and spec.tuning.enabled
    assert {"image_size", "mask_strategy"} <= set(TrainConfig.ablation_defaults())
    assert TrainConfig.ablation_defaults()["image_size"] is None  # tune-unmasked: back to the model's size


@pytest.mark.parametrize("preset", ["smoke", "tiny", "paper"])
def test_text_reduction_rows_keep_equal_text_tokens_at_table_1c_image_mask(preset):
    from flip.choices import TEXT_MASKS

    spec = load_spec("text-reduction", preset)
    configs = [spec.config(row, 0) for row in spec.rows]
    assert {cfg.text_mask for cfg in configs} == set(TEXT_MASKS)
    assert {cfg.mask_ratio for cfg in configs} == {0.75} and spec.memory_match is not None
    assert {cfg.text_mask_ratio for cfg in configs if cfg.text_mask != "none"} == {0.5}


@pytest.mark.parametrize("preset", ["smoke", "tiny", "paper"])
def test_loss_batch_crosses_loss_mask_and_batch_at_one_sample_budget(preset):
    spec = load_spec("loss-batch", preset)
    configs = [spec.config(row, 0) for row in spec.rows]
    grid = {(c.loss, c.mask_ratio, c.batch_size) for c in configs}
    batches = sorted({c.batch_size for c in configs})
    assert len(grid) == len(configs) == 12 and len(batches) == 3 and batches[2] == 4 * batches[0]
    assert {(c.loss, c.mask_ratio) for c in configs} == {(loss, m) for loss in ("contrastive", "sigmoid")
                                                         for m in (0.0, 0.5)}
    assert len({(c.samples, c.epochs) for c in configs}) == 1  # the fixed sample budget
    assert [p.where for p in spec.plots] == [{"mask_ratio": 0.0}, {"mask_ratio": 0.5}]


def test_new_studies_reuse_the_runs_they_share():
    """token-reduction's full / random rows are mask-ratio-equal-batch's, text-reduction's none / random /
    padding rows text-mask's, loss-batch's softmax 50% rows batch-size's: the same run ids."""
    from flip.sweep.jobs import build_plan
    from flip.sweep.store import RunStore

    def ids(name, batch=None):
        spec = load_spec(name, "tiny")
        batches = {row.label: (batch, None) for row in spec.rows} if batch else {}
        return {j.run_id for j in build_plan(spec, RunStore("unused"), batches) if j.kind == "train"}

    assert len(ids("token-reduction") & ids("mask-ratio-equal-batch")) == 6
    assert len(ids("text-reduction", 200) & ids("text-mask", 200)) == 9
    assert len(ids("loss-batch") & ids("batch-size")) == 9


def test_plots_keep_only_their_where_runs_and_put_one_point_per_row(tmp_path):
    """loss-batch plots each mask ratio apart (`where`); token-reduction one point per row (`x = "row"`),
    with the paper's numbers at the rows that have them."""
    from flip.sweep.report import _paper_points, _plots

    spec = load_spec("loss-batch", "smoke")
    runs = [{"row": row.label, "seed": 0, "variant": "base", "status": "done", **row.fields,
             "zeroshot": 10 + 20 * row.fields["mask_ratio"] + row.fields["batch_size"] / 8} for row in spec.rows]
    _plots(spec, pd.DataFrame(runs), tmp_path)
    for stem, mask in (("zeroshot-vs-batch-mask-0", 0.0), ("zeroshot-vs-batch-mask-50", 0.5)):
        points = pd.read_csv(tmp_path / f"{stem}.csv")
        assert len(points) == 6 and set(points.loss) == {"contrastive", "sigmoid"}
        assert set(points.zeroshot_mean) == {10 + 20 * mask + b / 8 for b in (8, 16, 32)}
    paper = {m: _paper_points(spec, pd.DataFrame(runs), "batch_size", "zeroshot", "loss", {"mask_ratio": m})
             for m in (0.0, 0.5)}
    assert [p["y"] for p in paper[0.0]] == [68.6] and [p["y"] for p in paper[0.5]] == [68.5, 69.6, 70.4]
    spec = load_spec("token-reduction", "smoke")
    runs = [{"row": row.label, "seed": 0, "variant": variant, "status": "done", "zeroshot": 5.0 + i}
            for i, row in enumerate(spec.rows) for variant in ("base", "tuned")]
    _plots(spec, pd.DataFrame(runs), tmp_path)
    points = pd.read_csv(tmp_path / "zeroshot-by-reduction.csv")
    assert list(dict.fromkeys(points.row)) == [row.label for row in spec.rows] and len(points) == 10


def test_tiny_presets_use_several_seeds():
    assert load_spec("mask-ratio", "tiny").seeds >= 3


BAD = {
    "unknown top-level key": ("[sweep]\nname='x'\n[bogus]\na=1\n", "bogus"),
    "unknown axis field": ("[sweep]\nname='x'\n[axes]\nmask_ratioo=[0.0]\n", "mask_ratioo"),
    "wrong type": ("[sweep]\nname='x'\n[axes]\nmask_ratio=['half']\n", "mask_ratio"),
    "empty axis": ("[sweep]\nname='x'\n[axes]\nmask_ratio=[]\n", "empty"),
    "invalid value": ("[sweep]\nname='x'\n[[rows]]\nlabel='a'\nmask_ratio=1.5\n", "mask"),
    "reserved field": ("[sweep]\nname='x'\n[base]\nout='x'\n", "out"),
    "unknown eval mode": ("[sweep]\nname='x'\n[eval]\nmodes=['sideways']\n", "sideways"),
    "bad toml": ("[sweep\n", "not valid TOML"),
    "unknown plot where field": ("[sweep]\nname='x'\n[[plots]]\nkind='metric_vs_axis'\nx='batch_size'\n"
                                 "y='zeroshot'\nwhere={mask_ratioo=0.5}\n", "mask_ratioo"),
    "unknown fit form": ("[sweep]\nname='x'\n[[plots]]\nkind='curves'\nx='train_flops'\ny='zeroshot'\n"
                         "fit='cubic'\n", "cubic"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_spec_is_one_line_exit_2_and_trains_nothing(case, tmp_path):
    body, needle = BAD[case]
    spec = _write_spec(tmp_path / "bad.toml", body)
    result = CliRunner().invoke(app, ["sweep", str(spec), "--store", str(tmp_path / "store"),
                                      "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], result.output
    assert str(spec) in lines[0] or case == "bad toml" or "bad.toml" in lines[0]
    assert not (tmp_path / "store").exists()


@pytest.mark.parametrize("args, needle", [
    (["sweep", "no-such-sweep"], "unknown sweep"),
    (["sweep", "mask-ratio", "--preset", "huge"], "unknown preset"),
    (["sweep", "missing.toml"], "not found"),
    (["report", "nowhere"], "sweep.json"),
])
def test_bad_sweep_names_and_presets(args, needle, tmp_path):
    result = CliRunner().invoke(app, args + (["--store", str(tmp_path / "s")] if args[0] == "sweep" else []))
    assert result.exit_code == 2 and needle in result.output, result.output


# -- run ids -------------------------------------------------------------------------------------------------

def test_run_id_is_stable_and_changes_with_every_setting():
    cfg = TrainConfig(model="tiny", mask_ratio=0.5, batch_size=64, samples=1000, seed=1)
    assert run_store.run_id(cfg) == run_store.run_id(TrainConfig(**cfg.to_dict()))
    assert run_store.run_id(cfg) == run_store.run_id(dataclasses.replace(cfg, out="elsewhere", log_every=3))
    ids = {run_store.run_id(cfg)}
    for change in ({"mask_ratio": 0.75}, {"batch_size": 32}, {"seed": 2}, {"samples": 2000}, {"weight_decay": 0.1},
                   {"text_mask": "padding", "text_mask_ratio": 0.5}, {"recon_weight": 0.5}, {"base_lr": 2e-3},
                   {"data": "/some/shards"}, {"precision": "bf16"}):
        ids.add(run_store.run_id(dataclasses.replace(cfg, **change)))
    assert len(ids) == 11


# -- tables --------------------------------------------------------------------------------------------------

def test_table_layout_from_hand_made_results(tmp_path):
    spec = load_spec(_user_spec(tmp_path))
    rows = []
    for label, wd, accs, times in (("wd 0.2", 0.2, (40.0, 42.0, 44.0), (100.0, 100.0, 100.0)),
                                   ("wd 0", 0.0, (50.0, 51.0, 52.0), (50.0, 50.0, 50.0))):
        for seed, (acc, t) in enumerate(zip(accs, times)):
            rows.append({"row": label, "seed": seed, "variant": "base", "run_id": f"{label}-{seed}", "status": "done",
                         "error": None, "run_dir": "x", "weight_decay": wd, "batch_size": 16, "steps": 3,
                         "train_time_s": t, "train_flops": 1e9, "zeroshot": acc, "zeroshot@views2": acc - 10,
                         "retrieval_i2t": 5.0})
    table = build_table(spec, pd.DataFrame(rows))
    d = table.display
    assert list(d["row"]) == ["wd 0.2 (baseline)", "wd 0"]
    assert list(d.columns) == ["row", "weight decay", "steps", "time (rel.)", "zero-shot top-1 (%)",
                               "paper: zero-shot top-1 (%)", "zero-shot top-1, 2 complementary views (%)",
                               "image→text R@1 (%)"]
    assert d.loc[0, "zero-shot top-1 (%)"] == "42.0 ± 2.0" and d.loc[1, "zero-shot top-1 (%)"] == "51.0 ± 1.0"
    assert d.loc[1, "steps"] == "3"  # a setting the same for every seed: no "± 0"
    # no load record in these runs: their time is marked as not known to be clean
    assert d.loc[1, "time (rel.)"] == "0.50x ± 0.00‡" and d.loc[0, "paper: zero-shot top-1 (%)"] == "50.0"
    assert d.loc[1, "paper: zero-shot top-1 (%)"] == "–"
    assert table.legend[0].startswith("Mean ± std over 3 seeds")
    assert table.numbers.loc[1, "zeroshot_mean"] == 51.0 and table.numbers.loc[1, "zeroshot_n"] == 3
    assert any("wd 0 vs wd 0.2: +9.0" in n and "higher" in n for n in table.notes)


# -- running -------------------------------------------------------------------------------------------------

@pytest.mark.integration  # sweeps
@pytest.mark.timeout(600)  # two sweeps of 2 runs each: 2 min under load
def test_user_spec_runs_skips_when_done_and_reports(small_dataset, tmp_path):
    spec, store, out = _user_spec(tmp_path), tmp_path / "store", tmp_path / "out"
    args = FLIPCTL + ["sweep", str(spec), "--store", str(store), "--out", str(out)] + _data_args(small_dataset)
    first = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stdout + first.stderr
    for name in ("table.md", "table.tex", "table.csv", "results.csv", "report.html", "command.txt",
                 "zeroshot-vs-weight-decay.png", "zeroshot-vs-weight-decay.pdf"):
        assert (out / name).is_file(), name
    results = pd.read_csv(out / "results.csv")
    assert list(results.status) == ["done", "done"] and results["zeroshot@views2"].notna().all()
    assert "\\toprule" in (out / "table.tex").read_text()
    for rid in results.run_id:  # each run keeps the command that reproduces it
        assert "flipctl train --config" in (store / "runs" / rid / "sweep" / "command.txt").read_text()

    again = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "0 runs executed, 2 already done" in " ".join(again.stdout.split())
    assert all(json.loads((store / "runs" / rid / "sweep" / "status.json").read_text())["attempts"] == 1
               for rid in results.run_id)  # nothing ran again
    assert results.load_cores.notna().all() and results.load_others.notna().all()  # each run's machine load
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.suffix not in (".png", ".pdf")}
    (out / "table.md").unlink()
    report = subprocess.run(FLIPCTL + ["report", str(out)], capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr
    # the sweep's own report is what a rebuild writes, byte for byte
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.suffix not in (".png", ".pdf")} == before


@pytest.mark.integration  # sweeps
@pytest.mark.timeout(600)  # two sweeps of 2 runs each: 2 min under load
def test_failed_run_is_reported_and_retried(small_dataset, tmp_path):
    import tarfile

    hollow = tmp_path / "hollow"  # a shard that holds no sample: passes the sweep's checks, fails in training
    hollow.mkdir()
    with tarfile.open(hollow / "000.tar", "w") as tar:
        tar.addfile(tarfile.TarInfo("readme.md"))
    spec = _user_spec(tmp_path, extra_base=f'data = "{small_dataset / "train"}"', extra_row=f'data = "{hollow}"')
    store, out = tmp_path / "store", tmp_path / "out"
    args = FLIPCTL + ["sweep", str(spec), "--store", str(store), "--out", str(out)] + _data_args(small_dataset)[2:]
    first = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert first.returncode == 1, first.stdout + first.stderr
    results = pd.read_csv(out / "results.csv")
    assert list(results.status) == ["done", "failed"]
    assert "no readable samples" in results.error[1]
    assert "failed" in (out / "table.md").read_text() and "failed" in (out / "report.html").read_text()
    failed_id = results.run_id[1]
    second = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert second.returncode == 1
    status = json.loads((store / "runs" / failed_id / "sweep" / "status.json").read_text())
    assert status["state"] == "failed" and status["attempts"] == 2


@pytest.mark.integration  # sweeps
@pytest.mark.timeout(600)  # two sweeps of 2 runs each: 2 min under load
def test_killed_sweep_resumes_without_redoing_finished_runs(small_dataset, tmp_path):
    spec = _user_spec(tmp_path, extra_base="log_every = 1", extra_row="samples = 640\nckpt_every = 3")
    store, out = tmp_path / "store", tmp_path / "out"
    args = FLIPCTL + ["sweep", str(spec), "--store", str(store), "--out", str(out)] + _data_args(small_dataset)
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    runs = store / "runs"
    deadline, long_run = time.time() + 300, None
    while time.time() < deadline:  # kill the whole sweep once the long run has a checkpoint past step 3
        candidates = [p for p in runs.glob("*") if (p / "latest").exists() and "-b16-" in p.name
                      and json.loads((p / "sweep" / "job.json").read_text())["config"]["samples"] == 640]
        if candidates and int((candidates[0] / "latest").read_text().split("-")[1]) >= 3:
            long_run = candidates[0]
            break
        time.sleep(0.05)
    assert long_run is not None, "the long run never checkpointed"
    worker_pid = json.loads((long_run / "sweep" / "lock.json").read_text())["worker"]["pid"]  # the sweep's claim
    os.kill(proc.pid, signal.SIGKILL)  # the sweep process alone: its worker must not live on as an orphan
    proc.wait()
    deadline = time.time() + 30
    while time.time() < deadline and _alive(worker_pid):
        time.sleep(0.1)
    assert not _alive(worker_pid), "the run's worker outlived the killed sweep"
    short_runs = [p for p in runs.glob("*") if p != long_run]
    assert len(short_runs) == 1 and (short_runs[0] / "summary.json").exists()
    finished_mtime = (short_runs[0] / "summary.json").stat().st_mtime
    assert not (long_run / "summary.json").exists()

    again = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "1 runs executed, 1 already done" in " ".join(again.stdout.split())
    assert (short_runs[0] / "summary.json").stat().st_mtime == finished_mtime
    summary = json.loads((long_run / "summary.json").read_text())
    assert summary["steps"] == 40
    assert json.loads((long_run / "sweep" / "status.json").read_text())["attempts"] == 2
    logged = [json.loads(line)["step"] for line in (long_run / "metrics.jsonl").read_text().splitlines()
              if "loss" in line]
    assert logged.count(1) == 1 and logged[-1] == 40  # resumed from its checkpoint, never restarted from 0


@pytest.mark.integration  # trains
def test_data_fraction_trains_on_the_leading_shards(small_dataset, tmp_path):
    from flip.train.trainer import Trainer, resolve

    cfg = resolve(TrainConfig(data=str(small_dataset / "train"), samples=32, batch_size=16, workers=0,
                              data_fraction=0.5, out=str(tmp_path / "run")))
    trainer = Trainer(cfg)
    all_shards = sorted((small_dataset / "train").glob("*.tar"))
    assert len(all_shards) == 4 and [Path(u).name for u in trainer.urls] == [p.name for p in all_shards[:2]]


def test_sweeps_reuse_each_others_runs():
    """Tables 1c, 1d, 1e, 1f and Figures 1/3 train at Table 1a's budget (60,000 samples) with its configs,
    so the rows they share with it are Table 1a's runs (same run ids): each is trained once."""
    from flip.sweep.jobs import build_plan
    from flip.sweep.store import RunStore

    batches = {"0%": (64, None), "50%": (112, None), "75%": (200, None)}
    store = RunStore("unused")

    def ids(name, rows, batch_of=lambda row: batches[row[:3]]):
        spec = load_spec(name, "tiny")
        return {j.run_id for j in build_plan(spec, store, {r: batch_of(r) for r in rows}) if j.kind == "train"}

    table_1a = ids("mask-ratio", ["0%", "50%", "75%"])
    masked = ids("inference", ["50%", "75%"])
    assert len(table_1a) == 9 and len(masked) == 6 and masked <= table_1a
    assert ids("unmasked-tuning", ["50%", "75%"]) == masked
    text_rows = ["none", "random 50%", "padding first 50%"]
    assert len(ids("text-mask", text_rows, lambda row: batches["75%"]) & table_1a) == 3  # its "none" row
    curves = [f"mask_ratio={m}%, samples={n}" for m in (0, 50, 75) for n in (15000, 30000, 60000)]
    recon = ids("recon-loss", ["50%", "50% + recon", "75%", "75% + recon"])
    assert len(recon) == 12 and len(recon & table_1a) == 6  # the rows without the decoder
    assert len(ids("time-accuracy", curves, lambda row: batches[row.split("=")[1].split(",")[0]]) & table_1a) == 9


def test_committed_results_match_specs_that_still_load():
    """Every committed sweep result names a shipped spec and preset that load, and plans the same runs."""
    import shlex

    from flip.sweep.jobs import build_plan
    from flip.sweep.store import RunStore

    root = Path(__file__).parent.parent / "results" / "sweeps"
    commands = sorted(root.glob("*/command.txt"))
    assert (root / "mask-ratio" / "command.txt") in commands
    for path in commands:
        line = next(line for line in path.read_text().splitlines() if line.startswith("flipctl sweep"))
        argv = shlex.split(line)
        spec = load_spec(argv[2], argv[argv.index("--preset") + 1])
        if "--seeds" in argv:
            spec = dataclasses.replace(spec, seeds=int(argv[argv.index("--seeds") + 1]))
        results = pd.read_csv(path.parent / "results.csv")
        batches = {row: (int(group.batch_size.iloc[0]), None) for row, group in results.groupby("row")}
        planned = {job.run_id for job in build_plan(spec, RunStore("unused"), batches)}
        assert planned == set(results.run_id), f"{path.parent}: the spec now plans other runs; rerun the sweep"
        # `flipctl report` rebuilds from sweep.json: it must name the runs the committed tables show
        manifest = json.loads((path.parent / "sweep.json").read_text())
        assert {job["run_id"] for job in manifest["jobs"]} == planned, f"{path.parent}: sweep.json is stale"


def test_estimate_prefers_the_stores_finished_runs_over_a_probe(tmp_path):
    """A probe cached while the machine was busy must not outweigh what finished runs measured."""
    import torch

    from flip.sweep import estimate
    from flip.sweep.jobs import Job

    store = run_store.RunStore(tmp_path)
    cfg = TrainConfig(model="tiny", mask_ratio=0.5, batch_size=64, samples=6400)
    for seed, seconds in ((0, 60.0), (1, 64.0), (2, 400.0)):  # median: 64 s for 6400 samples
        run = store.run_dir(f"r{seed}")
        run.mkdir(parents=True)
        (run / "config.json").write_text(json.dumps({"train": dataclasses.replace(cfg, seed=seed).to_dict()}))
        (run / "summary.json").write_text(json.dumps({"samples_seen": 6400, "train_time_s": seconds}))
    store.save_probe(estimate._rate_key(cfg, torch.device("cpu")), 1.0)  # a stale, 100x slow probe
    job = Job(run_id="new", kind="train", row="b", seed=3, variant="base",
              config=dataclasses.replace(cfg, samples=12800, seed=3), steps=200, samples=12800)
    seconds, how = estimate.estimate([job], store, torch.device("cpu"))["new"]
    assert how == "measured" and seconds == pytest.approx(128.0)


def test_memory_match_of_a_recon_row_probes_the_step_with_its_decoder(tmp_path, monkeypatch):
    """Table 1f: a row with recon_weight > 0 gets the batch whose step *with the decoder* fits the memory."""
    import torch

    from flip.sweep import memory_match

    def fake_peak(cfg, mask_ratio, batch, device, precision="fp32", decoder=None):
        per_sample = (1.0 - mask_ratio) + (0.5 if decoder is not None else 0.0)  # the decoder's activations
        return int(1000 + 100 * per_sample * batch)

    monkeypatch.setattr(memory_match, "step_peak_memory", fake_peak)
    spec = load_spec("recon-loss", "smoke")  # rows 50%, 50% + recon, 75%, 75% + recon; reference mask 0, batch 16
    batches = memory_match.matched_batches(spec, run_store.RunStore(tmp_path), torch.device("cpu"))
    limit = fake_peak(None, 0.0, 16, None)
    for row in ("50%", "75%"):
        (plain, _), (recon, recon_peak) = batches[row], batches[f"{row} + recon"]
        assert recon < plain and recon_peak == fake_peak(None, spec.row(row).fields["mask_ratio"], recon, None,
                                                         decoder=True) <= limit
