"""Sweep folders are self-contained: `flipctl report` rebuilds every committed one byte for byte from the
folder alone, never drops finished runs, and says what it could not find; spec names are checked."""

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from flip.sweep import folder, tables
from flip.sweep.report import regenerate
from flipctl.main import app

ROOT = Path(__file__).resolve().parents[1]
# results/sweeps (built-in data) and results/sweeps-emoji (the emoji corpus), as "GROUP/NAME"
COMMITTED = sorted(f"{p.parent.parent.name}/{p.parent.name}" for p in (ROOT / "results").glob("sweeps*/*/sweep.json"))
IMAGES = (".png", ".pdf")


def _copy(name: str, tmp_path: Path) -> Path:
    """The committed folder at the same depth (results/GROUP/NAME) in a tree with no run store; a bare
    NAME is one of results/sweeps."""
    name = name if "/" in name else f"sweeps/{name}"
    out = tmp_path / "results" / name
    shutil.copytree(ROOT / "results" / name, out)
    return out


def _files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file()}


def test_every_committed_folder_is_checked():
    assert len(COMMITTED) >= 18 and {"sweeps/mask-ratio", "sweeps-emoji/mask-ratio"} <= set(COMMITTED)


# A folder with fitted curves refits them with bootstrap bands (hundreds of fits, seconds): integration tier.
@pytest.mark.parametrize("name", [pytest.param(name, marks=pytest.mark.integration)
                                  if (ROOT / "results" / name / "fits.json").exists() else name
                                  for name in COMMITTED])
def test_committed_folder_rebuilds_byte_for_byte_without_a_store(name, tmp_path):
    out = _copy(name, tmp_path)
    before = _files(out)
    result = regenerate(out)
    after = _files(out)
    assert "not found" in result["store_note"]
    assert set(after) == set(before), f"{name}: files added or lost: {set(after) ^ set(before)}"
    for file, data in before.items():
        if file.endswith(IMAGES):  # same data (in STEM.csv, compared below); the bytes may differ
            assert after[file][:4] in (b"\x89PNG", b"%PDF") and len(after[file]) > 1000, file
            assert (out / (Path(file).stem + ".csv")).is_file(), f"{file} has no data file"
        else:
            assert after[file] == data, f"{name}/{file} differs when rebuilt from the folder alone"
    assert set(pd.read_csv(out / "results.csv").status) == {"done"}


def test_report_runs_from_anywhere_and_says_the_store_is_missing_in_one_line(tmp_path, monkeypatch):
    out = _copy("mask-ratio", tmp_path)
    before = _files(out)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # a relative store path must not be read against the cwd
    result = CliRunner().invoke(app, ["report", str(out)])
    assert result.exit_code == 0, result.output
    missing = [line for line in result.output.splitlines() if "not found" in line]
    assert len(missing) == 1 and str(tmp_path / "runs" / "store") in missing[0]
    assert all(_files(out)[f] == before[f] for f in before if not f.endswith(IMAGES))
    assert not (elsewhere / "runs").exists()


def test_a_format_1_folder_is_derived_from_its_spec_text(tmp_path):
    """Folders written before the spec as loaded was kept: the report loads the spec's own text."""
    out = _copy("unmasked-tuning", tmp_path)
    before = _files(out)
    manifest = json.loads((out / "sweep.json").read_text())
    for key in ("spec", "format", "store_as_given"):
        manifest.pop(key)
    manifest["store"] = "runs/store"
    (out / "sweep.json").write_text(json.dumps(manifest))
    regenerate(out)
    for file in ("table.md", "table.csv", "notes.txt", "results.csv", "report.html"):
        assert (out / file).read_bytes() == before[file], file


def test_report_never_drops_finished_runs(tmp_path):
    out = _copy("mask-ratio", tmp_path)
    manifest = json.loads((out / "sweep.json").read_text())
    manifest["jobs"] = [j for j in manifest["jobs"] if j["seed"] == 0]  # a plan with fewer seeds
    (out / "sweep.json").write_text(json.dumps(manifest))
    before = _files(out)
    result = CliRunner().invoke(app, ["report", str(out)])
    assert result.exit_code == 2
    assert "9 finished runs, 6 of which" in result.output and "not overwritten" in result.output
    assert _files(out) == before


def test_report_with_no_finished_run_fails_and_writes_nothing(tmp_path):
    out = _copy("inference", tmp_path)
    (out / "results.csv").unlink()
    before = _files(out)
    result = CliRunner().invoke(app, ["report", str(out)])
    assert result.exit_code != 0
    assert "no run of" in result.output and "nothing written" in result.output
    assert len(result.output.strip().splitlines()) == 1 and _files(out) == before


def _fake_store_run(store: Path, job: dict, seconds: float, others_cores: float) -> None:
    """What a finished run leaves in the store, written by hand: summary (with its load) and evaluations."""
    run = store / "runs" / job["run_id"]
    (run / "sweep" / "evals").mkdir(parents=True)
    (run / "summary.json").write_text(json.dumps({
        "steps": job["steps"], "samples_seen": job["samples"], "train_time_s": seconds, "train_flops_total": 6.9e13,
        "load": {"cores": 2, "others_cores": others_cores, "loadavg_1m_mean": 2.5}}))
    (run / "sweep" / "status.json").write_text(json.dumps({"state": "done", "attempts": 1}))
    for ev in job["evals"]:
        metrics = {"top1": 30.0, "top5": 90.0} if ev["task"] == "zeroshot" else \
            {"image_to_text_R@1": 70.0, "text_to_image_R@1": 50.0}
        (run / "sweep" / "evals" / f"{ev['key']}.json").write_text(json.dumps({"metrics": metrics}))


