"""Paper-style tables from a sweep's tidy results: one line per spec row, mean ± std over seeds,
the baseline row marked, the paper's numbers in columns beside ours; written as Markdown, LaTeX
(booktabs) and CSV (numbers, not strings: mean, std and seed count per column).

A spec's `report.columns` picks the columns from this vocabulary:
- a training-config field that is an axis (`mask_ratio`, `text_mask`, `model`, ...), `batch_size`,
  `steps`, `memory` (the probe's peak, MiB);
- `flops` / `time_min`, and `flops_rel` / `time_rel` (relative to the baseline row);
- a metric (`zeroshot`, `zeroshot_top5`, `retrieval_i2t`, `retrieval_t2i`, `linear_probe`), optionally
  `@MODE` for masked inference (`zeroshot@views2`) or `@tuned` (after unmasked tuning), and
  `eval_s@MODE`;
- `gain@tuned` (tuned minus untuned zero-shot, paired by seed) and `tuning_cost_rel` (tuning time
  over the run's own training time).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from flip.sweep.spec import SweepSpec

LABELS = {
    "mask_ratio": "mask", "batch_size": "batch", "steps": "steps", "memory": "memory (MiB)",
    "flops": "FLOPs", "flops_rel": "FLOPs (rel.)", "time_min": "time (min)", "time_rel": "time (rel.)",
    "zeroshot": "zero-shot top-1", "zeroshot_top5": "zero-shot top-5", "retrieval_i2t": "I→T R@1",
    "retrieval_t2i": "T→I R@1", "linear_probe": "linear probe", "gain@tuned": "gain from tuning",
    "tuning_cost_rel": "tuning cost (rel.)", "text_mask": "text mask", "text_mask_ratio": "text mask ratio",
    "recon_weight": "recon. weight", "samples": "samples", "model": "model",
}
MODE_LABELS = {"masked": "masked", "tuned": "after unmasked tuning", "full": "full"}
METRIC_BASES = ("zeroshot", "zeroshot_top5", "retrieval_i2t", "retrieval_t2i", "linear_probe", "eval_s")


def label(column: str) -> str:
    if column in LABELS:
        return LABELS[column]
    base, _, mode = column.partition("@")
    if mode:
        mode_label = MODE_LABELS.get(mode, mode.replace("views", "views ×"))
        return f"{LABELS.get(base, 'eval s' if base == 'eval_s' else base)}, {mode_label}"
    return column.replace("_", " ")


@dataclass
class Cell:
    mean: float | None
    std: float | None = None
    n: int = 0
    text: str | None = None  # for non-numeric cells (axis values)

    def show(self, digits: int = 1, suffix: str = "") -> str:
        if self.text is not None:
            return self.text
        if self.mean is None or (isinstance(self.mean, float) and math.isnan(self.mean)):
            return "–"
        body = f"{self.mean:.{digits}f}{suffix}"
        if self.n > 1 and self.std is not None:
            body += f" ± {self.std:.{digits}f}"
        return body


def _stats(values) -> Cell:
    values = pd.to_numeric(pd.Series(values), errors="coerce").dropna()
    if values.empty:
        return Cell(None)
    return Cell(float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0, len(values))


def _show_axis(field: str, value) -> str:
    if field in ("mask_ratio", "text_mask_ratio") and isinstance(value, (int, float)):
        return f"{value:.0%}"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _cell(column: str, base: pd.DataFrame, tuned: pd.DataFrame, ref: pd.DataFrame) -> Cell:
    done = base[base.status == "done"]
    if column in ("flops_rel", "time_rel"):
        key = "train_flops" if column == "flops_rel" else "train_time_s"
        ref_mean = _stats(ref[ref.status == "done"][key]).mean
        cell = _stats(done[key] / ref_mean) if ref_mean else Cell(None)
        return cell
    if column == "flops":
        return _stats(done["train_flops"])
    if column == "time_min":
        return _stats(done["train_time_s"] / 60)
    if column == "memory":
        return _stats(base["peak_memory"] / 2**20)
    if column in ("batch_size", "steps"):
        return _stats(base[column])
    if column == "tuning_cost_rel":
        t = tuned[tuned.status == "done"].set_index("seed")
        b = done.set_index("seed")
        if t.empty or "tune_time_s" not in t:
            return Cell(None)
        return _stats((t["tune_time_s"] / b["train_time_s"]).dropna())
    if column == "gain@tuned":
        t = tuned[tuned.status == "done"].set_index("seed")
        b = done.set_index("seed")
        if t.empty or "zeroshot" not in t or "zeroshot" not in b:
            return Cell(None)
        return _stats((t["zeroshot"] - b["zeroshot"]).dropna())
    metric, _, mode = column.partition("@")
    if metric not in METRIC_BASES and column in base.columns:  # a config axis: its value, as text
        values = base[column].dropna().unique()
        return Cell(None, text=", ".join(_show_axis(column, v) for v in values))
    if mode == "tuned":
        t = tuned[tuned.status == "done"]
        return _stats(t[metric]) if metric in t else Cell(None)
    key = column if mode else metric
    if key in done:
        return _stats(done[key])
    return Cell(None)


def _show_paper(column: str, value) -> str:
    if value is None:
        return "–"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:.{_digits(column)}f}" + ("x" if column.endswith("_rel") else "")
    return str(value)


@dataclass
class SweepTable:
    display: pd.DataFrame  # strings, in the paper's layout
    numbers: pd.DataFrame  # per row and column: mean, std, n (for CSV and scripts)
    notes: list[str]


def _digits(column: str) -> int:
    if column in ("flops_rel", "time_rel", "tuning_cost_rel"):
        return 2
    if column in ("batch_size", "steps", "memory"):
        return 0
    return 1


def build_table(spec: SweepSpec, df: pd.DataFrame) -> SweepTable:
    columns = list(spec.columns) or (spec.axis_fields() + ["steps", "zeroshot", "retrieval_i2t", "retrieval_t2i"])
    baseline = spec.baseline or spec.rows[0].label
    ref = df[(df.row == baseline) & (df.variant == "base")]
    display_rows, number_rows = [], []
    for row in spec.rows:
        base = df[(df.row == row.label) & (df.variant == "base")]
        tuned = df[(df.row == row.label) & (df.variant == "tuned")]
        shown = {"row": row.label + (" (baseline)" if row.label == baseline and len(spec.rows) > 1 else "")}
        numbers = {"row": row.label, "baseline": row.label == baseline}
        for column in columns:
            cell = _cell(column, base, tuned, ref)
            shown[label(column)] = cell.show(_digits(column), "x" if column.endswith("_rel") else "")
            if cell.text is not None:
                numbers[column] = cell.text
            else:
                numbers.update({f"{column}_mean": cell.mean, f"{column}_std": cell.std, f"{column}_n": cell.n})
            if column in row.paper or any(column in r.paper for r in spec.rows):
                paper = row.paper.get(column)
                shown[f"paper: {label(column)}"] = _show_paper(column, paper)
                numbers[f"paper_{column}"] = paper
        failed = int((base.status == "failed").sum() + (tuned.status == "failed").sum())
        pending = int((base.status == "pending").sum() + (tuned.status == "pending").sum())
        if failed or pending:
            shown["runs"] = ", ".join(x for x in (f"{failed} failed" if failed else "",
                                                  f"{pending} not run" if pending else "") if x)
        display_rows.append(shown)
        number_rows.append(numbers)
    display = pd.DataFrame(display_rows).fillna("")
    return SweepTable(display, pd.DataFrame(number_rows), noise_notes(spec, df, columns, baseline))


def noise_notes(spec: SweepSpec, df: pd.DataFrame, columns: list[str], baseline: str) -> list[str]:
    """For each metric column: is each row's difference from the baseline bigger than the noise?

    A difference counts as real when it exceeds twice its standard error (seeds independent);
    with one seed nothing can be said."""
    notes = []
    ref = df[(df.row == baseline) & (df.variant == "base") & (df.status == "done")]
    for column in columns:
        metric, _, mode = column.partition("@")
        if metric not in METRIC_BASES or metric == "eval_s" or mode == "tuned":
            continue
        if column not in ref or ref[column].dropna().empty:
            continue
        a = ref[column].dropna()
        for row in spec.rows:
            if row.label == baseline:
                continue
            b = df[(df.row == row.label) & (df.variant == "base") & (df.status == "done")]
            if column not in b:
                continue
            b = b[column].dropna()
            if b.empty:
                continue
            diff = b.mean() - a.mean()
            if len(a) < 2 or len(b) < 2:
                notes.append(f"{label(column)}: {row.label} vs {baseline}: {diff:+.1f} (one seed: noise unknown)")
                continue
            se = math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
            verdict = "within noise" if abs(diff) <= 2 * se else ("higher" if diff > 0 else "lower")
            notes.append(f"{label(column)}: {row.label} vs {baseline}: {diff:+.1f} ± {se:.1f} (s.e.) -> {verdict}")
    return notes


def to_markdown(display: pd.DataFrame) -> str:
    return display.to_markdown(index=False, disable_numparse=True) + "\n"


def to_latex(display: pd.DataFrame, caption: str) -> str:
    escaped = display.map(lambda s: str(s).replace("%", r"\%").replace("±", r"$\pm$").replace("→", r"$\to$")
                          .replace("×", r"$\times$").replace("_", r"\_"))
    escaped.columns = [str(c).replace("%", r"\%").replace("→", r"$\to$").replace("×", r"$\times$")
                       .replace("_", r"\_") for c in display.columns]
    styler = escaped.style.hide(axis="index")
    return styler.to_latex(hrules=True, caption=caption.replace("%", r"\%"), column_format="l" + "r" * (len(escaped.columns) - 1)) + ""


def write_table(table: SweepTable, out_dir: Path, stem: str, caption: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.md", out_dir / f"{stem}.tex", out_dir / f"{stem}.csv"]
    paths[0].write_text(f"{caption}\n\n" + to_markdown(table.display))
    paths[1].write_text(to_latex(table.display, caption))
    table.numbers.replace({np.nan: None}).to_csv(paths[2], index=False)
    return paths
