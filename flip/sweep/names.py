"""Every name a sweep can produce - table columns, plot axes, metrics - declared once, with its words.

The one registry: each `Column` is a name's key, its label, unit and digits (and, only where a
table heads it shorter than a plot labels it, its table header). The tables, the plots, the HTML
report (whose tables and captions those two write) and the spec checks all take their words from
here, so a name is said one way everywhere; a spec's `[report] columns` and `[[plots]] x` / `y` /
`series` are checked against it when the spec loads, so a typo fails before anything trains. A
name is:

- a training-config field (`mask_ratio`, `text_mask`, `samples`, ...): the run's setting;
- a result of a run (`train_time_s`, `train_flops`, `samples_seen`, `peak_memory`, `steps`, ...);
- a table column computed over a row's runs (`flops_rel`, `time_rel`, `time_min`, `memory`, ...);
- a metric (`zeroshot`, `retrieval_i2t`, ...) or `eval_s`, optionally `@MODE`: an inference mode
  (`masked`, `masked0.3`, `views2`, `full`) or `tuned` (after unmasked tuning).
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from dataclasses import dataclass

SETTING, MEASURE, METRIC, CONFIG = "setting", "measure", "metric", "config"
# Where a spec may name it, besides config fields and metrics (which go anywhere they fit).
TABLE, RESULT, SERIES_ROLE = "column", "result", "series"


@dataclass(frozen=True)
class Column:
    key: str  # as in results.csv, a spec and table.csv
    label: str  # in words: plot axis and legend, notes, and the table header unless `short`
    unit: str = ""  # "%", "min", "MiB", "s", "x" (a multiple of the baseline row's), "" (a count, a setting)
    digits: int = 1
    # setting: the same for every seed of a row (no spread shown); measure: varies by seed; metric: an
    # accuracy in percent; config: a training-config value, shown as text
    kind: str = MEASURE
    per: float = 1.0  # shown value = stored value / per (seconds as minutes, bytes as MiB)
    short: str | None = None  # the table header's words, only where a table says it shorter ("batch")
    roles: tuple[str, ...] = ()  # TABLE: a [report] column; RESULT: a run's own record (a plot axis); SERIES_ROLE
    timed: bool = False  # a time figure: marked when the runs behind it shared their cores
    record: tuple[str, str] | None = None  # a metric's (task, key) in a run's evaluation record
    words: str | None = None  # a config value in a row's name ("mask {}": "mask 50%"); default "LABEL {}"
    unset: str | None = None  # a config column whose runs all leave the field unset shows this ("model's")

    @property
    def header(self) -> str:
        """Table header: the words, and the unit unless the values carry it ("0.52x", "50%")."""
        words = self.short or self.label
        return words if self.unit in ("", "x") or self.kind == CONFIG else f"{words} ({self.unit})"

    @property
    def axis(self) -> str:
        """Plot axis label, with the unit."""
        return self.label if not self.unit or self.unit == "x" else f"{self.label} ({self.unit})"

    @property
    def suffix(self) -> str:
        """What a shown number ends in: "x" for a multiple of the baseline's ("0.52x")."""
        return "x" if self.unit == "x" else ""

    def number(self, value: float) -> str:
        return f"{value:.{self.digits}f}{self.suffix}"


def _by_key(*columns: Column) -> dict[str, Column]:
    return {c.key: c for c in columns}


METRICS = _by_key(
    Column("zeroshot", "zero-shot top-1", "%", 1, METRIC, record=("zeroshot", "top1")),
    Column("zeroshot_top5", "zero-shot top-5", "%", 1, METRIC, record=("zeroshot", "top5")),
    Column("retrieval_i2t", "image→text R@1", "%", 1, METRIC, record=("retrieval", "image_to_text_R@1")),
    Column("retrieval_t2i", "text→image R@1", "%", 1, METRIC, record=("retrieval", "text_to_image_R@1")),
    Column("linear_probe", "linear-probe top-1", "%", 1, METRIC, record=("linear-probe", "top1")),
)
EVAL_TIME = "eval_s"
_EVAL_TIME = Column(EVAL_TIME, "evaluation time", "s", 1, MEASURE, timed=True)
_BOTH = (TABLE, RESULT)
# What a run records about itself (results.csv), and the columns a table computes over a row's runs.
COLUMNS = _by_key(
    Column("batch_size", "batch size", "", 0, SETTING, short="batch", roles=_BOTH, words="batch {}"),
    Column("steps", "steps", "", 0, SETTING, roles=_BOTH),
    Column("samples_seen", "samples seen", "", 0, SETTING, roles=(RESULT,)),
    Column("train_time_s", "training time", "min", 1, MEASURE, 60.0, roles=(RESULT,), timed=True),
    Column("train_flops", "training FLOPs", "", 2, SETTING, roles=(RESULT,)),
    Column("peak_memory", "peak memory", "GiB", 2, SETTING, 2.0**30, roles=(RESULT,)),
    Column("memory", "peak memory", "MiB", 0, SETTING, 2.0**20, roles=(TABLE,)),
    Column("flops", "training compute", "PFLOP", 2, SETTING, 1e15, roles=(TABLE,)),
    Column("flops_rel", "FLOPs (rel.)", "x", 2, SETTING, roles=(TABLE,)),
    Column("time_min", "training time", "min", 1, MEASURE, 60.0, roles=(TABLE,), timed=True),
    Column("time_rel", "time (rel.)", "x", 2, MEASURE, roles=(TABLE,), timed=True),
    Column("tuning_cost_rel", "tuning time (rel. to training)", "x", 2, MEASURE, roles=(TABLE,), timed=True),
    Column("gain@tuned", "gain from unmasked tuning", "points", 1, MEASURE, roles=(TABLE,)),
    # what a plot's series or x can be besides a config field: the spec's rows, base or tuned
    Column("row", "configuration", kind=CONFIG, roles=(SERIES_ROLE,)),
    Column("variant", "variant", kind=CONFIG, roles=(SERIES_ROLE,)),
    Column("inference", "inference mode", kind=CONFIG),  # flip.sweep.stats.by_inference_mode's column
)
# Training-config fields with words of their own; any other field is named by its words ("weight_decay").
CONFIG_COLUMNS = _by_key(
    Column("mask_ratio", "image mask ratio", "%", 0, CONFIG, words="mask {}"),  # shown as 50%, not 0.5
    Column("text_mask_ratio", "text mask ratio", "%", 0, CONFIG, words="text mask {}"),
    Column("text_mask", "text masking", kind=CONFIG, words="text mask {}"),
    Column("recon_weight", "reconstruction loss weight", kind=CONFIG, words="recon. weight {}"),
    Column("samples", "training samples", kind=CONFIG, words="{} samples"),
    Column("model", "model", kind=CONFIG),
    Column("builtin_scenes", "built-in scenes", kind=CONFIG),
    Column("data_fraction", "data fraction", kind=CONFIG),
    Column("context_length", "text context", kind=CONFIG),
    Column("weight_decay", "weight decay", kind=CONFIG),
    Column("image_size", "image size", kind=CONFIG, words="{} px", unset="model's"),  # unset: the model's own
    Column("mask_strategy", "image masking", kind=CONFIG, words="{} masking"),
    Column("loss", "loss", kind=CONFIG, words="{} loss"),
)
PERCENT_FIELDS = tuple(k for k, c in CONFIG_COLUMNS.items() if c.unit == "%")
# How a plot's legend names a variant of a row (a table names a tuned metric by its mode: mode_label).
VARIANT_WORDS = {"base": "base", "tuned": "+ unmasked tuning"}
# The paper's zero-shot numbers: ViT-L/16 on LAION-400M, evaluated on ImageNet-1K.
PAPER_LABEL = "paper (ViT-L/16, LAION-400M)"
PAPER_ZEROSHOT = "IN-1K zero-shot top-1 (%)"
MODE_RE = re.compile(r"full|masked|masked(0|1)?\.[0-9]+|views[2-9][0-9]*|tuned")


