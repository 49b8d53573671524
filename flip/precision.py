"""Is a reduced precision actually faster here? Measured, not assumed.

bf16 autocast is the GPU speed lever, but a CPU without native bf16 instructions emulates it and
runs a training step many times slower than fp32 (one measured at 5.3 against 150 samples/s).
`precision_warning` times one small transformer block (linear, GELU, layer norm, attention; forward
and backward: the ops a step spends its time in) in fp32 and in the precision asked for, on the
device at hand, and returns a warning when the latter is more than `SLOWDOWN_LIMIT` times slower.
The measurement takes milliseconds where the precision is native, and runs once per process.
"""

from __future__ import annotations

import functools
import time

import torch
import torch.nn.functional as F

SLOWDOWN_LIMIT = 2.0  # warn above this many times fp32's time
PROBE_REPEATS = 5


def _block(x: torch.Tensor, w_in: torch.Tensor, w_out: torch.Tensor, heads: int) -> torch.Tensor:
    """A pre-norm transformer block's compute on x [B, N, D]: attention on a layer-normed input, then an MLP."""
    b, n, d = x.shape
    h = F.layer_norm(x, (d,))
    q, k, v = (t.reshape(b, n, heads, d // heads).transpose(1, 2) for t in (h, h, h))
    x = x + F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d)
    return x + F.gelu(F.layer_norm(x, (d,)) @ w_in) @ w_out


def probe_seconds(device: torch.device, precisions: tuple[str, ...] = ("fp32", "bf16"),
                  repeats: int = PROBE_REPEATS) -> dict[str, float]:
    """Fastest forward + backward pass of the probe block under each precision's autocast.

    The precisions take turns, so a busy machine slows them alike, and the fastest pass of each
    (the least disturbed) is kept.
    """
    threads = torch.get_num_threads()
    if device.type == "cpu":
        # One thread: the ratio is a property of the core, and a multi-threaded op on a busy machine
        # waits for its most-preempted thread, which made the ratio swing 0.3x-2.4x from run to run.
        torch.set_num_threads(1)
    try:
        return _fastest_passes(device, precisions, repeats)
    finally:
        torch.set_num_threads(threads)


def _fastest_passes(device: torch.device, precisions: tuple[str, ...], repeats: int) -> dict[str, float]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 64, 256, generator=g).to(device).requires_grad_()
    w_in = (torch.randn(256, 1024, generator=g) / 16).to(device).requires_grad_()
    w_out = (torch.randn(1024, 256, generator=g) / 32).to(device).requires_grad_()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    best = dict.fromkeys(precisions, float("inf"))
    for i in range(repeats + 1):  # the first round warms up (kernel selection, allocator): untimed
        for precision in precisions:
            sync()
            start = time.perf_counter()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                out = _block(x, w_in, w_out, heads=4)
            out.float().sum().backward()
            sync()
            if i:
                best[precision] = min(best[precision], time.perf_counter() - start)
    return best


def slowdown_warning(precision: str, fp32_s: float, precision_s: float, device_name: str,
                     reason: str = "") -> str | None:
    """The warning for `precision` taking `precision_s` where fp32 takes `fp32_s`, or None if it is not
    more than `SLOWDOWN_LIMIT` times slower."""
    if precision == "fp32" or fp32_s <= 0 or precision_s <= SLOWDOWN_LIMIT * fp32_s:
        return None
    ratio = precision_s / fp32_s
    return (f"warning: {precision} is {ratio:.{1 if ratio < 10 else 0}f}x slower than fp32 on {device_name}"
            f"{f' ({reason})' if reason else ''}, measured on a small transformer block's forward and backward; "
            f"training will be several times slower: use --precision fp32")


def _device_name(device: torch.device) -> tuple[str, str]:
    """A name for the device in a message, and what is known of why bf16 is slow on it."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device), ""
    if device.type == "cpu":
        native = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
        return "this CPU", "" if native else "no native bf16"
    return str(device), ""


@functools.cache
def _measured_warning(device: torch.device, precision: str) -> str | None:
    name, reason = _device_name(device)
    seconds = probe_seconds(device, ("fp32", precision))
    return slowdown_warning(precision, seconds["fp32"], seconds[precision], name, reason)


def precision_warning(device: torch.device | str, precision: str) -> str | None:
    """A warning when `precision` is far slower than fp32 on `device` (measured once per process), else None."""
    if precision == "fp32":
        return None
    return _measured_warning(torch.device(device), precision)
