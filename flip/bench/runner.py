"""`run_bench`: everything `flipctl bench` measures, in one process, as one JSON-able dict.

Order of work: FLOPs (meta device, free) -> step timing of every (implementation or variant, mask
ratio), interleaved (the variants, on CUDA: our step in bf16 and torch.compile'd beside the
configured one) -> time split of our step per part, interleaved -> peak memory per mask ratio (and
open_clip's) -> optional max-batch search -> optional data-loader throughput. Mask ratio 0 is always timed:
speed-ups are against it. MFU is against the device's dense peak from `flip.bench.peaks` (or
--peak-tflops); an unknown device gets none.
"""

from __future__ import annotations

import gc
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch

from flip.bench.peak_memory import MaxBatch, find_max_batch, step_peak_memory
from flip.bench.peaks import PeakChoice, choose_peak, matmul_dtype
from flip.bench.timing import part_functions, synthetic_batch, time_interleaved
from flip.compile import Backend, choose_backend
from flip.distributed import resolve_device
from flip.errors import ConfigError
from flip.flops import step_flops
from flip.masking import num_kept
from flip.models import FLIP, get_preset
from flip.models.decoder import DecoderConfig, MAEDecoder
from flip.models.pretrainer import Pretrainer
from flip.train.config import StepConfig
from flip.train.optim import make_optimizer
from flip.train.step import TrainStep

COMPARE_CHOICES = ("open_clip",)
PRECISIONS = ("fp32", "bf16")
DEVICES = ("auto", "cpu", "cuda")

# The paper's ablation knobs timed by --ablations (Tables 1c and 1f), each against the plain step.
ABLATIONS = {
    "text_mask_padding_0.5": {"text_mask": "padding", "text_mask_ratio": 0.5},
    "recon_weight_1": {"recon_weight": 1.0},
}

# The targets, checked in every report.
TARGET_SPEEDUP_EFFICIENCY = 0.9  # measured / FLOP-ideal speed-up, every mask ratio > 0
TARGET_VS_OPEN_CLIP = 1.1  # our samples/s over open_clip's, every mask ratio
TARGET_LOADER_HEADROOM = 3.0  # loader samples/s over the fastest step's consumption
TARGET_MAX_BATCH_RATIO = {0.75: 3.0}  # max batch at r over max batch at 0, equal memory


