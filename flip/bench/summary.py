"""What `flipctl bench` shows of a `run_bench` report: its tables and lines, as plain data.

`step_summary(report)` lists the blocks in the order they are shown: `Table`s (a title, columns,
rows of cells) and `Line`s of text. Cells and lines hold strings and `Mark`s (a check's pass or
miss); a `Line` may be a footnote (the CLI dims it). Nothing here prints or styles: the CLI draws
the blocks (`flipctl/render.py`); `flip.bench.data_summary` does the same for `run_data_bench`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from flip.bench.peak_memory import format_size


@dataclass(frozen=True)
class Mark:
    """A check's outcome in a cell or a line: `pass`, or `MISS`."""

    passed: bool

    @property
    def text(self) -> str:
        return "pass" if self.passed else "MISS"


Cell = str | Mark


@dataclass(frozen=True)
class Column:
    name: str
    justify: str = "right"  # left | center | right


@dataclass
class Table:
    title: str
    columns: list[Column]
    rows: list[list[Cell]] = field(default_factory=list)


@dataclass
class Line:
    """One line of text, its parts joined as they are; a footnote is shown dimmed."""

    parts: list[Cell]
    footnote: bool = False


Block = Table | Line


def _columns(*names: str, justify: str = "right") -> list[Column]:
    return [Column(name, justify) for name in names]


def _x(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}x"


def _ms(seconds: float) -> str:
    return f"{1000 * seconds:.0f}" if seconds >= 0.1 else f"{1000 * seconds:.1f}"


def step_table(report: dict) -> Table:
    cfg = report["config"]
    results = report["results"]
    mfu = any(row["mfu"] is not None for row in results)
    compiled = f", compiled ({cfg.get('compile_backend') or 'inductor'})" if cfg["compile"] else ""
    b = report.get("batch")  # reports written before it was recorded: the batch alone
    batch = (f"batch {b['per_device']} per device x {b['accum_steps']} accumulation step(s) x {b['world_size']} "
             f"process(es) = global batch {b['global']}") if b else f"batch {cfg['batch_size']}"
    table = Table(f"training step: {cfg['model']}, {batch}, {cfg['device']} {cfg['precision']}"
                  f"{compiled}; median of {cfg['steps']} steps",
                  _columns("mask", "image tokens", "samples/s", "step ms", "GFLOP/step", "TFLOP/s",
                           *(["MFU"] if mfu else []), "peak memory"))
    for row in results:
        cells = [f"{row['mask_ratio']:g}", str(row["image_tokens"]), f"{row['samples_per_s']:.1f}",
                 _ms(row["step_s"]), f"{row['flops_per_step']['total'] / 1e9:.1f}", f"{row['achieved_tflops']:.3f}"]
        if mfu:
            cells.append("-" if row["mfu"] is None else f"{100 * row['mfu']:.1f}%")
        table.rows.append([*cells, format_size(row["peak_memory_bytes"])])
    return table


def speedup_table(report: dict) -> Table:
    results = report["results"]
    compare = "open_clip" in results[0]
    table = Table("speed-up over mask 0" + (", and against open_clip (same network, patch_dropout)" if compare else ""),
                  _columns("mask", "FLOP-ideal", "measured", "meas./ideal"))
    if compare:
        table.columns += _columns("open_clip samples/s", "open_clip speed-up", "ours/open_clip", "open_clip peak mem.")
    for row in results:
        cells = [f"{row['mask_ratio']:g}", _x(row["ideal_speedup"]), _x(row["measured_speedup"]),
                 f"{row['speedup_efficiency']:.2f}"]
        if compare:
            theirs = row["open_clip"]
            cells += [f"{theirs['samples_per_s']:.1f}", _x(theirs["measured_speedup"]), _x(row["ours_over_open_clip"]),
                      format_size(theirs.get("peak_memory_bytes"))]
        table.rows.append(cells)
    return table


def split_table(report: dict) -> Table | None:
    if "split_s" not in report["results"][0]:
        return None
    parts = ("image", "text", "loss", "optimizer", "other")
    table = Table("time split, ms per step (each part timed alone: forward + backward of each tower, "
                  "loss, fused AdamW; other = step - parts)", _columns("mask", *parts, "step"))
    for row in report["results"]:
        split, step = row["split_s"], row["step_s"]
        table.rows.append([f"{row['mask_ratio']:g}",
                           *[f"{_ms(split[p])} ({100 * split[p] / step:.0f}%)" for p in parts], _ms(step)])
    return table


