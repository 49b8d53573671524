"""Will a run fit? Memory per device from a preset's shapes, and the settings that make it fit.

`plan_run(model, batch, gpus, gpu_memory, mask_ratio)` estimates one device's peak memory in a
training step, for each way flipctl can trade compute for memory, and picks the cheapest that
fits. The estimate is built from the preset's shapes, on the meta device (no memory, any size):

- weights, gradients and AdamW's two moments: 16 bytes per parameter (fp32), on every device
  (replicated, as DDP keeps them); with parameter sharding (FSDP) a 1/gpus share of them plus the
  largest block gathered whole;
- activations: what autograd keeps for backward in a forward pass of both towers at the mask
  ratio, per sample, traced with `saved_tensors_hooks` (parameters excluded) - with activation
  checkpointing, only the blocks' inputs, plus one block's activations recomputed at a time;
- the input batch on the device, and the loss's [n, N] logits and their gradients.

The activation trace is fp32 and counts attention as its plain math; flash attention (GPU) keeps
less, so the estimate errs on the large side. Checked against the measured peak of the `tiny`
and `small` presets' steps on CPU (tests/test_capacity.py; README "Clusters").
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from flip.bench.defaults import DEFAULT_MFU, DEFAULT_PEAK_TFLOPS
from flip.errors import ConfigError
from flip.models import ModelConfig, get_preset

if TYPE_CHECKING:  # torch loads when a plan is made, not when `flipctl` builds its help
    import torch

    from flip.models import FLIP

BYTES_PER_PARAMETER = 16  # fp32 weight + gradient + AdamW exp_avg + exp_avg_sq
HEADROOM = 0.9  # of a device's memory usable for tensors (CUDA context, NCCL buffers, fragmentation)
LEGACY_LOADER_SAMPLES_PER_CORE = 146.0  # issue 13: the original PIL loader, samples/s per core


def _meta_model(cfg: ModelConfig, checkpointing: bool) -> FLIP:
    import torch

    from flip.models import FLIP

    with torch.device("meta"):
        model = FLIP(cfg)
    model.set_grad_checkpointing(checkpointing)
    return model


def activation_bytes(cfg: ModelConfig, mask_ratio: float, checkpointing: bool = False) -> float:
    """Bytes autograd keeps for backward per sample, in a forward of both towers at `mask_ratio`: the
    growth from 2 to 4 samples, so that what does not grow with the batch (views of parameters and
    buffers) is not counted as activation."""
    return (_saved_bytes(cfg, mask_ratio, checkpointing, 4) - _saved_bytes(cfg, mask_ratio, checkpointing, 2)) / 2


def _saved_bytes(cfg: ModelConfig, mask_ratio: float, checkpointing: bool, batch: int) -> int:
    import torch

    from flip.masking import num_kept, random_keep_indices

    model = _meta_model(cfg, checkpointing)
    parameters = {id(p) for p in model.parameters()}
    kept: dict[int, torch.Tensor] = {}  # by identity: a tensor saved by two ops is stored once

    def pack(t: torch.Tensor) -> torch.Tensor:
        if id(t) not in parameters:
            kept.setdefault(id(t), t)
        return t

    v, t = cfg.vision, cfg.text
    images = torch.zeros(batch, 3, v.image_size, v.image_size, device="meta")
    tokens = torch.ones(batch, t.context_length, dtype=torch.long, device="meta")
    k = num_kept(v.num_patches, mask_ratio)
    keep = random_keep_indices(batch, v.num_patches, k, "meta") if k < v.num_patches else None
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        model(images, tokens, keep)
    return sum(x.numel() * x.element_size() for x in kept.values())


@dataclass
class Variant:
    """One way to run the step on a device: its settings and estimated peak bytes."""

    accum_steps: int
    checkpointing: bool
    fsdp: bool
    chunk: int  # samples through the model at once on a device
    bytes: float
    fits: bool

    @property
    def flags(self) -> list[str]:
        return ([f"--accum-steps {self.accum_steps}"] if self.accum_steps > 1 else []) + (
            ["--activation-checkpointing"] if self.checkpointing else []) + (["--fsdp"] if self.fsdp else [])

    @property
    def label(self) -> str:
        parts = ([f"{self.accum_steps} accumulation steps"] if self.accum_steps > 1 else []) + (
            ["activation checkpointing"] if self.checkpointing else []) + (["FSDP"] if self.fsdp else [])
        return ", ".join(parts) or "plain"


@dataclass
class LoaderNeed:
    """The input rate one GPU's step consumes, and the data-loader cores that takes."""

    gpu_peak_tflops: float
    mfu: float
    flops_per_sample: float  # the training step's, forward and backward, at the mask ratio
    samples_per_s: float  # one GPU's step at that MFU
    samples_per_core: float  # one loader core's rate
    samples_per_core_source: str
    cores: int  # per GPU


