"""Paper-style tables from a sweep's tidy results: one line per spec row, mean ± std over seeds,
the baseline row marked, the paper's numbers in columns beside ours; written as Markdown, LaTeX
(booktabs) and CSV (numbers, not strings: mean, std and seed count per column).

A spec's `report.columns` picks the columns; the names, their labels, units and digits are
`flip.sweep.names`'s. A setting that is the same for every seed of a row (batch, steps, memory,
FLOPs) shows its value alone; a measurement shows mean ± std. Every time figure from a run that
shared its cores with other work is marked †, from a run whose load was not recorded ‡.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from flip.sweep import names
from flip.sweep.spec import SweepSpec
from flip.train.load import shared, threshold_words

SHARED_MARK, UNRECORDED_MARK = "†", "‡"


def label(column: str) -> str:
    """A column's table header (its words and unit)."""
    return names.lookup(column).header


def signed(value: float, digits: int = 1) -> str:
    """`+1.2`, `-0.3`, and `0.0` for what rounds to zero (never `-0.0`)."""
    text = f"{value:+.{digits}f}"
    return f"{0:.{digits}f}" if float(text) == 0 else text


def is_time(column: str) -> bool:
    return names.lookup(column).timed


def load_verdict(runs: pd.DataFrame) -> str:
    """Over finished runs: "shared" if any shared its cores, else "unrecorded" if any has no load
    record, else "clean" ("" without finished runs)."""
    done = runs[runs.status == "done"] if "status" in runs else runs
    if done.empty:
        return ""
    if "load_others" not in done or "load_cores" not in done:
        return "unrecorded"
    verdicts = [shared(o, c) for o, c in zip(done["load_others"], done["load_cores"])]
    return "shared" if any(v is True for v in verdicts) else "unrecorded" if None in verdicts else "clean"


MARKS = {"shared": SHARED_MARK, "unrecorded": UNRECORDED_MARK}


@dataclass
class Cell:
    mean: float | None
    std: float | None = None
    n: int = 0
    text: str | None = None  # for non-numeric cells (config values)

    def show(self, digits: int = 1, suffix: str = "", spread: bool = True) -> str:
        if self.text is not None:
            return self.text
        if self.mean is None or (isinstance(self.mean, float) and math.isnan(self.mean)):
            return "–"
        body = f"{self.mean:.{digits}f}{suffix}"
        if spread and self.n > 1 and self.std is not None:
            body += f" ± {self.std:.{digits}f}"
        return body


def _stats(values) -> Cell:
    values = pd.to_numeric(pd.Series(values), errors="coerce").dropna()
    if values.empty:
        return Cell(None)
    return Cell(float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0, len(values))


def _done(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame.status == "done"]


def _paired(tuned: pd.DataFrame, base: pd.DataFrame, fn) -> Cell:
    t, b = _done(tuned).set_index("seed"), _done(base).set_index("seed")
    if t.empty or b.empty:
        return Cell(None)
    try:
        return _stats(fn(t, b).dropna())
    except KeyError:
        return Cell(None)


def _cell(column: str, base: pd.DataFrame, tuned: pd.DataFrame, ref: pd.DataFrame) -> Cell:
    done, per = _done(base), names.lookup(column).per
    if column in ("flops_rel", "time_rel"):
        key = "train_flops" if column == "flops_rel" else "train_time_s"
        ref_mean = _stats(_done(ref)[key]).mean if key in ref else None
        return _stats(done[key] / ref_mean) if ref_mean else Cell(None)
    if column in ("flops", "time_min"):
        key = "train_flops" if column == "flops" else "train_time_s"
        return _stats(done[key] / per) if key in done else Cell(None)
    if column == "memory":
        return _stats(base["peak_memory"] / per) if "peak_memory" in base else Cell(None)
    if column in ("batch_size", "steps"):
        return _stats(base[column])
    if column == "tuning_cost_rel":
        return _paired(tuned, base, lambda t, b: t["tune_time_s"] / b["train_time_s"])
    if column == "gain@tuned":
        return _paired(tuned, base, lambda t, b: t["zeroshot"] - b["zeroshot"])
    metric, _, mode = column.partition("@")
    is_metric = metric in names.METRICS or metric == names.EVAL_TIME
    if not is_metric and column in base.columns:  # a config value, as text
        values = base[column].dropna().unique()
        unset = names.lookup(column).unset
        if not len(values) and unset and len(base):
            return Cell(None, text=unset)
        return Cell(None, text=", ".join(names.show_value(column, v) for v in values))
    if mode == "tuned":
        t = _done(tuned)
        return _stats(t[metric]) if metric in t else Cell(None)
    key = column if mode else metric
    return _stats(done[key]) if key in done else Cell(None)


