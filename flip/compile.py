"""torch.compile with a backend that works on the machine at hand.

Inductor, the default backend, generates C++ (CPU) or Triton (CUDA) kernels and so needs a working
compiler toolchain. Whether it has one is found out the only reliable way: by compiling and running
a tiny function once per process and device type. Where that fails, modules are compiled with
`FALLBACK_BACKEND` instead (traced forward and backward, no kernel generation), and a one-line note
says why, so `--compile` never dies on a machine without a C++ compiler.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

INDUCTOR = "inductor"
FALLBACK_BACKEND = "aot_eager"


@dataclass(frozen=True)
class Backend:
    """The torch.compile backend chosen, and why it is not inductor (None when it is, or was asked for)."""

    name: str
    note: str | None = None


@functools.cache
def inductor_error(device_type: str) -> str | None:
    """Why inductor cannot build kernels for `device_type` here, or None when it can (tried once per process)."""
    try:
        probe = torch.compile(lambda x: torch.sin(x) * 2 + 1, backend=INDUCTOR, fullgraph=True)
        probe(torch.randn(8, device=device_type))  # code generation and the compiler run here, on first call
    except Exception as exc:  # noqa: BLE001 - any failure means "not here"; the reason is reported
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        return f"{type(exc).__name__}: {lines[0] if lines else 'no message'}"[:200]
    return None


def choose_backend(device: torch.device | str, requested: str | None = None,
                   probe: Callable[[str], str | None] | None = None) -> Backend:
    """`requested` when given; else inductor if it compiles on `device`'s type here (`probe`, by default
    `inductor_error`, says why not), else the fallback."""
    if requested:
        return Backend(requested)
    device_type = torch.device(device).type
    error = (probe or inductor_error)(device_type)
    if error is None:
        return Backend(INDUCTOR)
    return Backend(FALLBACK_BACKEND, f"--compile: inductor cannot build kernels on this {device_type} ({error}); "
                                     f"using backend {FALLBACK_BACKEND} (traced, not fused)")


def compile_module(module: nn.Module, device: torch.device | str, requested: str | None = None,
                   log: Callable[[str], None] | None = None) -> tuple[nn.Module, Backend]:
    """`torch.compile(module)` with `choose_backend`'s backend; its note, if any, goes to `log`.

    The compiled wrapper holds `module` as `_orig_mod`: save the original module, never the
    wrapper, or every state-dict key gets an `_orig_mod.` prefix.
    """
    backend = choose_backend(device, requested)
    if backend.note and log:
        log(backend.note)
    return torch.compile(module, backend=backend.name), backend


def compile_methods(module: nn.Module, names: tuple[str, ...], device: torch.device | str,
                    requested: str | None = None, log: Callable[[str], None] | None = None) -> Backend:
    """Compile the methods `names` of `module` in place (instance attributes shadow the class's).

    For models called through methods other than `forward` (evaluation's `encode_image` and
    `encode_text`); the parameters and the state dict are untouched.
    """
    backend = choose_backend(device, requested)
    if backend.note and log:
        log(backend.note)
    for name in names:
        setattr(module, name, torch.compile(getattr(module, name), backend=backend.name))
    return backend
