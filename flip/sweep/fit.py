"""Compute-optimal frontier and saturating power-law fits of error against training cost.

`pareto_frontier` picks the configurations no other one beats at lower or equal cost;
`fit_power_law` fits error = a * (C / C0)^-b + c to them (error = 100 - accuracy, in percent) with
`scipy.optimize.curve_fit`, puts a bootstrap band over seeds around the fit, and extrapolates to a
larger budget, so "what would 4x the compute buy?" has an answer with an interval before it is paid
for. `fit_frontier` chains the two on a sweep's results frame.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from scipy.optimize import OptimizeWarning, curve_fit

from flip.sweep.stats import config_keys, done

MIN_DISTINCT_COSTS = 3  # three parameters: with fewer distinct costs the curve is not determined
BAND = (5.0, 95.0)  # percentile band of the bootstrap
GRID_POINTS = 100


def pareto_frontier(df: pd.DataFrame, cost: str, metric: str) -> pd.DataFrame:
    """The configurations that no other configuration beats at lower or equal cost.

    Seeds are averaged first (a configuration is a spec row and variant, with its axis columns;
    see stats.config_keys). Returns one row per frontier
    configuration, sorted by cost, with its config columns, the mean `cost` and `metric`,
    `<metric>_std` and `n_seeds`. Higher `metric` is better. Only finished runs count.
    """
    for col in (cost, metric):
        if col not in df.columns:
            raise KeyError(f"no column {col!r} in the results")
    runs = done(df).dropna(subset=[cost, metric])
    keys = config_keys(runs, exclude=(cost, metric))
    grouped = runs.groupby(keys, sort=False, dropna=False) if keys else runs.groupby(lambda _: 0)
    means = grouped.agg(**{cost: (cost, "mean"), metric: (metric, "mean"),
                           f"{metric}_std": (metric, "std"), "n_seeds": (metric, "size")})
    means = means.reset_index() if keys else means.reset_index(drop=True)
    # Cheapest first; at equal cost the better one first, so a worse twin never gets on.
    means = means.sort_values([cost, metric], ascending=[True, False], kind="stable")
    keep, best, best_cost = [], -math.inf, None
    for idx, row in means.iterrows():
        if row[metric] > best or (row[metric] == best and row[cost] == best_cost):
            keep.append(idx)
            best, best_cost = row[metric], row[cost]
    return means.loc[keep].reset_index(drop=True)


def _model(x, a, b, c):
    return a * np.power(x, -b) + c


@dataclass
class FitResult:
    """error(C) = a * (C / cost_scale)^-b + c; errors in percent, costs in the units fitted.

    `grid`, `band_low`, `band_high`: the bootstrap band (percentiles 5-95 of refitted curves) on a
    geometric grid from the cheapest point to the target. `predicted`/`predicted_interval`: the
    error at `target` (None without a target); `predicted_accuracy*` the same as accuracy.
    """

    a: float
    b: float
    c: float
    b_interval: tuple[float, float]
    grid: np.ndarray
    band_low: np.ndarray
    band_high: np.ndarray
    target: float | None
    predicted: float | None
    predicted_interval: tuple[float, float] | None
    n_points: int
    cost_scale: float = 1.0
    cost_range: tuple[float, float] = (1.0, 1.0)
    n_bootstrap: int = 0  # refits that converged
    band_method: str = "none"  # "seeds", "residuals" or "none"

    def error(self, cost) -> np.ndarray:
        """The fitted error (percent) at `cost` (same units as the fitted costs)."""
        return _model(np.asarray(cost, dtype=float) / self.cost_scale, self.a, self.b, self.c)

    def accuracy(self, cost) -> np.ndarray:
        return 100.0 - self.error(cost)

    @property
    def predicted_accuracy(self) -> float | None:
        return None if self.predicted is None else 100.0 - self.predicted

    @property
    def predicted_accuracy_interval(self) -> tuple[float, float] | None:
        if self.predicted_interval is None:
            return None
        lo, hi = self.predicted_interval
        return (100.0 - hi, 100.0 - lo)

    def to_dict(self) -> dict:
        """Plain JSON-serialisable values (arrays as lists)."""
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, np.ndarray):
                out[key] = [float(v) for v in value]
            elif isinstance(value, tuple):
                out[key] = [float(v) for v in value]
            elif isinstance(value, (np.floating, np.integer)):
                out[key] = value.item()
        out["predicted_accuracy"] = self.predicted_accuracy
        pai = self.predicted_accuracy_interval
        out["predicted_accuracy_interval"] = None if pai is None else [float(v) for v in pai]
        return out


def _curve_fit(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float] | None:
    """Least-squares a, b, c with a > 0, b > 0, 0 <= c <= min(y); None if it does not converge."""
    c_max = max(float(np.min(y)), 1e-9)  # curve_fit needs lower < upper
    c0 = 0.5 * c_max
    a0 = max(float(y[np.argmin(x)]) - c0, 1e-3)  # at x = 1 (the cheapest point) error = a + c
    p0 = (a0, 0.5, c0)
    bounds = ([1e-12, 1e-6, 0.0], [np.inf, 10.0, c_max])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OptimizeWarning)
            params, _ = curve_fit(_model, x, y, p0=p0, bounds=bounds, maxfev=20000)
    except (RuntimeError, ValueError):
        return None
    if not np.all(np.isfinite(params)):
        return None
    return tuple(float(p) for p in params)


def fit_power_law(cost, error, *, seeds_df: pd.DataFrame | None = None, bootstrap: int = 200,
                  target: float | None = None, rng_seed: int = 0) -> FitResult | None:
    """Fit error = a * (C / C.min())^-b + c to (cost, error) points, with a bootstrap band.

    `cost`, `error`: one value per configuration (seed means; error = 100 - accuracy, percent).
    `seeds_df`: the per-seed values behind them, columns `config` (any label), `cost`, `error`;
    the bootstrap resamples seeds within each configuration and refits. Without it (or with a
    single seed everywhere) it resamples the fit's residuals instead. `target`: a cost to
    extrapolate to (e.g. 4x the largest budget). Returns None when there are fewer than three
    distinct costs or the fit does not converge; callers say "not enough points to fit".
    """
    cost = np.asarray(cost, dtype=float)
    error = np.asarray(error, dtype=float)
    ok = np.isfinite(cost) & np.isfinite(error) & (cost > 0)
    cost, error = cost[ok], error[ok]
    if len(np.unique(cost)) < MIN_DISTINCT_COSTS:
        return None
    # Normalised cost: FLOPs are ~1e15 and seconds ~1e2; C / C.min() keeps the fit conditioned.
    scale = float(cost.min())
    params = _curve_fit(cost / scale, error)
    if params is None:
        return None
    a, b, c = params

    hi_cost = max(float(cost.max()), float(target) if target else 0.0)
    grid = np.geomspace(scale, hi_cost, GRID_POINTS)
    rng = np.random.default_rng(rng_seed)
    samples, method = _bootstrap_fits(cost, error, params, seeds_df, bootstrap, rng, scale)

    curves = np.array([_model(grid / scale, *p) for p in samples]) if samples else None
    if curves is not None and len(curves) >= 2:
        band_low, band_high = np.percentile(curves, BAND, axis=0)
        bs = np.array([p[1] for p in samples])
        b_interval = tuple(float(v) for v in np.percentile(bs, BAND))
    else:
        fitted = _model(grid / scale, a, b, c)
        band_low, band_high, b_interval, method = fitted, fitted.copy(), (b, b), "none"

    predicted = predicted_interval = None
    if target:
        predicted = float(_model(target / scale, a, b, c))
        if curves is not None and len(curves) >= 2:
            at_target = np.array([_model(target / scale, *p) for p in samples])
            predicted_interval = tuple(float(v) for v in np.percentile(at_target, BAND))
        else:
            predicted_interval = (predicted, predicted)

    return FitResult(a=a, b=b, c=c, b_interval=b_interval, grid=grid, band_low=band_low,
                     band_high=band_high, target=float(target) if target else None,
                     predicted=predicted, predicted_interval=predicted_interval,
                     n_points=int(len(cost)), cost_scale=scale,
                     cost_range=(float(cost.min()), float(cost.max())),
                     n_bootstrap=len(samples), band_method=method)


def _bootstrap_fits(cost, error, params, seeds_df, n, rng, scale):
    """Refit `n` resampled data sets; returns the converged parameter triples and the method."""
    if n <= 0:
        return [], "none"
    groups = None
    if seeds_df is not None and len(seeds_df):
        missing = {"config", "cost", "error"} - set(seeds_df.columns)
        if missing:
            raise KeyError(f"seeds_df lacks column(s) {', '.join(sorted(missing))}")
        clean = seeds_df.dropna(subset=["cost", "error"])
        groups = [(g["cost"].to_numpy(float), g["error"].to_numpy(float))
                  for _, g in clean.groupby("config", sort=False)]
        if not any(len(e) > 1 for _, e in groups):
            groups = None  # one seed everywhere: nothing to resample within a config
    samples = []
    if groups is not None:
        for _ in range(n):
            xs, ys = [], []
            for gc, ge in groups:
                n_seeds = len(ge)
                pick = rng.integers(0, n_seeds, n_seeds)
                # A resampled mean of n seeds varies (n-1)/n as much as the true mean does (a
                # large bias at 3 seeds); widen its deviation by sqrt(n/(n-1)) to undo it.
                widen = math.sqrt(n_seeds / (n_seeds - 1)) if n_seeds > 1 else 1.0
                xs.append(gc.mean() + widen * (gc[pick].mean() - gc.mean()))
                ys.append(ge.mean() + widen * (ge[pick].mean() - ge.mean()))
            x, y = np.array(xs), np.array(ys)
            if len(np.unique(x)) < MIN_DISTINCT_COSTS:
                continue
            p = _curve_fit(x / scale, y)  # same cost units as the main fit, so a is comparable
            if p is not None:
                samples.append(p)
        return samples, "seeds"
    fitted = _model(cost / scale, *params)
    resid = error - fitted
    if np.allclose(resid, 0):
        return [], "none"
    for _ in range(n):
        y = fitted + rng.choice(resid, size=len(resid), replace=True)
        p = _curve_fit(cost / scale, y)
        if p is not None:
            samples.append(p)
    return samples, "residuals"


def fit_frontier(df: pd.DataFrame, cost: str, metric: str, *, target_factor: float | None = 4.0,
                 bootstrap: int = 200, rng_seed: int = 0) -> tuple[pd.DataFrame, FitResult | None]:
    """The frontier of `metric` (accuracy, percent) against `cost`, and a power-law fit to it.

    The fit's bootstrap resamples the seeds of each frontier configuration; the extrapolation
    target is `target_factor` times the largest frontier cost (None: no extrapolation).
    """
    frontier = pareto_frontier(df, cost, metric)
    if len(frontier) == 0:
        return frontier, None
    keys = [c for c in frontier.columns if c not in (cost, metric, f"{metric}_std", "n_seeds")]
    runs = done(df).dropna(subset=[cost, metric])
    if keys:
        labels = frontier[keys].astype(str).agg("|".join, axis=1)
        run_labels = runs[keys].astype(str).agg("|".join, axis=1)
        runs = runs[run_labels.isin(set(labels))]
        config = run_labels[runs.index]
    else:
        config = pd.Series(0, index=runs.index)
    seeds_df = pd.DataFrame({"config": config, "cost": runs[cost].astype(float),
                             "error": 100.0 - runs[metric].astype(float)})
    target = float(frontier[cost].max()) * target_factor if target_factor else None
    fit = fit_power_law(frontier[cost].to_numpy(float), 100.0 - frontier[metric].to_numpy(float),
                        seeds_df=seeds_df, bootstrap=bootstrap, target=target, rng_seed=rng_seed)
    return frontier, fit
