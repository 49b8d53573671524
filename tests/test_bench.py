"""`flipctl bench` and the performance work behind it: FLOP counts, memory probes, the max-batch
search, the OpenCLIP reference, the CLI's errors and JSON, bench/gpu.sh's argument handling, and
the exactness of the model changes made for speed. All fast: tiny batches, a step or two."""

import dataclasses
import json
import shlex
import subprocess
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from flip.bench.peak_memory import find_max_batch, measure_peak, parse_size, step_peak_memory
from flip.bench.timing import synthetic_batch
from flip.errors import ConfigError
from flip.flops import step_flops
from flip.masking import gather_tokens, num_kept, random_keep_indices
from flip.models import FLIP
from flipctl.main import app

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
CPU = torch.device("cpu")


# -- FLOPs ----------------------------------------------------------------------------------------

def _image_train_flops(cfg, mask_ratio: float, batch: int) -> int:
    """Forward + backward FLOPs of the image tower, from the shapes (what the counter must find)."""
    v, d = cfg.vision, cfg.vision.width
    n = num_kept(v.num_patches, mask_ratio) + 1  # kept patches + CLS
    patch_embed = 2 * v.num_patches * d * 3 * v.patch_size**2  # conv forward
    patch_embed *= 2  # backward: weight gradient only (images need no gradient)
    linears = 2 * n * 12 * d * d * 3  # qkv, proj, fc1, fc2 (mlp 4x): forward, grad-input, grad-weight
    attention = 2 * 2 * n * n * d * 3  # QK^T and AV (counted as math attention on meta): forward + 2x backward
    head = 2 * d * cfg.embed_dim * 3  # projection of the pooled token
    return int(batch * (patch_embed + v.depth * (linears + attention) + head))


@pytest.mark.parametrize("ratio", [0.0, 0.25, 0.5, 0.75])
def test_image_tower_flops_match_the_kept_tokens(tiny_cfg, ratio):
    counted = step_flops(tiny_cfg, ratio, batch=4)
    assert counted["image"] == _image_train_flops(tiny_cfg, ratio, 4)
    assert counted["total"] == counted["image"] + counted["text"] + counted["loss"]


def test_only_the_image_tower_scales_with_the_mask(tiny_cfg):
    full, half, quarter = (step_flops(tiny_cfg, r, batch=8) for r in (0.0, 0.5, 0.75))
    assert full["text"] == half["text"] == quarter["text"] and full["loss"] == quarter["loss"]
    # Linear layers scale with the tokens kept (k + 1 of L + 1), attention with their square, and the
    # patch embedding (run before masking) not at all: the image share left lies just around k+1 / L+1.
    for counts, ratio in ((half, 0.5), (quarter, 0.75)):
        tokens = (num_kept(64, ratio) + 1) / 65
        assert tokens - 0.02 < counts["image"] / full["image"] < tokens + 0.03
    assert full["total"] / quarter["total"] > 3.0  # the FLOP-ideal speed-up at 75%


# -- memory ---------------------------------------------------------------------------------------

def test_cpu_peak_counts_what_a_window_allocates():
    def run():
        a = torch.empty(1_000_000)  # 4 MB
        b = torch.empty(2_000_000)  # 8 MB: 12 MB live
        del a
        c = torch.empty(500_000)  # 2 MB: 10 MB live
        del b, c

    peak = measure_peak(run, CPU)
    assert 12_000_000 <= peak < 12_100_000


@pytest.mark.integration  # runs steps to measure them
def test_step_peak_memory_is_affine_in_the_batch_and_smaller_when_masked(tiny_cfg):
    p8, p16, p24 = (step_peak_memory(tiny_cfg, 0.0, b, CPU) for b in (8, 16, 24))
    assert p8 < p16 < p24
    assert abs((p24 - p16) - (p16 - p8)) < 0.02 * (p16 - p8)
    assert step_peak_memory(tiny_cfg, 0.75, 16, CPU) < p16


def test_max_batch_search_finds_the_largest_fitting_batch():
    def peak(b):
        return 100_000 + 3_000 * b + b * b

    for limit in (100_000 + 3_000 * 50 + 2_500, 1_000_000, 5_000_000):
        result = find_max_batch(peak, limit, tolerance=0)
        best = max(b for b in range(1, 10_000) if peak(b) <= limit)
        assert result.batch == best and result.first_too_large == best + 1
        assert len(result.probes) <= 12
    assert find_max_batch(peak, 1_000).batch == 0
    oom = find_max_batch(lambda b: None if b > 300 else 10 * b, 10**9, tolerance=0)  # out-of-memory = None
    assert oom.batch == 300 and oom.first_too_large == 301