@dataclass(frozen=True)
class BenchConfig:
    model: str = "tiny"
    batch_size: int = 256
    mask_ratios: tuple[float, ...] = (0.0, 0.5, 0.75)
    device: str = "auto"
    precision: str = "fp32"
    compile: bool = False
    compile_backend: str | None = None  # None: inductor where it builds kernels here, else aot_eager
    steps: int = 7
    warmup: int = 2
    compare: str | None = None  # "open_clip"
    split: bool = True
    data: bool = False
    data_path: str | None = None  # default: the built-in shards
    workers: int = 2
    max_batch: bool = False
    memory_limit: int | None = None  # bytes; default: peak of the mask-0 step at batch_size
    peak_tflops: float | None = None  # overrides the device's peak from flip.bench.peaks, for MFU
    variants: bool | None = None  # also time bf16 and compiled steps; None: on a CUDA device
    ablations: bool = False  # also time the paper's knobs: 50% padding-first text masking, recon loss w=1
    seed: int = 0

    def validate(self) -> "BenchConfig":
        """Check every setting before any work starts; a `ConfigError` names the setting (its `key`)."""
        try:
            get_preset(self.model)
        except KeyError as exc:
            raise ConfigError(exc.args[0]) from None
        if not self.mask_ratios:
            raise ConfigError("needs at least one ratio, e.g. 0,0.5,0.75", key="mask_ratios")
        for r in self.mask_ratios:
            if not 0.0 <= r < 1.0 or math.isnan(r):
                raise ConfigError(f"must each be in [0, 1), got {r:g}", key="mask_ratios")
        if self.batch_size < 2:
            raise ConfigError(f"must be at least 2 (a contrastive batch needs negatives), got {self.batch_size}",
                              key="batch_size")
        if self.device not in DEVICES:
            raise ConfigError(f"must be one of {', '.join(DEVICES)}, got {self.device!r}", key="device")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("--device cuda: no CUDA device is available here; use --device cpu")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"must be one of {', '.join(PRECISIONS)}, got {self.precision!r}", key="precision")
        if self.steps < 1:
            raise ConfigError(f"must be at least 1, got {self.steps}", key="steps")
        if self.warmup < 0:
            raise ConfigError(f"must be >= 0, got {self.warmup}", key="warmup")
        if self.compare is not None and self.compare not in COMPARE_CHOICES:
            raise ConfigError(f"must be one of {', '.join(COMPARE_CHOICES)}, got {self.compare!r}", key="compare")
        if self.workers < 0:
            raise ConfigError(f"must be >= 0, got {self.workers}", key="workers")
        if self.memory_limit is not None and not self.max_batch:
            raise ConfigError("--memory-limit applies to the max-batch search: add --max-batch")
        if self.peak_tflops is not None and self.peak_tflops <= 0:
            raise ConfigError(f"must be positive, got {self.peak_tflops}", key="peak_tflops")
        if self.compile_backend is not None:
            from torch import _dynamo  # not `import torch._dynamo`: that makes `torch` local to this method

            known = _dynamo.list_backends(exclude_tags=())
            if self.compile_backend not in known:  # else torch.compile fails deep inside the first step
                raise ConfigError(f"must be a torch.compile backend (e.g. inductor, aot_eager, eager), got "
                                  f"{self.compile_backend!r}", key="compile_backend")
        return self

    def ratios(self) -> list[float]:
        """The mask ratios timed: the requested ones, sorted, with 0 added (speed-ups are against it)."""
        return sorted({0.0, *self.mask_ratios})

    def resolved_device(self) -> torch.device:
        return resolve_device(self.device)


def _label(impl: str, ratio: float) -> str:
    return f"{impl} mask {ratio:g}"


@dataclass(frozen=True)
class Variant:
    """A way to run our step: its precision and whether the forward is torch.compile'd."""

    precision: str
    compile: bool

    @property
    def name(self) -> str:
        return f"{self.precision}{' compiled' if self.compile else ' eager'}"


def planned_variants(cfg: BenchConfig, device: torch.device) -> list[Variant]:
    """The variants timed besides the configured step: on CUDA (or with variants=True), bf16 eager, bf16
    compiled and the configured precision compiled - the GPU's speed levers, each against the plain step."""
    if not (cfg.variants if cfg.variants is not None else device.type == "cuda"):
        return []
    main = Variant(cfg.precision, cfg.compile)
    wanted = [Variant("bf16", False), Variant("bf16", True), Variant(cfg.precision, True)]
    return [v for v in dict.fromkeys(wanted) if v != main]


def _environment_device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()}"


