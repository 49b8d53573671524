"""Rich tables of a `run_data_bench` report (`flipctl bench --data synthetic-jpeg:384`)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table


def _n(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def paths_table(report: dict) -> Table:
    data, cfg = report["data"], report["config"]
    source = (f"synthetic {data['image_size']} px JPEG q{data['quality']}" if data["kind"] == "synthetic"
              else data["spec"])
    size = data.get("mean_image_bytes")
    table = Table(title=f"data paths: {source}{f', {size / 1024:.0f} KB per image' if size else ''} -> "
                        f"{report['model']} {report['image_size']} px, batch {cfg['batch_size']}, "
                        f"{cfg['workers']} workers, {cfg['rounds']} rounds")
    for name in ("path", "samples/s", "per core (CPU time)", "per core (wall / workers)", "vs legacy (CPU)",
                 "vs legacy (wall)", f"input stage samples/s ({report['device']})"):
        table.add_column(name, justify="left" if name == "path" else "right")
    for row in report["paths"].values():
        table.add_row(row["path"], _n(row["samples_per_s"]), _n(row["per_core_cpu"]), _n(row["per_core_wall"]),
                      _x(row.get("per_core_vs_legacy")), _x(row.get("per_core_wall_vs_legacy")),
                      _n(row["input_stage_samples_per_s"]))
    return table


def needs_table(report: dict) -> Table:
    step, cfg = report["step"], report["config"]
    device = step["device_assumed"] or "the device"
    table = Table(title=f"what one accelerator's step consumes ({device}, {step['peak_tflops']:g} TFLOP/s at "
                        f"{100 * step['mfu']:.0f}% MFU) and the CPU cores per accelerator each path needs; "
                        f"bottleneck on a host with {cfg['host_cores']} cores per accelerator")
    table.add_column("mask", justify="right")
    table.add_column("GFLOP/sample", justify="right")
    table.add_column("step needs samples/s", justify="right")
    for path in report["paths"]:
        table.add_column(f"{path}: cores", justify="right")
        table.add_column(f"{path}: bottleneck", justify="right")
    for ratio, need in step["needs"].items():
        cells = [ratio, f"{need['flops_per_sample'] / 1e9:.1f}", _n(need["samples_per_s"])]
        for row in report["paths"].values():
            m = row["per_mask"][ratio]
            cells += [str(m["cores_needed"]), m["bottleneck"]]
        table.add_row(*cells)
    return table


def render_data_paths(report: dict, console: Console) -> None:
    console.print(paths_table(report))
    console.print(needs_table(report))
    for row in report["paths"].values():
        console.print(f"[dim]{row['path']}: {row['note']}[/dim]")
    if "device" in report["paths"] and report["device"] == "cpu":
        console.print("[dim]device path: its per-core figure is the workers' (bytes + tokens); its decode runs "
                      "in the input stage, here on the CPU (on CUDA: nvJPEG)[/dim]")
    for c in report["checks"]:
        mark = "[green]pass[/]" if c["pass"] else "[red]MISS[/]"
        console.print(f"target: {c['check']}: {_x(c['value'])} (>= {c['target']:g}x) {mark}")
    env = report["environment"]
    load = env.get("load_average_start")
    console.print(f"[dim]torch {env['torch']}, torchvision {env['torchvision']}, {env['cpu_count']} CPUs"
                  + (f", load average {load[0]:.1f} at start" if load else "")
                  + f"; {report['peak_note'] if 'peak_note' in report else report['step']['peak_source']}; "
                  + f"{report['wall_time_s']:.0f} s[/dim]")
