"""`--fit power|saturating|both`: Cherti et al.'s pure power law beside the saturating fit, each checked
on the held-out largest-cost frontier point (flip.sweep.fit, the report, `flipctl report --fit`)."""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from flip.sweep.fit import PowerFit, fit_frontier, fit_power_law, held_out_error, held_out_errors
from flip.sweep.spec import SpecError, load_spec, with_fit
from flipctl.main import app

ROOT = Path(__file__).resolve().parents[1]
A, B = 2000.0, -0.12  # error = A * C^B, C in FLOPs: 2000 * (1e12)^-0.12 = 72% down to 31% at 1e15
COSTS = 1e12 * 2.0 ** np.arange(11)


def test_power_fit_recovers_a_and_b_and_holds_out_with_no_error():
    rng = np.random.default_rng(0)
    error = A * COSTS ** B * np.exp(rng.normal(0, 0.002, len(COSTS)))
    fit = fit_power_law(COSTS, error, bootstrap=50, target=4 * COSTS.max(), form="power")
    assert isinstance(fit, PowerFit) and fit.form == "power"
    assert fit.b == pytest.approx(B, abs=0.003)
    assert fit.a * fit.cost_scale ** -fit.b == pytest.approx(A, rel=0.05)  # a is per C / cost_scale
    assert fit.predicted == pytest.approx(A * (4 * COSTS.max()) ** B, abs=0.3)
    assert np.allclose(fit.error(COSTS), A * COSTS ** B, atol=0.5)
    d = fit.to_dict()
    assert d["form"] == "power" and "c" not in d and json.loads(json.dumps(d))["b"] == pytest.approx(fit.b)
    check = held_out_error(COSTS, 100 - error, "power")
    assert check.fitted_points == len(COSTS) - 1 and check.costs == [COSTS.max()]
    assert abs(check.errors[0]) < 0.2 and check.mean_abs_error < 0.2


def test_with_a_floor_the_saturating_form_extrapolates_better():
    error = 40.0 * (COSTS / COSTS[0]) ** -0.6 + 30.0  # an irreducible 30% error
    checks = held_out_errors(_frontier(error), "train_flops", "zeroshot", held_out=2)
    sat, power = checks["saturating"], checks["power"]
    assert len(sat.costs) == 2 and sat.fitted_points == len(COSTS) - 2
    assert sat.mean_abs_error < 0.1
    assert power.mean_abs_error > 1.0 and all(e > 0 for e in power.errors)  # it promises too much
    assert held_out_error(COSTS[:3], 100 - error[:3], "saturating") .predicted is None  # 2 points: 3 params
    assert held_out_error(COSTS[:1], 100 - error[:1], "power") is None


def _frontier(error):
    return pd.DataFrame({"row": [f"r{i}" for i in range(len(COSTS))], "train_flops": COSTS,
                         "zeroshot": 100 - np.asarray(error)})


def test_fit_frontier_takes_the_form():
    runs = _frontier(A * COSTS ** B).assign(status="done", variant="base", seed=0)
    _, sat = fit_frontier(runs, "train_flops", "zeroshot", bootstrap=0)
    _, power = fit_frontier(runs, "train_flops", "zeroshot", bootstrap=0, form="power")
    assert sat.form == "saturating" and "form" not in sat.to_dict()  # fits.json as before
    assert power.form == "power" and power.b == pytest.approx(B, abs=1e-6)
    _, two = fit_frontier(runs.iloc[:2], "train_flops", "zeroshot", bootstrap=0, form="power")
    assert two is not None and fit_frontier(runs.iloc[:2], "train_flops", "zeroshot")[1] is None


SPEC = """
[sweep]
name = "f"
[base]
model = "tiny"
[[plots]]
kind = "{kind}"
x = "train_flops"
y = "zeroshot"
fit = {fit}
"""


@pytest.mark.parametrize("kind,fit,needle", [("curves", '"cubic"', "fit must be"),
                                             ("metric_vs_axis", '"power"', "no cost axis"),
                                             ("curves", "3", "fit must be")])
def test_bad_fit_in_a_spec_is_an_error(tmp_path, kind, fit, needle):
    path = tmp_path / "f.toml"
    path.write_text(SPEC.format(kind=kind, fit=fit))
    with pytest.raises(SpecError, match=needle):
        load_spec(path)


