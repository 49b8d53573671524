"""Throughput of the training data path: shard reading, decode, augment, tokenise, collate.

Two entry points:

- `loader_throughput`: the trainer's loader (`make_loader` over `ShardStream`) alone, with the
  paper's augmentation (RandomResizedCrop scale (0.5, 1) + horizontal flip), as `flipctl bench --data`
  reports it beside the step. Nothing else runs meanwhile, so the figure is the loader's ceiling.
- `run_data_bench`: the decode paths side by side in one run (`flipctl bench --data
  synthetic-jpeg:384`, or `--data SHARDS`): `legacy` (PIL + ToTensor + Normalize in the workers),
  `worker` (libjpeg-turbo / DCT-domain decode, uint8 crop; normalised on the device) and `device`
  (workers read bytes and tokenise; the input stage decodes the batch). Each is timed in rounds,
  interleaved, so load from other processes falls on all of them alike, and reported per core; with
  the samples/s a training step consumes at each mask ratio (counted FLOPs at a stated peak and MFU),
  the cores per accelerator each path needs and which side is the bottleneck.

Per core is measured two ways: samples per CPU-second that the workers and the main process used
while the timed batches were produced (read from /proc; robust to other load on the machine), and
the wall-clock rate divided by the workers (what a dedicated core per worker gives; on a shared
machine it is low by the share the others took).

Timing starts once the first `skip` batches are consumed: those cover the workers' start-up,
the shuffle buffer's fill and the prefetch queue that filled meanwhile (`workers x 4` batches),
so what is timed is the steady-state rate at which the workers produce batches.
"""

from __future__ import annotations

import math
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from flip.bench.defaults import DEFAULT_HOST_CORES, DEFAULT_MFU
from flip.choices import DECODE_MODES
from flip.data.augment import AugmentConfig
from flip.data.pipeline import StreamConfig, make_loader
from flip.data.shards import expand_urls
from flip.data.synth_jpeg import JpegShardConfig, write_jpeg_shards
from flip.distributed import resolve_device
from flip.errors import ConfigError
from flip.flops import step_flops
from flip.models import ModelConfig, get_preset
from flip.train.input_stage import InputStage

PREFETCH_FACTOR = 4  # make_loader's
SYNTHETIC_PREFIX = "synthetic-jpeg"

# The accelerator the "needed" rates assume unless --peak-tflops says otherwise. Dense BF16 without
# sparsity, NVIDIA H100/H200 SXM datasheet (1,979 TFLOP/s is the with-sparsity figure).
ASSUMED_DEVICE = {"name": "NVIDIA H200 SXM", "peak_tflops": 989.0,
                  "source": "NVIDIA H200 datasheet: 989 TFLOP/s dense BF16 (1,979 with 2:4 sparsity)"}
TARGET_WORKER_OVER_LEGACY = 3.0  # issue 13: the worker path's samples/s per core over the legacy path's

PATH_NOTES = {
    "legacy": "PIL decode, RandomResizedCrop (bicubic), flip, ToTensor + Normalize in the workers (float32)",
    "worker": "libjpeg-turbo decode (DCT-domain downscale when 2x+ larger), uint8 crop + resize in the workers",
    "device": "workers read bytes + tokenise; the input stage decodes, crops and normalises the batch",
}


def _stream(cfg: ModelConfig, urls: list[str], batch: int, seed: int, decode: str = "worker") -> StreamConfig:
    return StreamConfig(urls=tuple(urls), batch_size=batch, context_length=cfg.text.context_length,
                        augment=AugmentConfig(cfg.vision.image_size, (0.5, 1.0), hflip=True), seed=seed,
                        decode=decode)


def loader_throughput(cfg: ModelConfig, data: str | Path, batch: int, workers: int, batches: int = 12,
                      skip: int | None = None, seed: int = 0, decode: str = "worker") -> dict:
    """Samples/s the loader delivers over `batches` batches after `skip` (default: the prefetch queue)."""
    urls = expand_urls(str(data))
    timed = time_loader(_stream(cfg, urls, batch, seed, decode), workers, batches, skip)
    return {
        "workers": workers, "batch_size": batch, "batches_timed": batches, "batches_skipped": timed["skipped"],
        "samples_per_s": timed["samples_per_s"], "startup_s": timed["startup_s"],
        "augment": "RandomResizedCrop(0.5, 1) + hflip", "decode": decode, "shards": len(urls),
    }


