"""Every name a sweep can produce - table columns, plot axes, metrics - with its label, unit and digits.

The one vocabulary: the tables, the plots and the HTML report take their words from here, and a
spec's `[report] columns` and `[[plots]] x` / `y` / `series` are checked against it when the spec
loads, so a typo fails before anything trains. A name is:

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


@dataclass(frozen=True)
class Name:
    label: str  # in words: table header, plot axis and legend
    unit: str = ""  # "%", "min", "MiB", "s", "x" (a multiple of the baseline row's), "" (a count, a setting)
    digits: int = 1
    # setting: the same for every seed of a row (no spread shown); measure: varies by seed; metric: an
    # accuracy in percent; config: a training-config value, shown as text
    kind: str = MEASURE
    per: float = 1.0  # shown value = stored value / per (seconds as minutes, bytes as MiB)

    @property
    def header(self) -> str:
        """Table header: the label, and the unit unless the values carry it ("0.52x", "50%")."""
        return self.label if self.unit in ("", "x") or self.kind == CONFIG else f"{self.label} ({self.unit})"

    @property
    def axis(self) -> str:
        """Plot axis label, with the unit."""
        return self.label if not self.unit or self.unit == "x" else f"{self.label} ({self.unit})"


METRICS = {
    "zeroshot": Name("zero-shot top-1", "%", 1, METRIC),
    "zeroshot_top5": Name("zero-shot top-5", "%", 1, METRIC),
    "retrieval_i2t": Name("image→text R@1", "%", 1, METRIC),
    "retrieval_t2i": Name("text→image R@1", "%", 1, METRIC),
    "linear_probe": Name("linear-probe top-1", "%", 1, METRIC),
}
EVAL_TIME = "eval_s"
# What a run records about itself (results.csv), usable as a plot axis.
RESULTS = {
    "batch_size": Name("batch size", "", 0, SETTING),
    "steps": Name("optimizer steps", "", 0, SETTING),
    "samples_seen": Name("samples seen", "", 0, SETTING),
    "train_time_s": Name("training time", "min", 1, MEASURE, 60.0),
    "train_flops": Name("training FLOPs", "", 2, SETTING),
    "peak_memory": Name("peak memory", "GiB", 2, SETTING, 2.0**30),
}
# Columns a table computes over a row's runs.
COLUMNS = {
    "batch_size": Name("batch", "", 0, SETTING),
    "steps": Name("steps", "", 0, SETTING),
    "memory": Name("peak memory", "MiB", 0, SETTING, 2.0**20),
    "flops": Name("training compute", "PFLOP", 2, SETTING, 1e15),
    "flops_rel": Name("FLOPs (rel.)", "x", 2, SETTING),
    "time_min": Name("training time", "min", 1, MEASURE, 60.0),
    "time_rel": Name("time (rel.)", "x", 2, MEASURE),
    "tuning_cost_rel": Name("tuning time (rel. to training)", "x", 2, MEASURE),
    "gain@tuned": Name("gain from unmasked tuning", "points", 1, MEASURE),
}
# Training-config fields with a label of their own; any other field is named by its words.
CONFIG_LABELS = {
    "mask_ratio": "image mask ratio", "text_mask": "text masking", "text_mask_ratio": "text mask ratio",
    "recon_weight": "reconstruction loss weight", "samples": "training samples", "model": "model",
    "builtin_scenes": "built-in scenes", "data_fraction": "data fraction", "context_length": "text context",
    "weight_decay": "weight decay", "image_size": "image size", "mask_strategy": "image masking",
    "loss": "loss",
}
# A config column whose runs all leave the field unset shows this, not a blank (image_size: the model's own).
UNSET_WORDS = {"image_size": "model's"}
PERCENT_FIELDS = ("mask_ratio", "text_mask_ratio")  # shown as 50%, not 0.5
SERIES = {"row": Name("configuration", kind=CONFIG), "variant": Name("variant", kind=CONFIG)}
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


def lookup(name: str, plot: bool = False) -> Name:
    """The entry of any name (a column, an axis, a metric@mode); an unknown one is named by its words.
    `plot`: a run's own result before a table column of the same name ("batch size", not "batch")."""
    if plot and name in RESULTS:
        return RESULTS[name]
    if name in COLUMNS:
        return COLUMNS[name]
    if name in RESULTS:
        return RESULTS[name]
    if name in SERIES:
        return SERIES[name]
    metric, _, mode = name.partition("@")
    if metric in METRICS or metric == EVAL_TIME:
        base = METRICS.get(metric) or Name("evaluation time", "s", 1, MEASURE)
        return dataclasses.replace(base, label=f"{base.label}, {mode_label(mode)}") if mode else base
    if name in PERCENT_FIELDS:
        return Name(CONFIG_LABELS[name], "%", 0, CONFIG)
    return Name(CONFIG_LABELS.get(name, name.replace("_", " ")), kind=CONFIG)


def label(name: str) -> str:
    return lookup(name).label


def show_value(field: str, value) -> str:
    """A config value in words: 50% for a mask ratio, 0.2 for a float, the text otherwise."""
    if field in PERCENT_FIELDS and isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:.0%}"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


# -- checking a spec's names -------------------------------------------------------------------------------

def _metric_ok(name: str, with_eval_time: bool = True) -> bool:
    metric, at, mode = name.partition("@")
    known = metric in METRICS or (with_eval_time and metric == EVAL_TIME)
    return known and (not at or MODE_RE.fullmatch(mode) is not None)


def _candidates(kinds: tuple[str, ...]) -> list[str]:
    names: list[str] = []
    if "column" in kinds:
        names += list(COLUMNS)
    if "result" in kinds:
        names += list(RESULTS)
    if "config" in kinds:
        names += config_fields()
    if "series" in kinds:
        names += list(SERIES)
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


COLUMN_KINDS = ("column", "config", "metric", "eval_s")
PLOT_X_KINDS = ("config", "result", "series")  # series: `row`, one point per row, in the spec's order
PLOT_Y_KINDS = ("metric", "result")
PLOT_SERIES_KINDS = ("config", "series")
