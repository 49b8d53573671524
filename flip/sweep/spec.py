"""Sweep specifications: one TOML file per study, expanded into ordinary `TrainConfig`s.

A spec names the paper table it mirrors, a base config, the rows (an explicit list, a grid of
axes, or both crossed), seeds, what to evaluate, optional unmasked tuning of every run, optional
memory-matched batches (Table 1a), the report's columns and plots, and presets (`smoke`, `tiny`,
`paper`) that are deep-merged over the spec. Everything is checked when the spec is loaded, so a
bad spec fails before anything trains. The least spec is a [sweep] table with a name: one run
of the base config (TrainConfig's defaults) per seed.

    [sweep]                      name, title, paper, description, baseline (a row label), seeds
    [base]                       TrainConfig fields shared by every run
    [[rows]]                     label, TrainConfig fields, and [rows.paper] numbers
    [axes]                       field = [values, ...]: a grid (crossed with the rows, if any)
    [memory_match]               reference (row label), multiple_of: batch at equal peak memory
    [tuning]                     enabled, samples_fraction, lr_factor: unmasked tuning of each run
    [eval]                       zeroshot, retrieval, linear_probe, modes = ["full", "masked", "views:2"]
    [report]                     columns = [...]
    [[plots]]                    kind, x, y, series, ...
    [presets.NAME]               any of the above, merged over the spec
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from flip.errors import ConfigError
from flip.resources import sweep_specs
from flip.train.config import TrainConfig

TOP_LEVEL = {"sweep", "base", "rows", "axes", "memory_match", "tuning", "eval", "report", "plots", "presets"}
SWEEP_KEYS = {"name", "title", "paper", "description", "baseline", "seeds"}
MEMORY_KEYS = {"reference", "multiple_of"}
TUNING_KEYS = {"enabled", "samples_fraction", "lr_factor"}
EVAL_KEYS = {"zeroshot", "retrieval", "linear_probe", "modes", "zeroshot_images", "batch_size"}
PLOT_KINDS = {"metric_vs_axis", "curves", "scaling"}
PLOT_KEYS = {"kind", "x", "y", "series", "title", "logx", "paper", "fit", "extrapolate", "name", "where"}
# The fitted forms of error against cost (flip.sweep.fit): Cherti et al.'s pure power law and our saturating one.
FIT_FORMS = ("saturating", "power")
FIT_CHOICES = (*FIT_FORMS, "both")
# Run-bookkeeping fields a sweep owns: a spec may not set them.
RESERVED = {"out", "resume", "init_from", "parent"}


class SpecError(ConfigError):
    """A sweep spec is malformed; the message names the file and the key."""


@dataclass(frozen=True)
class EvalMode:
    """How images are shown at evaluation: full, masked at a ratio (None: the run's own), or K views."""

    name: str
    mask_ratio: float | None = 0.0
    views: int = 1

    @classmethod
    def parse(cls, text: str, where: str) -> "EvalMode":
        kind, _, arg = text.partition(":")
        try:
            if kind == "full" and not arg:
                return cls("full")
            if kind == "masked":
                return cls("masked", float(arg) if arg else None)
            if kind == "views" and arg:
                views = int(arg)
                if views >= 2:
                    return cls(f"views{views}", 0.0, views)
        except ValueError:
            pass
        raise SpecError(f"{where}: unknown eval mode {text!r}; use full, masked, masked:R or views:K (K >= 2)")


@dataclass(frozen=True)
class EvalSpec:
    zeroshot: bool = True
    retrieval: bool = True
    linear_probe: bool = False
    modes: tuple[EvalMode, ...] = (EvalMode("full"),)
    batch_size: int = 256


@dataclass(frozen=True)
class Row:
    label: str  # the row's key (results.csv, the baseline, memory_match.reference)
    fields: dict[str, Any]  # TrainConfig overrides of this row
    paper: dict[str, Any] = field(default_factory=dict)
    words: str | None = None  # the label in words, for a row named after its axes ("mask 50%, 30000 samples")

    @property
    def title(self) -> str:
        return self.words or self.label


@dataclass(frozen=True)
class MemoryMatch:
    reference: str | dict  # label of the row whose peak memory the others match, or fields over the base
    multiple_of: int = 8


@dataclass(frozen=True)
class Tuning:
    enabled: bool = False
    samples_fraction: float = 0.1  # of the parent's training samples (the paper: 0.32 of 6.4 epochs = 5%)
    lr_factor: float = 0.01  # of the parent's peak lr (the paper: 4e-8 vs 4e-6)


@dataclass(frozen=True)
class Plot:
    kind: str
    x: str
    y: str
    series: str | None = None
    title: str | None = None
    logx: bool = False
    # True: the saturating fit alone (as specs before the choice); "saturating", "power" or "both": those
    # forms, each also refitted without the largest-cost frontier point to report its extrapolation error
    fit: bool | str = False
    extrapolate: float = 4.0  # target budget of the power-law fit, as a multiple of the largest run
    name: str | None = None
    where: dict[str, Any] | None = None  # only the runs with these settings (e.g. {mask_ratio = 0.5})

    @property
    def forms(self) -> tuple[str, ...]:
        """The fitted forms, in FIT_FORMS order."""
        if self.fit is True:
            return ("saturating",)
        if not self.fit:
            return ()
        return FIT_FORMS if self.fit == "both" else (self.fit,)

    @property
    def held_out(self) -> bool:
        """Whether the fits are checked on a held-out point (a form named, not the legacy `fit = true`)."""
        return isinstance(self.fit, str)

    @property
    def stem(self) -> str:
        return self.name or f"{self.y}-vs-{self.x}".replace("@", "-").replace("_", "-")


@dataclass(frozen=True)
class SweepSpec:
    name: str
    title: str
    paper: str
    description: str
    source: Path
    preset: str | None
    base: dict[str, Any]
    rows: tuple[Row, ...]
    seeds: int
    baseline: str | None
    evals: EvalSpec
    memory_match: MemoryMatch | None
    tuning: Tuning
    columns: tuple[str, ...]
    plots: tuple[Plot, ...]
    presets: tuple[str, ...]
    axes: tuple[str, ...] | None = None  # axis_fields() as recorded with a sweep's results (None: computed)

    def row(self, label: str) -> Row:
        return next(r for r in self.rows if r.label == label)

    def to_dict(self) -> dict[str, Any]:
        """The spec as loaded, in JSON values: a sweep folder keeps it, so its report needs no spec file
        and no TrainConfig of the day."""
        d = dataclasses.asdict(self)
        d["source"], d["axes"] = str(self.source), self.axis_fields()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SweepSpec":
        d = dict(d)
        ev = dict(d["evals"])
        ev["modes"] = tuple(EvalMode(**m) for m in ev["modes"])
        mm = d.get("memory_match")
        return cls(**{**d, "source": Path(d["source"]), "rows": tuple(Row(**r) for r in d["rows"]),
                      "evals": EvalSpec(**ev), "memory_match": MemoryMatch(**mm) if mm else None,
                      "tuning": Tuning(**d["tuning"]), "columns": tuple(d["columns"]),
                      "plots": tuple(Plot(**p) for p in d["plots"]), "presets": tuple(d["presets"]),
                      "axes": tuple(d["axes"]) if d.get("axes") is not None else None})

    def axis_fields(self) -> list[str]:
        """TrainConfig fields that vary between rows, in first-seen order."""
        if self.axes is not None:
            return list(self.axes)
        names: dict[str, None] = {}
        for r in self.rows:
            names.update(dict.fromkeys(r.fields))
        configs = [self.config(r, 0) for r in self.rows]  # a row that leaves a field out has its default
        return [k for k in names if len({repr(getattr(c, k)) for c in configs}) > 1 or len(self.rows) == 1]

    def config(self, row: Row, seed: int, overrides: dict[str, Any] | None = None) -> TrainConfig:
        """The run's TrainConfig: base, then the row, then `overrides` (e.g. a memory-matched batch)."""
        values = {**self.base, **row.fields, **(overrides or {}), "seed": seed}
        return TrainConfig.from_dict(values)


# -- loading -------------------------------------------------------------------------------------------------

def shipped_specs() -> dict[str, Path]:
    """Shipped sweeps by name: every `sweeps/*.toml` with a [sweep] table (installed as `flip.sweep.specs`)."""
    specs = {}
    for path in sorted((p for p in sweep_specs().iterdir() if p.name.endswith(".toml")), key=lambda p: p.name):
        try:
            raw = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError:
            continue
        if isinstance(raw.get("sweep"), dict):
            specs[raw["sweep"].get("name", path.stem)] = path
    return specs


def resolve_spec_path(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix == ".toml":
        if not path.is_file():
            raise SpecError(f"sweep spec not found: {path}")
        return path
    specs = shipped_specs()
    if name_or_path not in specs:
        raise SpecError(f"unknown sweep {name_or_path!r}; shipped sweeps: {', '.join(specs)} "
                        f"(or give a path to a .toml spec)")
    return specs[name_or_path]


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _keys(table: Any, allowed: set[str], where: str) -> dict:
    if not isinstance(table, dict):
        raise SpecError(f"{where} must be a table")
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise SpecError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")
    return table


def _typed(value: Any, kind: type | tuple, where: str) -> Any:
    if isinstance(value, bool) and kind is not bool and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise SpecError(f"{where}: expected {getattr(kind, '__name__', kind)}, got a boolean")
    if not isinstance(value, kind):
        names = "/".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise SpecError(f"{where}: expected {names}, got {type(value).__name__} {value!r}")
    return value


_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def _check_fields(values: dict, where: str) -> dict:
    """Spec-level TrainConfig overrides: known, not reserved, of a type the field accepts."""
    out = {}
    for key, value in values.items():
        name = key.replace("-", "_")
        if name not in _FIELDS:
            raise SpecError(f"{where}: {key!r} is not a training config field")
        if name in RESERVED:
            raise SpecError(f"{where}: {key!r} is set by the sweep itself")
        default = _FIELDS[name].default
        if isinstance(default, bool):
            _typed(value, bool, f"{where}.{key}")
        elif isinstance(default, float):
            _typed(value, (int, float), f"{where}.{key}")
            value = float(value)
        elif isinstance(default, int) and name != "samples":
            _typed(value, int, f"{where}.{key}")
        elif isinstance(default, str):
            _typed(value, str, f"{where}.{key}")
        out[name] = value
    return out


def _label(values: dict[str, Any]) -> str:
    """An axes row's key (results.csv's `row`): `50%`, or `mask_ratio=50%, samples=30000`."""
    from flip.sweep import names

    shown = {k: names.show_value(k, v) for k, v in values.items()}
    return ", ".join(v if len(shown) == 1 else f"{k}={v}" for k, v in shown.items())


def _words(values: dict[str, Any]) -> str:
    """An axes row's label in words: `mask 50%, 30000 samples`, not `mask_ratio=50%, samples=30000`."""
    from flip.sweep import names

    return ", ".join(names.value_words(k, v) for k, v in values.items())


def _rows(raw: dict, where: str) -> tuple[Row, ...]:
    if "rows" in raw and not raw["rows"]:
        raise SpecError(f"{where}: rows is empty")
    explicit = []
    for i, row in enumerate(_typed(raw.get("rows", [{}]), list, f"{where}: rows")):
        _typed(row, dict, f"{where}: rows[{i}]")
        row = dict(row)
        label = row.pop("label", None)
        paper = _typed(row.pop("paper", {}), dict, f"{where}: rows[{i}].paper")
        explicit.append((label, _check_fields(row, f"{where}: rows[{i}]"), paper))
    axes = _typed(raw.get("axes", {}), dict, f"{where}: axes")
    grid = []
    for key, values in axes.items():
        _typed(values, list, f"{where}: axes.{key}")
        if not values:
            raise SpecError(f"{where}: axes.{key} is empty")
        checked = [_check_fields({key: v}, f"{where}: axes")[key.replace("-", "_")] for v in values]
        grid.append([(key.replace("-", "_"), v) for v in checked])
    rows = []
    for label, fields, paper in explicit:
        for combo in itertools.product(*grid) if grid else [()]:
            values = {**fields, **dict(combo)}
            name = label if label and not combo else ", ".join(x for x in (label, _label(dict(combo))) if x)
            words = ", ".join(x for x in (label, _words(dict(combo))) if x) if combo else None
            rows.append(Row(name or _label(values) or "base", values, paper, words))
    labels = [r.label for r in rows]
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise SpecError(f"{where}: duplicate row label(s) {', '.join(duplicates)}")
    return tuple(rows)


def default_preset(name_or_path: str | Path) -> str | None:
    """`tiny` for a spec with presets (the CPU study whose results we commit), else None."""
    path = resolve_spec_path(str(name_or_path))
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{path} is not valid TOML: {exc}") from None
    presets = raw.get("presets") if isinstance(raw.get("presets"), dict) else {}
    return "tiny" if "tiny" in presets else next(iter(presets), None)


def load_spec(name_or_path: str | Path, preset: str | None = None) -> SweepSpec:
    """Load, merge the preset into, and validate a sweep spec (a shipped name or a .toml path)."""
    path = resolve_spec_path(str(name_or_path))
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{path} is not valid TOML: {exc}") from None
    where = str(path)
    _keys(raw, TOP_LEVEL, where)
    presets = _typed(raw.pop("presets", {}), dict, f"{where}: presets")
    if preset is not None:
        if preset not in presets:
            known = ", ".join(presets) or "none"
            raise SpecError(f"{where}: unknown preset {preset!r}; this spec has: {known}")
        over = _keys(_typed(presets[preset], dict, f"{where}: presets.{preset}"), TOP_LEVEL - {"presets"},
                     f"{where}: presets.{preset}")
        raw = _merge(raw, over)
    elif presets:
        raise SpecError(f"{where}: choose a preset with --preset ({', '.join(presets)})")

    if "sweep" not in raw:  # an empty file, or a TrainConfig TOML given as a spec
        raise SpecError(f"{where}: no [sweep] table; a spec needs at least [sweep] with a name "
                        f"(see the shipped ones: flipctl sweep --list)")
    sweep = _keys(raw["sweep"], SWEEP_KEYS, f"{where}: [sweep]")
    name = _typed(sweep.get("name", ""), str, f"{where}: sweep.name")
    if not name.strip():
        raise SpecError(f"{where}: [sweep] needs a name")
    seeds = _typed(sweep.get("seeds", 1), int, f"{where}: sweep.seeds")
    if seeds < 1:
        raise SpecError(f"{where}: sweep.seeds must be >= 1")
    base = _check_fields(_typed(raw.get("base", {}), dict, f"{where}: base"), f"{where}: base")
    rows = _rows(raw, where)
    labels = {r.label for r in rows}
    baseline = sweep.get("baseline")
    if baseline is not None and baseline not in labels:
        raise SpecError(f"{where}: sweep.baseline {baseline!r} is not a row label ({', '.join(sorted(labels))})")

    memory = None
    if "memory_match" in raw:
        mm = _keys(raw["memory_match"], MEMORY_KEYS, f"{where}: memory_match")
        reference = _typed(mm.get("reference", baseline), (str, dict), f"{where}: memory_match.reference")
        if isinstance(reference, dict):  # a config that is not itself a row: base + these fields
            reference = _check_fields(reference, f"{where}: memory_match.reference")
        elif reference not in labels:
            raise SpecError(f"{where}: memory_match.reference {reference!r} is not a row label")
        memory = MemoryMatch(reference, _typed(mm.get("multiple_of", 8), int, f"{where}: memory_match.multiple_of"))

    tune_raw = _keys(raw.get("tuning", {}), TUNING_KEYS, f"{where}: tuning")
    tuning = Tuning(
        enabled=_typed(tune_raw.get("enabled", False), bool, f"{where}: tuning.enabled"),
        samples_fraction=float(_typed(tune_raw.get("samples_fraction", 0.1), (int, float),
                                      f"{where}: tuning.samples_fraction")),
        lr_factor=float(_typed(tune_raw.get("lr_factor", 0.01), (int, float), f"{where}: tuning.lr_factor")))
    if not 0 < tuning.samples_fraction <= 1 or tuning.lr_factor <= 0:
        raise SpecError(f"{where}: tuning.samples_fraction must be in (0, 1] and tuning.lr_factor > 0")

    ev = _keys(raw.get("eval", {}), EVAL_KEYS, f"{where}: eval")
    modes = _typed(ev.get("modes", ["full"]), list, f"{where}: eval.modes")
    if not modes:
        raise SpecError(f"{where}: eval.modes is empty")
    evals = EvalSpec(
        zeroshot=_typed(ev.get("zeroshot", True), bool, f"{where}: eval.zeroshot"),
        retrieval=_typed(ev.get("retrieval", True), bool, f"{where}: eval.retrieval"),
        linear_probe=_typed(ev.get("linear_probe", False), bool, f"{where}: eval.linear_probe"),
        modes=tuple(EvalMode.parse(_typed(m, str, f"{where}: eval.modes"), f"{where}: eval.modes") for m in modes),
        batch_size=_typed(ev.get("batch_size", 256), int, f"{where}: eval.batch_size"))

    report = _keys(raw.get("report", {}), {"columns"}, f"{where}: report")
    columns = tuple(_typed(report.get("columns", []), list, f"{where}: report.columns"))
    plots = []
    for i, p in enumerate(_typed(raw.get("plots", []), list, f"{where}: plots")):
        p = _keys(p, PLOT_KEYS, f"{where}: plots[{i}]")
        for key in ("kind", "x", "y"):
            if key not in p:
                raise SpecError(f"{where}: plots[{i}] needs {key!r}")
        if p["kind"] not in PLOT_KINDS:
            raise SpecError(f"{where}: plots[{i}].kind must be one of {', '.join(sorted(PLOT_KINDS))}")
        p = _check_plot(p, f"{where}: plots[{i}]")
        plots.append(Plot(**{k: v for k, v in p.items() if k != "paper"}))
    _check_names(columns, plots, where)

    spec = SweepSpec(
        name=name,
        title=sweep.get("title", path.stem), paper=sweep.get("paper", ""),
        description=sweep.get("description", "").strip(), source=path, preset=preset, base=base, rows=rows,
        seeds=seeds, baseline=baseline, evals=evals, memory_match=memory, tuning=tuning, columns=columns,
        plots=tuple(plots), presets=tuple(presets))
    _validate_runs(spec)
    return spec


def _check_plot(p: dict, where: str) -> dict:
    """The plot's table with its fit form and `where` settings checked (`where` as TrainConfig values)."""
    fit = p.get("fit", False)
    if not isinstance(fit, bool) and fit not in FIT_CHOICES:
        raise SpecError(f"{where}.fit must be true, false or one of {', '.join(FIT_CHOICES)}, got {fit!r}")
    if fit and p["kind"] == "metric_vs_axis":
        raise SpecError(f"{where}.fit: a metric_vs_axis plot has no cost axis to fit; use kind curves or scaling")
    if "where" in p:
        p = {**p, "where": _check_fields(_typed(p["where"], dict, f"{where}.where"), f"{where}.where")}
    return p


def with_fit(spec: SweepSpec, fit: str) -> SweepSpec:
    """`--fit FORM`: every plot of `spec` that fits gets the form(s) `fit` (saturating, power or both)."""
    if fit not in FIT_CHOICES:
        raise SpecError(f"--fit must be one of {', '.join(FIT_CHOICES)}, got {fit!r}")
    if not any(p.fit for p in spec.plots):
        raise SpecError(f"--fit: no plot of sweep {spec.name!r} fits a power law (only time-accuracy and scaling "
                        f"style plots with `fit` do)")
    plots = tuple(dataclasses.replace(p, fit=fit) if p.fit else p for p in spec.plots)
    return dataclasses.replace(spec, plots=plots)


def _check_names(columns: tuple, plots: list[Plot], where: str) -> None:
    """Columns, plot axes and metrics must be names a sweep produces (flip.sweep.names): a typo is an
    error now, not a column of dashes or a missing plot after the runs."""
    from flip.sweep import names

    checks = [(f"report.columns[{i}]", c, names.COLUMN_KINDS) for i, c in enumerate(columns)]
    for i, p in enumerate(plots):
        checks += [(f"plots[{i}].x", p.x, names.PLOT_X_KINDS), (f"plots[{i}].y", p.y, names.PLOT_Y_KINDS)]
        if p.series is not None:
            checks.append((f"plots[{i}].series", p.series, names.PLOT_SERIES_KINDS))
        checks += [(f"plots[{i}].where", key, ("config",)) for key in p.where or {}]
    for key, name, kinds in checks:
        problem = names.unknown(name, kinds)
        if problem:
            raise SpecError(f"{where}: {key}: {problem}")


def _validate_runs(spec: SweepSpec) -> None:
    """Every run's config must be valid before anything trains, and no two rows may be one run (an axis
    over a setting that does not change what is trained, such as ckpt_every or compile)."""
    from flip.sweep.store import identity

    seen: dict[str, Row] = {}
    for row in spec.rows:
        try:
            cfg = spec.config(row, 0)
            cfg.validate()
        except ConfigError as exc:
            raise SpecError(f"{spec.source}: row {row.label!r}: {exc}") from None
        other = seen.setdefault(repr(sorted(identity(cfg).items())), row)
        if other is not row:
            varied = sorted(k for k in {*row.fields, *other.fields} if row.fields.get(k) != other.fields.get(k))
            raise SpecError(f"{spec.source}: rows {other.label!r} and {row.label!r} are the same run: "
                            f"{', '.join(varied) or 'nothing'} does not change what is trained")


def parse_settings(items: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """`--set KEY=VALUE` items as {field: value}; VALUE is read as a TOML value (`46080`, `1e-3`, `true`,
    `"block"`), and taken as it is when it is not one (`tiny`, `/data/{00..09}.tar`)."""
    values: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise SpecError(f"--set takes KEY=VALUE (a training config field), got {item!r}")
        try:
            values[key.strip()] = tomllib.loads(f"v = {text.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            values[key.strip()] = text.strip()
    return values


def _with_settings(spec: SweepSpec, settings: dict[str, Any]) -> dict[str, Any]:
    """The spec's base with `--set` values over it, checked as the spec's own fields are; a field a row
    sets is refused, since the row's value would win and the flag would change nothing."""
    checked = _check_fields(settings, "--set")
    for key in checked:
        rows = [r.label for r in spec.rows if key in r.fields]
        if rows:
            raise SpecError(f"--set {key}: the sweep's rows set it ({', '.join(rows)}), so it cannot be overridden")
    trial = dataclasses.replace(spec, base={**spec.base, **checked})
    for row in spec.rows:
        try:
            trial.config(row, 0).validate()
        except ConfigError as exc:
            raise SpecError(f"--set: {exc}" + (f" (row {row.label!r})" if len(spec.rows) > 1 else "")) from None
    return trial.base


def with_data(spec: SweepSpec, data: str | None, eval_data: str | None, eval_zeroshot: str | None,
              settings: dict[str, Any] | None = None) -> SweepSpec:
    """Point a spec at the user's own shards and evaluation sets, and set base fields (`--set`) after the preset."""
    given = {"data": data, "eval_data": eval_data, "eval_zeroshot": eval_zeroshot}
    clash = [k for k in settings or {} if given.get(k.replace("-", "_")) is not None]
    if clash:
        raise SpecError(f"--set {clash[0]} and --{clash[0].replace('_', '-')} both given: use one")
    base = _with_settings(spec, settings) if settings else dict(spec.base)
    if data is not None:
        base["data"] = data
    if eval_data is not None:
        base["eval_data"] = eval_data
    if eval_zeroshot is not None and "eval_zeroshot" in _FIELDS:
        base["eval_zeroshot"] = eval_zeroshot
    return dataclasses.replace(spec, base=base)
