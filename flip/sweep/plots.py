"""Paper-style figures of a sweep's results, as PNG and PDF.

The only module of the project that imports matplotlib (with the Agg backend, so it never needs a
display). Every plot shows our mean over seeds as a line with markers and the spread (std) as
error bars; the paper's numbers, which are at ViT-L/16 scale on LAION-400M with ImageNet-1K
zero-shot, go on their own clearly labelled twin axis or panel, never on our scale.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from flip.sweep import names  # noqa: E402
from flip.sweep.stats import config_keys, done, summarise  # noqa: E402

__all__ = ["plot_metric_vs_axis", "plot_curves", "axis_points", "curve_points", "label_for"]

PAPER_COLOR = "0.35"
DPI = 150


def label_for(column: str) -> str:
    """A readable axis label with units for a results column (from flip.sweep.names)."""
    return names.lookup(column).axis


def _divisor(column: str) -> float:
    """Displayed value = stored value / divisor (seconds shown in minutes, bytes in GiB)."""
    return names.lookup(column).per


def _is_accuracy(column: str) -> bool:
    return names.lookup(column).unit == "%"


def _accuracy_limits(ax, y: str) -> None:
    """An accuracy axis never runs below 0% or above 100% (error bars and fit bands may reach past)."""
    if _is_accuracy(y):
        lo, hi = ax.get_ylim()
        ax.set_ylim(max(lo, 0.0), min(hi, 100.0))


def _errorbar_entry(handles: list, labels: list, errorbars: str | None) -> None:
    """A legend line that says what the error bars are (std over how many seeds)."""
    if errorbars:
        handles.append(matplotlib.lines.Line2D([], [], linestyle="none", marker="|", markersize=10, color="0.3"))
        labels.append(errorbars)


def _series_label(column: str | None, value) -> str:
    if column is None:
        return "ours"
    # a ratio reads as a row's words ("mask 50%"): its axis label would say "(%) 50%"
    if column in names.PERCENT_FIELDS and isinstance(value, (int, float, np.number)) and not pd.isna(value):
        return names.value_words(column, value)
    if column == "variant":
        return names.VARIANT_WORDS.get(value, str(value))
    if column == "row":  # the spec's own row names
        return str(value)
    return f"{label_for(column)} {names.show_value(column, value)}"


def _colors(n: int) -> list:
    cmap = plt.get_cmap("tab10")
    return [cmap(i % 10) for i in range(max(n, 1))]


def _save(fig, out_stem) -> list[Path]:
    stem = Path(out_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_name(stem.name + ".png"), stem.with_name(stem.name + ".pdf")]
    fig.savefig(paths[0], dpi=DPI, bbox_inches="tight")
    fig.savefig(paths[1], bbox_inches="tight", metadata={"CreationDate": None})  # no date: a rebuild is identical
    plt.close(fig)
    return paths


def _no_data(ax, what: str) -> None:
    ax.text(0.5, 0.5, f"no finished runs with {what}", ha="center", va="center",
            transform=ax.transAxes, color="0.4")


def _is_numeric(values: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)


def _paper_points(paper) -> list[dict]:
    return [p for p in (paper or []) if p.get("x") is not None and p.get("y") is not None]


def _values_in(values: Sequence, lo: float, hi: float) -> bool:
    return all(lo * 0.5 <= float(v) <= hi * 2.0 for v in values)


def axis_points(df: pd.DataFrame, x: str, y: str, series: str | None = None) -> pd.DataFrame:
    """What `plot_metric_vs_axis` draws: mean, std and count of `y` per (`series`,) `x`, finished runs only."""
    runs = done(df)
    keys = [x] if series is None else [series, x]
    for col in [*keys, y]:
        if col not in runs.columns:
            raise KeyError(f"no column {col!r} in the results")
    return summarise(runs, keys, y)


def plot_metric_vs_axis(df: pd.DataFrame, x: str, y: str, out_stem, *, series: str | None = None,
                        paper: Sequence[dict] | None = None, title: str | None = None,
                        xlabel: str | None = None, ylabel: str | None = None,
                        logx: bool = False, errorbars: str | None = None) -> list[Path]:
    """`y` (a metric) against the axis column `x`, one line per value of `series`.

    Numeric `x` is placed by value (sorted, joined by lines); categorical `x` by the order the rows
    first appear (markers only: categories have no order to interpolate). `paper`: dicts
    {"x", "y", "series" (optional)}; drawn on a twin y-axis over the same x when their x values
    match ours (mask ratios, text-mask kinds), the twin spanning as many points as ours so slopes
    compare; otherwise in a second panel (the paper's batches are 16k-64k, ours hundreds).
    `errorbars`: what the error bars are, for the legend ("error bars: std over 3 seeds").
    Writes OUT_STEM.png and .pdf; returns their paths.
    """
    runs = done(df)
    stats = axis_points(df, x, y, series)
    numeric = _is_numeric(runs[x])
    points = _paper_points(paper)
    categories: list[str] = [] if numeric else list(dict.fromkeys(map(str, runs[x].dropna())))
    if not numeric:  # the paper's own categories still get a place on the axis
        categories += [c for c in dict.fromkeys(str(p["x"]) for p in points) if c not in categories]

    def pos(values) -> np.ndarray:
        if numeric:
            return np.asarray(list(values), dtype=float)
        return np.array([categories.index(str(v)) for v in values], dtype=float)

    ours_x = pos(stats[x]) if len(stats) else np.array([])
    same_axis = bool(points) and (not numeric or (len(ours_x) > 0 and _paper_numeric(points) and _values_in(
        [p["x"] for p in points], float(np.nanmin(ours_x)), float(np.nanmax(ours_x)))))
    if points and not same_axis:
        fig, (ax, pax) = plt.subplots(1, 2, figsize=(10.5, 4.6), gridspec_kw={"width_ratios": [3, 2]})
    else:
        fig, ax = plt.subplots(figsize=(6.8, 4.8))
        pax = None
    line = "-" if numeric else "none"

    series_values = [None] if series is None else list(dict.fromkeys(stats[series].tolist()))
    colors = dict(zip(map(str, series_values), _colors(len(series_values))))
    # On a categorical axis, series side by side at one category would hide each other: dodge them.
    width = 0.0 if numeric or len(series_values) < 2 else min(0.5, 0.12 * len(series_values))
    dodge = {str(v): (i / (len(series_values) - 1) - 0.5) * width if width else 0.0
             for i, v in enumerate(series_values)}
    for value in series_values:
        part = stats if series is None else stats[stats[series].astype(str) == str(value)]
        part = part.assign(_pos=pos(part[x]) + dodge[str(value)]).sort_values("_pos")
        name = "ours" if series is None else _series_label(series, value) + " (ours)"
        ax.errorbar(part["_pos"], part["mean"], yerr=part["std"].fillna(0.0), marker="o", capsize=3,
                    linestyle=line, color=colors[str(value)], label=name)
    if not len(stats):
        _no_data(ax, y)

    handles, labels = ax.get_legend_handles_labels()
    _errorbar_entry(handles, labels, errorbars if len(stats) else None)
    if points:
        target = ax.twinx() if same_axis else pax
        paper_names = None if _paper_numeric(points) else list(dict.fromkeys(str(p["x"]) for p in points))
        for key, group in _by_series(points).items():
            px = (pos([p["x"] for p in group]) + dodge.get(str(key), 0.0) if same_axis
                  else _paper_x(group, paper_names))
            order = np.argsort(px, kind="stable")
            color = colors.get(str(key), PAPER_COLOR) if key is not None else PAPER_COLOR
            name = "paper" if key is None else f"paper, {_series_label(series, key)}"
            target.plot(px[order], [group[i]["y"] for i in order], linestyle=":" if numeric else "none",
                        marker="s", mfc="white", color=color, label=name)
        if same_axis:
            target.set_ylabel(f"{names.PAPER_LABEL}\n{names.PAPER_ZEROSHOT}", color=PAPER_COLOR)
            target.tick_params(axis="y", colors=PAPER_COLOR)
            _match_span(ax, target)
            _accuracy_limits(ax, y)
            th, tl = target.get_legend_handles_labels()
            handles, labels = handles + th, labels + [t.replace("paper", f"{names.PAPER_LABEL}, right axis", 1)
                                                      for t in tl]
        else:
            pax.set_title(names.PAPER_LABEL, fontsize=10)
            pax.set_xlabel(xlabel or label_for(x))
            pax.set_ylabel(names.PAPER_ZEROSHOT)
            if paper_names is not None:
                pax.set_xticks(range(len(paper_names)), paper_names,
                               rotation=20 if max(map(len, paper_names)) > 8 else 0)
            pax.grid(alpha=0.3)
            _legend_below(pax, *pax.get_legend_handles_labels())
    _legend_below(ax, handles, labels)

    if not numeric:
        ax.set_xticks(range(len(categories)), categories,
                      rotation=20 if max(map(len, categories), default=0) > 8 else 0)
        ax.set_xlim(-0.5, len(categories) - 0.5)
    else:
        if logx:
            ax.set_xscale("log")
            ticks = np.unique(ours_x)
            if 0 < len(ticks) <= 10:  # label the values actually run, not powers of ten
                ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
                ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        if x in names.PERCENT_FIELDS:
            ax.xaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0, decimals=0))
    ax.set_xlabel(xlabel or label_for(x))
    ax.set_ylabel(ylabel or label_for(y))
    ax.grid(alpha=0.3)
    _accuracy_limits(ax, y)
    ax.set_title(title or f"{label_for(y)} vs {label_for(x)}", fontsize=11)
    fig.tight_layout()
    return _save(fig, out_stem)


def _paper_numeric(points: list[dict]) -> bool:
    return all(_is_numeric(pd.Series([p["x"]])) for p in points)


def _by_series(points: list[dict]) -> dict:
    groups: dict = {}
    for p in points:
        groups.setdefault(p.get("series"), []).append(p)
    return groups


def _paper_x(group: list[dict], paper_names: list[str] | None) -> np.ndarray:
    """The paper's own x positions in its separate panel: values, or indices into `paper_names`."""
    xs = [p["x"] for p in group]
    if paper_names is None:
        return np.asarray(xs, dtype=float)
    return np.array([paper_names.index(str(v)) for v in xs], dtype=float)


def _match_span(ax, twin) -> None:
    """Give both y-axes the same height in percentage points, so equal slopes mean equal gains."""
    (a0, a1), (b0, b1) = ax.get_ylim(), twin.get_ylim()
    span = max(a1 - a0, b1 - b0)
    ac, bc = (a0 + a1) / 2, (b0 + b1) / 2
    ax.set_ylim(ac - span / 2, ac + span / 2)
    twin.set_ylim(bc - span / 2, bc + span / 2)


def _legend_below(ax, handles, labels) -> None:
    if handles:
        ax.legend(handles, labels, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16),
                  ncol=2 if len(handles) > 3 else 1, frameon=False)


