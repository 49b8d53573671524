"""One self-contained HTML page per sweep: tables, inlined plots, commands, notes and the run list.

No external resources and no JavaScript: images are base64 data URIs and the style sheet is inline,
so the page can be mailed, committed or opened from a file. Links to runs are relative to the page.
"""

from __future__ import annotations

import base64
import html
import json
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd

from flip.files import chmod_as_umask
from flip.run_dir import RunDir
from flip.sweep.folder import SweepFolder

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1200px;
       margin: 2em auto; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; margin-bottom: .2em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: .6em 0 1.4em; font-size: .92em; }
caption { caption-side: top; text-align: left; font-weight: 600; padding-bottom: .3em; }
th, td { border-bottom: 1px solid #e3e3e3; padding: .3em .7em; text-align: right; vertical-align: top; }
th { border-bottom: 2px solid #888; background: #f6f6f6; } table.results td { white-space: nowrap; }
div.wide { overflow-x: auto; }
td:first-child, th:first-child { text-align: left; }
figure { margin: 1em 0 2em; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: .92em; }
pre { background: #f6f6f6; padding: .7em; overflow-x: auto; white-space: pre-wrap; }
table.runs th, table.runs td { text-align: left; }
tr.failed td { background: #fdecea; } tr.pending td { color: #888; }
.status-failed { color: #b00020; font-weight: 600; } .error { max-width: 28em; text-align: left; }
.notes li { margin: .3em 0; } .muted { color: #777; } caption .legend { font-weight: 400; color: #555; }
"""


def write_report(out_dir, *, title: str, description: str,
                 tables: Sequence[tuple[str, pd.DataFrame]], plots: Sequence,
                 commands: Sequence[str], runs: pd.DataFrame | None, notes: Iterable[str] = (),
                 extra_json: dict | None = None) -> Path:
    """Write the sweep folder OUT_DIR's report.html and return its path.

    `tables`: (caption, DataFrame) or (caption, DataFrame, legend lines) tuples, cells shown as given
    (format numbers before); the legend (what ± and marks mean) goes under the caption.
    `plots`: PNG paths, or (caption, path) pairs; each is inlined, with a link to its PDF twin.
    `commands`: the exact commands that produced the results. `notes`: short findings
    ("difference within noise"). `runs`: one row per run (run_id, row, seed, variant, status,
    error, train_time_s, run_dir); missing columns are left blank. `extra_json`: machine-readable
    data embedded in the page (a JSON script block, also shown collapsed).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        f'<p class="description">{_e(description)}</p>',
    ]
    if tables:  # the numbers first, then what the notes say about them
        parts.append('<h2 id="tables">Tables</h2>')
        parts += [_table(*item) for item in tables]
    notes = [n for n in notes if n]
    if notes:
        parts += ['<h2 id="notes">Notes</h2><ul class="notes">', *(f"<li>{_e(n)}</li>" for n in notes), "</ul>"]
    if plots:
        parts.append('<h2 id="plots">Plots</h2>')
        parts += [_figure(item, out) for item in plots]
    if commands:
        parts += ['<h2 id="commands">Commands</h2>', f"<pre>{_e(chr(10).join(commands))}</pre>"]
    if runs is not None:
        parts += _runs(runs, out)
    if extra_json is not None:
        text = json.dumps(extra_json, indent=2, default=_json_default, allow_nan=False)
        # "</" would end the script element early; the escaped form is still valid JSON.
        embedded = text.replace("</", "<\\/")
        parts += ['<h2 id="data">Data</h2>',
                  f'<script type="application/json" id="report-data">{embedded}</script>',
                  f"<details><summary>report data (JSON)</summary><pre>{_e(text)}</pre></details>"]
    parts.append("</body></html>")
    return _write_atomic(SweepFolder(out).report, "\n".join(parts) + "\n")


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _json_default(value):
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return value.tolist()
    if hasattr(value, "to_dict"):
        return value.to_dict()
    return str(value)


def _table(caption: str, frame: pd.DataFrame, legend: Sequence[str] = ()) -> str:
    body = frame.to_html(index=False, escape=True, na_rep="–", border=0, classes="results",
                         float_format=lambda v: f"{v:.4g}")
    # pandas writes no caption; put it inside the table so it travels with it.
    text = _e(caption) + "".join(f'<br><span class="legend">{_e(line)}</span>' for line in legend)
    # a wide table scrolls inside the page rather than running off its edge
    return '<div class="wide">' + body.replace(">\n", f">\n<caption>{text}</caption>\n", 1) + "</div>"


def _figure(item, out: Path) -> str:
    caption, path = item if isinstance(item, tuple) else (None, item)
    path = Path(path)
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    caption = caption or path.stem.replace("_", " ").replace("-", " ")
    pdf = path.with_suffix(".pdf")
    link = f' (<a href="{_e(_rel(pdf, out))}">PDF</a>)' if pdf.exists() else ""
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{_e(caption)}">'
            f"<figcaption>{_e(caption)}{link}</figcaption></figure>")


def _rel(path, start: Path) -> str:
    return Path(os.path.relpath(Path(path).resolve(), start.resolve())).as_posix()


def _runs(runs: pd.DataFrame, out: Path) -> list[str]:
    status = runs["status"].fillna("unknown") if "status" in runs.columns else pd.Series("unknown", index=runs.index)
    counts = ", ".join(f"{n} {s}" for s, n in status.value_counts(sort=False).items())
    # optional columns: the machine's load while a run trained, and links to its files
    load, files = "load" in runs.columns, "run_dir" in runs.columns
    head = ["run", "row", "seed", "variant", "status", "wall time"] + (["machine load"] if load else []) + \
        ["error"] + (["files"] if files else [])
    rows = []
    for (_, run), state in zip(runs.iterrows(), status):
        cells = [
            f"<code>{_e(_get(run, 'run_id'))}</code>",
            _e(_get(run, "row")),
            _e(_int_or_blank(_get(run, "seed"))),
            _e(_get(run, "variant")),
            f'<span class="status-{_e(state)}">{_e(state)}</span>',
            _e(_duration(_get(run, "train_time_s"))),
            *([_e(_get(run, "load"))] if load else []),
            _error_cell(_get(run, "error")),
            *([_links(_get(run, "run_dir"), out)] if files else []),
        ]
        rows.append(f'<tr class="{_e(state)}">' + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return [f'<h2 id="runs">Runs</h2><p class="muted">{len(runs)} runs: {_e(counts)}</p>',
            '<table class="runs"><thead><tr>' + "".join(f"<th>{h}</th>" for h in head) + "</tr></thead>",
            "<tbody>", *rows, "</tbody></table>"]


def _get(run: pd.Series, key: str):
    value = run.get(key)
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return ""
    return value


def _int_or_blank(value) -> str:
    return "" if value == "" else str(int(value))


def _duration(seconds) -> str:
    if seconds == "":
        return ""
    seconds = float(seconds)
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _error_cell(error) -> str:
    if not error:
        return ""
    text = str(error).strip()
    first = text.splitlines()[0] if text else ""
    short = first if len(first) <= 200 else first[:197] + "..."
    return f'<div class="error" title="{_e(text)}">{_e(short)}</div>'


def _links(run_dir, out: Path) -> str:
    if not run_dir:
        return ""
    run = RunDir(run_dir)
    base = _rel(run.path, out)
    links = [f'<a href="{_e(base)}/">dir</a>']
    # Files a run has not written (yet) get no link rather than a broken one.
    links += [f'<a href="{_e(base)}/{file.name}">{file.name}</a>' for file in (run.config, run.summary, run.metrics)
              if file.exists()]
    return " ".join(links)


def _write_atomic(path: Path, text: str) -> Path:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".report-", suffix=".html")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        chmod_as_umask(tmp)  # mkstemp makes it private; a report is meant to be read
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
