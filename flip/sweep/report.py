"""A sweep's report: tables, plots, fits and the HTML page, from the run store alone.

`write_report` is what the end of `flipctl sweep` and `flipctl report OUT` both call. The sweep
leaves `OUT/sweep.json` (the spec file's text, the preset, the data it was pointed at, the store
and every planned job), so a report can be regenerated at any time without training or probing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from flip.sweep import results, tables
from flip.sweep.plan import EvalJob, Job
from flip.sweep.spec import SweepSpec
from flip.sweep.store import RunStore, read_json, write_json_atomic
from flip.train.config import TrainConfig

MANIFEST = "sweep.json"


@dataclass
class Manifest:
    spec_text: str
    spec_path: str
    preset: str | None
    data: dict
    store: str
    command: str
    jobs: list[dict] = field(default_factory=list)
    commit: str | None = None  # the flipctl source the sweep ran with

    def write(self, out_dir: Path) -> None:
        write_json_atomic(out_dir / MANIFEST, self.__dict__)

    @classmethod
    def read(cls, out_dir: Path) -> "Manifest":
        raw = read_json(out_dir / MANIFEST)
        if raw is None:
            from flip.sweep.spec import SpecError
            raise SpecError(f"{out_dir} holds no sweep ({MANIFEST} missing): run `flipctl sweep ... --out {out_dir}`")
        return cls(**raw)


def jobs_from_manifest(manifest: Manifest) -> list[Job]:
    jobs = []
    for d in manifest.jobs:
        d = dict(d)
        d["config"] = TrainConfig.from_dict(d["config"])
        d["evals"] = [EvalJob(**e) for e in d["evals"]]
        jobs.append(Job(**d))
    return jobs


def _paper_points(spec: SweepSpec, x: str, y: str) -> list[dict]:
    points = []
    for row in spec.rows:
        if y in row.paper and x in row.fields:
            points.append({"x": row.fields[x], "y": row.paper[y]})
    return points


def _plots(spec: SweepSpec, df: pd.DataFrame, out_dir: Path) -> tuple[list[Path], list[str], dict]:
    from flip.sweep import fit as fitting
    from flip.sweep import plots

    written, notes, fits = [], [], {}
    done = df[df.status == "done"]
    for p in spec.plots:
        if p.y not in done or done[p.y].dropna().empty:
            notes.append(f"plot {p.stem}: no finished run has {p.y}")
            continue
        stem = out_dir / p.stem
        if p.kind == "metric_vs_axis":
            written += plots.plot_metric_vs_axis(done, p.x, p.y, stem, series=p.series, paper=_paper_points(spec, p.x, p.y)
                                                 or None, title=p.title, xlabel=tables.label(p.x),
                                                 ylabel=tables.label(p.y) + " (%)", logx=p.logx)
            continue
        frontier, result = fitting.fit_frontier(done, p.x, p.y, target_factor=p.extrapolate)
        if p.fit:
            if result is None:
                notes.append(f"{p.stem}: not enough distinct budgets on the frontier to fit a power law")
            else:
                fits[p.stem] = result.to_dict()
                notes.append(f"{p.stem}: error = a·C^-b + c on the frontier: b = {result.b:.3f} "
                             f"[{result.b_interval[0]:.3f}, {result.b_interval[1]:.3f}]; at {p.extrapolate:g}x the "
                             f"largest budget, predicted {tables.label(p.y)} {100 - result.predicted:.1f}% "
                             f"[{100 - result.predicted_interval[1]:.1f}, {100 - result.predicted_interval[0]:.1f}]")
        written += plots.plot_curves(done, p.x, p.y, stem, series=p.series or "row", frontier=frontier,
                                     fit=result if p.fit else None,
                                     title=p.title)
    return written, notes, fits


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


def write_report(out_dir: Path, spec: SweepSpec, jobs: list[Job], store: RunStore, command: str,
                 commit: str | None = None) -> dict:
    """Write results.csv, the paper-style table (md/tex/csv), the plots, fits and report.html; return a summary."""
    from flip.sweep import html

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    df = results.collect(spec, jobs, store)
    df.to_csv(out_dir / "results.csv", index=False)
    table = tables.build_table(spec, df)
    caption = f"{spec.title} (paper {spec.paper})" if spec.paper else spec.title
    table_paths = tables.write_table(table, out_dir, "table", caption)
    plot_paths, plot_notes, fits = _plots(spec, df, out_dir)
    notes = table.notes + plot_notes
    if fits:
        write_json_atomic(out_dir / "fits.json", fits)
    runs = df[[c for c in ("run_id", "row", "seed", "variant", "status", "error", "train_time_s", "run_dir")
               if c in df]].copy()
    commands = [command] + [f"# {j.run_id}: " + (store.sweep_dir(j.run_id) / "command.txt").read_text().strip()
                            for j in jobs if (store.sweep_dir(j.run_id) / "command.txt").exists()]
    html_path = html.write_report(out_dir, title=f"{spec.name}: {caption}", description=spec.description,
                                  tables=[(caption, table.display)], plots=[p for p in plot_paths if p.suffix == ".png"],
                                  commands=commands, runs=runs, notes=notes)
    (out_dir / "command.txt").write_text(f"# ran at flipctl commit {commit or 'unknown'}\n{command}\n")
    (out_dir / "notes.txt").write_text("\n".join(notes) + ("\n" if notes else ""))
    return {"table": table, "results": df, "paths": table_paths + plot_paths + [html_path], "notes": notes}


def regenerate(out_dir: Path) -> dict:
    """`flipctl report OUT`: rebuild everything from OUT/sweep.json and the run store, training nothing."""
    import tempfile

    from flip.sweep.spec import load_spec, with_data

    manifest = Manifest.read(Path(out_dir))
    with tempfile.TemporaryDirectory() as tmp:
        spec_file = Path(tmp) / Path(manifest.spec_path).name
        spec_file.write_text(manifest.spec_text)
        spec = load_spec(spec_file, manifest.preset)
    spec = with_data(spec, **manifest.data)
    return write_report(Path(out_dir), spec, jobs_from_manifest(manifest), RunStore(manifest.store), manifest.command,
                        manifest.commit)


def manifest_for(spec: SweepSpec, jobs: list[Job], store: RunStore, data: dict, command: str) -> Manifest:
    return Manifest(spec_text=spec.source.read_text(), spec_path=str(spec.source), preset=spec.preset, data=data,
                    store=str(store.root), command=command, jobs=[j.to_dict() for j in jobs],
                    commit=source_commit())


def dump_json(obj) -> str:
    return json.dumps(obj, indent=2, default=str)