def test_parse_size():
    assert parse_size("4GiB") == 4 * 2**30 and parse_size("1500MB") == 1_500_000_000
    assert parse_size("2e9") == 2_000_000_000 and parse_size("512") == 512
    for bad in ("", "lots", "-1G", "0", "3 parsecs"):
        with pytest.raises(ConfigError, match="memory_limit"):
            parse_size(bad)


# -- the model changes made for speed are exact ---------------------------------------------------

@pytest.mark.parametrize("pad_mask", [False, True])
def test_text_tower_computes_the_full_blocks_function(tiny_cfg, pad_mask):
    cfg = dataclasses.replace(tiny_cfg, text=dataclasses.replace(tiny_cfg.text, pad_mask=pad_mask))
    torch.manual_seed(0)
    model = FLIP(cfg).eval()
    _, tokens = synthetic_batch(cfg, 6, CPU)
    text = model.text

    def reference(tokens):  # every block on every position, then read position 0
        x = text.token_embedding(tokens) + text.pos_embed[:, : tokens.shape[1]]
        mask = (tokens != cfg.text.pad_id)[:, None, None, :] if pad_mask else None
        for block in text.blocks:
            x = block(x, attn_mask=mask)
        return text.proj(text.norm(x)[:, 0])

    torch.testing.assert_close(text(tokens), reference(tokens), atol=1e-5, rtol=1e-5)
    keep = torch.cat([torch.zeros(6, 1, dtype=torch.long), torch.randperm(31)[:15].expand(6, -1) + 1], dim=1)
    masked = text(tokens, keep)
    assert masked.shape == (6, cfg.embed_dim) and torch.isfinite(masked).all()


def test_gather_tokens_matches_torch_gather_forward_and_backward():
    x = torch.randn(3, 10, 4, requires_grad=True)
    keep = random_keep_indices(3, 10, 4, "cpu")
    ours = gather_tokens(x, keep)
    reference = torch.gather(x, 1, keep.unsqueeze(-1).expand(-1, -1, 4))
    assert torch.equal(ours, reference)
    grad = torch.randn_like(ours)
    (g1,) = torch.autograd.grad(ours, x, grad)
    (g2,) = torch.autograd.grad(reference, x, grad)
    assert torch.equal(g1, g2)


