"""Compute-optimal frontier and the saturating power-law fit (flip.sweep.fit)."""

import json

import numpy as np
import pandas as pd
import pytest

from flip.sweep.fit import FitResult, fit_frontier, fit_power_law, pareto_frontier

A, B, C = 50.0, 0.3, 10.0  # error = A * (cost / C0)^-B + C
C0 = 1e12


def true_error(cost):
    return A * (np.asarray(cost, dtype=float) / C0) ** -B + C


def synthetic(noise=0.3, seeds=3, rng_seed=1):
    """Per-seed points on the true curve over a 1024x cost range, with small noise."""
    rng = np.random.default_rng(rng_seed)
    costs = C0 * 2.0 ** np.arange(11)
    rows = [{"config": i, "cost": c, "error": true_error(c) + rng.normal(0, noise)}
            for i, c in enumerate(costs) for _ in range(seeds)]
    seeds_df = pd.DataFrame(rows)
    means = seeds_df.groupby("config").mean()
    return seeds_df, means["cost"].to_numpy(), means["error"].to_numpy()


def test_fit_recovers_known_exponent_and_floor():
    seeds_df, cost, error = synthetic()
    fit = fit_power_law(cost, error, seeds_df=seeds_df, bootstrap=100, target=4 * cost.max())
    assert isinstance(fit, FitResult)
    assert fit.b == pytest.approx(B, rel=0.10)
    assert fit.c == pytest.approx(C, abs=1.5)
    assert fit.b_interval[0] <= fit.b <= fit.b_interval[1]
    assert fit.n_points == len(cost) and fit.band_method == "seeds" and fit.n_bootstrap > 50
    # The extrapolation to 4x the largest budget is close to the truth and its interval holds it.
    truth = true_error(4 * cost.max())
    assert fit.predicted == pytest.approx(truth, abs=0.5)
    lo, hi = fit.predicted_interval
    assert lo - 0.2 <= truth <= hi + 0.2
    assert fit.predicted_accuracy == pytest.approx(100 - fit.predicted)
    alo, ahi = fit.predicted_accuracy_interval
    assert alo == pytest.approx(100 - hi) and ahi == pytest.approx(100 - lo)


def test_bootstrap_band_contains_true_curve():
    seeds_df, cost, error = synthetic(noise=0.5, rng_seed=3)
    fit = fit_power_law(cost, error, seeds_df=seeds_df, bootstrap=200, target=4 * cost.max())
    inside = fit.grid <= cost.max()
    truth = true_error(fit.grid[inside])
    slack = 0.05  # percentage points: the band is a 90% band, so allow grazing it
    contained = (fit.band_low[inside] - slack <= truth) & (truth <= fit.band_high[inside] + slack)
    assert contained.mean() >= 0.9
    assert np.all(fit.band_low <= fit.band_high)
    assert fit.grid[0] == pytest.approx(cost.min()) and fit.grid[-1] == pytest.approx(4 * cost.max())
    # The band narrows where the data is and widens out into the extrapolation.
    width = fit.band_high - fit.band_low
    assert width[-1] > width[inside].mean()


def test_fit_without_seeds_uses_residual_bootstrap():
    _, cost, error = synthetic(seeds=1)
    fit = fit_power_law(cost, error, bootstrap=50)
    assert fit.band_method == "residuals" and fit.b == pytest.approx(B, rel=0.15)
    assert fit.target is None and fit.predicted is None and fit.predicted_interval is None


def test_fit_works_in_any_cost_units():
    """Seconds (~1e2) and FLOPs (~1e15) fit the same: the cost is normalised before fitting."""
    seeds_df, cost, error = synthetic()
    small = fit_power_law(cost / 1e10, error, bootstrap=0)
    big = fit_power_law(cost * 1e3, error, bootstrap=0)
    assert small.b == pytest.approx(big.b, rel=1e-4) and small.c == pytest.approx(big.c, abs=1e-3)
    assert small.error(cost.max() / 1e10) == pytest.approx(big.error(cost.max() * 1e3), abs=1e-3)


def test_too_few_points_returns_none():
    assert fit_power_law([1.0, 2.0], [30.0, 20.0]) is None
    assert fit_power_law([1.0, 1.0, 2.0, 2.0], [30.0, 31.0, 20.0, 21.0]) is None
    assert fit_power_law([1.0, 2.0, np.nan, 4.0], [30.0, 20.0, 15.0, np.nan]) is None


