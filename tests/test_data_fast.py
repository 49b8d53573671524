"""The lean data paths of issue 13: uint8 worker decode, device-side batch decode, and their bench."""

import io
import json
import subprocess
import sys
import tarfile
import warnings

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from torchvision.transforms import functional as TF

from flip.data.augment import AugmentConfig, crop_box
from flip.data.decode import Undecodable, decode_crop, draft_factor, jpeg_header, jpeg_size
from flip.data.device_decode import EncodedBatch, crop_boxes, decode_batch, decode_images
from flip.data.pipeline import SlotPosition, StreamConfig, make_loader
from flip.data.synth_jpeg import JpegShardConfig, write_jpeg_shards
from flip.saved_model import resolve_checkpoint
from flip.train.config import TrainConfig
from flip.train.faults import StopRequested
from flip.train.input_stage import InputStage
from flip.train.trainer import train

FLIPCTL = [sys.executable, "-m", "flipctl.main"]
AUG = AugmentConfig(64, (0.5, 1.0), True)


@pytest.fixture(scope="module")
def jpeg_shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("jpeg")
    write_jpeg_shards(root, JpegShardConfig(image_size=96, samples=192, shard_size=48, seed=3))
    return root


def _jpegs(root, n=16):
    with tarfile.open(root / "00000.tar") as tar:
        return [tar.extractfile(m).read() for m in tar if m.name.endswith(".jpg")][:n]


def _levels(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.float() - b.float()).abs()


def _stream(root, decode, batch=8, seed=1, **kw):
    return StreamConfig(urls=tuple(str(p) for p in sorted(root.glob("*.tar"))), batch_size=batch, augment=AUG,
                        shuffle_buffer=30, seed=seed, decode=decode, **kw)


def _take(loader, n):
    it = iter(loader)
    return [next(it) for _ in range(n)]


def test_crop_box_is_a_function_of_seed_and_size():
    boxes = [crop_box(seed, 96, 128, AUG) for seed in range(200)]
    assert boxes == [crop_box(seed, 96, 128, AUG) for seed in range(200)]
    for b in boxes:
        assert 0 <= b.top and b.top + b.height <= 96 and 0 <= b.left and b.left + b.width <= 128
        assert 0.5 * 96 * 128 * 0.9 <= b.height * b.width <= 96 * 128  # scale (0.5, 1), up to rounding
    assert 0.3 < sum(b.flip for b in boxes) / len(boxes) < 0.7
    assert not any(crop_box(seed, 96, 128, AugmentConfig(64, (0.5, 1.0), False)).flip for seed in range(50))


def test_input_stage_normalises_uint8_as_to_tensor_and_normalize_do():
    images = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    expected = torch.stack([TF.normalize(TF.to_tensor(TF.to_pil_image(x)), (0.48145466, 0.4578275, 0.40821073),
                                         (0.26862954, 0.26130258, 0.27577711)) for x in images])
    out = InputStage(torch.device("cpu"), AUG)(images)
    assert out.dtype == torch.float32 and torch.allclose(out, expected, atol=1e-5)


def test_device_decode_cuts_the_worker_paths_boxes_with_pixels_within_tolerance(jpeg_shards):
    datas, seeds = _jpegs(jpeg_shards), list(range(100, 116))
    worker_boxes = []

    def recording(seed):
        def box_for(h, w):
            worker_boxes.append(crop_box(seed, h, w, AUG))
            return worker_boxes[-1]
        return box_for

    worker = torch.stack([decode_crop(d, recording(s), 64) for d, s in zip(datas, seeds)])
    batch = EncodedBatch.build([(i, d, s) for i, (d, s) in enumerate(zip(datas, seeds))], [], 64)
    images = decode_images(batch, torch.device("cpu"))
    assert crop_boxes(seeds, [tuple(x.shape[-2:]) for x in images], AUG) == worker_boxes
    device = decode_batch(batch, AUG, torch.device("cpu"))
    diff = _levels(worker, device)  # antialiased bilinear in uint8 vs roi_align's area average in float
    assert diff.mean() < 1.5 and diff.quantile(0.99) < 8, (diff.mean(), diff.quantile(0.99))