def _environment(device: torch.device) -> dict:
    import open_clip
    import timm

    env = {
        "torch": torch.__version__, "open_clip": open_clip.__version__, "timm": timm.__version__,
        "python": platform.python_version(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "device": str(device), "device_name": _environment_device_name(device),
    }
    if hasattr(os, "getloadavg"):
        env["load_average_start"] = list(os.getloadavg())
    return env


@dataclass
class _Runner:
    cfg: BenchConfig
    progress: Callable[[str], None]
    device: torch.device = field(init=False)

    def __post_init__(self):
        self.device = self.cfg.resolved_device()
        self.model_cfg = get_preset(self.cfg.model)
        self.phase_s: dict[str, float] = {}
        self._phase_start = time.perf_counter()
        self._backend: Backend | None = None

    def phase(self, name: str) -> None:
        """Close the running phase's stopwatch under `name` (the report's `phase_s`)."""
        now = time.perf_counter()
        self.phase_s[name] = now - self._phase_start
        self._phase_start = now

    # -- building the things compared ----------------------------------------------------------
    def ours(self, ratio: float, variant: Variant | None = None,
             **knobs) -> tuple[FLIP, torch.optim.Optimizer, TrainStep]:
        """Our model and step at `ratio` (as configured, or as `variant`); `knobs` are StepConfig's ablation
        fields (text_mask, recon_weight...)."""
        variant = variant or Variant(self.cfg.precision, self.cfg.compile)
        torch.manual_seed(self.cfg.seed)
        model = FLIP(self.model_cfg).to(self.device)
        step_cfg = StepConfig(mask_ratio=ratio, precision=variant.precision, **knobs)
        decoder = None
        if step_cfg.recon_weight > 0:
            decoder = MAEDecoder(self.model_cfg.vision, DecoderConfig()).to(self.device)
        optimizer = make_optimizer(Pretrainer(model, decoder), 1e-4, 0.2, (0.9, 0.95), 1e-6, self.device)
        step = TrainStep(model, optimizer, step_cfg, decoder=decoder)
        if variant.compile:
            step.forward_model = torch.compile(step.forward_model, backend=self.backend().name)
        return model, optimizer, step

    def backend(self) -> Backend:
        """The torch.compile backend, chosen once (its note, if it is not inductor, goes in the report)."""
        if self._backend is None:
            self._backend = choose_backend(self.device, self.cfg.compile_backend)
        return self._backend

    def theirs(self, ratio: float, weights_from: FLIP):
        from flip.bench.openclip_ref import OpenClipStep, build_open_clip

        model = build_open_clip(self.model_cfg, ratio, weights_from=weights_from).to(self.device)
        return OpenClipStep(model, self.cfg.precision, compile=self.cfg.compile,
                            compile_backend=self.backend().name if self.cfg.compile else None)

    # -- the measurements --------------------------------------------------------------------------
    def run(self) -> dict:
        cfg, device = self.cfg, self.device
        started = time.perf_counter()
        ratios = cfg.ratios()
        batch = cfg.batch_size
        report: dict = {"config": {**asdict(cfg), "mask_ratios": ratios, "device": str(device)},
                        "environment": _environment(device),
                        # as a run's summary has it: one process's step, no accumulation
                        "batch": {"per_device": batch, "accum_steps": 1, "world_size": 1, "global": batch}}

        self.progress("counting FLOPs")
        flops = {r: step_flops(self.model_cfg, r, batch) for r in ratios}
        self.phase("flops")

        steps, split = self._time(ratios)  # every model built for timing is gone when it returns
        self._free()
        self.phase("timing")

        variants = {v: {r: steps.seconds[_label(v.name, r)] for r in ratios} for v in planned_variants(cfg, device)}

        peaks, their_peaks = {}, {}
        for r in ratios:
            self.progress(f"peak memory, mask {r:g}, batch {batch}")
            peaks[r] = step_peak_memory(self.model_cfg, r, batch, device, cfg.precision)
            if cfg.compare:
                from flip.bench.openclip_ref import open_clip_step_peak_memory

                their_peaks[r] = open_clip_step_peak_memory(self.model_cfg, r, batch, device, cfg.precision)
        self.phase("peak_memory")

        max_batch = None
        if cfg.max_batch:
            limit = cfg.memory_limit if cfg.memory_limit is not None else peaks[0.0]
            if limit is None:
                raise ConfigError(f"--batch-size {batch} does not fit in memory at mask 0: pass --memory-limit")
            max_batch = {}
            for r in ratios:
                def probe(b: int, r=r) -> int | None:
                    self.progress(f"max batch, mask {r:g}: probing batch {b}")
                    return step_peak_memory(self.model_cfg, r, b, device, cfg.precision)
                max_batch[r] = find_max_batch(probe, limit, start=min(16, batch))
            self.phase("max_batch")

        loader = None
        if cfg.data:
            from flip.bench.data import loader_throughput
            from flip.data import builtin

            data_path = cfg.data_path or builtin.train_spec(builtin.ensure_builtin())
            self.progress(f"data loader, {cfg.workers} workers")
            loader = loader_throughput(self.model_cfg, data_path, batch, cfg.workers, seed=cfg.seed)
            self.phase("data_loader")

        report.update(self._assemble(ratios, flops, steps, split, peaks, their_peaks, max_batch, loader, variants))
        if self._backend is not None:
            report["config"]["compile_backend"] = self._backend.name  # as chosen, where it was left to the bench
        if hasattr(os, "getloadavg"):
            report["environment"]["load_average_end"] = list(os.getloadavg())
        report["wall_time_s"] = time.perf_counter() - started
        report["phase_s"] = self.phase_s
        return report

    def _free(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def peak(self, precision: str) -> PeakChoice:
        """The peak MFU is computed against for a step in `precision` on this device."""
        name = _environment_device_name(self.device)
        return choose_peak(name, matmul_dtype(precision) if self.device.type == "cuda" else precision,
                           self.cfg.peak_tflops)

    def _time(self, ratios: list[float]):
        """Step timings of every (implementation, ratio), and our step's split per part."""
        cfg, device = self.cfg, self.device
        self.progress("building models")
        images, tokens = synthetic_batch(self.model_cfg, cfg.batch_size, device, seed=cfg.seed)
        ours = {r: self.ours(r) for r in ratios}
        fns = {}
        for r in ratios:
            fns[_label("flipctl", r)] = (lambda s=ours[r][2]: s(images, tokens, 1e-4))
            if cfg.compare:
                fns[_label("open_clip", r)] = (lambda s=self.theirs(r, weights_from=ours[r][0]):
                                               s(images, tokens, 1e-4))
        variants = planned_variants(cfg, device)
        for variant in variants:
            for r in ratios:
                fns[_label(variant.name, r)] = (lambda s=self.ours(r, variant)[2]: s(images, tokens, 1e-4))
        if cfg.ablations:
            for r in ratios:
                for name, knobs in ABLATIONS.items():
                    if knobs.get("recon_weight") and r == 0:
                        continue  # nothing masked, nothing to reconstruct
                    step = self.ours(r, **knobs)[2]
                    fns[_label(f"flipctl+{name}", r)] = (lambda s=step: s(images, tokens, 1e-4))
        # A compiled step compiles on its first call: that call must be a warm-up, never a timed step.
        compiled = cfg.compile or any(v.compile for v in variants)
        warmup = max(cfg.warmup, 1) if compiled else cfg.warmup
        steps = time_interleaved(fns, cfg.steps, warmup, device, on_progress=self.progress)
        if not cfg.split:
            return steps, None
        parts = {}
        for r in ratios:
            model, optimizer, _ = ours[r]
            for name, fn in part_functions(model, optimizer, images, tokens, r, cfg.precision).items():
                parts[f"{name} mask {r:g}"] = fn
        split_t = time_interleaved(parts, cfg.steps, 1, device, on_progress=lambda m: self.progress(f"time split: {m}"))
        split = {r: {name: split_t.median(f"{name} mask {r:g}") for name in ("image", "text", "loss", "optimizer")}
                 for r in ratios}
        return steps, split

    # -- putting the figures together ---------------------------------------------------------
    def _assemble(self, ratios, flops, steps, split, peaks, their_peaks, max_batch: dict[float, MaxBatch] | None,
                  loader: dict | None, variants: dict[Variant, dict[float, list[float]]]) -> dict:
        cfg, batch = self.cfg, self.cfg.batch_size
        v = self.model_cfg.vision
        peak = self.peak(cfg.precision)
        peak_tflops = peak.tflops
        t0 = steps.median(_label("flipctl", 0.0))
        results = []
        for r in ratios:
            t = steps.median(_label("flipctl", r))
            row = {
                "mask_ratio": r,
                "kept_patches": num_kept(v.num_patches, r),
                "image_tokens": num_kept(v.num_patches, r) + 1,
                "step_s": t,
                "step_s_min": min(steps.seconds[_label("flipctl", r)]),
                "step_s_all": steps.seconds[_label("flipctl", r)],
                "samples_per_s": batch / t,
                "flops_per_step": flops[r],
                "achieved_tflops": flops[r]["total"] / t / 1e12,
                "mfu": flops[r]["total"] / t / 1e12 / peak_tflops if peak_tflops else None,
                "ideal_speedup": flops[0.0]["total"] / flops[r]["total"],
                "measured_speedup": t0 / t,
                "peak_memory_bytes": peaks[r],
            }
            row["speedup_efficiency"] = row["measured_speedup"] / row["ideal_speedup"]
            if split is not None:
                parts = dict(split[r])
                parts["other"] = t - sum(parts.values())
                row["split_s"] = parts
            if cfg.ablations:
                row["ablations"] = {
                    name: {"step_s": steps.median(_label(f"flipctl+{name}", r)),
                           "step_time_vs_plain": steps.median(_label(f"flipctl+{name}", r)) / t, "knobs": knobs}
                    for name, knobs in ABLATIONS.items() if _label(f"flipctl+{name}", r) in steps.seconds}
            if cfg.compare:
                key = _label("open_clip", r)
                theirs_t = steps.median(key)
                row["open_clip"] = {
                    "step_s": theirs_t, "step_s_min": min(steps.seconds[key]), "step_s_all": steps.seconds[key],
                    "samples_per_s": batch / theirs_t,
                    "measured_speedup": steps.median(_label("open_clip", 0.0)) / theirs_t,
                    "peak_memory_bytes": their_peaks.get(r),
                }
                row["ours_over_open_clip"] = theirs_t / t
            results.append(row)

        out: dict = {
            "results": results,
            "peak": {**asdict(peak), "line": peak.describe()},
            "methods": {
                "timing": (f"median of {cfg.steps} steps after {cfg.warmup} warm-up steps; every "
                           "(implementation, mask ratio) timed round-robin in one process, order reversed "
                           "on odd repetitions; device synchronised around each timed step only"),
                "flops": ("torch.utils.flop_counter on a meta-device model: forward + backward of the image "
                          "tower, the text tower and the loss at this batch, each counted alone; the "
                          "optimizer's element-wise update is not counted"),
                "ideal_speedup": "FLOPs per step at mask 0 / FLOPs per step at mask r",
                "split": ("each part timed alone, interleaved, eager: forward + backward of the image tower "
                          "(incl. masking), of the text tower, of the loss on detached features; the fused "
                          "AdamW update; 'other' = step - sum of parts: zero_grad, autograd joining the "
                          "towers, and what the full step's larger working set costs (on the CPU mostly page "
                          "faults of large fresh allocations)"),
                "peak_memory": ("peak bytes allocated to tensors during one steady-state step of a fresh "
                                "model, from an empty slate (params, grads, AdamW state, batch, activations); "
                                + ("torch.cuda.max_memory_allocated" if self.device.type == "cuda" else
                                   "CPU: the running total of torch's CPU allocator, traced by torch.profiler "
                                   "(profile_memory=True)") + "; eager"),
            },
        }
        if cfg.compare:
            out["methods"]["open_clip"] = (
                "open_clip CustomTextCLIP built from flip.export.open_clip's config of this model (the same "
                "network: text.use_pad_mask as our text config's pad_mask), our initial weights, vision "
                "patch_dropout = mask ratio, train mode; open_clip_train's step: ClipLoss, fused AdamW, "
                "logit-scale clamp")
        if max_batch is not None:
            base = max_batch[0.0].batch
            out["max_batch"] = {
                "memory_limit_bytes": max_batch[0.0].limit,
                "memory_limit_source": ("--memory-limit" if cfg.memory_limit is not None
                                        else f"peak of the mask-0 step at batch {batch}"),
                "per_ratio": [{
                    "mask_ratio": r, "max_batch": mb.batch, "peak_bytes": mb.peak,
                    "first_too_large": mb.first_too_large, "ratio_vs_mask0": mb.batch / base if base else None,
                    "probes": mb.probes,
                } for r, mb in max_batch.items()],
            }
        if loader is not None:
            fastest = max(row["samples_per_s"] for row in results)
            loader["consumption_samples_per_s"] = {f"{row['mask_ratio']:g}": row["samples_per_s"] for row in results}
            loader["headroom_vs_fastest_step"] = loader["samples_per_s"] / fastest
            out["data_loader"] = loader
        if variants:
            out["variants"] = self._variant_rows(variants, results, flops)
            out["methods"]["variants"] = ("our step as each variant (precision, torch.compile), built like the "
                                          "configured one and timed in the same round-robin; MFU against the "
                                          "peak of the variant's own matmul dtype")
        notes = [self._backend.note] if self._backend is not None and self._backend.note else []
        if notes:
            out["notes"] = notes
        out["checks"] = _checks(out)
        return out

    def _variant_rows(self, variants: dict[Variant, dict[float, list[float]]], results: list[dict],
                      flops: dict[float, dict]) -> list[dict]:
        """Per variant and mask ratio: the step's rate, MFU (against the variant's own dtype peak) and its
        speed against the configured step at the same ratio."""
        batch = self.cfg.batch_size
        main = {row["mask_ratio"]: row["step_s"] for row in results}
        rows = []
        for variant, seconds in variants.items():
            peak = self.peak(variant.precision)
            per_ratio = []
            for r, times in seconds.items():
                t = statistics.median(times)
                tflops = flops[r]["total"] / t / 1e12
                per_ratio.append({"mask_ratio": r, "step_s": t, "step_s_all": times, "samples_per_s": batch / t,
                                  "achieved_tflops": tflops, "mfu": tflops / peak.tflops if peak.tflops else None,
                                  "speedup_vs_configured": main[r] / t})
            rows.append({"name": variant.name, "precision": variant.precision, "compile": variant.compile,
                         "compile_backend": self.backend().name if variant.compile else None,
                         "peak": {**asdict(peak), "line": peak.describe()}, "per_ratio": per_ratio})
        return rows


def _checks(out: dict) -> list[dict]:
    """The issue's performance targets, each with its measured value and pass/fail."""
    checks = []

    def add(name: str, value: float | None, target: float) -> None:
        checks.append({"check": name, "value": value, "target": target,
                       "pass": value is not None and value >= target})

    for row in out["results"]:
        r = row["mask_ratio"]
        if r > 0:
            add(f"speed-up efficiency at mask {r:g} (measured / FLOP-ideal)", row["speedup_efficiency"],
                TARGET_SPEEDUP_EFFICIENCY)
        if "ours_over_open_clip" in row:
            add(f"flipctl / open_clip samples/s at mask {r:g}", row["ours_over_open_clip"], TARGET_VS_OPEN_CLIP)
    if "data_loader" in out:
        add("data loader / fastest step samples/s", out["data_loader"]["headroom_vs_fastest_step"],
            TARGET_LOADER_HEADROOM)
    if "max_batch" in out:
        for row in out["max_batch"]["per_ratio"]:
            if row["mask_ratio"] in TARGET_MAX_BATCH_RATIO:
                add(f"max batch at mask {row['mask_ratio']:g} / at mask 0, equal memory", row["ratio_vs_mask0"],
                    TARGET_MAX_BATCH_RATIO[row["mask_ratio"]])
    return checks


def run_bench(cfg: BenchConfig, progress: Callable[[str], None] | None = None) -> dict:
    """Run every measurement `cfg` asks for; returns the report (see `flipctl bench --help`)."""
    cfg.validate()
    return _Runner(cfg, progress or (lambda message: None)).run()