def max_batch_table(report: dict) -> Table | None:
    mb = report.get("max_batch")
    if mb is None:
        return None
    table = Table(f"largest batch whose step fits {format_size(mb['memory_limit_bytes'])} "
                  f"({mb['memory_limit_source']})", _columns("mask", "max batch", "vs mask 0", "its peak", "probes"))
    for row in mb["per_ratio"]:
        table.rows.append([f"{row['mask_ratio']:g}", str(row["max_batch"]), _x(row["ratio_vs_mask0"]),
                           format_size(row["peak_bytes"]), str(len(row["probes"]))])
    return table


def ablations_table(report: dict) -> Table | None:
    rows = [row for row in report["results"] if row.get("ablations")]
    if not rows:
        return None
    names = list(dict.fromkeys(name for row in rows for name in row["ablations"]))
    table = Table("the paper's knobs: step time relative to the plain step at the same mask ratio",
                  _columns("mask", "plain", *names))
    for row in rows:
        cells = []
        for name in names:
            a = row["ablations"].get(name)
            cells.append("-" if a is None else f"{_ms(a['step_s'])} ({a['step_time_vs_plain']:.2f}x)")
        table.rows.append([f"{row['mask_ratio']:g}", _ms(row["step_s"]), *cells])
    return table


def variants_table(report: dict) -> Table | None:
    variants = report.get("variants")
    if not variants:
        return None
    cfg = report["config"]
    table = Table(f"speed levers: our step in bf16 / compiled vs the configured one ({cfg['precision']} "
                  f"{'compiled' if cfg['compile'] else 'eager'})",
                  _columns("variant", "mask", "samples/s", "step ms", "TFLOP/s", "MFU", "vs configured"))
    for variant in variants:
        name = variant["name"] + (f" ({variant['compile_backend']})" if variant["compile"] else "")
        for row in variant["per_ratio"]:
            mfu = "n/a" if row["mfu"] is None else f"{100 * row['mfu']:.1f}%"
            table.rows.append([name, f"{row['mask_ratio']:g}", f"{row['samples_per_s']:.1f}", _ms(row["step_s"]),
                               f"{row['achieved_tflops']:.3f}", mfu, _x(row["speedup_vs_configured"])])
    return table


def checks_table(report: dict) -> Table | None:
    if not report.get("checks"):
        return None
    table = Table("targets", [Column("check", "left"), Column("value"), Column("target"), Column("", "center")])
    for c in report["checks"]:
        value = "-" if c["value"] is None else f"{c['value']:.2f}"
        table.rows.append([c["check"], value, f">= {c['target']:g}", Mark(c["pass"])])
    return table


def step_summary(report: dict) -> list[Block]:
    """Everything `flipctl bench` shows of a `run_bench` report, in order."""
    blocks: list[Block] = [Line([note]) for note in report.get("notes", [])]
    blocks.append(step_table(report))
    if "peak" in report:  # which peak the MFU is against, and its source; or why there is none
        blocks.append(Line([report["peak"]["line"]]))
    for table in (speedup_table(report), split_table(report), variants_table(report), ablations_table(report),
                  max_batch_table(report)):
        if table is not None:
            blocks.append(table)
    loader = report.get("data_loader")
    if loader is not None:
        fastest = max(report["results"], key=lambda row: row["samples_per_s"])
        blocks.append(Line([f"data loader alone ({loader['workers']} workers, {loader['augment']}): "
                            f"{loader['samples_per_s']:.0f} samples/s = {loader['headroom_vs_fastest_step']:.1f}x what "
                            f"the fastest step consumes (mask {fastest['mask_ratio']:g}: "
                            f"{fastest['samples_per_s']:.0f} samples/s)"]))
    table = checks_table(report)
    if table is not None:
        blocks.append(table)
    env = report["environment"]
    load = env.get("load_average_start")
    blocks.append(Line([f"torch {env['torch']}, open_clip {env['open_clip']}, {env['torch_threads']} threads"
                        + (f", load average {load[0]:.1f} at start" if load else "")
                        + f"; {report['wall_time_s']:.0f} s"], footnote=True))
    return blocks