def curve_points(df: pd.DataFrame, x: str, y: str, series: str, variant_col: str = "variant") -> pd.DataFrame:
    """What `plot_curves` draws: per configuration (seeds averaged), mean `x` (`_x`), mean and std of
    `y` (`_y`, `_std`) and the seed count (`_n`), with its config columns; finished runs only."""
    runs = done(df)
    for col in (x, y, series):
        if col not in runs.columns:
            raise KeyError(f"no column {col!r} in the results")
    data = runs.dropna(subset=[x, y])
    keys = config_keys(data, exclude=(x, y))
    if variant_col not in data.columns:
        data = data.assign(**{variant_col: "base"})
        keys = [*keys, variant_col] if variant_col not in keys else keys
    if keys:
        return (data.groupby(keys, sort=False, dropna=False)
                .agg(_x=(x, "mean"), _y=(y, "mean"), _std=(y, "std"), _n=(y, "size")).reset_index())
    return pd.DataFrame({"_x": data[x], "_y": data[y], "_std": np.nan, "_n": 1})


def plot_curves(df: pd.DataFrame, x: str, y: str, out_stem, *, series: str,
                variant_col: str = "variant", frontier: pd.DataFrame | None = None, fit=None,
                paper: Sequence[dict] | None = None, title: str | None = None,
                paper_xlabel: str = "relative training time", errorbars: str | None = None) -> list[Path]:
    """Accuracy against training cost (FLIP Figures 1 and 3): one curve per `series` value.

    `x` is "train_time_s" (shown in minutes) or "train_flops" (log scale); each point is one
    configuration's mean over seeds with std error bars, points ordered by cost; the base variant
    is solid and the tuned one (after unmasked tuning) dashed in the same colour. `frontier`
    (from fit.pareto_frontier) is ringed in black with a step line; `fit` (a fit.FitResult in the
    same cost units, or a list of them: the saturating and the pure power law) draws each fitted curve, its bootstrap band and the extrapolation to its target
    with the exponent and the predicted accuracy. `paper`: {"x", "y", "series"} points on the
    paper's own x scale (`paper_xlabel`), in a second panel.
    """  # noqa: E501
    per_config = curve_points(df, x, y, series, variant_col)
    div = _divisor(x)
    logx = x == "train_flops"
    points = _paper_points(paper)
    if points:
        fig, (ax, pax) = plt.subplots(1, 2, figsize=(12.5, 6.2), gridspec_kw={"width_ratios": [3, 2]})
    else:
        fig, ax = plt.subplots(figsize=(7.6, 6.2))
        pax = None

    series_values = list(dict.fromkeys(per_config[series].tolist())) if len(per_config) else []
    try:
        series_values = sorted(series_values)
    except TypeError:
        pass
    colors = dict(zip(map(str, series_values), _colors(len(series_values))))
    styles = {"base": "-", "tuned": "--"}
    for value in series_values:
        part = per_config[per_config[series].astype(str) == str(value)]
        for variant in dict.fromkeys(part[variant_col].tolist()):
            curve = part[part[variant_col] == variant].sort_values("_x")
            label = _series_label(series, value)
            if variant != "base":
                label += f", {_series_label('variant', variant)}"
            ax.errorbar(curve["_x"] / div, curve["_y"], yerr=curve["_std"].fillna(0.0),
                        linestyle=styles.get(variant, ":"), marker="o" if variant == "base" else "^",
                        capsize=3, color=colors[str(value)], label=label)
    if not len(per_config):
        _no_data(ax, y)

    if frontier is not None and len(frontier):
        f = frontier.sort_values(x)
        ax.scatter(f[x] / div, f[y], s=130, facecolors="none", edgecolors="black", linewidths=1.4,
                   zorder=5, label="compute-optimal frontier")
        ax.step(f[x] / div, f[y], where="post", color="black", linewidth=0.9, alpha=0.7, zorder=4)

    fits = [] if fit is None else list(fit) if isinstance(fit, (list, tuple)) else [fit]
    for result, color in zip(fits, FIT_COLORS):
        _draw_fit(ax, result, div, x, color, legacy=len(fits) == 1 and result.form == "saturating")

    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(label_for(x))
    ax.set_ylabel(label_for(y))
    ax.grid(alpha=0.3, which="both" if logx else "major")
    _accuracy_limits(ax, y)
    handles, labels = ax.get_legend_handles_labels()
    _errorbar_entry(handles, labels, errorbars if len(per_config) else None)
    _legend_below(ax, handles, labels)
    ax.set_title(title or f"{label_for(y)} vs {label_for(x)}", fontsize=11)

    if pax is not None:
        for key, group in _by_series(points).items():
            group = sorted(group, key=lambda p: float(p["x"]))
            color = colors.get(str(key), PAPER_COLOR) if key is not None else PAPER_COLOR
            pax.plot([p["x"] for p in group], [p["y"] for p in group], linestyle=":", marker="s",
                     mfc="white", color=color,
                     label=_series_label(series, key) if key is not None else "paper")
        pax.set_title(names.PAPER_LABEL, fontsize=10)
        pax.set_xlabel(paper_xlabel)
        pax.set_ylabel(names.PAPER_ZEROSHOT)
        pax.grid(alpha=0.3)
        _legend_below(pax, *pax.get_legend_handles_labels())
    fig.tight_layout()
    return _save(fig, out_stem)