def _time_mark(column: str, base: pd.DataFrame, tuned: pd.DataFrame, ref: pd.DataFrame) -> str:
    if not is_time(column):
        return ""
    frames = [base] + ([ref] if column == "time_rel" else []) + ([tuned] if column == "tuning_cost_rel" else [])
    return MARKS.get(load_verdict(pd.concat(frames)), "")


def _show_paper(column: str, value) -> str:
    if value is None:
        return "–"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return names.lookup(column).number(value)
    return str(value)


@dataclass
class SweepTable:
    display: pd.DataFrame  # strings, in the paper's layout
    numbers: pd.DataFrame  # per row and column: mean, std, n (for CSV and scripts)
    notes: list[str]
    legend: list[str] = field(default_factory=list)  # what ± and the marks mean: goes with the caption


def _show(column: str, cell: Cell) -> str:
    entry = names.lookup(column)
    # A setting (batch, steps, memory, FLOPs) that is the same for every seed has no spread to show.
    spread = entry.kind != names.SETTING or round(cell.std or 0.0, entry.digits) != 0
    return cell.show(entry.digits, entry.suffix, spread)


def row_title(spec: SweepSpec, label_: str) -> str:
    try:
        return spec.row(label_).title
    except StopIteration:
        return label_


def build_table(spec: SweepSpec, df: pd.DataFrame) -> SweepTable:
    columns = list(spec.columns) or (spec.axis_fields() + ["steps", "zeroshot", "retrieval_i2t", "retrieval_t2i"])
    baseline = spec.baseline or spec.rows[0].label
    ref = df[(df.row == baseline) & (df.variant == "base")]
    display_rows, number_rows, marks = [], [], set()
    for row in spec.rows:
        base = df[(df.row == row.label) & (df.variant == "base")]
        tuned = df[(df.row == row.label) & (df.variant == "tuned")]
        shown = {"row": row.title + (" (baseline)" if row.label == baseline and len(spec.rows) > 1 else "")}
        numbers = {"row": row.label, "baseline": row.label == baseline}
        for column in columns:
            cell = _cell(column, base, tuned, ref)
            text = _show(column, cell)
            mark = _time_mark(column, base, tuned, ref) if text != "–" else ""
            marks.add(mark)
            shown[label(column)] = text + mark
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
    legend = [spread_words(spec, df, columns)] + mark_words(marks)
    notes = noise_notes(spec, df, columns, baseline) + load_notes(spec, df, columns)
    return SweepTable(display, pd.DataFrame(number_rows), notes, [w for w in legend if w])


def spread_words(spec: SweepSpec, df: pd.DataFrame, columns: list[str]) -> str:
    """What ± means in this table: std over how many seeds (and which columns have none to show)."""
    done = df[(df.variant == "base") & (df.status == "done")]
    counts = sorted({int(n) for n in done.groupby("row", sort=False).size()})
    if not counts:
        return ""
    fixed = [label(c) for c in columns if names.lookup(c).kind == names.SETTING]
    settings = f"; {', '.join(fixed)}: the same for every seed of a row" if fixed else ""
    if counts[-1] == 1:
        return "One seed per row: no spread shown" + settings + "."
    seeds = f"{counts[0]} seeds" if len(counts) == 1 else f"{counts[0]}-{counts[-1]} seeds (per row)"
    return f"Mean ± std over {seeds}{settings}."


def mark_words(marks: set[str]) -> list[str]:
    out = []
    if SHARED_MARK in marks:
        out.append(f"{SHARED_MARK} time from runs that shared their cores with other work ({threshold_words()}): "
                   f"not a clean measurement.")
    if UNRECORDED_MARK in marks:
        out.append(f"{UNRECORDED_MARK} time from runs whose machine load was not recorded (they predate "
                   f"flipctl's load record): not known to be clean.")
    return out


