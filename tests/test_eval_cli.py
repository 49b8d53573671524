"""`flipctl eval ...`: the data formats, the JSON report, masked-view inference and bad input."""

import io
import json
import shutil
import tarfile
from pathlib import Path

import pandas as pd
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from flip.eval.datasets import load_classification, load_probe_splits, load_retrieval
from flip.eval.features import Runtime
from flip.eval.retrieval import evaluate_retrieval, load_csv_retrieval_set
from flip.eval.templates import resolve_templates
from flip.eval.zeroshot import evaluate_zeroshot
from flip.saved_model import load_model
from flipctl.main import app

runner = CliRunner()


def _run(*args):
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


def _tar(path: Path, samples: list[dict[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for i, sample in enumerate(samples):
            for ext, data in sample.items():
                info = tarfile.TarInfo(f"{i:06d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


# -- zero-shot ------------------------------------------------------------------------------------
def test_zeroshot_writes_json_with_metrics_data_and_settings(small_dataset, ckpt, tmp_path):
    out = tmp_path / "zs.json"
    code, output = _run("eval", "zeroshot", "--ckpt", ckpt, "--data", small_dataset / "zeroshot", "--workers", 0,
                        "--json", out)
    assert code == 0, output
    report = json.loads(out.read_text())
    assert set(report["metrics"]) == {"top1", "top5", "mean_per_class_recall"}
    assert report["data"]["classes"] == 48 and report["data"]["images"] == 48
    assert report["settings"]["templates"]["name"] == "dataset" and report["settings"]["templates"]["count"] == 6
    assert report["settings"]["masking"]["mode"] == "full" and report["train_mask_ratio"] == 0.5
    assert report["checkpoint"].endswith("ckpt-00000005") and report["speed"]["images_per_s"] > 0
    assert "top1" in output and "images/s" in output


@pytest.mark.parametrize("flags, mode", [(["--mask-ratio", "0.5"], "masked"), (["--views", "2"], "views")])
def test_zeroshot_masked_inference_modes(small_dataset, ckpt, tmp_path, flags, mode):
    out = tmp_path / "zs.json"
    code, output = _run("eval", "zeroshot", "--ckpt", ckpt, "--data", small_dataset / "zeroshot", "--workers", 0,
                        "--templates", "simple", "--json", out, *flags)
    assert code == 0, output
    report = json.loads(out.read_text())
    assert report["settings"]["masking"]["mode"] == mode and report["settings"]["templates"]["count"] == 7


def test_clip_benchmark_webdataset_layout_matches_class_folders(small_dataset, ckpt, tmp_path):
    folders = load_classification(small_dataset / "zeroshot")
    root = tmp_path / "wds_synth"
    (root / "test").mkdir(parents=True)
    (root / "classnames.txt").write_text("\n".join(folders.classnames) + "\n")
    (root / "zeroshot_classification_templates.txt").write_text("a photo of a {c}.\na large {c}.\n")
    _tar(root / "test" / "0.tar", [{"png": Path(p).read_bytes(), "cls": str(int(y)).encode()}
                                   for p, y in zip(folders.images, folders.labels)])
    wds = load_classification(root)
    assert wds.format == "webdataset" and wds.labels.tolist() == folders.labels.tolist()
    model, _ = load_model(ckpt)
    _, templates = resolve_templates(None, wds.templates)
    assert len(templates) == 2
    a = evaluate_zeroshot(model, folders, templates, runtime=Runtime(batch_size=16))
    b = evaluate_zeroshot(model, wds, templates, runtime=Runtime(batch_size=16))
    assert a == b


# -- retrieval ------------------------------------------------------------------------------------
def test_retrieval_formats_agree(small_dataset, ckpt, tmp_path):
    csv = small_dataset / "retrieval" / "captions.csv"
    table = pd.read_csv(csv, dtype=str, keep_default_na=False)
    grouped = {f: list(g["caption"]) for f, g in table.groupby("filepath", sort=False)}
    images_root = small_dataset / "retrieval"
    # Karpathy's layout, with a train entry that the test split must leave out.
    karpathy = {"dataset": "flickr30k", "images": [
        {"filename": Path(f).name, "filepath": str(Path(f).parent), "split": "test",
         "sentences": [{"raw": c, "tokens": c.split()} for c in caps]} for f, caps in grouped.items()]
        + [{"filename": Path(next(iter(grouped))).name, "filepath": "images", "split": "train",
            "sentences": [{"raw": "not in the test split"}]}]}
    (tmp_path / "karpathy.json").write_text(json.dumps(karpathy))
    (tmp_path / "lavis.json").write_text(json.dumps([{"image": f, "caption": caps} for f, caps in grouped.items()]))
    table.to_csv(tmp_path / "captions.tsv", sep="\t", index=False)
    (tmp_path / "shards").mkdir()
    _tar(tmp_path / "shards" / "0.tar", [{"png": (images_root / f).read_bytes(), "txt": "\n".join(caps).encode()}
                                         for f, caps in grouped.items()])

    model, _ = load_model(ckpt)
    runtime = Runtime(batch_size=8)
    reference = evaluate_retrieval(model, load_csv_retrieval_set(csv, 64), "cpu")
    for path in ("karpathy.json", "lavis.json", "captions.tsv", "shards"):
        data = load_retrieval(tmp_path / path, images_root if path.endswith("json") or path.endswith("tsv") else None)
        assert len(data.images) == 20 and len(data.captions) == 60, path
        assert evaluate_retrieval(model, data, runtime=runtime) == reference, path

    out = tmp_path / "r.json"
    code, output = _run("eval", "retrieval", "--ckpt", ckpt, "--data", tmp_path / "karpathy.json", "--images-root",
                        images_root, "--views", 4, "--workers", 0, "--json", out)
    assert code == 0, output
    report = json.loads(out.read_text())
    assert set(report["metrics"]) == {f"{d}_R@{k}" for d in ("image_to_text", "text_to_image") for k in (1, 5, 10)}
    assert report["data"]["captions"] == 60 and report["settings"]["masking"]["views"] == 4


def test_quick_eval_limit_keeps_whole_images(small_dataset):
    data = load_csv_retrieval_set(small_dataset / "retrieval" / "captions.csv", 64, limit=5)
    assert data.images.shape == (5, 3, 64, 64) and len(data.captions) == 15
    assert data.text_to_image.max().item() == 4


# -- the JSON record, and the library call that makes it ---------------------------------------------
RECORD_KEYS = {"task", "checkpoint", "model", "train_mask_ratio", "train_samples", "settings", "data", "metrics",
               "speed"}
SETTINGS_KEYS = {"device", "batch_size", "precision", "workers", "masking", "compile"}
MASKING_KEYS = {"mask_ratio", "views", "seed", "mode", "patches", "kept_per_view"}
SPEED_KEYS = {"images_per_s", "images", "seconds"}
TASK_KEYS = {
    "zeroshot": ({"path", "source", "format", "images", "classes", "classnames"}, {"templates"},
                 {"top1", "top5", "mean_per_class_recall"}),
    "retrieval": ({"path", "format", "images", "captions", "truncated_captions", "images_root", "split"}, set(),
                  {f"{d}_R@{k}" for d in ("image_to_text", "text_to_image") for k in (1, 5, 10)}),
}


@pytest.mark.parametrize("task", ["zeroshot", "retrieval"])
def test_json_record_keys_and_the_library_call_agree(small_dataset, ckpt, tmp_path, task):
    """`flipctl eval ... --json` writes a fixed set of keys, and `flip.eval.evaluate_checkpoint`
    returns the same record (all but the timings) without the command line."""
    from flip.eval import Masking, evaluate_checkpoint

    data = small_dataset / ("zeroshot" if task == "zeroshot" else "retrieval/captions.csv")
    out = tmp_path / "r.json"
    code, output = _run("eval", task, "--ckpt", ckpt, "--data", data, "--workers", 0, "--batch-size", 16,
                        "--mask-ratio", 0.5, "--seed", 3, "--json", out)
    assert code == 0, output
    cli = json.loads(out.read_text())
    data_keys, extra_settings, metric_keys = TASK_KEYS[task]
    assert set(cli) == RECORD_KEYS and cli["task"] == task
    assert set(cli["settings"]) == SETTINGS_KEYS | extra_settings
    assert set(cli["settings"]["masking"]) == MASKING_KEYS and set(cli["speed"]) == SPEED_KEYS
    assert set(cli["data"]) == data_keys and set(cli["metrics"]) == metric_keys
    if extra_settings:
        assert set(cli["settings"]["templates"]) == {"name", "count", "templates", "truncated_prompts"}

    lines = []
    record = evaluate_checkpoint(ckpt, task, data=data, masking=Masking(mask_ratio=0.5, seed=3),
                                 runtime=Runtime(device="auto", batch_size=16), log=lines.append)
    assert record["metrics"] == cli["metrics"]
    assert json.loads(json.dumps({**record, "speed": None})) == {**cli, "speed": None}
    assert len(lines) == 1 and "".join(lines[0].split()) in "".join(output.split())  # the line the CLI shows


@pytest.mark.integration  # a python process
def test_evaluation_library_stands_below_training_and_the_cli():
    import subprocess
    import sys

    code = "import sys, flip.eval; print(sorted(m for m in sys.modules if m.startswith(('flip.train', 'flipctl'))))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


# -- linear probe -----------------------------------------------------------------------------------
def _colour_folders(root: Path, per_class: int, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    for name, rgb in (("red", (200, 30, 30)), ("green", (30, 200, 30)), ("blue", (30, 30, 200))):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = (torch.tensor(rgb).view(1, 1, 3) + 40 * torch.randn(48, 48, 3, generator=gen)).clamp(0, 255)
            Image.fromarray(pixels.byte().numpy()).save(root / name / f"{i}.png")


def test_linear_probe_on_split_folders(ckpt, tmp_path):
    for split, n in (("train", 8), ("test", 6)):
        _colour_folders(tmp_path / split, n, seed=len(split))
    out = tmp_path / "lp.json"
    code, output = _run("eval", "linear-probe", "--ckpt", ckpt, "--data", tmp_path, "--workers", 0,
                        "--max-iter", 100, "--json", out)
    assert code == 0, output
    report = json.loads(out.read_text())
    assert report["data"]["test_images"] == 18 and report["data"]["val_images"] == 6  # 0.2 of 8 per class, rounded
    assert report["metrics"]["top1"] > 80 and report["metrics"]["l2"] > 0


def test_linear_probe_splits_one_folder_by_fractions(tmp_path):
    _colour_folders(tmp_path, 10)
    train, val, test = load_probe_splits(tmp_path, val_fraction=0.2, test_fraction=0.3)
    assert [len(s.images) for s in (train, val, test)] == [15, 6, 9]
    assert set(map(str, train.images)).isdisjoint(map(str, val.images + test.images))
    assert [s.labels.bincount().tolist() for s in (train, val, test)] == [[5, 5, 5], [2, 2, 2], [3, 3, 3]]


# -- bad input --------------------------------------------------------------------------------------
def _assert_one_line_error(code, output, needle):
    assert code == 2, output
    assert "Traceback" not in output
    lines = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and needle.lower() in lines[0].lower(), output


def test_bad_zeroshot_data(small_dataset, ckpt, tmp_path):
    data = tmp_path / "zs"
    shutil.copytree(small_dataset / "zeroshot", data)
    names = (data / "classnames.txt").read_text().splitlines()
    (data / "classnames.txt").write_text("\n".join(names[:-1]))
    _assert_one_line_error(*_run("eval", "zeroshot", "--ckpt", ckpt, "--data", data), "47 class names")
    (data / "classnames.txt").write_text("\n".join(names))
    (data / "zzz_empty").mkdir()
    _assert_one_line_error(*_run("eval", "zeroshot", "--ckpt", ckpt, "--data", data), "has no images")
    (data / "zzz_empty").rmdir()
    (tmp_path / "t.txt").write_text("a photo of a {c}.\na photo of something.\n")
    _assert_one_line_error(*_run("eval", "zeroshot", "--ckpt", ckpt, "--data", data, "--templates",
                                 tmp_path / "t.txt"), "line 2 has no {c}")
    _assert_one_line_error(*_run("eval", "zeroshot", "--ckpt", ckpt, "--data", data, "--templates", "nope"),
                           "neither a file nor")
    _assert_one_line_error(*_run("eval", "zeroshot", "--ckpt", ckpt, "--data", data, "--classnames", "imagenet"),
                           "1000 class names")
    (tmp_path / "empty").mkdir()
    _assert_one_line_error(*_run("eval", "zeroshot", "--ckpt", ckpt, "--data", tmp_path / "empty"), "no class folders")
    _assert_one_line_error(*_run("eval", "zeroshot", "--ckpt", ckpt, "--data", data, "--mask-ratio", "1"),
                           "mask ratio")
    _assert_one_line_error(*_run("eval", "zeroshot", "--ckpt", ckpt, "--data", data, "--mask-ratio", "0.5",
                                 "--views", "2"), "either")


def test_image_without_caption(small_dataset, ckpt, tmp_path):
    images = small_dataset / "retrieval"
    (tmp_path / "k.json").write_text(json.dumps({"images": [
        {"filename": "000000000.png", "filepath": "images", "split": "test", "sentences": [{"raw": "a caption"}]},
        {"filename": "000000001.png", "filepath": "images", "split": "test", "sentences": []}]}))
    _assert_one_line_error(*_run("eval", "retrieval", "--ckpt", ckpt, "--data", tmp_path / "k.json",
                                 "--images-root", images), "000000001.png")
    (tmp_path / "c.csv").write_text("filepath,caption\nimages/000000000.png,a caption\nimages/000000001.png,\n")
    _assert_one_line_error(*_run("eval", "retrieval", "--ckpt", ckpt, "--data", tmp_path / "c.csv",
                                 "--images-root", images), "empty caption")
    (tmp_path / "shards").mkdir()
    png = (images / "images" / "000000000.png").read_bytes()
    _tar(tmp_path / "shards" / "0.tar", [{"png": png, "txt": b"a caption"}, {"png": png}])
    _assert_one_line_error(*_run("eval", "retrieval", "--ckpt", ckpt, "--data", tmp_path / "shards"), "no caption")
    (tmp_path / "missing.csv").write_text("filepath,caption\nnope.png,a caption\n")
    _assert_one_line_error(*_run("eval", "retrieval", "--ckpt", ckpt, "--data", tmp_path / "missing.csv"),
                           "image not found")


def test_checkpoint_that_does_not_load(small_dataset, ckpt, tmp_path):
    _assert_one_line_error(*_run("eval", "zeroshot", "--ckpt", tmp_path / "nope"), "no checkpoint")
    broken = tmp_path / "broken"
    shutil.copytree(ckpt, broken)
    latest = broken / (broken / "latest").read_text().strip()
    (latest / "model.safetensors").write_bytes(b"not safetensors")
    _assert_one_line_error(*_run("eval", "retrieval", "--ckpt", broken), "unreadable weights")
    _assert_one_line_error(*_run("export", tmp_path / "out", "--ckpt", broken), "unreadable weights")
