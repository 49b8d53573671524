"""Compute-optimal frontier and power-law fits of error against training cost.

`pareto_frontier` picks the configurations no other one beats at lower or equal cost (the best run
of each budget that beats every cheaper one: Cherti et al.'s best-per-bin, a bin per budget);
`fit_power_law` fits one of two forms to them (error = 100 - accuracy, in percent), puts a bootstrap
band over seeds around the fit, and extrapolates to a larger budget, so "what would 4x the compute
buy?" has an answer with an interval before it is paid for:

- `saturating`: error = a * (C / C0)^-b + c, by `scipy.optimize.curve_fit` (an irreducible error c);
- `power`: error = a * (C / C0)^b, Cherti et al.'s pure power law, by least squares in log-log space.

`fit_frontier` chains the frontier and a fit on a sweep's results frame; `held_out_errors` refits
each form without the largest-cost frontier point(s) and says how far off it predicts them, so the
form that extrapolates better on one's own runs is a measurement, not a choice of taste.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Callable, ClassVar

import numpy as np
import pandas as pd
from scipy.optimize import OptimizeWarning, curve_fit

from flip.sweep.stats import config_keys, done

MIN_DISTINCT_COSTS = 3  # the saturating form's three parameters: with fewer distinct costs it is not determined
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


def _pure(x, a, b):
    return a * np.power(x, b)


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
    form: ClassVar[str] = "saturating"
    formula: ClassVar[str] = "error = a·C^-b + c"

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


@dataclass
class PowerFit(FitResult):
    """error(C) = a * (C / cost_scale)^b, Cherti et al.'s pure power law: b < 0 when error falls with
    compute, and no floor (`c` is 0 and left out of `to_dict`). Otherwise as FitResult."""

    form: ClassVar[str] = "power"
    formula: ClassVar[str] = "error = a·C^b"

    def error(self, cost) -> np.ndarray:
        return _pure(np.asarray(cost, dtype=float) / self.cost_scale, self.a, self.b)

    def to_dict(self) -> dict:
        out = super().to_dict()
        out.pop("c")
        return {"form": self.form, **out}


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


def _loglog_fit(x: np.ndarray, y: np.ndarray) -> tuple[float, float] | None:
    """Least squares of log error on log cost (as Cherti et al.): a, b of a * x^b; None when an error
    is not positive (no logarithm) or fewer than two costs differ."""
    if np.any(y <= 0) or len(np.unique(x)) < 2:
        return None
    b, log_a = np.polyfit(np.log(x), np.log(y), 1)
    return (float(np.exp(log_a)), float(b)) if np.isfinite(b) and np.isfinite(log_a) else None


@dataclass(frozen=True)
class Form:
    """A fitted form: its curve, its least-squares fit and the distinct costs that determine it."""

    model: Callable
    fit: Callable
    min_costs: int
    result: type


FORMS = {"saturating": Form(_model, _curve_fit, MIN_DISTINCT_COSTS, FitResult),
         "power": Form(_pure, _loglog_fit, 2, PowerFit)}


def fit_power_law(cost, error, *, seeds_df: pd.DataFrame | None = None, bootstrap: int = 200,
                  target: float | None = None, rng_seed: int = 0, form: str = "saturating") -> FitResult | None:
    """Fit `form` (saturating: error = a * (C / C.min())^-b + c; power: error = a * (C / C.min())^b) to
    (cost, error) points, with a bootstrap band.

    `cost`, `error`: one value per configuration (seed means; error = 100 - accuracy, percent).
    `seeds_df`: the per-seed values behind them, columns `config` (any label), `cost`, `error`;
    the bootstrap resamples seeds within each configuration and refits. Without it (or with a
    single seed everywhere) it resamples the fit's residuals instead. `target`: a cost to
    extrapolate to (e.g. 4x the largest budget). Returns a FitResult (saturating) or PowerFit, or None
    when too few distinct costs determine the form (three, two) or the fit does not converge; callers
    say "not enough points to fit".
    """
    shape = FORMS[form]
    cost = np.asarray(cost, dtype=float)
    error = np.asarray(error, dtype=float)
    ok = np.isfinite(cost) & np.isfinite(error) & (cost > 0)
    cost, error = cost[ok], error[ok]
    if len(np.unique(cost)) < shape.min_costs:
        return None
    # Normalised cost: FLOPs are ~1e15 and seconds ~1e2; C / C.min() keeps the fit conditioned.
    scale = float(cost.min())
    params = shape.fit(cost / scale, error)
    if params is None:
        return None
    model = shape.model

    hi_cost = max(float(cost.max()), float(target) if target else 0.0)
    grid = np.geomspace(scale, hi_cost, GRID_POINTS)
    rng = np.random.default_rng(rng_seed)
    samples, method = _bootstrap_fits(cost, error, params, seeds_df, bootstrap, rng, scale, shape)

    curves = np.array([model(grid / scale, *p) for p in samples]) if samples else None
    if curves is not None and len(curves) >= 2:
        band_low, band_high = np.percentile(curves, BAND, axis=0)
        bs = np.array([p[1] for p in samples])
        b_interval = tuple(float(v) for v in np.percentile(bs, BAND))
    else:
        fitted = model(grid / scale, *params)
        band_low, band_high, b_interval, method = fitted, fitted.copy(), (params[1], params[1]), "none"

    predicted = predicted_interval = None
    if target:
        predicted = float(model(target / scale, *params))
        if curves is not None and len(curves) >= 2:
            at_target = np.array([model(target / scale, *p) for p in samples])
            predicted_interval = tuple(float(v) for v in np.percentile(at_target, BAND))
        else:
            predicted_interval = (predicted, predicted)

    a, b, c = (*params, 0.0)[:3]
    return shape.result(a=a, b=b, c=c, b_interval=b_interval, grid=grid, band_low=band_low,
                     band_high=band_high, target=float(target) if target else None,
                     predicted=predicted, predicted_interval=predicted_interval,
                     n_points=int(len(cost)), cost_scale=scale,
                     cost_range=(float(cost.min()), float(cost.max())),
                     n_bootstrap=len(samples), band_method=method)


def _bootstrap_fits(cost, error, params, seeds_df, n, rng, scale, shape: Form = FORMS["saturating"]):
    """Refit `n` resampled data sets; returns the converged parameter tuples and the method."""
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
            if len(np.unique(x)) < shape.min_costs:
                continue
            p = shape.fit(x / scale, y)  # same cost units as the main fit, so a is comparable
            if p is not None:
                samples.append(p)
        return samples, "seeds"
    fitted = shape.model(cost / scale, *params)
    resid = error - fitted
    if np.allclose(resid, 0):
        return [], "none"
    for _ in range(n):
        y = fitted + rng.choice(resid, size=len(resid), replace=True)
        p = shape.fit(cost / scale, y)
        if p is not None:
            samples.append(p)
    return samples, "residuals"


def fit_frontier(df: pd.DataFrame, cost: str, metric: str, *, target_factor: float | None = 4.0,
                 bootstrap: int = 200, rng_seed: int = 0,
                 form: str = "saturating") -> tuple[pd.DataFrame, FitResult | None]:
    """The frontier of `metric` (accuracy, percent) against `cost`, and a fit of `form` to it.

    The fit's bootstrap resamples the seeds of each frontier configuration; the extrapolation
    target is `target_factor` times the largest frontier cost (None: no extrapolation).
    """
    frontier = pareto_frontier(df, cost, metric)
    if len(frontier) == 0:
        return frontier, None
    seeds_df = _frontier_seeds(df, frontier, cost, metric)
    target = float(frontier[cost].max()) * target_factor if target_factor else None
    fit = fit_power_law(frontier[cost].to_numpy(float), 100.0 - frontier[metric].to_numpy(float),
                        seeds_df=seeds_df, bootstrap=bootstrap, target=target, rng_seed=rng_seed, form=form)
    return frontier, fit


def _frontier_seeds(df: pd.DataFrame, frontier: pd.DataFrame, cost: str, metric: str) -> pd.DataFrame:
    """The per-seed (config, cost, error) behind each frontier configuration, for the bootstrap."""
    keys = [c for c in frontier.columns if c not in (cost, metric, f"{metric}_std", "n_seeds")]
    runs = done(df).dropna(subset=[cost, metric])
    if keys:
        labels = frontier[keys].astype(str).agg("|".join, axis=1)
        run_labels = runs[keys].astype(str).agg("|".join, axis=1)
        runs = runs[run_labels.isin(set(labels))]
        config = run_labels[runs.index]
    else:
        config = pd.Series(0, index=runs.index)
    return pd.DataFrame({"config": config, "cost": runs[cost].astype(float),
                         "error": 100.0 - runs[metric].astype(float)})


HELD_OUT = 1  # frontier points held out at the largest costs (Cherti et al. hold out their largest too)


@dataclass
class HeldOut:
    """A form fitted to the frontier less its `held_out` largest-cost points, and what it predicts for them.

    `costs`, `observed`: the held-out points (accuracy, percent); `predicted`: the refitted form's
    accuracy there (None: the points left do not determine the form); errors in accuracy points."""

    form: str
    fitted_points: int
    costs: list[float]
    observed: list[float]
    predicted: list[float] | None

    @property
    def errors(self) -> list[float] | None:
        """Predicted minus observed accuracy, per held-out point (positive: the form promised too much)."""
        return None if self.predicted is None else [p - o for p, o in zip(self.predicted, self.observed)]

    @property
    def mean_abs_error(self) -> float | None:
        errors = self.errors
        return None if errors is None else float(np.mean(np.abs(errors)))

    def to_dict(self) -> dict:
        return {**asdict(self), "errors": self.errors, "mean_abs_error": self.mean_abs_error}


def held_out_error(cost, accuracy, form: str, held_out: int = HELD_OUT) -> HeldOut | None:
    """Fit `form` to all but the `held_out` largest-cost points (seed means, accuracy in percent) and
    predict those; None with fewer points than held out plus one."""
    order = np.argsort(np.asarray(cost, dtype=float), kind="stable")
    cost = np.asarray(cost, dtype=float)[order]
    accuracy = np.asarray(accuracy, dtype=float)[order]
    if held_out < 1 or len(cost) <= held_out:
        return None
    fit_cost, fit_error = cost[:-held_out], 100.0 - accuracy[:-held_out]
    shape = FORMS[form]
    scale = float(fit_cost.min())
    params = shape.fit(fit_cost / scale, fit_error) if len(np.unique(fit_cost)) >= shape.min_costs else None
    predicted = None if params is None else \
        [float(100.0 - shape.model(c / scale, *params)) for c in cost[-held_out:]]
    return HeldOut(form, int(len(fit_cost)), [float(c) for c in cost[-held_out:]],
                   [float(a) for a in accuracy[-held_out:]], predicted)


def held_out_errors(frontier: pd.DataFrame, cost: str, metric: str, forms=tuple(FORMS),
                    held_out: int = HELD_OUT) -> dict[str, HeldOut | None]:
    """`held_out_error` of each form on one frontier (from `pareto_frontier`), so the forms compare."""
    return {form: held_out_error(frontier[cost].to_numpy(float), frontier[metric].to_numpy(float), form, held_out)
            for form in forms}
