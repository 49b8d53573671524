"""Peak memory of a training step, and the largest batch whose step fits a memory limit.

What is measured is the peak of memory *allocated to tensors* during one steady-state training
step, counted from an empty slate: parameters, gradients, AdamW moments, the input batch and the
activations, as the allocator sees them.

- CUDA: `torch.cuda.max_memory_allocated` minus what was allocated before the probe started.
- CPU: torch has no `max_memory_allocated` for the CPU, and the process's peak RSS (`ru_maxrss`)
  only ever grows, counts the interpreter and every library, and depends on when glibc hands
  pages back. Instead the probe runs under `torch.profiler` with `profile_memory=True`: the CPU
  allocator then reports every allocation and free together with its running total of
  allocated bytes, and the peak of that total over the probe is the CPU analogue of
  `max_memory_allocated`. Only blocks allocated inside the probe are counted, so the probe builds
  its own model, optimizer and batch inside the window (nothing earlier can be freed into it).
  Scratch memory that MKL / oneDNN allocate outside torch's allocator is not counted.

A probe is one steady-state step: the model and optimizer are built, gradients and AdamW state
are made to exist (as after any earlier step), then one step is run and measured - eager, on one
CPU thread (allocations do not depend on either; it keeps probes quick on a busy machine).
"""

from __future__ import annotations

import contextlib
import gc
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from flip.bench.timing import synthetic_batch
from flip.errors import ConfigError
from flip.models import FLIP, ModelConfig
from flip.models.decoder import DecoderConfig, MAEDecoder
from flip.models.pretrainer import Pretrainer
from flip.train.config import StepConfig
from flip.train.optim import make_optimizer
from flip.train.step import TrainStep

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_size(text: str) -> int:
    """'24GiB', '1500MB', '2.5G', '123456' -> bytes (k/M/G/T are powers of 10, KiB/MiB/GiB/TiB of 2)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+]?[0-9]+)?)\s*([a-zA-Z]*)\s*", text or "")
    unit = match.group(2).lower() if match else None
    if not match or unit not in _UNITS:
        raise ConfigError(f"must be a size such as 4GiB, 1500MB or 2e9 bytes, got {text!r}", key="memory_limit")
    value = float(match.group(1)) * _UNITS[unit]
    if value <= 0:
        raise ConfigError(f"must be positive, got {text!r}", key="memory_limit")
    return int(value)


def format_size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"


@contextlib.contextmanager
def _quiet_stderr():
    """Kineto prints start/stop banners straight to fd 2; keep the terminal table clean."""
    try:
        saved = os.dup(2)
    except OSError:  # no real fd 2 (embedded interpreters): nothing to silence
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class _CpuPeak:
    """Peak of bytes allocated by torch's CPU allocator inside the window, via the profiler."""

    def __enter__(self):
        os.environ.setdefault("KINETO_LOG_LEVEL", "5")
        from torch.profiler import ProfilerActivity, profile

        self._profile = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
        with _quiet_stderr():
            self._profile.__enter__()
        return self

    def __exit__(self, *exc):
        with _quiet_stderr():
            self._profile.__exit__(*exc)
        if exc[0] is None:
            self.peak = self._peak_from_trace()
        return False

    def _peak_from_trace(self) -> int:
        # The profiler's event tree and its allocation records are torch-internal API (2.x); the
        # tests check this against known allocations.
        from torch._C._profiler import _EventType

        events, stack = [], list(self._profile.profiler.kineto_results.experimental_event_tree())
        while stack:
            event = stack.pop()
            stack.extend(event.children)
            if event.tag == _EventType.Allocation and event.extra_fields.device.type == "cpu":
                events.append(event)
        if not events:
            return 0
        events.sort(key=lambda e: e.start_time_ns)
        first = events[0].extra_fields
        start = first.total_allocated - first.alloc_size  # the running total before the window
        return max(e.extra_fields.total_allocated for e in events) - start


class _CudaPeak:
    def __init__(self, device: torch.device):
        self.device = device

    def __enter__(self):
        torch.cuda.synchronize(self.device)
        self._start = torch.cuda.memory_allocated(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        return self

    def __exit__(self, *exc):
        if exc[0] is None:
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self._start
        return False


def peak_window(device: torch.device):
    """`with peak_window(device) as w: ...` then `w.peak`: peak bytes allocated inside the block."""
    return _CudaPeak(device) if device.type == "cuda" else _CpuPeak()


def _is_oom(exc: BaseException) -> bool:
    message = str(exc).lower()
    return (isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError)) or "out of memory" in message
            or "can't allocate memory" in message)