# -- timing one loader ---------------------------------------------------------------------------------------
def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a live process, from /proc (None where there is no /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def time_loader(stream: StreamConfig, workers: int, batches: int, skip: int | None = None,
                keep: int = 0) -> dict:
    """Steady-state rate of one loader: wall samples/s, the CPU-seconds its processes used meanwhile, and
    the last `keep` batches (to time the input stage on them)."""
    skip = max(1, workers * PREFETCH_FACTOR) if skip is None else skip
    iterator = iter(make_loader(stream, workers))
    kept = []
    try:
        start_up = time.perf_counter()
        for _ in range(skip):
            next(iterator)
        pids = [w.pid for w in getattr(iterator, "_workers", [])]

        def cpu() -> float | None:
            parts = [_cpu_seconds(pid) for pid in pids]
            return None if None in parts else sum(parts) + time.process_time()

        cpu_start, start = cpu(), time.perf_counter()
        for i in range(batches):
            batch = next(iterator)
            if i >= batches - keep:
                kept.append(batch)
        elapsed, cpu_end = time.perf_counter() - start, cpu()
    finally:
        del iterator  # shuts the workers down
    samples = batches * stream.batch_size
    cpu_s = None if cpu_start is None or cpu_end is None else cpu_end - cpu_start
    return {"samples_per_s": samples / elapsed, "cpu_s": cpu_s, "samples": samples, "wall_s": elapsed,
            "skipped": skip, "startup_s": start - start_up, "kept": kept}


def time_input_stage(batches: list, augment: AugmentConfig, device: torch.device) -> float:
    """Samples/s of the input stage (transfer, decode where the batch is encoded, crop, normalise) on `device`."""
    stage = InputStage(device, augment)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    stage(batches[0][0])  # warm-up: kernels, nvJPEG handles
    sync()
    start = time.perf_counter()
    samples = 0
    for images, _tokens, _meta in batches:
        samples += stage(images).shape[0]
    sync()
    return samples / (time.perf_counter() - start)


# -- the side-by-side bench -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DataBenchConfig:
    data: str  # "synthetic-jpeg:SIZE" or shards (a --data spec)
    model: str = "B/16"
    batch_size: int = 256
    workers: int = 2
    paths: tuple[str, ...] = DECODE_MODES
    batches: int = 8  # timed per path and round
    rounds: int = 2  # the paths are timed in turn, this many times
    synthetic_samples: int = 1024
    mask_ratios: tuple[float, ...] = (0.0, 0.5, 0.75)
    peak_tflops: float | None = None  # default: ASSUMED_DEVICE
    mfu: float = DEFAULT_MFU
    host_cores: int = DEFAULT_HOST_CORES
    device: str = "auto"  # where the input stage runs
    seed: int = 0

    def validate(self) -> "DataBenchConfig":
        try:
            get_preset(self.model)
        except KeyError as exc:
            raise ConfigError(exc.args[0]) from None
        synthetic_size(self.data)  # checks a synthetic spec
        if not self.paths or any(p not in DECODE_MODES for p in self.paths):
            raise ConfigError(f"must be one or more of {', '.join(DECODE_MODES)} separated by commas, got "
                              f"{','.join(self.paths)!r}", key="decode")
        for name, value, low in (("batch_size", self.batch_size, 2), ("workers", self.workers, 0),
                                 ("host_cores", self.host_cores, 1)):
            if value < low:
                raise ConfigError(f"must be at least {low}, got {value}", key=name)
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"must be one of auto, cpu, cuda, got {self.device!r}", key="device")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("--device cuda: no CUDA device is available here; use --device cpu")
        if not 0 < self.mfu <= 1:
            raise ConfigError(f"must be in (0, 1], got {self.mfu}", key="mfu")
        if self.peak_tflops is not None and not self.peak_tflops > 0:
            raise ConfigError(f"must be positive, got {self.peak_tflops}", key="peak_tflops")
        return self


def synthetic_size(spec: str) -> int | None:
    """The image size of a `synthetic-jpeg:SIZE` spec (None for shards); a malformed one is a ConfigError."""
    if not spec.startswith(SYNTHETIC_PREFIX):
        return None
    _, _, size = spec.partition(":")
    if not size.isdigit() or not 32 <= int(size) <= 4096:
        raise ConfigError(f"--data {spec!r}: expected {SYNTHETIC_PREFIX}:SIZE with SIZE in pixels (32-4096), "
                          f"e.g. {SYNTHETIC_PREFIX}:384")
    return int(size)


def step_needs(model: ModelConfig, ratios: tuple[float, ...], peak_tflops: float, mfu: float) -> dict[str, dict]:
    """Samples/s one accelerator's training step consumes at each mask ratio: peak x MFU / FLOPs per sample."""
    out = {}
    for r in ratios:
        per_sample = step_flops(model, r, 8)["total"] / 8
        out[f"{r:g}"] = {"flops_per_sample": per_sample, "samples_per_s": peak_tflops * 1e12 * mfu / per_sample}
    return out


