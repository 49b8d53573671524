"""A sweep folder (`flipctl sweep --out DIR`) holds everything its report is built from, and the report.

    DIR/sweep.json     the manifest: the spec as loaded, the command, the commit, every planned job,
                       and where the run store is (relative to DIR)
    DIR/results.csv    one record per run: settings, status, measurements, metrics, machine load

and what `flipctl report DIR` rebuilds from those two (`SweepFolder` names each file):

    DIR/table.md, table.tex, table.csv    the paper-style table
    DIR/STEM.png, STEM.pdf, STEM.csv      each plot of the spec, with the points it draws
    DIR/fits.json                         the fitted curves (when the spec fits any)
    DIR/notes.txt                         what the table and plots say, a line each
    DIR/report.html                       all of it on one page, with the commands
    DIR/command.txt                       the command the sweep ran, and the commit it ran at

The run store is where runs train and are evaluated: a cache. `flipctl report DIR` reads the
folder's records and refreshes them from the store where the store has more (a run finished
since); with no store at all it rebuilds the same files from the folder alone. A finished run's
record is never replaced by an unfinished one, and a report that would keep fewer finished runs
than the folder holds is refused.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from flip.errors import FlipError
from flip.sweep.spec import SpecError, SweepSpec
from flip.sweep.store import read_json, write_json_atomic

FORMAT = 2  # 1: no spec as loaded; the store relative to the directory the sweep ran in


class ReportError(FlipError):
    """A report that cannot be written without losing results, or with nothing to show."""


@dataclass(frozen=True)
class SweepFolder:
    """The files of the sweep folder at `path`."""

    path: Path

    def __post_init__(self):
        object.__setattr__(self, "path", Path(self.path))

    @property
    def manifest(self) -> Path:
        return self.path / "sweep.json"

    @property
    def results(self) -> Path:
        return self.path / "results.csv"

    @property
    def table(self) -> Path:
        """The table's stem: it is written as table.md, table.tex and table.csv."""
        return self.path / "table"

    def plot(self, stem: str) -> Path:
        """A plot's stem: STEM.png, STEM.pdf and its data, STEM.csv."""
        return self.path / stem

    @property
    def fits(self) -> Path:
        return self.path / "fits.json"

    @property
    def notes(self) -> Path:
        return self.path / "notes.txt"

    @property
    def report(self) -> Path:
        return self.path / "report.html"

    @property
    def command(self) -> Path:
        return self.path / "command.txt"


@dataclass
class Manifest:
    spec_text: str
    spec_path: str
    preset: str | None
    data: dict
    store: str  # format 2: relative to the sweep folder once written (absolute until then)
    command: str
    jobs: list[dict] = field(default_factory=list)
    commit: str | None = None  # the flipctl source the sweep ran with
    format: int = 1
    spec: dict | None = None  # SweepSpec.to_dict(): the spec as the sweep ran it (preset, --seeds, --data)
    store_as_given: str | None = None  # as on the command line: the per-run commands the report shows

    def write(self, out_dir: Path) -> None:
        out_dir = Path(out_dir)
        d = dataclasses.asdict(self)
        if Path(self.store).is_absolute():
            d["store"] = os.path.relpath(self.store, out_dir.absolute())
        write_json_atomic(SweepFolder(out_dir).manifest, d)

    @classmethod
    def read(cls, out_dir: Path) -> "Manifest":
        path = SweepFolder(out_dir).manifest
        raw = read_json(path)
        if raw is None:
            raise SpecError(f"{out_dir} holds no sweep ({path.name} missing or unreadable): run "
                            f"`flipctl sweep ... --out {out_dir}`")
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})

    def store_path(self, out_dir: Path) -> Path:
        if self.format >= 2:
            return Path(os.path.normpath(Path(out_dir).absolute() / self.store))
        return Path(self.store).absolute()  # format 1: relative to wherever the sweep was started

    def shown_store(self) -> str:
        return self.store_as_given or self.store

    def sweep_spec(self) -> SweepSpec:
        """The spec as the sweep ran it; a format-1 folder's is loaded again from the spec's text."""
        if self.spec is not None:
            return SweepSpec.from_dict(self.spec)
        import tempfile

        from flip.sweep.spec import load_spec, with_data
        with tempfile.TemporaryDirectory() as tmp:
            spec_file = Path(tmp) / Path(self.spec_path).name
            spec_file.write_text(self.spec_text)
            spec = load_spec(spec_file, self.preset)
        seeds = {j["seed"] for j in self.jobs}
        spec = dataclasses.replace(spec, source=Path(self.spec_path), seeds=len(seeds) or spec.seeds)
        return with_data(spec, **self.data)


# pandas 3 parses floats exactly by default (and deprecates the option); pandas 2 needs asking
_EXACT_FLOATS = {} if int(pd.__version__.split(".")[0]) >= 3 else {"float_precision": "round_trip"}


def read_results(out_dir: Path) -> pd.DataFrame | None:
    """The folder's per-run records exactly as written (floats round-trip; only empty cells are missing)."""
    path = SweepFolder(out_dir).results
    if not path.is_file():
        return None
    try:
        return pd.read_csv(path, keep_default_na=False, na_values=[""], **_EXACT_FLOATS)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ReportError(f"{path} is not a sweep's results table ({exc}); restore it (git checkout) "
                          f"or move it away") from None


def write_results(out_dir: Path, df: pd.DataFrame) -> None:
    path = SweepFolder(out_dir).results
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    df.to_csv(tmp, index=False)
    os.replace(tmp, path)


def finished(df: pd.DataFrame | None) -> set[str]:
    if df is None or df.empty or "status" not in df:
        return set()
    return set(df.loc[df.status == "done", "run_id"])


def merge(before: pd.DataFrame | None, fresh: pd.DataFrame) -> pd.DataFrame:
    """The plan's records (`fresh`, from the store) over the folder's (`before`): a run the store has
    finished takes the store's record; one it has not keeps the folder's if that one finished (or the
    store knows nothing of it)."""
    if before is None or before.empty:
        return fresh
    old = {r["run_id"]: r for r in before.to_dict("records")}
    records = []
    for rec in fresh.to_dict("records"):
        prev = old.get(rec["run_id"])
        if prev is not None and rec["status"] != "done" and (prev["status"] == "done" or rec["status"] == "pending"):
            rec = prev
        records.append(rec)
    return pd.DataFrame.from_records(records)


def check_keeps_finished(out_dir: Path, before: pd.DataFrame | None, after_ids: set[str]) -> None:
    """Refuse to write a report that drops finished runs the folder holds (another plan, fewer seeds)."""
    lost = sorted(finished(before) - after_ids)
    if lost:
        raise ReportError(f"{out_dir} holds {len(finished(before))} finished runs, {len(lost)} of which this "
                          f"sweep does not plan (e.g. {lost[0]}): not overwritten; use another --out")


def check_plan_keeps_finished(out_dir: Path, jobs) -> None:
    """Before a sweep runs: would its report drop finished runs of the folder's results?"""
    check_keeps_finished(Path(out_dir), read_results(out_dir), {j.run_id for j in jobs})
