"""MFU against the right peak: the device table, its name matching, and what the bench reports with it."""

import pytest
import torch

from flip.bench.peaks import TABLE, choose_peak, lookup, matmul_dtype
from flip.bench.runner import BenchConfig, Variant, planned_variants


@pytest.mark.parametrize("name, product, bf16", [
    ("NVIDIA H100 80GB HBM3", "H100 SXM", 989.5),  # what torch.cuda.get_device_name says for the SXM module
    ("NVIDIA H100 SXM5 80GB", "H100 SXM", 989.5),
    ("NVIDIA H100 PCIe", "H100 PCIe", 756.5),
    ("NVIDIA H100 NVL", "H100 NVL", 835.5),
    ("NVIDIA H200", "H200 SXM", 989.5),
    ("NVIDIA H200 NVL", "H200 NVL", 835.5),
    ("nvidia h200 nvl", "H200 NVL", 835.5),  # case does not matter
    ("NVIDIA A100-SXM4-80GB", "A100 SXM", 312.0),
    ("NVIDIA A100-SXM4-40GB", "A100 SXM", 312.0),
    ("NVIDIA A100 80GB PCIe", "A100 PCIe", 312.0),
    ("NVIDIA A100-PCIE-40GB", "A100 PCIe", 312.0),
])
def test_lookup_by_device_name(name, product, bf16):
    peak = lookup(name)
    assert peak is not None and peak.product == product
    assert peak.tflops["bf16"] == peak.tflops["fp16"] == bf16
    assert peak.tflops["fp32"] < peak.tflops["tf32"] < peak.tflops["bf16"]


@pytest.mark.parametrize("name", [
    "NVIDIA H100",  # no form factor: SXM (989), PCIe (756) or NVL (835)? no guess
    "NVIDIA GH200 480GB",  # not an H200
    "NVIDIA GeForce RTX 4090", "Tesla V100-SXM2-16GB", "CPU x86_64", "",
])
def test_unknown_devices_get_no_peak(name):
    assert lookup(name) is None
    choice = choose_peak(name, "bf16")
    assert choice.tflops is None and choice.describe() == f"MFU: n/a: unknown device {name}; pass --peak-tflops"


def test_every_entry_cites_a_datasheet_and_dense_is_half_the_sparse_figure():
    for _, peak in TABLE:
        assert "datasheet" in peak.source and set(peak.tflops) == {"bf16", "fp16", "tf32", "fp32"}
    h200 = lookup("NVIDIA H200")
    assert "1,979" in h200.source and h200.tflops["bf16"] == 1979 / 2


def test_override_wins_and_the_choice_names_its_source():
    assert choose_peak("NVIDIA H200", "bf16", override=790).describe() == \
        "MFU against 790 TFLOP/s dense bf16 (--peak-tflops)"
    assert choose_peak("CPU x86_64", "fp32", override=2.5).tflops == 2.5
    line = choose_peak("NVIDIA H200", "bf16").describe()
    assert line.startswith("MFU against 989.5 TFLOP/s dense bf16 (H200 SXM: NVIDIA H200 Tensor Core GPU datasheet")


def test_fp32_steps_are_measured_against_tf32_only_where_torch_uses_it():
    assert matmul_dtype("bf16") == "bf16"
    # Set and restore by hand: `allow_tf32` is a property of torch's cuBLAS module object, which
    # newer pytest's monkeypatch cannot restore (it sees no attribute and tries to delete one).
    saved = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        assert matmul_dtype("fp32") == "fp32"
        torch.backends.cuda.matmul.allow_tf32 = True
        assert matmul_dtype("fp32") == "tf32"
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved


def test_variants_planned_for_a_cuda_device():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert planned_variants(BenchConfig(precision="bf16"), cuda) == [Variant("bf16", True)]  # gpu.sh's bench
    assert planned_variants(BenchConfig(precision="fp32"), cuda) == [
        Variant("bf16", False), Variant("bf16", True), Variant("fp32", True)]
    assert planned_variants(BenchConfig(precision="bf16", compile=True), cuda) == [Variant("bf16", False)]
    assert planned_variants(BenchConfig(), cpu) == []  # on a CPU only when asked for
    assert planned_variants(BenchConfig(variants=True), cpu) == [
        Variant("bf16", False), Variant("bf16", True), Variant("fp32", True)]
    assert planned_variants(BenchConfig(variants=False), cuda) == []