@dataclass
class Plan:
    model: str
    batch_size: int
    gpus: int
    gpu_memory: int
    mask_ratio: float
    per_device_batch: int
    parameters: int
    state_bytes: float  # weights + gradients + AdamW moments, replicated
    activation_bytes: float  # per sample
    checkpointed_activation_bytes: float  # per sample, with activation checkpointing
    variants: list[Variant] = field(default_factory=list)
    choice: Variant | None = None  # the cheapest that fits: replicated if any fits so, else sharded (FSDP)
    loader: LoaderNeed | None = None

    @property
    def usable_bytes(self) -> float:
        return HEADROOM * self.gpu_memory

    @property
    def fsdp_needed(self) -> bool:
        return self.choice is not None and self.choice.fsdp


def step_bytes(cfg: ModelConfig, parameters: int, act: float, act_ckpt: float, per_device: int, world: int,
               accum_steps: int, checkpointing: bool, fsdp: bool) -> float:
    """One device's estimated peak bytes in a training step."""
    v = cfg.vision
    chunk = per_device // accum_steps
    blocks = max(1, v.depth)
    largest_block = 12 * v.width**2 + 13 * v.width  # a ViT block's parameters (attention + 4x MLP)
    if fsdp:
        state = BYTES_PER_PARAMETER * parameters / world + 2 * 4 * largest_block  # + one block gathered, and its grads
    else:
        state = BYTES_PER_PARAMETER * parameters
    if checkpointing:  # the blocks' inputs, plus one (image) block recomputed whole during its backward
        activations = chunk * (act_ckpt + (act - act_ckpt) / blocks)
    else:
        activations = chunk * act
    images = per_device * 3 * v.image_size**2 * 4
    global_batch = per_device * world
    loss = 4 * per_device * global_batch * 4 + 2 * global_batch * cfg.embed_dim * 4  # logits + grads, gathered features
    return state + activations + images + loss


