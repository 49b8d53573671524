"""`flip.sweep.run_sweep` called in this process: the result it returns and the events it sends on the way."""

import json
from itertools import groupby

import pytest

from flip.sweep import SweepEvents, SweepOptions, run_sweep
from flip.sweep.spec import SpecError, load_spec

SPEC = "mask-ratio-equal-batch"  # smoke: 3 rows of the tiny model, no memory probes, no tuning


class Recorder(SweepEvents):
    def __init__(self):
        self.events = []

    def on_message(self, text):
        self.events.append(("message", text))

    def on_data_start(self, cfg, items):
        self.events.append(("data_start", items))

    def on_data_progress(self, items):
        self.events.append(("data_progress", items))

    def on_data_end(self):
        self.events.append(("data_end", None))

    def on_plan(self, plan):
        self.events.append(("plan", plan))

    def on_runs_start(self, jobs, todo):
        self.events.append(("runs_start", [job.run_id for job in todo]))

    def on_runs_update(self, running, finished):
        self.events.append(("runs_update", dict(finished)))

    def on_runs_stop(self):
        self.events.append(("runs_stop", None))

    def on_runs_done(self, result):
        self.events.append(("runs_done", result.report))

    def names(self):
        return [name for name, _ in groupby(name for name, _ in self.events)]  # repeats as one

    def last(self, name):
        return [value for n, value in self.events if n == name][-1]


def _user_data(ds) -> dict:
    return {"data": str(ds / "train"), "eval_data": str(ds / "retrieval" / "captions.csv"),
            "eval_zeroshot": str(ds / "zeroshot")}


def test_a_bad_option_fails_before_anything_is_written(tmp_path):
    events = Recorder()
    with pytest.raises(SpecError, match="--seeds must be >= 1"):
        run_sweep(SPEC, tmp_path / "store", tmp_path / "out", SweepOptions(preset="smoke", seeds=0), events)
    assert events.events == [] and list(tmp_path.iterdir()) == []


def test_built_in_data_is_generated_between_a_start_and_an_end_event(monkeypatch):
    from flip.sweep import runner

    def write(out, cfg, progress):
        progress(3)
        progress(4)
        raise OSError("disk full")

    monkeypatch.setattr(runner, "is_complete", lambda out, cfg: False)
    monkeypatch.setattr(runner, "write_builtin_dataset", write)
    events = Recorder()
    with pytest.raises(OSError, match="disk full"):
        runner._generate_builtin_data(load_spec(SPEC, "smoke"), events)
    assert [name for name, _ in events.events] == ["data_start", "data_progress", "data_progress", "data_end"]
    assert events.events[1:3] == [("data_progress", 3), ("data_progress", 4)]


@pytest.mark.integration  # times a training step of the model for its estimates
def test_dry_run_returns_the_plan_with_estimates_and_writes_nothing(tmp_path):
    events = Recorder()
    result = run_sweep(SPEC, tmp_path / "store", tmp_path / "out", SweepOptions(preset="smoke", dry_run=True), events)
    assert events.names() == ["plan"] and events.last("plan") is result.plan
    assert [job.row for job in result.plan.jobs] == ["0%", "50%", "75%"]
    assert set(result.plan.states.values()) == {"to run"}
    assert set(result.plan.estimates) == {job.run_id for job in result.plan.jobs}
    assert result.ran == [] and result.report is None and result.report_paths == []
    assert list(tmp_path.iterdir()) == []


@pytest.mark.integration  # a sweep: 3 runs of 2 steps, each in its own process
@pytest.mark.timeout(600)
def test_smoke_sweep_runs_reports_and_runs_nothing_again(small_dataset, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_RUN_GROUP", raising=False)  # the sweep sets it for its runs
    store, out = tmp_path / "store", tmp_path / "out"
    options = SweepOptions(preset="smoke", settings=("samples=32",), **_user_data(small_dataset))
    events = Recorder()
    result = run_sweep(SPEC, store, out, options, events)

    ids = [job.run_id for job in result.plan.jobs]
    assert result.ran == ids and result.already_done == [] and result.failed == []
    assert events.names() == ["plan", "runs_start", "runs_update", "runs_stop", "runs_done"]
    assert events.last("runs_start") == ids and events.last("runs_update") == dict.fromkeys(ids, "done")
    assert events.last("runs_done") is None  # told before the report is written
    assert (out / "report.html") in result.report_paths and all(p.is_file() for p in result.report_paths)
    manifest = json.loads((out / "sweep.json").read_text())
    assert manifest["command"] == (f"flipctl sweep {SPEC} --store {store} --out {out} --preset smoke "
                                   f"--data {options.data} --eval-data {options.eval_data} "
                                   f"--eval-zeroshot {options.eval_zeroshot} --set samples=32")
    assert manifest["data"]["settings"] == {"samples": 32}

    again = Recorder()
    second = run_sweep(SPEC, store, out, options, again)
    assert second.ran == [] and second.already_done == ids
    assert set(again.last("plan").states.values()) == {"done"}