FIT_COLORS = ("0.15", "tab:purple")  # the first fit drawn (saturating when both are), then the pure power law
STAR_COLORS = {"0.15": "crimson", "tab:purple": "tab:purple"}


def _draw_fit(ax, fit, div: float, x: str, color: str = "0.15", legacy: bool = True) -> None:
    """The fitted accuracy curve over the data, its band, and the dotted extrapolation. `legacy`: the
    one saturating fit, labelled as before there was a choice of forms."""
    lo_cost, hi_cost = fit.cost_range
    name = "fit" if legacy else f"{fit.form} fit"
    ax.fill_between(np.asarray(fit.grid) / div, 100.0 - np.asarray(fit.band_high),
                    100.0 - np.asarray(fit.band_low), color="0.5" if color == "0.15" else color,
                    alpha=0.18 if color == "0.15" else 0.12, linewidth=0,
                    label=f"{name}, 5-95% bootstrap band over seeds")
    span = np.geomspace(lo_cost, hi_cost, 80)
    to = "-" if fit.form == "saturating" else " to "  # the pure law's exponent is negative
    ax.plot(span / div, fit.accuracy(span), color=color, linewidth=1.3,
            label=f"{name}: {fit.formula}, b = {fit.b:.2f} "
                  f"(90% CI {fit.b_interval[0]:.2f}{to}{fit.b_interval[1]:.2f})")
    if fit.target and fit.predicted is not None:
        beyond = np.geomspace(hi_cost, fit.target, 40)
        ax.plot(beyond / div, fit.accuracy(beyond), color=color, linewidth=1.3, linestyle=":")
        lo, hi = fit.predicted_accuracy_interval
        pred = fit.predicted_accuracy
        what = "FLOPs" if x == "train_flops" else "time" if x == "train_time_s" else "cost"
        ax.errorbar([fit.target / div], [pred], yerr=[[pred - lo], [hi - pred]], marker="*",
                    markersize=11, color=STAR_COLORS.get(color, color), capsize=4, linestyle="none",
                    label=f"{'' if legacy else fit.form + ' '}predicted at {fit.target / hi_cost:.3g}x {what}: "
                          f"{pred:.1f}% (90% CI {lo:.1f}-{hi:.1f})")
