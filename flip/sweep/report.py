"""A sweep's report: tables, plots, fits and the HTML page, from the sweep folder's own records.

`write_report` is what the end of `flipctl sweep` and `flipctl report OUT` both call. The sweep
leaves `OUT/sweep.json` (the spec as loaded, the command, the store and every planned job) and
`OUT/results.csv` (a record per run), so the report can be rebuilt at any time, anywhere, without
training, probing or the run store (see `flip.sweep.folder`). Every file is built from
results.csv as written, so a rebuild from the folder alone reproduces it byte for byte (plots:
the same data, in `STEM.csv` beside each; image bytes may differ).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from flip.sweep import folder, names, results, tables
from flip.sweep.folder import Manifest, ReportError, SweepFolder
from flip.sweep.jobs import EvalJob, Job
from flip.sweep.spec import SweepSpec
from flip.sweep.store import RunStore, StoreLayout, write_json_atomic
from flip.train.config import TrainConfig
from flip.train.load import shared


def jobs_from_manifest(manifest: Manifest) -> list[Job]:
    jobs = []
    for d in manifest.jobs:
        d = dict(d)
        d["config"] = TrainConfig.from_dict(d["config"])
        d["evals"] = [EvalJob(**e) for e in d["evals"]]
        jobs.append(Job(**d))
    return jobs


def _paper_points(spec: SweepSpec, df: pd.DataFrame, x: str, y: str, series: str | None,
                  where: dict | None = None) -> list[dict]:
    """The paper's numbers at our rows' x, in our rows' series (so each series gets its own paper line);
    with `where`, only at the rows with those settings."""
    points = []
    for row in spec.rows:
        if any(row.fields.get(k, spec.base.get(k)) != v for k, v in (where or {}).items()):
            continue
        if y in row.paper and (x in row.fields or x == "row"):
            point = {"x": row.label if x == "row" else row.fields[x], "y": row.paper[y]}
            values = df.loc[df.row == row.label, series].dropna() if series in df else []
            if len(values):
                point["series"] = values.iloc[0]
            points.append(point)
    return points


def _errorbars(points: pd.DataFrame, count: str) -> str:
    """What a plot's error bars are, from the seed counts behind its points."""
    counts = sorted({int(n) for n in points[count]}) if len(points) else []
    if not counts or counts[-1] < 2:
        return "one seed per point: no error bars"
    seeds = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    return f"error bars: std over {seeds} seeds"


def _time_words(done: pd.DataFrame) -> str:
    verdict = tables.load_verdict(done)
    if verdict == "shared":
        n = sum(bool(shared(o, c)) for o, c in zip(done["load_others"], done["load_cores"]))
        return f" {tables.SHARED_MARK} {n} of {len(done)} runs shared their cores: their times are not clean."
    if verdict == "unrecorded":
        return (f" {tables.UNRECORDED_MARK} The machine's load was not recorded for these runs: times not known "
                f"to be clean.")
    return ""


def _plot_caption(spec_title: str | None, x: str, y: str, bars: str, done: pd.DataFrame) -> str:
    title = spec_title or f"{names.label(y)} vs {names.label(x)}"
    return f"{title}. {bars[0].upper() + bars[1:]}." + (_time_words(done) if names.lookup(x).timed else "")