def test_fit_result_is_json_serialisable():
    seeds_df, cost, error = synthetic()
    fit = fit_power_law(cost, error, seeds_df=seeds_df, bootstrap=20, target=4 * cost.max())
    data = json.loads(json.dumps(fit.to_dict()))
    assert data["b"] == pytest.approx(fit.b) and len(data["grid"]) == len(fit.grid)
    assert data["predicted_accuracy"] == pytest.approx(100 - fit.predicted)
    assert len(data["predicted_accuracy_interval"]) == 2


def results(configs):
    """A results frame: configs are (row, flops, [accuracy per seed])."""
    rows = []
    for row, flops, accs in configs:
        for seed, acc in enumerate(accs):
            rows.append({"row": row, "variant": "base", "mask_ratio": 0.5, "seed": seed,
                         "run_id": f"{row}-{seed}", "status": "done", "error": None, "run_dir": "",
                         "train_flops": flops * (1 + 0.01 * seed), "train_time_s": 10.0 + seed,
                         "zeroshot": acc})
    return pd.DataFrame(rows)


def test_frontier_is_exactly_the_undominated_configs():
    df = results([
        ("a", 1.0, [50, 52]),       # cheapest: on
        ("b", 2.0, [44, 46]),       # beaten by a at lower cost: off
        ("c", 2.0, [60, 62]),       # on
        ("d", 4.0, [57, 59]),       # beaten by c: off
        ("e", 8.0, [70, 72]),       # on
        ("f", 8.0, [70, 70]),       # same cost, worse mean than e: off
        ("g", 16.0, [72, 74]),      # on (better than everything cheaper)
        ("h", 32.0, [73, 73]),      # no better than the cheaper g: off
    ])
    # A failed run and a run without a metric never count, however good they look.
    df = pd.concat([df, pd.DataFrame([
        {"row": "x", "variant": "base", "mask_ratio": 0.5, "seed": 0, "run_id": "x-0", "status": "failed",
         "train_flops": 0.5, "zeroshot": 99.0},
        {"row": "y", "variant": "base", "mask_ratio": 0.5, "seed": 0, "run_id": "y-0", "status": "done",
         "train_flops": 0.5, "zeroshot": np.nan},
    ])], ignore_index=True)
    front = pareto_frontier(df, "train_flops", "zeroshot")
    assert front["row"].tolist() == ["a", "c", "e", "g"]
    assert front["zeroshot"].tolist() == [51.0, 61.0, 71.0, 73.0]
    assert front["n_seeds"].tolist() == [2, 2, 2, 2]
    assert front["zeroshot_std"].iloc[0] == pytest.approx(np.std([50, 52], ddof=1))
    assert front["train_flops"].is_monotonic_increasing
    # A per-run column the executor adds (here the command) does not split a configuration.
    front2 = pareto_frontier(df.assign(command=df["run_id"].map(lambda r: f"flipctl train --out {r}")),
                             "train_flops", "zeroshot")
    assert front2["row"].tolist() == ["a", "c", "e", "g"] and front2["n_seeds"].tolist() == [2, 2, 2, 2]
    assert "command" not in front2.columns and "mask_ratio" in front2.columns
    # Variants are separate configurations (a tuned run is not a seed of its base run).
    tuned = df[df["row"] == "a"].assign(variant="tuned", zeroshot=80.0, train_flops=1.5)
    front = pareto_frontier(pd.concat([df, tuned]), "train_flops", "zeroshot")
    assert list(zip(front["row"], front["variant"])) == [("a", "base"), ("a", "tuned")]


def test_fit_frontier_on_results_frame():
    rng = np.random.default_rng(0)
    configs = [(f"r{i}", C0 * 2.0 ** i, list(100 - true_error(C0 * 2.0 ** i) + rng.normal(0, 0.3, 3)))
               for i in range(8)]
    front, fit = fit_frontier(results(configs), "train_flops", "zeroshot", bootstrap=50)
    assert len(front) >= 3 and fit is not None
    assert fit.band_method == "seeds"
    assert fit.target == pytest.approx(4 * front["train_flops"].max())
    assert fit.b == pytest.approx(B, rel=0.25)
    # Two budgets cannot determine a three-parameter curve.
    front, fit = fit_frontier(results(configs[:2]), "train_flops", "zeroshot")
    assert len(front) == 2 and fit is None
