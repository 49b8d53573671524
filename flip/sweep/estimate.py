"""Dry-run estimates: how long each planned run will train, from `flipctl bench`-style step timing.

Each distinct step (model, masking, text masking, decoder, precision) is timed on this device at a
small batch (median of a few steps after a warm-up) and scaled linearly to the run's batch and step
count. A model too large to time here is estimated from its counted FLOPs at the FLOP rate this
device reached on the smallest timed step - a rough figure, and marked as such. Timings are cached
in the store.

Finished runs in the store are better evidence than any probe: they include the data loader and
the machine's load at the time, and a probe taken while the machine was busy can be off by 10x.
Where the store holds finished runs of the same step, their median seconds per sample is used
("measured") and the probe is not consulted.
"""

from __future__ import annotations

import dataclasses
import statistics
import time

import torch

from flip.bench.timing import synchronize, synthetic_batch
from flip.flops import train_step_flops
from flip.models import FLIP, get_preset
from flip.models.decoder import DecoderConfig, MAEDecoder
from flip.sweep.plan import Job
from flip.sweep.store import RunStore, read_json
from flip.train.config import TrainConfig
from flip.train.optim import make_optimizer
from flip.train.step import TrainStep

TIMED_BATCH = 32
MAX_TIMED_GFLOPS = 5.0  # per sample; bigger models are estimated from FLOPs on a CPU


def _step_key(cfg: TrainConfig, device: torch.device) -> str:
    # Settings added later join the key only when set, so the probes cached before them still apply.
    extra = (f":i{cfg.image_size}" if cfg.image_size is not None else "") + (
        f":{cfg.loss}{cfg.loss_chunk}" if cfg.loss != "contrastive" else "")
    return (f"step-s:{cfg.model}:m{cfg.mask_ratio:g}:{cfg.mask_strategy}:t{cfg.text_mask}{cfg.text_mask_ratio:g}:"
            f"r{cfg.recon_weight:g}:{cfg.decoder_depth}x{cfg.decoder_width}:{cfg.precision}:{device.type}{extra}")


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


def measured_per_sample(store: RunStore, device: torch.device) -> dict[str, float]:
    """Step key -> median training seconds per sample over the store's finished runs of that step."""
    seen: dict[str, list[float]] = {}
    for run_dir in sorted((store.root / "runs").glob("*")):
        summary, config = read_json(run_dir / "summary.json"), read_json(run_dir / "config.json")
        if not summary or not config or not summary.get("samples_seen") or not summary.get("train_time_s"):
            continue
        try:
            cfg = TrainConfig.from_dict(config["train"])
        except (KeyError, TypeError, ValueError):
            continue  # written by another flipctl version: not comparable evidence
        if cfg.device.split(":")[0] not in ("auto", device.type):
            continue
        seen.setdefault(_step_key(cfg, device), []).append(summary["train_time_s"] / summary["samples_seen"])
    return {key: statistics.median(times) for key, times in seen.items()}


def estimate(jobs: list[Job], store: RunStore, device: torch.device) -> dict[str, tuple[float | None, str]]:
    """run id -> (estimated training seconds, how it was estimated: measured, timed or from FLOPs)."""
    measured = measured_per_sample(store, device)
    per_sample: dict[str, float] = {}
    flop_rate = None
    out = {}
    for job in sorted(jobs, key=lambda j: flops_per_sample(j.config)):
        cfg = job.config
        if job.kind == "tune":  # tuning runs the unmasked step of the parent's model
            cfg = TrainConfig.from_dict({**cfg.to_dict(), "mask_ratio": 0.0, "recon_weight": 0.0, "text_mask": "none"})
        flops = flops_per_sample(cfg)
        samples = job.samples or 0
        key = _step_key(cfg, device)
        if key in measured:
            out[job.run_id] = (measured[key] * samples, "measured")
            flop_rate = flop_rate or flops / measured[key]
            continue
        if key not in per_sample:
            cached = store.probe(key)
            if cached is None and (device.type == "cuda" or flops / 1e9 <= MAX_TIMED_GFLOPS):
                cached = time_step(cfg, device)
                store.save_probe(key, cached)
            if cached is not None:
                per_sample[key] = cached
                flop_rate = flop_rate or flops / cached
        if key in per_sample:
            out[job.run_id] = (per_sample[key] * samples, "timed")
        elif flop_rate:
            out[job.run_id] = (flops * samples / flop_rate, "from FLOPs")
        else:
            out[job.run_id] = (None, "not timed")
    return out


def flops_per_sample(cfg: TrainConfig) -> float:
    """Training FLOPs per sample (forward + backward) of the run's step, counted at a small batch."""
    return train_step_flops(get_preset(cfg.model), cfg, 8)["total"] / 8