def _plots(spec: SweepSpec, df: pd.DataFrame,
           out_dir: Path) -> tuple[list[Path], list[tuple[str, Path]], list[str], dict]:
    """The spec's plots, each with its data (`STEM.csv`); returns the files, (caption, PNG) pairs,
    notes and fits."""
    from flip.sweep import plots

    written, figures, notes, fits = [], [], [], {}
    all_done = df[df.status == "done"]
    for p in spec.plots:
        done = _where(all_done, p.where)
        if p.y not in done or done[p.y].dropna().empty:
            notes.append(f"plot {p.title or p.stem}: no finished run has {names.label(p.y)}")
            continue
        stem = SweepFolder(out_dir).plot(p.stem)
        if p.kind == "metric_vs_axis":
            points = plots.axis_points(done, p.x, p.y, p.series)
            bars = _errorbars(points, "count")
            paths = plots.plot_metric_vs_axis(done, p.x, p.y, stem, series=p.series,
                                              paper=_paper_points(spec, done, p.x, p.y, p.series, p.where) or None,
                                              title=p.title,
                                              logx=p.logx, errorbars=bars)
        else:
            frontier, drawn = _fits(p, done, notes, fits)
            points = plots.curve_points(done, p.x, p.y, p.series or "row")
            bars = _errorbars(points, "_n")
            paths = plots.plot_curves(done, p.x, p.y, stem, series=p.series or "row", frontier=frontier,
                                      fit=drawn or None, title=p.title, errorbars=bars)
        _points_csv(points, p, frontier if p.kind != "metric_vs_axis" else None, stem.with_name(stem.name + ".csv"))
        written += paths + [stem.with_name(stem.name + ".csv")]
        figures.append((_plot_caption(p.title, p.x, p.y, bars, done), paths[0]))
    return written, figures, notes, fits


def _where(runs: pd.DataFrame, where: dict | None) -> pd.DataFrame:
    """The runs a plot's `where` keeps (all of them without one)."""
    for key, value in (where or {}).items():
        runs = runs[runs[key] == value] if key in runs else runs.iloc[:0]
    return runs


def _points_csv(points: pd.DataFrame, p, frontier: pd.DataFrame | None, path: Path) -> None:
    """A plot's data beside it, in words a spreadsheet reads: one line per point drawn."""
    points = points.rename(columns={"mean": f"{p.y}_mean", "std": f"{p.y}_std", "count": "seeds", "_x": p.x,
                                    "_y": f"{p.y}_mean", "_std": f"{p.y}_std", "_n": "seeds"})
    if frontier is not None:
        keys = [c for c in frontier.columns if c in points.columns and c not in (p.x, f"{p.y}_mean")]
        on = set(map(tuple, frontier[keys].astype(str).values)) if keys else set()
        points["on_frontier"] = [tuple(r) in on for r in points[keys].astype(str).values] if keys else False
    points.to_csv(path, index=False)


def _fits(p, done: pd.DataFrame, notes: list[str], fits: dict) -> tuple[pd.DataFrame, list]:
    """The plot's frontier and its fits (appending their notes and fits.json entries): `STEM` the
    saturating fit, `STEM@power` the pure power law, `STEM@held-out` each form's error on the held-out
    largest-cost point (only when the spec names the forms: `fit = true` writes what it always did)."""
    from flip.sweep import fit as fitting

    frontier, result = fitting.fit_frontier(done, p.x, p.y, target_factor=p.extrapolate)
    drawn = []
    for form in p.forms:
        if form != "saturating":
            result = fitting.fit_frontier(done, p.x, p.y, target_factor=p.extrapolate, form=form)[1]
        notes.append(_fit_note(p, result, form))
        if result is not None:
            fits[p.stem if form == "saturating" else f"{p.stem}@{form}"] = result.to_dict()
            drawn.append(result)
    if p.held_out and len(frontier):
        checks = fitting.held_out_errors(frontier, p.x, p.y, p.forms)
        notes.append(_held_out_note(p, checks))
        fits[f"{p.stem}@held-out"] = {form: c.to_dict() if c else None for form, c in checks.items()}
    return frontier, drawn


def _fit_note(p, result, form: str = "saturating") -> str:
    what = p.title or p.stem
    if result is None:
        law = "a power law" if form == "saturating" else "a pure power law"
        return f"{what}: not enough distinct budgets on the frontier to fit {law}"
    lo, hi = result.predicted_accuracy_interval
    kind = "" if form == "saturating" else " (pure power law, Cherti et al.)"
    to = "-" if form == "saturating" else " to "  # a negative exponent's interval: -0.10 to -0.07
    return (f"{what}: {result.formula}{kind} fitted to the frontier: b = {result.b:.3f} (90% interval "
            f"{result.b_interval[0]:.3f}{to}{result.b_interval[1]:.3f}); at {p.extrapolate:g}x the largest budget it "
            f"predicts {names.label(p.y)} {result.predicted_accuracy:.1f}% ({lo:.1f}{to}{hi:.1f})")