def test_dct_downscale_is_used_for_large_sources_and_stays_close(tmp_path):
    root = tmp_path / "big"
    write_jpeg_shards(root, JpegShardConfig(image_size=384, samples=6, shard_size=6))
    datas, seeds = _jpegs(root, 6), list(range(6))
    factors = [draft_factor(crop_box(s, 384, 384, AUG), 64) for s in seeds]
    assert set(factors) <= {2, 4} and 4 in factors, factors  # crops of 235-384 px for 64 px: 1/2 or 1/4 scale
    worker = torch.stack([decode_crop(d, lambda h, w, s=s: crop_box(s, h, w, AUG), 64) for d, s in zip(datas, seeds)])
    batch = EncodedBatch.build([(i, d, s) for i, (d, s) in enumerate(zip(datas, seeds))], [], 64)
    diff = _levels(worker, decode_batch(batch, AUG, torch.device("cpu")))
    assert diff.mean() < 3 and diff.quantile(0.99) < 16, (diff.mean(), diff.quantile(0.99))


def _mixed_shard(path, jpegs):
    """JPEG, PNG and WebP samples: the device path must decode the last two in the worker."""
    with tarfile.open(path, "w") as tar:
        for i, data in enumerate(jpegs):
            members = {"txt": f"caption {i}".encode()}
            if i % 3 == 0:
                members["jpg"] = data
            else:
                fmt = "PNG" if i % 3 == 1 else "WEBP"
                buffer = io.BytesIO()
                Image.open(io.BytesIO(data)).save(buffer, fmt, **({"lossless": True} if fmt == "WEBP" else {}))
                members["png" if fmt == "PNG" else "webp"] = buffer.getvalue()
            for ext, payload in members.items():
                info = tarfile.TarInfo(f"{i:05d}.{ext}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))


def test_png_and_webp_fall_back_to_worker_decode(jpeg_shards, tmp_path):
    root = tmp_path / "mixed"
    root.mkdir()
    _mixed_shard(root / "a.tar", _jpegs(jpeg_shards, 12))
    stage = InputStage(torch.device("cpu"), AUG)
    worker_images, _, worker_meta = _take(make_loader(_stream(root, "worker", batch=12), 0), 1)[0]
    encoded, _, meta = _take(make_loader(_stream(root, "device", batch=12), 0), 1)[0]
    assert meta["keys"] == worker_meta["keys"]
    assert len(encoded["jpeg_index"]) == 4 and len(encoded["decoded_index"]) == 8
    fallback = encoded["decoded_index"]
    # worker-decoded samples are the worker path's exactly; JPEGs within the decoders' tolerance
    assert torch.equal(encoded["decoded"], worker_images[fallback])
    diff = _levels(stage(worker_images), stage(encoded)) * 0.27 * 255
    assert diff.mean() < 1.5


def test_device_mode_counts_a_truncated_jpeg_in_the_worker(jpeg_shards):
    data = _jpegs(jpeg_shards, 1)[0]
    assert jpeg_header(data) == (96, 96)
    with pytest.raises(Undecodable):
        jpeg_header(data[: len(data) // 2])


def test_jpeg_size_reads_the_frame_header_as_pil_does():
    for mode, kw in (("RGB", {}), ("L", {}), ("RGB", {"progressive": True}), ("CMYK", {})):
        buffer = io.BytesIO()
        Image.new(mode, (37, 23)).save(buffer, "JPEG", **kw)
        height, width, components = jpeg_size(buffer.getvalue())
        assert (height, width, components) == (23, 37, len(mode)), mode
        assert (jpeg_header(buffer.getvalue()) is None) == (mode == "CMYK")  # CMYK: decoded in the worker


def test_a_corrupt_jpeg_that_passed_the_header_check_does_not_stop_the_batch(jpeg_shards):
    good = _jpegs(jpeg_shards, 2)
    bad = good[1][:400] + bytes(200) + good[1][-2:]  # valid header and end marker, garbage in between
    batch = EncodedBatch.build([(0, good[0], 1), (1, bad, 2)], [], 64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = decode_batch(batch, AUG, torch.device("cpu"))
    assert out.shape == (2, 3, 64, 64) and torch.isfinite(out).all()


@pytest.mark.parametrize("decode", ["worker", "device"])
def test_loader_resumes_exactly(jpeg_shards, decode):
    stage = InputStage(torch.device("cpu"), AUG)
    cfg = _stream(jpeg_shards, decode, seed=2)
    full = _take(make_loader(cfg, workers=2), 6)
    positions = [SlotPosition(), SlotPosition()]
    for _, _, meta in full[:3]:
        positions[meta["slot"]] = SlotPosition(meta["epoch"], meta["offset"])
    resumed = _take(make_loader(cfg, workers=2, positions=positions, next_slot=full[3][2]["slot"]), 3)
    for a, b in zip(full[3:], resumed):
        assert torch.equal(stage(a[0]), stage(b[0])) and torch.equal(a[1], b[1])


def test_worker_batches_arrive_channels_last_with_the_in_process_pixels(jpeg_shards):
    cfg = _stream(jpeg_shards, "worker", seed=4)
    in_process, from_worker = _take(make_loader(cfg, workers=0), 2), _take(make_loader(cfg, workers=1), 2)
    for (a, tokens_a, _), (b, tokens_b, _) in zip(in_process, from_worker):
        assert b.dtype == torch.uint8 and b.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(a, b) and torch.equal(tokens_a, tokens_b)


def test_a_worker_stacks_its_batch_straight_into_shared_memory(monkeypatch):
    """Else handing the batch to the trainer copies it into shared memory once more (38 MB for B/16)."""
    import flip.data.decode as decode

    images = [torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8) for _ in range(3)]
    assert not decode.stack_channels_last(images).is_shared()  # in-process: plain memory
    monkeypatch.setattr(decode, "get_worker_info", lambda: object())
    batch = decode.stack_channels_last(images)
    assert batch.is_shared() and batch.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(batch, torch.stack(images))


def test_jpeg_decode_matches_torchvision_bit_for_bit(jpeg_shards):
    """The worker path's libjpeg-turbo (simplejpeg) gives torchvision.io's pixels, which the device path uses."""
    from torchvision.io import ImageReadMode, decode_jpeg

    from flip.data.decode import decode_jpeg_rgb
    for data in _jpegs(jpeg_shards, 4):
        reference = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
        assert torch.equal(decode_jpeg_rgb(data), reference)


class _StopAfter:
    def __init__(self, steps):
        self.steps, self.calls = steps, 0

    def is_set(self):
        self.calls += 1
        return self.calls >= self.steps


@pytest.mark.integration  # trains
@pytest.mark.parametrize("decode", ["worker", "device"])
def test_training_resumes_bit_identical(jpeg_shards, tmp_path, decode):
    def cfg(out):
        return TrainConfig(data=str(jpeg_shards), model="tiny", batch_size=8, samples=8 * 8, workers=2, seed=5,
                           out=str(tmp_path / out), log_every=2, shuffle_buffer=30, decode=decode,
                           periodic_eval=False)  # checkpoints: the stop's (resumed from) and the last

    summary = train(cfg("full"))
    assert summary["steps"] == 8 and summary["final_loss"] == summary["final_loss"]  # finite
    with pytest.raises(StopRequested):
        train(cfg("stopped"), stop=_StopAfter(3))
    train(cfg("stopped"), resume=True)
    full = load_file(str(resolve_checkpoint(tmp_path / "full") / "model.safetensors"))
    resumed = load_file(str(resolve_checkpoint(tmp_path / "stopped") / "model.safetensors"))
    for key in full:
        assert torch.equal(full[key], resumed[key]), key


@pytest.mark.integration  # a flipctl process
def test_bench_data_paths_side_by_side(tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run(FLIPCTL + ["bench", "--data", "synthetic-jpeg:96", "--model", "tiny", "--batch-size", "16",
                                       "--workers", "1", "--json", str(out)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert set(report["paths"]) == {"legacy", "worker", "device"}
    for row in report["paths"].values():
        assert row["per_core_wall"] > 0 and (row["path"] == "legacy" or row["input_stage_samples_per_s"] > 0)
        assert set(row["per_mask"]) == {"0", "0.5", "0.75"}
        assert row["per_mask"]["0.75"]["needed_samples_per_s"] > row["per_mask"]["0"]["needed_samples_per_s"]
    assert report["paths"]["worker"]["per_core_vs_legacy"] > 1
    for title in ("data paths", "legacy", "worker", "device", "cores"):
        assert title in result.stdout


@pytest.mark.integration  # a flipctl process
def test_bench_data_bad_spec_is_one_line(tmp_path):
    result = subprocess.run(FLIPCTL + ["bench", "--data", "synthetic-jpeg:huge"], capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "synthetic-jpeg:SIZE" in result.stderr


def test_plain_caption_fast_path_cleans_exactly_as_open_clip():
    from flip.data.tokenizer import _bpe, _clean

    bpe = _bpe()
    for text in ["A Photo of  a DOG\r\n at night", "x\ty", "tom &amp; jerry", "a\x0bb", "\x1b[31mred", "café",
                 "", "  spaces  ", "it\u2019s", "<b>bold</b> &lt;3"]:
        assert _clean(bpe, text) == bpe.clean_fn(text), text


def test_runs_saved_before_decode_existed_resume_on_the_pil_path():
    from flip.train.trainer import resumed_config

    saved = TrainConfig(out="runs/old").to_dict()
    del saved["decode"]
    assert resumed_config("runs/old", saved, {}).decode == "legacy"
    assert resumed_config("runs/new", TrainConfig(out="runs/new").to_dict(), {}).decode == "worker"