def test_fit_forms_of_a_plot(tmp_path):
    path = tmp_path / "f.toml"
    for fit, forms in (("true", ("saturating",)), ("false", ()), ('"power"', ("power",)),
                       ('"both"', ("saturating", "power"))):
        path.write_text(SPEC.format(kind="curves", fit=fit))
        plot = load_spec(path).plots[0]
        assert plot.forms == forms and plot.held_out == fit.startswith('"')
    spec = with_fit(load_spec("time-accuracy", "smoke"), "power")
    assert [p.fit for p in spec.plots] == ["power", "power", False]  # the unfitted plot stays unfitted
    with pytest.raises(SpecError, match="no plot"):
        with_fit(load_spec("mask-ratio", "smoke"), "both")
    assert [p.fit for p in load_spec("scaling", "tiny").plots] == ["both", "both"]


def _copy(name, tmp_path):
    out = tmp_path / "results" / "sweeps" / name
    shutil.copytree(ROOT / "results" / "sweeps" / name, out)
    return out


@pytest.mark.integration  # both forms with bootstrap bands on a real folder: seconds
def test_report_fit_both_on_a_committed_folder_is_recorded_and_rebuilds_the_same(tmp_path):
    out = _copy("time-accuracy", tmp_path)
    before = json.loads((out / "fits.json").read_text())
    result = CliRunner().invoke(app, ["report", str(out), "--fit", "both"])
    assert result.exit_code == 0, result.output
    fits = json.loads((out / "fits.json").read_text())
    assert fits["zeroshot-vs-flops"] == before["zeroshot-vs-flops"]  # the saturating fit is unchanged
    assert fits["zeroshot-vs-flops@power"]["form"] == "power" and fits["zeroshot-vs-flops@power"]["b"] < 0
    held = fits["zeroshot-vs-flops@held-out"]
    assert set(held) == {"saturating", "power"}
    for check in held.values():
        assert check["fitted_points"] >= 3 and len(check["errors"]) == 1 and check["mean_abs_error"] >= 0
    notes = (out / "notes.txt").read_text()
    assert "held out the largest-cost frontier point" in notes and "extrapolates better here" in notes
    assert "(-0.0)" not in notes and "(+0.0)" not in notes
    assert [p["fit"] for p in json.loads((out / "sweep.json").read_text())["spec"]["plots"]] == ["both", "both", False]
    texts = {p.name: p.read_bytes() for p in out.iterdir() if p.suffix not in (".png", ".pdf")}
    assert CliRunner().invoke(app, ["report", str(out)]).exit_code == 0  # the folder keeps its choice
    assert texts == {p.name: p.read_bytes() for p in out.iterdir() if p.suffix not in (".png", ".pdf")}


@pytest.mark.parametrize("args,needle", [(["--fit", "cubic"], "--fit must be one of"),
                                         (["--fit", "power"], "no plot of sweep 'mask-ratio'")])
def test_report_bad_fit_is_one_line_exit_2_and_writes_nothing(tmp_path, args, needle):
    out = _copy("mask-ratio", tmp_path)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    result = CliRunner().invoke(app, ["report", str(out), *args])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], result.output
    assert before == {p.name: p.read_bytes() for p in out.iterdir()}


@pytest.mark.parametrize("args,needle", [(["mask-ratio", "--fit", "power"], "no plot of sweep 'mask-ratio'"),
                                         (["time-accuracy", "--fit", "linear"], "--fit must be one of")])
def test_sweep_bad_fit_is_one_line_exit_2_before_anything_trains(tmp_path, args, needle):
    result = CliRunner().invoke(app, ["sweep", *args, "--preset", "smoke", "--store", str(tmp_path / "store"),
                                      "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0], result.output
    assert not (tmp_path / "store").exists() and not (tmp_path / "out").exists()


def test_sweep_fit_is_recorded_with_the_spec_as_loaded(tmp_path):
    """`flipctl sweep --fit power` records the form in sweep.json, so `flipctl report` rebuilds with it."""
    from flip.sweep.folder import Manifest
    from flip.sweep.report import manifest_for
    from flip.sweep.store import RunStore

    spec = with_fit(load_spec("time-accuracy", "smoke"), "power")
    manifest_for(spec, [], RunStore(tmp_path / "store"), {}, "flipctl sweep time-accuracy --fit power").write(tmp_path)
    again = Manifest.read(tmp_path).sweep_spec()
    assert [p.forms for p in again.plots] == [("power",), ("power",), ()] and again.plots[0].held_out
