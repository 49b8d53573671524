"""Dry-run estimates: how long each planned run will train, from its counted FLOPs.

A run's estimate is its training FLOPs (`flip.flops.train_step_flops` of its step, per sample, times
its samples) at the FLOP rate of its model on this device. So two runs of one model are always
ranked by their FLOPs - a 50%-masked run is never estimated slower than the unmasked one, however
busy the machine was when something was timed. The rate, per model:

- "measured": the median rate of the store's finished runs of the model on this device (they include
  the data loader and the load of their time: better evidence than any probe);
- "timed": one probe of the model's plain step at a small batch (median of a few steps after a
  warm-up), cached in the store;
- "from FLOPs": a model too large to time here takes the rate of a model that was (rough);
- "unknown": nothing to go by.
"""

from __future__ import annotations

import dataclasses
import functools
import statistics
import time

import torch

from flip.bench.timing import synchronize, synthetic_batch
from flip.flops import train_step_flops
from flip.models import FLIP, get_preset
from flip.models.decoder import DecoderConfig, MAEDecoder
from flip.run_dir import RunDir
from flip.sweep.jobs import Job
from flip.sweep.store import RunStore, read_json
from flip.train.config import StepConfig, TrainConfig
from flip.train.optim import make_optimizer
from flip.train.step import TrainStep

TIMED_BATCH = 32
MAX_TIMED_GFLOPS = 5.0  # per sample; bigger models are not timed on a CPU


def _rate_key(cfg: TrainConfig, device: torch.device) -> str:
    return f"flop-rate:{cfg.model}:b{TIMED_BATCH}:c{cfg.context_length}:{cfg.precision}:{device.type}"


def time_step(cfg: TrainConfig, device: torch.device, batch: int = TIMED_BATCH, steps: int = 3) -> float:
    """Median seconds per sample of the run's training step at `batch`."""
    torch.manual_seed(0)
    model_cfg = get_preset(cfg.model).with_context_length(cfg.context_length).with_loss(cfg.loss)
    model = FLIP(model_cfg).to(device)
    decoder = None
    if cfg.recon_weight > 0:
        decoder = MAEDecoder(model_cfg.vision.at_image_size(cfg.image_size),
                             DecoderConfig(cfg.decoder_depth, cfg.decoder_width, cfg.decoder_heads)).to(device)
    modules = torch.nn.ModuleList([model] + ([decoder] if decoder is not None else []))
    optimizer = make_optimizer(modules, 1e-4, 0.2, (0.9, 0.95), 1e-8, device)
    step = TrainStep(model, optimizer, cfg.step_config(), decoder=decoder)
    images, tokens = synthetic_batch(
        dataclasses.replace(model_cfg, vision=model_cfg.vision.at_image_size(cfg.image_size)), batch, device)
    classes = None
    if cfg.text_mask == "syntax":  # the time does not depend on which tokens are kept: SOT, caption, padding
        classes = torch.where(tokens != 0, 4, 5).to(torch.uint8)
        classes[:, 0] = 0
    times = []
    for _ in range(steps + 1):
        synchronize(device)
        start = time.perf_counter()
        step(images, tokens, 1e-4, classes)
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:]) / batch


def plain(cfg: TrainConfig) -> TrainConfig:
    """The model's unmasked step (what a probe times; what unmasked tuning runs)."""
    return dataclasses.replace(cfg, mask_ratio=0.0, mask_strategy="random", recon_weight=0.0, text_mask="none",
                               text_mask_ratio=0.0, **{f: TrainConfig.__dataclass_fields__[f].default
                                                      for f in ("decoder_depth", "decoder_width", "decoder_heads")})


def measured_rates(store: RunStore, device: torch.device) -> dict[str, float]:
    """Model rate key -> median training FLOP/s over the store's finished runs of that model here."""
    seen: dict[str, list[float]] = {}
    for run_dir in sorted(store.runs.glob("*")):
        run = RunDir(run_dir)
        summary, config = read_json(run.summary), read_json(run.config)
        if not summary or not config or not summary.get("samples_seen") or not summary.get("train_time_s"):
            continue
        try:
            cfg = TrainConfig.from_dict(config["train"])
        except (KeyError, TypeError, ValueError):
            continue  # written by another flipctl version: not comparable evidence
        if cfg.device.split(":")[0] not in ("auto", device.type):
            continue
        flops = flops_per_sample(cfg) * summary["samples_seen"]
        seen.setdefault(_rate_key(cfg, device), []).append(flops / summary["train_time_s"])
    return {key: statistics.median(rates) for key, rates in seen.items()}


def _rate(cfg: TrainConfig, store: RunStore, device: torch.device,
          measured: dict[str, float]) -> tuple[float | None, str]:
    """FLOP/s of the model's training step here, and how it is known."""
    key = _rate_key(cfg, device)
    if key in measured:
        return measured[key], "measured"
    flops = flops_per_sample(plain(cfg))
    seconds = store.probe(key)
    if seconds is None and (device.type == "cuda" or flops / 1e9 <= MAX_TIMED_GFLOPS):
        seconds = time_step(plain(cfg), device)
        store.save_probe(key, seconds)
    return (flops / seconds, "timed") if seconds else (None, "unknown")


def estimate(jobs: list[Job], store: RunStore, device: torch.device) -> dict[str, tuple[float | None, str]]:
    """run id -> (estimated training seconds, how the model's rate is known: measured, timed, from FLOPs or
    unknown). Runs of one model are ranked by their FLOPs."""
    measured = measured_rates(store, device)
    rates: dict[str, tuple[float | None, str]] = {}
    for job in jobs:  # each model's rate, once
        key = _rate_key(job.config, device)
        if key not in rates:
            rates[key] = _rate(job.config, store, device, measured)
    known = [rate for rate, _ in rates.values() if rate]
    out = {}
    for job in jobs:
        rate, how = rates[_rate_key(job.config, device)]
        if rate is None and known:
            rate, how = min(known), "from FLOPs"  # another model's rate here: rough, and said so
        cfg = plain(job.config) if job.kind == "tune" else job.config  # tuning runs the unmasked step
        out[job.run_id] = (flops_per_sample(cfg) * (job.samples or 0) / rate, how) if rate else (None, "unknown")
    return out


@functools.lru_cache(maxsize=256)
def _flops_per_sample(model: str, context_length: int, knobs: tuple) -> float:
    step = dict(knobs)
    cfg = TrainConfig(model=model, context_length=context_length, **step)
    return train_step_flops(get_preset(model).with_context_length(context_length), cfg, 8)["total"] / 8


def flops_per_sample(cfg: TrainConfig) -> float:
    """Training FLOPs per sample (forward + backward) of the run's step, counted at a small batch."""
    return _flops_per_sample(cfg.model, cfg.context_length, tuple((k, getattr(cfg, k)) for k in _FLOP_KNOBS))


# What a step's FLOPs can depend on: every setting of the training step (declared once, `step=True`), the
# decoder's shape and activation checkpointing; not a hand-kept list that a new step knob could miss.
_FLOP_KNOBS = tuple(f.name for f in dataclasses.fields(StepConfig)) + (
    "decoder_depth", "decoder_width", "decoder_heads", "activation_checkpointing")