def _cheaper(n: int) -> str:
    return "one cheaper point" if n == 1 else f"{n} cheaper ones"


def _held_out_note(p, checks: dict) -> str:
    """Each form's prediction of the held-out largest-cost frontier point, and which came closer."""
    what = p.title or p.stem
    some = next((c for c in checks.values() if c is not None), None)
    if some is None:
        return f"{what}: too few frontier points to hold one out and refit"
    observed = ", ".join(f"{o:.1f}%" for o in some.observed)
    parts, scored = [], {}
    for form, c in checks.items():
        if c is None or c.predicted is None:
            parts.append(f"{form}: too few points left to fit")
            continue
        scored[form] = c.mean_abs_error
        shown = ", ".join(f"{v:.1f}% ({tables.signed(e)})" for v, e in zip(c.predicted, c.errors))
        parts.append(f"{form} {shown}")
    n = len(some.observed)
    verdict = ""
    if len(scored) > 1:
        best = min(scored, key=scored.get)
        verdict = f"; the {best} form extrapolates better here (mean absolute error {scored[best]:.1f} points)"
    return (f"{what}: held out the largest-cost frontier point{'s' if n > 1 else ''} ({names.label(p.y)} "
            f"{observed}) and refitted to the {_cheaper(some.fitted_points)}: predicted "
            f"{'; '.join(parts)}{verdict}")


def source_commit() -> str | None:
    """`<sha>` of the flipctl checkout this runs from (`<sha>+changes` if it has uncommitted ones), or None."""
    import subprocess

    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():  # installed, not a checkout: git would name whatever repository holds the venv
        return None
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if sha.returncode != 0:
        return None
    return sha.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")


def _run_commands(jobs: list[Job], shown_store: str) -> list[str]:
    from flip.sweep.execute import reproduce_command

    # The store as the command line named it: the commands read the same wherever the report is rebuilt.
    store = StoreLayout(shown_store)
    return [f"# {j.run_id}: {reproduce_command(j, store)}" for j in jobs]


def _load_text(run: pd.Series) -> str:
    if run.get("status") != "done":
        return ""
    verdict = shared(run.get("load_others"), run.get("load_cores"))
    if verdict is None:
        return "not recorded"
    others = f"others used {float(run['load_others']):.2f} of {int(run['load_cores'])} cores"
    return f"{tables.SHARED_MARK} shared ({others})" if verdict else f"quiet ({others})"


def _runs_table(df: pd.DataFrame) -> pd.DataFrame:
    runs = df[[c for c in ("run_id", "row", "seed", "variant", "status", "error", "train_time_s") if c in df]].copy()
    runs["load"] = [_load_text(r) for _, r in df.iterrows()]
    return runs