@contextlib.contextmanager
def _one_cpu_thread():
    """Probes count bytes, not seconds, and tensor allocations do not depend on the thread count;
    one thread keeps them fast on a shared machine, where a second thread waiting at every op's
    barrier for a core can stretch a step many times over."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def measure_peak(run: Callable[[], None], device: torch.device) -> int | None:
    """Peak bytes allocated by `run()` (which must allocate everything it uses); None on out-of-memory."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    try:
        with _one_cpu_thread(), peak_window(device) as window:
            run()
        return window.peak
    except (RuntimeError, MemoryError) as exc:
        if not _is_oom(exc):
            raise
        return None
    finally:
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()


@dataclass
class MaxBatch:
    limit: int
    batch: int  # the largest batch that fits (0: not even the smallest probe fits)
    peak: int | None  # its peak memory
    first_too_large: int | None  # the smallest batch probed that does not fit (None: hit the cap)
    probes: list[dict] = field(default_factory=list)  # {"batch", "peak" (None = out of memory), "fits"}


def find_max_batch(peak_of: Callable[[int], int | None], limit: int, start: int = 16, cap: int = 1 << 20,
                   tolerance: float = 1 / 64) -> MaxBatch:
    """The largest batch b with peak_of(b) <= limit, to within `tolerance` (relative; at least 1).

    Doubling, then bisection - both guided by the fact that a step's peak memory is close to
    affine in the batch: once two probes fit, the next one is the batch that the line through
    them predicts (at most 8x the last fit) rather than a blind doubling, and a bisection step
    probes where the secant between the bracket's ends meets the limit, falling back to the
    midpoint when one end stops moving. Large, slow probes stay few, and no probe lands far past
    the limit (on the CPU nothing stops a probe from exhausting the machine's memory).
    """
    probes: list[dict] = []
    known: dict[int, int | None] = {}

    def fits(batch: int) -> bool:
        if batch not in known:
            known[batch] = peak_of(batch)
            probes.append({"batch": batch, "peak": known[batch],
                           "fits": known[batch] is not None and known[batch] <= limit})
        return known[batch] is not None and known[batch] <= limit

    def crossing(a: int, b: int) -> float | None:
        """Batch where the line through the peaks measured at a and b reaches the limit."""
        pa, pb = known.get(a), known.get(b)
        if pa is None or pb is None or a == b or pb == pa:
            return None
        return a + (limit - pa) * (b - a) / (pb - pa)

    def margin(batch: int) -> int:
        return max(1, int(batch * tolerance))

    # Growth: from `start`, halving first if even that does not fit.
    batch = max(1, min(start, cap))
    while not fits(batch):
        if batch == 1:
            return MaxBatch(limit, 0, None, 1, probes)
        batch //= 2
    lo, hi, fitting = batch, None, [batch]
    while lo < cap:
        guess = crossing(fitting[-2], fitting[-1]) if len(fitting) >= 2 else None
        target = 2 * lo if guess is None or guess <= lo else min(8 * lo, int(guess))
        batch = min(cap, max(lo + margin(lo), target))
        if not fits(batch):
            hi = batch
            break
        lo = batch
        fitting.append(batch)

    # Bisection of (lo, hi): secant guesses, the midpoint when the same end moved twice in a row.
    moves: list[str] = []
    while hi is not None and hi - lo > margin(lo):
        guess = crossing(lo, hi)
        if guess is None or moves[-2:] in (["lo", "lo"], ["hi", "hi"]):
            guess = (lo + hi) / 2
        step = max(1, margin(lo) // 2)
        batch = min(hi - step, max(lo + step, int(guess)))
        if fits(batch):
            lo = batch
            moves.append("lo")
        else:
            hi = batch
            moves.append("hi")
    return MaxBatch(limit=limit, batch=lo, peak=known.get(lo), first_too_large=hi, probes=probes)


def step_peak_memory(cfg: ModelConfig, mask_ratio: float, batch: int, device: torch.device,
                     precision: str = "fp32", decoder: DecoderConfig | None = None) -> int | None:
    """Peak bytes of one steady-state training step of a fresh FLIP model; None if out of memory.
    `decoder`: the step of a run with the MAE reconstruction loss (Table 1f), decoder included as the
    trainer builds it (its weights, gradients and AdamW moments, its forward and backward)."""
    def run() -> None:
        model = FLIP(cfg).to(device)
        dec = MAEDecoder(cfg.vision, decoder).to(device) if decoder is not None else None
        trained = Pretrainer(model, dec)  # what the trainer's optimizer holds
        optimizer = make_optimizer(trained, 1e-3, 0.2, (0.9, 0.95), 1e-6, device)
        step_cfg = StepConfig(mask_ratio=mask_ratio, precision=precision, recon_weight=1.0 if dec else 0.0)
        step = TrainStep(model, optimizer, step_cfg, decoder=dec)
        images, tokens = synthetic_batch(cfg, batch, device)
        for p in trained.parameters():  # gradients and AdamW moments exist, as after any earlier step
            p.grad = torch.zeros_like(p)
        optimizer.step()
        step(images, tokens, 1e-3)

    return measure_peak(run, device)