def plan_run(model: str, batch_size: int, gpus: int, gpu_memory: int, mask_ratio: float = 0.5,
             gpu_peak_tflops: float = DEFAULT_PEAK_TFLOPS, mfu: float = DEFAULT_MFU,
             loader_samples_per_core: float | None = None) -> Plan:
    try:
        cfg = get_preset(model)
    except KeyError as exc:
        raise ConfigError(exc.args[0]) from None
    if gpus < 1:
        raise ConfigError(f"must be at least 1, got {gpus}", key="gpus")
    if batch_size < 2 or batch_size % gpus:
        raise ConfigError(f"({batch_size}) must be at least 2 and split evenly over the {gpus} GPUs",
                          key="batch_size")
    if not 0 <= mask_ratio < 1:
        raise ConfigError(f"must be in [0, 1), got {mask_ratio}", key="mask_ratio")
    if not gpu_peak_tflops > 0:
        raise ConfigError(f"must be > 0, got {gpu_peak_tflops:g}", key="gpu_peak_tflops")
    if not 0 < mfu <= 1:
        raise ConfigError(f"must be in (0, 1], got {mfu:g}", key="mfu")
    if loader_samples_per_core is not None and not loader_samples_per_core > 0:
        raise ConfigError(f"must be > 0, got {loader_samples_per_core:g}", key="loader_samples_per_core")
    per_device = batch_size // gpus
    parameters = sum(p.numel() for p in _meta_model(cfg, False).parameters())
    act, act_ckpt = activation_bytes(cfg, mask_ratio), activation_bytes(cfg, mask_ratio, checkpointing=True)
    plan = Plan(get_preset(model).name, batch_size, gpus, gpu_memory, mask_ratio, per_device, parameters,
                BYTES_PER_PARAMETER * parameters, act, act_ckpt)
    # In order of extra compute: nothing; one more forward (checkpointing, or accumulation's feature
    # pass, the fewer chunks the better); both.
    accums = [k for k in (2**i for i in range(per_device.bit_length())) if per_device % k == 0 and k > 1]
    order = [(1, False)] + [(1, True)] + [(k, False) for k in accums] + [(k, True) for k in accums]
    for fsdp in (False, True):
        for k, ckpt in order:
            need = step_bytes(cfg, parameters, act, act_ckpt, per_device, gpus, k, ckpt, fsdp)
            plan.variants.append(Variant(k, ckpt, fsdp, per_device // k, need, need <= plan.usable_bytes))
    # Replicated first: FSDP adds two all-gathers and a reduce-scatter of the weights per step.
    plan.choice = next((v for v in plan.variants if v.fits and not v.fsdp), None) or next(
        (v for v in plan.variants if v.fits), None)
    plan.loader = loader_need(cfg, mask_ratio, gpu_peak_tflops, mfu, loader_samples_per_core)
    return plan


def loader_need(cfg: ModelConfig, mask_ratio: float, gpu_peak_tflops: float, mfu: float,
                samples_per_core: float | None = None) -> LoaderNeed:
    """Samples/s one GPU's step consumes (its peak x MFU / the step's counted FLOPs per sample, as
    `flipctl bench --data` computes it) and the loader cores that takes at `samples_per_core`
    (default: `measured_loader_rate()`)."""
    from flip.bench.data import step_needs

    need = step_needs(cfg, (mask_ratio,), gpu_peak_tflops, mfu)[f"{mask_ratio:g}"]
    source = "given"
    if samples_per_core is None:
        samples_per_core, source = measured_loader_rate()
    return LoaderNeed(gpu_peak_tflops, mfu, need["flops_per_sample"], need["samples_per_s"], samples_per_core,
                      source, math.ceil(need["samples_per_s"] / samples_per_core))


def measured_loader_rate(results_dir: Path | None = None) -> tuple[float, str]:
    """Samples/s one loader core decodes and augments, and where the figure comes from: the committed
    `flipctl bench --data` measurement of the default (worker) path (`results/bench/`, shipped in the
    package), else issue 13's measurement of the original loader (a conservative figure)."""
    from flip.resources import bench_results

    folder = results_dir if results_dir is not None else bench_results()
    reports = [p for p in folder.iterdir() if p.name.startswith("data-paths-") and p.name.endswith(".json")]
    for path in sorted(reports, key=lambda p: p.name):
        try:
            rate = json.loads(path.read_text())["paths"]["worker"]["per_core_cpu"]
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not a data-path report this version reads
        if isinstance(rate, (int, float)) and rate > 0:
            return float(rate), f"measured: {path.name}, worker path, per CPU core"
    return LEGACY_LOADER_SAMPLES_PER_CORE, "measured: issue 13, the original loader, per core"


def launch_flags(gpus: int, gpus_per_node: int = 8) -> str:
    """The launch flags for `gpus` GPUs: one machine, or SLURM nodes of `gpus_per_node`."""
    if gpus <= gpus_per_node:
        return f"--nproc {gpus}"
    nodes = -(-gpus // gpus_per_node)
    while gpus % nodes:  # every node the same number of GPUs
        nodes += 1
    return f"--launcher slurm --nodes {nodes} --gpus-per-node {gpus // nodes}"