def run_data_bench(cfg: DataBenchConfig, progress: Callable[[str], None] | None = None) -> dict:
    cfg.validate()
    progress = progress or (lambda message: None)
    model = get_preset(cfg.model)
    device = resolve_device(cfg.device)
    size = synthetic_size(cfg.data)
    started, load_start = time.perf_counter(), _load_average()
    with tempfile.TemporaryDirectory(prefix="flip-bench-jpeg-") as tmp:
        if size is not None:
            progress(f"writing {cfg.synthetic_samples} synthetic {size} px JPEG samples")
            shard_cfg = JpegShardConfig(image_size=size, samples=cfg.synthetic_samples, seed=cfg.seed)
            urls = write_jpeg_shards(tmp, shard_cfg)
            data = {"kind": "synthetic", "image_size": size, "quality": shard_cfg.quality,
                    "samples": shard_cfg.samples, "shards": len(urls)}
        else:
            urls = expand_urls(cfg.data)
            data = {"kind": "shards", "spec": cfg.data, "shards": len(urls)}
        data["mean_image_bytes"] = _mean_image_bytes(urls)
        runs: dict[str, list[dict]] = {p: [] for p in cfg.paths}
        stage_rates: dict[str, list[float]] = {p: [] for p in cfg.paths}
        for round_ in range(cfg.rounds):
            for path in cfg.paths:
                progress(f"round {round_ + 1}/{cfg.rounds}: {path} path, {cfg.workers} workers")
                stream = _stream(model, urls, cfg.batch_size, cfg.seed + round_, path)
                timed = time_loader(stream, cfg.workers, cfg.batches, keep=min(3, cfg.batches))
                kept = timed.pop("kept")
                if path != "legacy":  # legacy batches arrive normalised: its input stage only moves them
                    stage_rates[path].append(time_input_stage(kept, stream.augment, device))
                runs[path].append(timed)
    peak = cfg.peak_tflops if cfg.peak_tflops is not None else ASSUMED_DEVICE["peak_tflops"]
    needs = step_needs(model, tuple(sorted(set(cfg.mask_ratios))), peak, cfg.mfu)
    paths = {p: _summarise(p, runs[p], stage_rates[p], cfg, needs) for p in cfg.paths}
    if "legacy" in paths:
        base = paths["legacy"]
        for row in paths.values():
            row["per_core_vs_legacy"] = _ratio(row["per_core_cpu"], base["per_core_cpu"])
            row["per_core_wall_vs_legacy"] = _ratio(row["per_core_wall"], base["per_core_wall"])
    report = {
        "kind": "data_paths", "config": asdict(cfg), "model": model.name, "image_size": model.vision.image_size,
        "data": data, "device": str(device),
        "step": {"peak_tflops": peak, "peak_source": ASSUMED_DEVICE["source"] if cfg.peak_tflops is None
                 else "--peak-tflops", "device_assumed": ASSUMED_DEVICE["name"] if cfg.peak_tflops is None else None,
                 "mfu": cfg.mfu, "needs": needs},
        "paths": paths, "environment": {**_environment(device), "load_average_start": load_start,
                                        "load_average_end": _load_average()},
        "wall_time_s": time.perf_counter() - started,
    }
    report["checks"] = _checks(paths)
    return report


def _mean_image_bytes(urls: list[str], limit: int = 200) -> float | None:
    import tarfile

    sizes = []
    for url in urls:
        try:
            with tarfile.open(url) as tar:
                sizes += [m.size for m in tar if m.name.rsplit(".", 1)[-1].lower() in ("jpg", "jpeg", "png", "webp")]
        except (OSError, tarfile.TarError):
            continue
        if len(sizes) >= limit:
            break
    return statistics.mean(sizes) if sizes else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def _summarise(path: str, runs: list[dict], stage_rates: list[float], cfg: DataBenchConfig, needs: dict) -> dict:
    samples = sum(r["samples"] for r in runs)
    cpu = None if any(r["cpu_s"] is None for r in runs) else sum(r["cpu_s"] for r in runs)
    wall = statistics.median(r["samples_per_s"] for r in runs)
    per_core_cpu = samples / cpu if cpu else None
    per_core_wall = wall / max(1, cfg.workers)
    per_core = per_core_cpu or per_core_wall
    row = {
        "path": path, "note": PATH_NOTES[path], "workers": cfg.workers, "samples_per_s": wall,
        "samples_per_s_rounds": [r["samples_per_s"] for r in runs], "cpu_s": cpu, "samples_timed": samples,
        "per_core_cpu": per_core_cpu, "per_core_wall": per_core_wall,
        "input_stage_samples_per_s": statistics.median(stage_rates) if stage_rates else None,
        "per_mask": {},
    }
    for ratio, need in needs.items():
        cores = need["samples_per_s"] / per_core
        # On a host with host_cores per accelerator: whichever side delivers fewer samples/s limits training.
        host_rate = per_core * cfg.host_cores
        row["per_mask"][ratio] = {
            "needed_samples_per_s": need["samples_per_s"], "cores_needed": math.ceil(cores),
            "host_loader_samples_per_s": host_rate,
            "bottleneck": "loader" if host_rate < need["samples_per_s"] else "step",
        }
    return row


def _checks(paths: dict) -> list[dict]:
    if "legacy" not in paths or "worker" not in paths:
        return []
    value = paths["worker"]["per_core_vs_legacy"]
    return [{"check": "worker path / legacy path, samples/s per core (CPU time)", "value": value,
             "target": TARGET_WORKER_OVER_LEGACY, "pass": value is not None and value >= TARGET_WORKER_OVER_LEGACY}]


def _load_average() -> list[float] | None:
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def _environment(device: torch.device) -> dict:
    import platform

    import PIL
    import torchvision

    env = {"torch": torch.__version__, "torchvision": torchvision.__version__, "pillow": PIL.__version__,
           "python": platform.python_version(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
           "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else
           (platform.processor() or platform.machine())}
    return env

