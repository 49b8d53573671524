"""Peak dense TFLOP/s of known accelerators, looked up by `torch.cuda.get_device_name`, for MFU.

MFU against a wrong peak is worse than none, so a device not in the table gets no peak (the bench
prints "n/a" and asks for --peak-tflops) rather than a guess. Every figure is a dense (no 2:4
sparsity) tensor-core peak from NVIDIA's datasheet for that product; the datasheets print the
sparse figure with an asterisk, and the dense one is half of it. Form factors differ: an H100 PCIe or
an H100/H200 NVL card runs at lower clocks and power than the SXM module of the same chip.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

DTYPES = ("bf16", "fp16", "tf32", "fp32")


@dataclass(frozen=True)
class Peak:
    product: str
    tflops: dict[str, float]  # dense peak by dtype: bf16, fp16 (tensor cores), tf32 (tensor cores), fp32 (CUDA cores)
    source: str


def _peak(product: str, bf16: float, tf32: float, fp32: float, source: str) -> Peak:
    return Peak(product, {"bf16": bf16, "fp16": bf16, "tf32": tf32, "fp32": fp32}, source)


_A100 = "NVIDIA A100 Tensor Core GPU datasheet: BF16/FP16 312, TF32 156, FP32 19.5 TFLOPS, dense"
# (pattern on the upper-cased device name, peak); the first match wins, so the specific form factors come first.
# A bare "H100" names no form factor (SXM 989 vs PCIe 756 vs NVL 835): no peak rather than a guess.
TABLE: tuple[tuple[str, Peak], ...] = (
    (r"\bH200\b.*\bNVL\b", _peak("H200 NVL", 835.5, 417.5, 60.0,
                                 "NVIDIA H200 Tensor Core GPU datasheet, H200 NVL: BF16/FP16 1,671, "
                                 "TF32 835 TFLOPS with sparsity (dense: half), FP32 60")),
    (r"\bH200\b", _peak("H200 SXM", 989.5, 494.5, 67.0,
                        "NVIDIA H200 Tensor Core GPU datasheet, H200 SXM: BF16/FP16 1,979, TF32 989 "
                        "TFLOPS with sparsity (dense: half), FP32 67")),
    (r"\bH100\b.*\bNVL\b", _peak("H100 NVL", 835.5, 417.5, 60.0,
                                 "NVIDIA H100 Tensor Core GPU datasheet, H100 NVL: BF16/FP16 1,671, "
                                 "TF32 835 TFLOPS with sparsity (dense: half), FP32 60")),
    (r"\bH100\b.*\bPCIE\b", _peak("H100 PCIe", 756.5, 378.0, 51.0,
                                  "NVIDIA H100 Tensor Core GPU datasheet, H100 PCIe: BF16/FP16 1,513, "
                                  "TF32 756 TFLOPS with sparsity (dense: half), FP32 51")),
    (r"\bH100\b.*\b(SXM\w*|HBM3)\b", _peak("H100 SXM", 989.5, 494.5, 67.0,
                                           "NVIDIA H100 Tensor Core GPU datasheet, H100 SXM: BF16/FP16 "
                                           "1,979, TF32 989 TFLOPS with sparsity (dense: half), FP32 67")),
    (r"\bA100\b.*\bSXM\w*", _peak("A100 SXM", 312.0, 156.0, 19.5, _A100)),
    (r"\bA100\b.*\bPCIE\b", _peak("A100 PCIe", 312.0, 156.0, 19.5, _A100)),
    (r"\bA100\b", _peak("A100", 312.0, 156.0, 19.5, _A100 + " (SXM and PCIe alike)")),
)


def lookup(device_name: str) -> Peak | None:
    """The peak of the device `torch.cuda.get_device_name` calls `device_name`, or None if unknown."""
    name = device_name.upper()
    for pattern, peak in TABLE:
        if re.search(pattern, name):
            return peak
    return None


def matmul_dtype(precision: str) -> str:
    """The dtype the step's matmuls run in on CUDA: bf16 under bf16 autocast; fp32 matmuls use TF32
    tensor cores only where torch allows it (`torch.backends.cuda.matmul.allow_tf32`)."""
    if precision == "bf16":
        return "bf16"
    return "tf32" if torch.backends.cuda.matmul.allow_tf32 else "fp32"


@dataclass(frozen=True)
class PeakChoice:
    """The peak an MFU is computed against, and where it came from; `tflops` None: no MFU, `note` says why."""

    tflops: float | None
    dtype: str
    source: str  # "--peak-tflops", or the table entry's product and datasheet
    note: str = ""

    def describe(self) -> str:
        if self.tflops is None:
            return f"MFU: {self.note}"
        return f"MFU against {self.tflops:g} TFLOP/s dense {self.dtype} ({self.source})"


def choose_peak(device_name: str, dtype: str, override: float | None = None) -> PeakChoice:
    """`override` (--peak-tflops) when given, else the table's peak for `device_name` at `dtype`, else none."""
    if override is not None:
        return PeakChoice(override, dtype, "--peak-tflops")
    peak = lookup(device_name)
    if peak is None:
        return PeakChoice(None, dtype, "", f"n/a: unknown device {device_name}; pass --peak-tflops")
    return PeakChoice(peak.tflops[dtype], dtype, f"{peak.product}: {peak.source}")