def test_store_refreshes_the_folder_and_marks_times_of_runs_that_shared_their_cores(tmp_path):
    out = _copy("mask-ratio", tmp_path)
    manifest = json.loads((out / "sweep.json").read_text())
    job = manifest["jobs"][0]  # 0%, seed 0: drop its record from the folder, finish it in the store
    results = pd.read_csv(out / "results.csv")
    results[results.run_id != job["run_id"]].to_csv(out / "results.csv", index=False)
    store = tmp_path / "runs" / "store"  # where sweep.json says the store is, relative to the folder
    _fake_store_run(store, job, 600.0, others_cores=0.9)
    result = regenerate(out)
    assert result["store_note"] is None
    rec = result["results"].set_index("run_id").loc[job["run_id"]]
    assert rec.status == "done" and rec.train_time_s == 600.0 and rec.load_others == 0.9
    assert rec.run_dir == f"../../../runs/store/runs/{job['run_id']}"
    md = (out / "table.md").read_text()
    assert "1.00x ± 0.19†" in md and "0.45x ± 0.04†" in md and "† time from runs that shared their cores" in md
    notes = (out / "notes.txt").read_text()
    assert "0%: 1 of 3 runs shared their cores" in notes and "not recorded for 8 of 9 runs" in notes
    assert "shared (others used 0.90 of 2 cores)" in (out / "report.html").read_text()
    # the store's run is now in the folder: with the store gone, the rebuild is the same
    kept = _files(out)
    shutil.rmtree(store)
    regenerate(out)
    assert all(_files(out)[f] == kept[f] for f in kept if not f.endswith(IMAGES))


@pytest.mark.parametrize("typo,key", [("retrieval_i2tt", "report.columns[6]"), ("zeroshoot", "plots[0].y"),
                                      ("maskratio", "plots[0].x")])
def test_a_misspelt_name_is_one_line_exit_2_before_anything(typo, key, tmp_path):
    spec = (ROOT / "sweeps" / "mask-ratio.toml").read_text()
    right = {"retrieval_i2tt": '"retrieval_i2t", "retrieval_t2i"]', "zeroshoot": 'y = "zeroshot"',
             "maskratio": 'x = "mask_ratio"'}[typo]
    path = tmp_path / "typo.toml"
    path.write_text(spec.replace(right, right.replace(right.split('"')[1], typo), 1))
    result = CliRunner().invoke(app, ["sweep", str(path), "--preset", "smoke", "--store", str(tmp_path / "store"),
                                      "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    line = result.output.strip()
    assert len(line.splitlines()) == 1 and str(path) in line and key in line and typo in line
    assert "did you mean" in line and ("mask_ratio" in line if typo == "maskratio" else typo[:-1] in line)
    assert not (tmp_path / "store").exists() and not (tmp_path / "out").exists()


@pytest.mark.integration  # probes each row's step
def test_dry_run_creates_nothing(tmp_path):
    store, out = tmp_path / "store", tmp_path / "out"
    result = CliRunner().invoke(app, ["sweep", "mask-ratio", "--preset", "smoke", "--dry-run", "--store", str(store),
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "memory-matched batches" in result.output  # it probed, and kept the probes in memory
    assert list(tmp_path.iterdir()) == []


def test_differences_never_print_minus_zero():
    assert tables.signed(-0.04) == "0.0" and tables.signed(0.04) == "0.0"
    assert tables.signed(-0.06) == "-0.1" and tables.signed(2.0) == "+2.0" and tables.signed(-0.004, 2) == "0.00"


def test_committed_tables_say_what_the_spread_is_and_show_no_spread_on_settings():
    for name in COMMITTED:
        out = ROOT / "results" / name
        md = (out / "table.md").read_text()
        assert "over 3 seeds" in md.split("|", 1)[0], name
        assert "± 0 " not in md and "± 0|" not in md.replace(" ", ""), name  # batch, steps, memory: no "± 0"
        assert "-0.0 " not in (out / "notes.txt").read_text(), name
        page = (out / "report.html").read_text()
        assert page.index('id="tables"') < page.index('id="notes"'), name


def test_folder_records_round_trip_exactly(tmp_path):
    out = _copy("time-accuracy", tmp_path)
    df = folder.read_results(out)
    folder.write_results(tmp_path, df)
    assert (tmp_path / "results.csv").read_bytes() == (out / "results.csv").read_bytes()


@pytest.mark.integration  # sweeps
def test_a_sweep_that_would_drop_finished_runs_is_refused_before_it_starts(small_dataset, tmp_path):
    """`--out` of a folder holding finished runs the new plan does not have (fewer seeds, another spec)."""
    spec = tmp_path / "wd.toml"
    spec.write_text('[sweep]\nname = "wd"\nseeds = 1\n[base]\nmodel = "tiny"\nbatch_size = 16\nsamples = 32\n'
                    'workers = 0\nperiodic_eval = false\n[[rows]]\nlabel = "wd 0"\nweight_decay = 0.0\n')
    out, store = tmp_path / "out", tmp_path / "store"
    out.mkdir()
    pd.DataFrame([{"row": "wd 0", "seed": 1, "variant": "base", "run_id": "tiny-m0-b16-s1-0123456789",
                   "status": "done", "zeroshot": 12.0}]).to_csv(out / "results.csv", index=False)
    before = _files(out)
    result = CliRunner().invoke(app, ["sweep", str(spec), "--store", str(store), "--out", str(out),
                                      "--data", str(small_dataset / "train"), "--eval-data",
                                      str(small_dataset / "retrieval" / "captions.csv"), "--eval-zeroshot",
                                      str(small_dataset / "zeroshot")])
    assert result.exit_code == 2 and "not overwritten" in result.output
    assert _files(out) == before and not (store / "runs").exists()  # nothing trained, sweep.json not written
