"""The evaluation during training: only on data the user names (or the built-in data's own sets),
checked before the first step, and never at the cost of the run."""

import json

import pytest
from typer.testing import CliRunner

from flip.train.config import TrainConfig
from flip.train.periodic_eval import PeriodicEval
from flip.train.trainer import resolve, train
from flipctl.main import app

runner = CliRunner()


def _records(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _cfg(ds, out, **kw):
    base = dict(data=str(ds / "train"), model="tiny", batch_size=16, samples=16 * 4, workers=0, seed=1,
                out=str(out), log_every=2, eval_every=2, shuffle_buffer=50)  # one checkpoint, the last
    return TrainConfig(**{**base, **kw})


@pytest.mark.integration  # trains
def test_user_data_on_an_empty_cache_trains_to_the_end_without_eval(small_dataset, tmp_path, monkeypatch):
    cache = tmp_path / "empty-cache"
    monkeypatch.setenv("FLIP_CACHE", str(cache))
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", "--data", str(small_dataset / "train"), "--samples", "48",
                                 "--batch-size", "16", "--workers", "0", "--eval-every", "1", "--out", str(run)])
    assert result.exit_code == 0, result.output
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["eval"] == {} and summary["eval_note"] == "no eval data given"
    assert not any("eval" in r for r in _records(run))
    assert not cache.exists() or not any(cache.iterdir())  # nothing built-in was needed


def test_built_in_data_keeps_its_own_eval_sets_and_user_data_gets_none():
    builtin = resolve(TrainConfig())
    assert builtin.eval_data.endswith("captions.csv") and builtin.eval_zeroshot.endswith("zeroshot")
    own = resolve(TrainConfig(data="/somewhere/{0..3}.tar", samples=512))
    assert own.eval_data is None and own.eval_zeroshot is None


@pytest.mark.parametrize("flag, value", [("--eval-data", "missing.csv"), ("--eval-zeroshot", "missing-dir"),
                                         ("--eval-templates", "no-such-templates")])
def test_unusable_eval_data_stops_the_run_before_it_trains(small_dataset, tmp_path, flag, value):
    run = tmp_path / "run"
    args = ["train", "--data", str(small_dataset / "train"), "--samples", "32", "--batch-size", "16",
            "--workers", "0", "--out", str(run), flag, str(tmp_path / value)]
    if flag == "--eval-templates":
        args += ["--eval-zeroshot", str(small_dataset / "zeroshot")]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and f"error: {flag} cannot be used" in result.output
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (run / "latest").exists() and not (run / "metrics.jsonl").exists()


@pytest.mark.integration  # trains
def test_retrieval_and_zeroshot_run_periodically_and_reach_the_summary(small_dataset, tmp_path):
    run = tmp_path / "run"
    summary = train(_cfg(small_dataset, run, eval_data=str(small_dataset / "retrieval" / "captions.csv"),
                         eval_zeroshot=str(small_dataset / "zeroshot")))
    evals = [r for r in _records(run) if "eval" in r]
    assert [r["step"] for r in evals] == [2, 4]
    for key in ("image_to_text_R@1", "text_to_image_R@5", "zeroshot_top1", "zeroshot_top5",
                "zeroshot_mean_per_class_recall"):
        assert key in summary["eval"] and key in evals[-1]["eval"]
    assert summary["eval"] == evals[-1]["eval"] and summary["eval_step"] == 4
    assert json.loads((run / "summary.json").read_text())["eval"] == summary["eval"]
    assert "eval_note" not in summary and "eval_errors" not in summary


@pytest.mark.integration  # trains
def test_an_evaluation_error_never_costs_the_run(small_dataset, tmp_path, monkeypatch):
    run = tmp_path / "run"
    latest_at_call = []

    def broken(self, model, device, precision="fp32"):
        latest_at_call.append((run / "latest").read_text().strip())
        raise RuntimeError("out of memory in the evaluation")

    monkeypatch.setattr(PeriodicEval, "run", broken)
    summary = train(_cfg(small_dataset, run, eval_data=str(small_dataset / "retrieval" / "captions.csv"),
                         ckpt_every=2))  # a checkpoint at each evaluation, written before it
    assert summary["steps"] == 4 and (run / "summary.json").exists()
    assert latest_at_call == ["ckpt-00000002", "ckpt-00000004"]  # each step's checkpoint came first
    assert [e["step"] for e in summary["eval_errors"]] == [2, 4] and summary["eval"] == {}
    assert [r["step"] for r in _records(run) if "eval_error" in r] == [2, 4]
    assert "out of memory in the evaluation" in summary["eval_errors"][0]["error"]


def test_eval_sets_are_capped(small_dataset):
    cfg = TrainConfig(eval_data=str(small_dataset / "retrieval" / "captions.csv"),
                      eval_zeroshot=str(small_dataset / "zeroshot"), eval_images=5, eval_zeroshot_images=10)
    sets = PeriodicEval.load(cfg, 64)
    assert sets.retrieval.images.shape == (5, 3, 64, 64)
    assert set(sets.retrieval.text_to_image.tolist()) == set(range(5))
    assert sets.zeroshot.images.shape[0] == 10
    assert len(set(sets.zeroshot.labels.tolist())) == 10  # spread over the classes, not the first one's images
