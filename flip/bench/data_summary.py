"""What `flipctl bench --data synthetic-jpeg:384` shows of a `run_data_bench` report, as plain data:
the blocks of `flip.bench.summary` (tables, lines, check marks), drawn by the CLI."""

from __future__ import annotations

from flip.bench.summary import Block, Column, Line, Mark, Table


def _n(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def paths_table(report: dict) -> Table:
    data, cfg = report["data"], report["config"]
    source = (f"synthetic {data['image_size']} px JPEG q{data['quality']}" if data["kind"] == "synthetic"
              else data["spec"])
    size = data.get("mean_image_bytes")
    names = ("path", "samples/s", "per core (CPU time)", "per core (wall / workers)", "vs legacy (CPU)",
             "vs legacy (wall)", f"input stage samples/s ({report['device']})")
    table = Table(f"data paths: {source}{f', {size / 1024:.0f} KB per image' if size else ''} -> "
                  f"{report['model']} {report['image_size']} px, batch {cfg['batch_size']}, "
                  f"{cfg['workers']} workers, {cfg['rounds']} rounds",
                  [Column(name, "left" if name == "path" else "right") for name in names])
    for row in report["paths"].values():
        table.rows.append([row["path"], _n(row["samples_per_s"]), _n(row["per_core_cpu"]), _n(row["per_core_wall"]),
                           _x(row.get("per_core_vs_legacy")), _x(row.get("per_core_wall_vs_legacy")),
                           _n(row["input_stage_samples_per_s"])])
    return table


def needs_table(report: dict) -> Table:
    step, cfg = report["step"], report["config"]
    device = step["device_assumed"] or "the device"
    columns = [Column("mask"), Column("GFLOP/sample"), Column("step needs samples/s")]
    for path in report["paths"]:
        columns += [Column(f"{path}: cores"), Column(f"{path}: bottleneck")]
    table = Table(f"what one accelerator's step consumes ({device}, {step['peak_tflops']:g} TFLOP/s at "
                  f"{100 * step['mfu']:.0f}% MFU) and the CPU cores per accelerator each path needs; "
                  f"bottleneck on a host with {cfg['host_cores']} cores per accelerator", columns)
    for ratio, need in step["needs"].items():
        cells = [ratio, f"{need['flops_per_sample'] / 1e9:.1f}", _n(need["samples_per_s"])]
        for row in report["paths"].values():
            m = row["per_mask"][ratio]
            cells += [str(m["cores_needed"]), m["bottleneck"]]
        table.rows.append(cells)
    return table


def data_paths_summary(report: dict) -> list[Block]:
    """Everything `flipctl bench --data SHARDS|synthetic-jpeg:SIZE` shows of its report, in order."""
    blocks: list[Block] = [paths_table(report), needs_table(report)]
    blocks += [Line([f"{row['path']}: {row['note']}"], footnote=True) for row in report["paths"].values()]
    if "device" in report["paths"] and report["device"] == "cpu":
        blocks.append(Line(["device path: its per-core figure is the workers' (bytes + tokens); its decode runs "
                            "in the input stage, here on the CPU (on CUDA: nvJPEG)"], footnote=True))
    for c in report["checks"]:
        blocks.append(Line([f"target: {c['check']}: {_x(c['value'])} (>= {c['target']:g}x) ", Mark(c["pass"])]))
    env = report["environment"]
    load = env.get("load_average_start")
    blocks.append(Line([f"torch {env['torch']}, torchvision {env['torchvision']}, {env['cpu_count']} CPUs"
                        + (f", load average {load[0]:.1f} at start" if load else "")
                        + f"; {report['peak_note'] if 'peak_note' in report else report['step']['peak_source']}; "
                        + f"{report['wall_time_s']:.0f} s"], footnote=True))
    return blocks