def noise_notes(spec: SweepSpec, df: pd.DataFrame, columns: list[str], baseline: str) -> list[str]:
    """For each metric column: is each row's difference from the baseline bigger than the noise?

    A difference counts as real when it exceeds twice its standard error (seeds independent);
    with one seed nothing can be said."""
    notes = []
    ref = df[(df.row == baseline) & (df.variant == "base") & (df.status == "done")]
    base_title = row_title(spec, baseline)
    for column in columns:
        metric, _, mode = column.partition("@")
        if metric not in names.METRICS or mode == "tuned":
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
            what = f"{names.label(column)}: {row.title} vs {base_title}"
            if len(a) < 2 or len(b) < 2:
                notes.append(f"{what}: {signed(diff)} points (one seed: noise unknown)")
                continue
            se = math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
            verdict = "within noise" if abs(diff) <= 2 * se else ("higher" if diff > 0 else "lower")
            notes.append(f"{what}: {signed(diff)} ± {se:.1f} points -> {verdict}")
    if notes:
        notes.insert(0, "Differences from the baseline row: mean difference ± its standard error over seeds "
                        "(seeds independent); higher or lower when beyond two standard errors, else within noise.")
    return notes


def load_notes(spec: SweepSpec, df: pd.DataFrame, columns: list[str]) -> list[str]:
    """Which rows' time figures come from runs that shared their cores, or whose load is unknown."""
    timed = any(is_time(c) for c in columns) or any(is_time(p.x) for p in spec.plots)
    done = df[df.status == "done"]
    if not timed or done.empty:
        return []
    notes = [f"Time figures: a run shared its cores when {threshold_words()}; its time is marked "
             f"{SHARED_MARK}, and that of a run whose load was not recorded {UNRECORDED_MARK}."]
    unrecorded = 0
    for row in spec.rows:
        runs = done[done.row == row.label]
        verdicts = [shared(o, c) for o, c in zip(runs.get("load_others", [None] * len(runs)),
                                                  runs.get("load_cores", [None] * len(runs)))]
        unrecorded += verdicts.count(None)
        hit = [(float(o), int(c)) for o, c, v in zip(runs.get("load_others", []), runs.get("load_cores", []),
                                                      verdicts) if v]
        if hit:
            worst = max(hit)
            notes.append(f"time: {row.title}: {len(hit)} of {len(runs)} runs shared their cores {SHARED_MARK} "
                         f"(the worst: other processes used {worst[0]:.1f} of its {worst[1]} cores on average)")
    if unrecorded:
        notes.append(f"time: the machine's load was not recorded for {unrecorded} of {len(done)} runs (they "
                     f"predate flipctl's load record) {UNRECORDED_MARK}: not known to be clean")
    return notes


def to_markdown(display: pd.DataFrame) -> str:
    return display.to_markdown(index=False, disable_numparse=True) + "\n"


def _tex(text: str) -> str:
    return (str(text).replace("%", r"\%").replace("±", r"$\pm$").replace("→", r"$\to$").replace("×", r"$\times$")
            .replace("_", r"\_").replace("†", r"$^\dagger$").replace("‡", r"$^\ddagger$"))


def to_latex(display: pd.DataFrame, caption: str) -> str:
    escaped = display.map(_tex)
    escaped.columns = [_tex(c) for c in display.columns]
    styler = escaped.style.hide(axis="index")
    return styler.to_latex(hrules=True, caption=_tex(caption), column_format="l" + "r" * (len(escaped.columns) - 1))


def caption_with_legend(caption: str, table: SweepTable) -> str:
    return " ".join([caption + ".", *table.legend])


def write_table(table: SweepTable, stem: Path, caption: str) -> list[Path]:
    """Write the table as Markdown, LaTeX and CSV: `stem` with .md, .tex and .csv."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_name(f"{stem.name}.{suffix}") for suffix in ("md", "tex", "csv")]
    legend = "".join(f"{line}\n" for line in table.legend)
    paths[0].write_text(f"{caption}\n\n{legend}\n" + to_markdown(table.display))
    paths[1].write_text(to_latex(table.display, caption_with_legend(caption, table)))
    table.numbers.replace({np.nan: None}).to_csv(paths[2], index=False)
    return paths