def config_fields() -> list[str]:
    from flip.train.config import TrainConfig

    return [f.name for f in dataclasses.fields(TrainConfig)]


def mode_label(mode: str) -> str:
    if mode == "full":
        return "full image"
    if mode == "tuned":
        return "after unmasked tuning"
    if mode == "masked":
        return "one masked view"
    if mode.startswith("masked"):
        return f"masked {float(mode[6:]):.0%}"
    return f"{mode[5:]} complementary views"


def lookup(name: str) -> Column:
    """The entry of any name (a column, an axis, a metric@mode); an unknown one is named by its words."""
    if name in COLUMNS:
        return COLUMNS[name]
    metric, _, mode = name.partition("@")
    if metric in METRICS or metric == EVAL_TIME:
        base = METRICS.get(metric) or _EVAL_TIME
        return dataclasses.replace(base, key=name, label=f"{base.label}, {mode_label(mode)}") if mode else base
    return CONFIG_COLUMNS.get(name) or Column(name, name.replace("_", " "), kind=CONFIG)


def label(name: str) -> str:
    return lookup(name).label


def show_value(field: str, value) -> str:
    """A config value in words: 50% for a mask ratio, 0.2 for a float, the text otherwise."""
    if field in PERCENT_FIELDS and isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:.0%}"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def value_words(field: str, value) -> str:
    """A config value as a row's name says it: `mask 50%`, `30000 samples`, `weight decay 0.1`."""
    return (lookup(field).words or label(field) + " {}").format(show_value(field, value))


# -- checking a spec's names -------------------------------------------------------------------------------

def _metric_ok(name: str, with_eval_time: bool = True) -> bool:
    metric, at, mode = name.partition("@")
    known = metric in METRICS or (with_eval_time and metric == EVAL_TIME)
    return known and (not at or MODE_RE.fullmatch(mode) is not None)


def _candidates(kinds: tuple[str, ...]) -> list[str]:
    names: list[str] = []
    for role in (TABLE, RESULT, SERIES_ROLE):
        if role in kinds:
            names += [k for k, c in COLUMNS.items() if role in c.roles]
    if "config" in kinds:
        names += config_fields()
    if "metric" in kinds:
        names += list(METRICS) + [f"{m}@{mode}" for m in METRICS for mode in ("masked", "views2", "tuned")]
    if "eval_s" in kinds:
        names += [f"{EVAL_TIME}@full", f"{EVAL_TIME}@masked"]
    return list(dict.fromkeys(names))


def unknown(name, kinds: tuple[str, ...]) -> str | None:
    """None when `name` is one of `kinds` (column, result, config, series, metric, eval_s), else the
    reason, with the close matches."""
    if not isinstance(name, str):
        return f"expected a name, got {type(name).__name__} {name!r}"
    if ("metric" in kinds and _metric_ok(name, "eval_s" in kinds)) or name in _candidates(kinds):
        return None
    close = difflib.get_close_matches(name, _candidates(kinds), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; see {__name__} for the names a sweep produces"
    return f"unknown name {name!r}{hint}"


COLUMN_KINDS = (TABLE, "config", "metric", "eval_s")
PLOT_X_KINDS = ("config", RESULT, SERIES_ROLE)  # series: `row`, one point per row, in the spec's order
PLOT_Y_KINDS = ("metric", RESULT)
PLOT_SERIES_KINDS = ("config", SERIES_ROLE)