def write_report(out_dir: Path, spec: SweepSpec, jobs: list[Job], store: RunStore | None, command: str,
                 commit: str | None = None, shown_store: str | None = None, require_finished: bool = False) -> dict:
    """Write results.csv (the folder's records, refreshed from `store`), the paper-style table
    (md/tex/csv), the plots and their data, fits, notes and report.html; return a summary.

    Refuses (ReportError, before writing anything) to drop finished runs the folder holds, and with
    `require_finished`, to write a report in which no run finished. `store` None: the folder alone."""
    from flip.sweep import html

    out_dir = Path(out_dir)
    files = SweepFolder(out_dir)
    before = folder.read_results(out_dir)
    fresh = results.collect(spec, jobs, store or RunStore(out_dir / ".no-store", read_only=True), out_dir)
    merged = folder.merge(before, fresh)
    folder.check_keeps_finished(out_dir, before, folder.finished(merged))
    if require_finished and not folder.finished(merged):
        raise ReportError(f"no run of {out_dir} has finished ({len(jobs)} planned; run store "
                          f"{store.root if store else 'not found'}): nothing to report, nothing written")
    out_dir.mkdir(parents=True, exist_ok=True)
    folder.write_results(out_dir, merged)
    df = folder.read_results(out_dir)  # everything below from the records as written: a rebuild matches
    table = tables.build_table(spec, df)
    caption = f"{spec.title} (paper {spec.paper})" if spec.paper else spec.title
    table_paths = tables.write_table(table, files.table, caption)
    plot_paths, figures, plot_notes, fits = _plots(spec, df, out_dir)
    notes = table.notes + plot_notes
    if fits:
        write_json_atomic(files.fits, fits)
    if shown_store is None and files.manifest.is_file():  # as a later `flipctl report` will show it
        shown_store = Manifest.read(out_dir).shown_store()
    commands = [command] + _run_commands(jobs, shown_store or str(store.root if store else ""))
    runs = StoreLayout(shown_store or (store.root if store else "?")).run_dir("RUN")
    store_words = f"Run directories: {runs} (the run store, not part of this folder)."
    html_path = html.write_report(out_dir, title=f"{spec.name}: {caption}",
                                  description=f"{spec.description}\n\n{store_words}".strip(),
                                  tables=[(caption, table.display, table.legend)], plots=figures,
                                  commands=commands, runs=_runs_table(df), notes=notes)
    files.command.write_text(f"# ran at flipctl commit {commit or 'unknown'}\n{command}\n")
    files.notes.write_text("\n".join(notes) + ("\n" if notes else ""))
    return {"table": table, "results": df, "notes": notes,
            "paths": [files.results] + table_paths + plot_paths + [html_path]}


def regenerate(out_dir: Path, fit: str | None = None) -> dict:
    """`flipctl report OUT`: rebuild everything from OUT's own records, refreshed from the run store where
    it is there; trains nothing. The summary's `store_note` says when the store is missing. `fit`
    (saturating, power, both): the form of every fitted plot, recorded in sweep.json's spec so that a
    later rebuild keeps it."""
    from flip.sweep.spec import with_fit

    out_dir = Path(out_dir)
    manifest = Manifest.read(out_dir)
    spec = manifest.sweep_spec()
    if fit is not None:
        spec = with_fit(spec, fit)  # checked before anything is written
    jobs = jobs_from_manifest(manifest)
    store_path = manifest.store_path(out_dir)
    store = RunStore(store_path, read_only=True) if StoreLayout(store_path).runs.is_dir() else None
    result = write_report(out_dir, spec, jobs, store, manifest.command, manifest.commit, manifest.shown_store(),
                          require_finished=True)
    if fit is not None and manifest.spec is not None:
        manifest.spec = {**manifest.spec, "plots": spec.to_dict()["plots"]}
        manifest.write(out_dir)
    result["store_note"] = None if store else (
        f"run store {store_path} not found: rebuilt from {SweepFolder(out_dir).results} alone")
    return result


def manifest_for(spec: SweepSpec, jobs: list[Job], store: RunStore, data: dict, command: str) -> Manifest:
    return Manifest(spec_text=spec.source.read_text(), spec_path=str(spec.source), preset=spec.preset, data=data,
                    store=str(store.root), command=command, jobs=[j.to_dict() for j in jobs],
                    commit=source_commit(), format=folder.FORMAT, spec=spec.to_dict(),
                    store_as_given=_as_given(command, store))


def _as_given(command: str, store: RunStore) -> str:
    """The store as the command named it (`--store DIR`, else the default), for the commands shown."""
    import shlex

    argv = shlex.split(command)
    for i, arg in enumerate(argv):
        if arg == "--store" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--store="):
            return arg.split("=", 1)[1]
    return "runs/store" if store.root == Path("runs/store").absolute() else str(store.root)


def dump_json(obj) -> str:
    return json.dumps(obj, indent=2, default=str)
