"""Small pure helpers over a sweep's tidy results frame (one row per run result).

Shared by the plots, the power-law fit and the tables, so none of them imports another's heavy
dependencies (matplotlib stays in plots.py alone).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import pandas as pd

from flip.sweep import names

# Columns that identify or describe one run rather than its configuration.
RUN_COLUMNS = ("seed", "run_id", "status", "error", "run_dir")
# What a run measured about itself (varies from seed to seed, so never part of a config key).
MEASURED_COLUMNS = ("steps", "samples_seen", "train_time_s", "train_flops", "peak_memory",
                    "tune_time_s", "tune_flops", "load_cores", "load_others", "load_avg")
# Evaluation results; masked-inference variants are named METRIC@MODE and eval times eval_s@MODE.
METRIC_COLUMNS = tuple(names.METRICS)


def is_result_column(name: str) -> bool:
    """True for a column a run produces (a measurement or a metric), False for a config column."""
    return name in RUN_COLUMNS or name in MEASURED_COLUMNS or name in METRIC_COLUMNS or "@" in name


def config_columns(df: pd.DataFrame, exclude: Iterable[str] = ()) -> list[str]:
    """The columns that together name one configuration: the spec row, the variant and the axes."""
    skip = set(exclude)
    return [c for c in df.columns if not is_result_column(c) and c not in skip]


def config_keys(df: pd.DataFrame, exclude: Iterable[str] = ()) -> list[str]:
    """The columns to group runs by so that each group is one configuration's seeds.

    With a spec `row` column, a configuration is the row (and `variant`: a tuned run is not a
    seed of its base run); axis columns that are constant within each such group ride along, and
    any other per-run column (whatever an executor adds) can never split a group. Without `row`,
    every config column counts.
    """
    skip = set(exclude)
    if "row" not in df.columns:
        return config_columns(df, exclude=skip)
    base = ["row"] + (["variant"] if "variant" in df.columns and "variant" not in skip else [])
    if df.empty:
        return base + [c for c in config_columns(df, exclude=skip) if c not in base]
    groups = df.groupby(base, sort=False, dropna=False)
    extra = [c for c in config_columns(df, exclude=skip)
             if c not in base and groups[c].nunique(dropna=False).max() <= 1]
    return base + extra


def done(df: pd.DataFrame) -> pd.DataFrame:
    """Only finished runs (a frame without a status column is taken as all finished)."""
    if "status" not in df.columns:
        return df
    return df[df["status"] == "done"]


def summarise(df: pd.DataFrame, by: str | Sequence[str], metric: str) -> pd.DataFrame:
    """Mean, std (over seeds, ddof=1; NaN for a single value) and count of `metric` per group.

    Groups keep their order of first appearance (the spec's row order), NaN keys included; rows
    whose metric is NaN (a failed or unevaluated run) are not counted.
    """
    keys = [by] if isinstance(by, str) else list(by)
    missing = [c for c in [*keys, metric] if c not in df.columns]
    if missing:
        raise KeyError(f"no column(s) {', '.join(missing)} in the results (have: {', '.join(map(str, df.columns))})")
    values = df[[*keys, metric]].copy()
    values[metric] = pd.to_numeric(values[metric], errors="coerce")
    values = values.dropna(subset=[metric])
    out = (values.groupby(keys, sort=False, dropna=False)[metric]
           .agg(["mean", "std", "count"]).reset_index())
    out["count"] = out["count"].astype(int)
    return out


def by_inference_mode(df: pd.DataFrame, metric: str, mode_col: str = "inference") -> pd.DataFrame:
    """Long form of one metric over inference modes (Table 1d): `metric` and `metric@MODE` columns
    become rows with `mode_col` = "full" / MODE and the value in `metric`, so the modes can be an
    axis (`plot_metric_vs_axis(long, "inference", metric, ...)`). Modes keep column order."""
    columns = [c for c in df.columns if c == metric or (c.startswith(metric + "@"))]
    if not columns:
        raise KeyError(f"no column {metric!r} or {metric}@MODE in the results")
    keep = [c for c in df.columns if not (c == metric or c.startswith(metric + "@"))]
    long = (df.melt(id_vars=keep, value_vars=columns, var_name=mode_col, value_name="__value")
            .rename(columns={"__value": metric}))
    long[mode_col] = long[mode_col].map(lambda c: "full" if c == metric else c.split("@", 1)[1])
    return long