@pytest.mark.parametrize("pad_mask", [False, True])
def test_open_clip_reference_is_the_same_network(tiny_cfg, pad_mask):
    from flip.bench.openclip_ref import OpenClipStep, build_open_clip

    cfg = dataclasses.replace(tiny_cfg, text=dataclasses.replace(tiny_cfg.text, pad_mask=pad_mask))
    torch.manual_seed(0)
    ours = FLIP(cfg).eval()
    theirs = build_open_clip(cfg, 0.5, weights_from=ours).eval()  # PatchDropout is off in eval
    images, tokens = synthetic_batch(cfg, 4, CPU)
    for a, b in zip(ours(images, tokens), theirs(images, tokens)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    step = OpenClipStep(theirs)  # train mode: patch dropout on
    assert torch.isfinite(step(images, tokens, 1e-3))
    assert theirs.training


# -- the command line -----------------------------------------------------------------------------

def _assert_one_line_error(result, needle):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert needle.lower() in lines[0].lower(), result.output


@pytest.mark.parametrize("args, needle", [
    (["--model", "Z/99"], "unknown model preset"),
    (["--mask-ratios", "0,1.0"], "--mask-ratios"),
    (["--mask-ratios", "-0.5"], "--mask-ratios"),
    (["--mask-ratios", "half"], "--mask-ratios"),
    (["--mask-ratios", ","], "--mask-ratios"),
    (["--batch-size", "1"], "--batch-size"),
    (["--precision", "fp8"], "--precision"),
    (["--device", "tpu"], "--device"),
    (["--compare", "timm"], "--compare"),
    (["--steps", "0"], "--steps"),
    (["--warmup", "-1"], "--warmup"),
    (["--workers", "-1"], "--workers"),
    (["--memory-limit", "lots", "--max-batch"], "--memory-limit"),
    (["--memory-limit", "2GiB"], "--max-batch"),
    (["--peak-tflops", "0"], "--peak-tflops"),
    (["--threads", "0"], "--threads"),
    (["--compile", "--compile-backend", "bogus"], "--compile-backend"),
])
def test_bench_rejects_bad_input(args, needle):
    _assert_one_line_error(runner.invoke(app, ["bench", *args]), needle)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_bench_cuda_without_a_gpu_is_a_one_line_error():
    _assert_one_line_error(runner.invoke(app, ["bench", "--device", "cuda"]), "no CUDA device")


@pytest.mark.integration  # trains
def test_bench_writes_every_figure(tmp_path, small_dataset):
    out = tmp_path / "bench.json"
    result = runner.invoke(app, [
        "bench", "--batch-size", "4", "--steps", "2", "--warmup", "1", "--compare", "open_clip", "--threads", "1",
        "--data", "--data-path", str(small_dataset / "train"), "--workers", "1",
        "--max-batch", "--memory-limit", "160MiB", "--json", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["command"].startswith("flipctl bench --batch-size 4 --steps 2 --warmup 1 --compare open_clip")
    assert "--mask-ratios" not in report["command"]  # the flags given, not the defaults
    assert [row["mask_ratio"] for row in report["results"]] == [0.0, 0.5, 0.75]
    for row in report["results"]:
        assert row["samples_per_s"] > 0 and len(row["step_s_all"]) == 2
        assert row["flops_per_step"]["total"] > 0 and row["peak_memory_bytes"] > 0
        assert {"ideal_speedup", "measured_speedup", "speedup_efficiency", "ours_over_open_clip"} <= set(row)
        assert set(row["split_s"]) == {"image", "text", "loss", "optimizer", "other"}
        assert row["open_clip"]["samples_per_s"] > 0 and row["open_clip"]["peak_memory_bytes"] > 0
    assert report["results"][2]["ideal_speedup"] > 3
    batches = {row["mask_ratio"]: row["max_batch"] for row in report["max_batch"]["per_ratio"]}
    assert report["max_batch"]["memory_limit_bytes"] == 160 * 2**20
    assert 0 < batches[0.0] < batches[0.5] < batches[0.75]
    assert report["data_loader"]["samples_per_s"] > 0 and report["data_loader"]["headroom_vs_fastest_step"] > 0
    assert {c["check"].split(" at ")[0] for c in report["checks"]} >= {
        "speed-up efficiency", "flipctl / open_clip samples/s", "data loader / fastest step samples/s", "max batch"}
    for title in ("training step", "speed-up over mask 0", "time split", "largest batch", "data loader", "targets"):
        assert title in result.output


@pytest.mark.integration  # compiles and times steps
def test_bench_compile_option_traces_the_step(tmp_path):
    # aot_eager traces the forward and backward like inductor does, without generating C++ (seconds, not minutes).
    out = tmp_path / "compiled.json"
    result = runner.invoke(app, [
        "bench", "--batch-size", "4", "--mask-ratios", "0.5", "--steps", "1", "--warmup", "1", "--no-split",
        "--compile", "--compile-backend", "aot_eager", "--threads", "1", "--json", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["config"]["compile"] and len(report["results"]) == 2
    assert all(row["samples_per_s"] > 0 for row in report["results"])


@pytest.mark.integration  # compiles and times steps
def test_bench_variants_time_bf16_and_compiled_steps_with_mfu_against_the_peak_given(tmp_path):
    # On CUDA the variants are on by default; on a CPU --variants runs the same code path.
    out = tmp_path / "variants.json"
    args = ["bench", "--batch-size", "4", "--mask-ratios", "0.5", "--steps", "1", "--warmup", "0", "--no-split",
            "--variants", "--compile-backend", "aot_eager", "--threads", "1", "--json", str(out)]
    result = runner.invoke(app, args + ["--peak-tflops", "2"])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert [v["name"] for v in report["variants"]] == ["bf16 eager", "bf16 compiled", "fp32 compiled"]
    for variant in report["variants"]:
        assert variant["compile_backend"] == ("aot_eager" if variant["compile"] else None)
        assert [row["mask_ratio"] for row in variant["per_ratio"]] == [0.0, 0.5]
        for row in variant["per_ratio"]:
            assert row["samples_per_s"] > 0 and row["speedup_vs_configured"] > 0
            assert row["mfu"] == pytest.approx(row["achieved_tflops"] / 2)
    assert report["peak"]["tflops"] == 2 and report["peak"]["source"] == "--peak-tflops"
    assert "MFU against 2 TFLOP/s dense fp32 (--peak-tflops)" in result.output and "speed levers" in result.output


@pytest.mark.integration  # times steps
def test_bench_prints_no_mfu_for_an_unknown_device(tmp_path):
    out = tmp_path / "cpu.json"
    result = runner.invoke(app, ["bench", "--batch-size", "4", "--mask-ratios", "0", "--steps", "1", "--warmup", "0",
                                 "--no-split", "--threads", "1", "--json", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["peak"]["tflops"] is None and all(row["mfu"] is None for row in report["results"])
    assert "variants" not in report  # a CPU: only the configured step
    assert f"MFU: n/a: unknown device {report['environment']['device_name']}; pass --peak-tflops" in result.output


@pytest.mark.integration  # times steps
def test_bench_ablations_time_the_papers_knobs_against_the_plain_step(tmp_path):
    out = tmp_path / "ablations.json"
    result = runner.invoke(app, ["bench", "--batch-size", "4", "--mask-ratios", "0.5", "--steps", "1", "--warmup",
                                 "0", "--no-split", "--ablations", "--threads", "1", "--json", str(out)])
    assert result.exit_code == 0, result.output
    rows = {row["mask_ratio"]: row for row in json.loads(out.read_text())["results"]}
    assert set(rows[0.0]["ablations"]) == {"text_mask_padding_0.5"}  # nothing masked: no reconstruction
    assert set(rows[0.5]["ablations"]) == {"text_mask_padding_0.5", "recon_weight_1"}
    for a in rows[0.5]["ablations"].values():
        assert a["step_s"] > 0 and a["step_time_vs_plain"] > 0
    assert "the paper's knobs" in result.output


# -- bench/gpu.sh ---------------------------------------------------------------------------------

def _gpu_sh(*args):
    return subprocess.run(["bash", str(ROOT / "bench" / "gpu.sh"), *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)


def _bench_params(line: str, **placeholders: str) -> dict:
    """Parse a printed `flipctl bench ...` line with the real CLI's parser (nothing runs)."""
    import typer.main

    words = [placeholders.get(word, word) for word in shlex.split(line)]
    assert words[:2] == ["flipctl", "bench"], line
    command = typer.main.get_command(app).commands["bench"]
    ctx = command.make_context("bench", words[2:])
    return ctx.params


def test_gpu_script_runs_the_b16_bench_with_open_clip_and_mfu():
    result = _gpu_sh("--dry-run", "--batch-size", "768")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1  # a given batch skips the search
    params = _bench_params(lines[0])
    assert params["model"] == "B/16" and params["device"] == "cuda" and params["precision"] == "bf16"
    assert params["batch_size"] == 768 and params["mask_ratios"] == "0,0.5,0.75"
    assert params["compare"] == "open_clip" and params["max_batch"]
    assert params["peak_tflops"] is None and params["variants"] is None  # the bench looks the peak up; variants on cuda
    assert str(params["json_out"]).startswith("results/bench/")

    searched = _gpu_sh("--dry-run", "--peak-tflops", "989", "--out", "x.json", "--", "--compile")
    assert searched.returncode == 0, searched.stderr
    search, bench = searched.stdout.strip().splitlines()
    search_params = _bench_params(search, **{"<fraction x GPU memory>": "1GiB"})
    assert search_params["max_batch"] and search_params["mask_ratios"] == "0" and search_params["variants"] is False
    bench_params = _bench_params(bench, **{"<from the batch search>": "64"})
    assert bench_params["compile"] and bench_params["peak_tflops"] == 989 and str(bench_params["json_out"]) == "x.json"


@pytest.mark.parametrize("args, needle", [
    (["--bogus"], "unknown option"),
    (["--batch-size", "many"], "--batch-size"),
    (["--batch-size", "1"], "--batch-size"),
    (["--batch-size"], "needs a value"),
    (["--peak-tflops", "fast"], "--peak-tflops"),
    (["--fraction", "2"], "--fraction"),
])
def test_gpu_script_rejects_bad_arguments(args, needle):
    result = _gpu_sh("--dry-run", *args)
    assert result.returncode == 2 and needle in result.stderr and not result.stdout


# -- the step itself: no host round-trips ---------------------------------------------------------

@pytest.mark.parametrize("ratio", [0.0, 0.75])
def test_training_step_reads_nothing_back_to_the_host(tiny_cfg, ratio, monkeypatch):
    """Masking noise, gather, loss, backward and the fused AdamW all stay on the device: the step
    never converts a tensor to a Python value (on a GPU each such read is a sync)."""
    from flip.train.config import StepConfig
    from flip.train.optim import make_optimizer
    from flip.train.step import TrainStep

    model = FLIP(tiny_cfg)
    optimizer = make_optimizer(model, 1e-3, 0.2, (0.9, 0.95), 1e-6, CPU)
    assert optimizer.defaults["fused"]
    step = TrainStep(model, optimizer, StepConfig(mask_ratio=ratio))
    images, tokens = synthetic_batch(tiny_cfg, 4, CPU)

    def read_back(*args, **kwargs):
        raise AssertionError("host read-back inside the training step")

    for name in ("item", "tolist", "__bool__", "__float__", "__int__", "cpu", "numpy"):
        monkeypatch.setattr(torch.Tensor, name, read_back)
    losses = step(images, tokens, 1e-3)
    monkeypatch.undo()
    assert torch.isfinite(losses["loss"])


@pytest.mark.integration  # runs steps to measure them
def test_the_step_with_a_reconstruction_decoder_is_measured_with_it(tiny_cfg):
    from flip.models.decoder import DecoderConfig

    plain = step_peak_memory(tiny_cfg, 0.5, 8, CPU)
    assert step_peak_memory(tiny_cfg, 0.5, 8, CPU, decoder=DecoderConfig()) > plain
