"""Tests for the procedural built-in dataset (flip.data.synth)."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import random
import tarfile
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image

from flip.data import synth
from flip.data.synth import (
    OBJECT_COLOURS,
    SHAPES,
    Scene,
    SynthConfig,
    describe_scene,
    is_complete,
    render_scene,
    sample_class_scene,
    sample_scene,
    total_items,
    write_builtin_dataset,
)

SMALL = SynthConfig(
    seed=0,
    train_samples=300,
    shard_size=100,
    zeroshot_per_class=2,
    retrieval_images=20,
    captions_per_image=5,
    workers=2,
)


def tree_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, dict, list[int]]:
    """SMALL written with 2 worker processes, plus its manifest and progress calls."""
    out = tmp_path_factory.mktemp("synth") / "data"
    calls: list[int] = []
    manifest = write_builtin_dataset(out, SMALL, progress=calls.append)
    return out, manifest, calls


# ---------------------------------------------------------------- scenes


def test_sample_scene_invariants():
    rng = random.Random(0)
    for _ in range(500):
        scene = sample_scene(rng)
        assert isinstance(scene, Scene)
        assert 1 <= len(scene.objects) <= 4
        cells = [o.cell for o in scene.objects]
        assert len(set(cells)) == len(cells)
        kinds = [(o.colour, o.shape) for o in scene.objects]
        assert len(set(kinds)) == len(kinds)
    assert all(len(sample_scene(rng, min_objects=2).objects) >= 2 for _ in range(100))


def test_sample_class_scene_has_one_large_object_of_the_class():
    rng = random.Random(0)
    for colour in OBJECT_COLOURS:
        for shape in SHAPES:
            scene = sample_class_scene(rng, colour, shape)
            large = [o for o in scene.objects if o.size == "large"]
            assert [(o.colour, o.shape) for o in large] == [(colour, shape)]
            assert all(o.colour != colour and o.shape != shape for o in scene.objects if o.size == "small")


def test_render_scene_is_deterministic_and_sized():
    scene = sample_scene(random.Random(1))
    a, b = render_scene(scene, 64), render_scene(scene, 64)
    assert a.size == (64, 64) and a.mode == "RGB"
    assert a.tobytes() == b.tobytes()
    assert render_scene(scene, 96).size == (96, 96)


def test_describe_scene_is_deterministic_given_rng():
    scene = sample_scene(random.Random(2))
    assert describe_scene(scene, random.Random(5)) == describe_scene(scene, random.Random(5))


def test_captions_name_the_object_of_single_object_scenes():
    rng = random.Random(3)
    for _ in range(200):
        scene = sample_scene(rng, max_objects=1)
        (obj,) = scene.objects
        caption = describe_scene(scene, rng).lower()
        assert any(w in caption for w in synth._COLOUR_WORDS[obj.colour])
        assert any(w in caption for w in synth._SHAPE_WORDS[obj.shape])


def test_captions_vary():
    rng = random.Random(4)
    scene = sample_scene(rng, min_objects=3)
    assert len({describe_scene(scene, rng) for _ in range(20)}) >= 10


def test_captions_fit_clip_context():
    tokenizer = pytest.importorskip("open_clip.tokenizer").SimpleTokenizer()
    rng = random.Random(5)
    lengths = []
    for _ in range(400):
        scene = sample_scene(rng)
        caption = describe_scene(scene, rng)
        n = len(tokenizer.encode(caption))
        assert n + 2 <= 32, caption
        # The generator's own count is exact, so its budget is trustworthy.
        assert synth._count_tokens(caption) == n, caption
        lengths.append(n)
    assert max(lengths) > 20  # budget is used, not trivially short


# ---------------------------------------------------------------- files on disk


def test_progress_and_manifest(dataset):
    out, manifest, calls = dataset
    assert sum(calls) == total_items(SMALL)
    assert manifest == json.loads((out / "dataset.json").read_text())
    assert manifest["counts"] == {
        "train": 300,
        "train_shards": 3,
        "zeroshot": 2 * 48,
        "zeroshot_classes": 48,
        "retrieval_images": 20,
        "retrieval_captions": 100,
    }


def test_same_seed_same_bytes_regardless_of_workers(dataset, tmp_path):
    out, _, _ = dataset
    write_builtin_dataset(tmp_path, replace(SMALL, workers=1))
    assert tree_hashes(tmp_path) == tree_hashes(out)


def test_different_seed_different_bytes(dataset, tmp_path):
    out, _, _ = dataset
    write_builtin_dataset(tmp_path, replace(SMALL, seed=1, workers=1))
    a, b = tree_hashes(out), tree_hashes(tmp_path)
    assert a.keys() == b.keys()
    differing = {k for k in a if a[k] != b[k]}
    assert "train/shard-00000.tar" in differing
    assert "retrieval/captions.csv" in differing


def test_train_shards_are_webdataset_readable(dataset):
    wds = pytest.importorskip("webdataset")
    out, _, _ = dataset
    urls = [str(out / "train" / f"shard-{i:05d}.tar") for i in range(3)]
    samples = list(wds.WebDataset(urls, shardshuffle=False).decode("pil"))
    assert len(samples) == 300
    assert [s["__key__"] for s in samples] == [f"{i:09d}" for i in range(300)]
    for s in samples[:50]:
        assert {"png", "txt", "json"} <= s.keys()
        assert isinstance(s["png"], Image.Image) and s["png"].size == (64, 64)
        meta = s["json"]
        assert meta["key"] == s["__key__"]
        assert meta["caption"] == s["txt"]
        assert meta["status"] == "success"
        assert (meta["width"], meta["height"]) == (64, 64)
        assert {"background", "texture", "objects", "num_objects"} <= meta.keys()
        assert len(meta["objects"]) == meta["num_objects"]


def test_train_tars_are_normalised(dataset):
    out, _, _ = dataset
    sizes = json.loads((out / "train" / "sizes.json").read_text())
    assert sizes == {"shard-00000.tar": 100, "shard-00001.tar": 100, "shard-00002.tar": 100}
    for name, count in sizes.items():
        with tarfile.open(out / "train" / name) as tar:
            members = tar.getmembers()
        names = [m.name for m in members]
        assert names == sorted(names)
        assert len(names) == 3 * count
        assert {n.rsplit(".", 1)[1] for n in names} == {"png", "txt", "json"}
        for m in members:
            assert (m.mtime, m.uid, m.gid, m.uname, m.gname) == (0, 0, 0, "", "")


def test_zeroshot_split(dataset):
    out, _, _ = dataset
    root = out / "zeroshot"
    folders = sorted(p.name for p in root.iterdir() if p.is_dir())
    classnames = (root / "classnames.txt").read_text().splitlines()
    assert len(classnames) == len(folders) == 48
    assert len(set(classnames)) == 48
    for folder, name in zip(folders, classnames):
        assert folder.split("_", 1)[1] == name.replace(" ", "_")
        pngs = sorted((root / folder).glob("*.png"))
        assert len(pngs) == SMALL.zeroshot_per_class
        assert Image.open(pngs[0]).size == (64, 64)
    templates = (root / "templates.txt").read_text().splitlines()
    assert len(templates) >= 4
    assert all("{c}" in t for t in templates)


def test_retrieval_split(dataset):
    out, _, _ = dataset
    root = out / "retrieval"
    with open(root / "captions.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert rows and list(rows[0].keys()) == ["filepath", "caption"]
    by_image: dict[str, list[str]] = {}
    for row in rows:
        by_image.setdefault(row["filepath"], []).append(row["caption"])
    assert len(by_image) == SMALL.retrieval_images
    assert sorted(p.name for p in (root / "images").iterdir()) == sorted(Path(k).name for k in by_image)
    for filepath, captions in by_image.items():
        assert (root / filepath).is_file()
        assert len(captions) == SMALL.captions_per_image
        assert len(set(captions)) == len(captions)


def test_held_out_images_differ_from_train(dataset):
    out, _, _ = dataset
    train_pngs = set()
    for shard in sorted((out / "train").glob("*.tar")):
        with tarfile.open(shard) as tar:
            for m in tar.getmembers():
                if m.name.endswith(".png"):
                    train_pngs.add(tar.extractfile(m).read())
    held_out = [p.read_bytes() for p in (out / "retrieval" / "images").glob("*.png")]
    assert not train_pngs.intersection(held_out)


def test_pngs_decode(dataset):
    out, _, _ = dataset
    with tarfile.open(out / "train" / "shard-00000.tar") as tar:
        data = tar.extractfile("000000000.png").read()
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG" and image.mode == "RGB" and image.size == (64, 64)


def test_is_complete(tmp_path):
    cfg = replace(SMALL, train_samples=20, shard_size=10, zeroshot_per_class=1, retrieval_images=3, workers=1)
    assert not is_complete(tmp_path, cfg)
    write_builtin_dataset(tmp_path, cfg)
    assert is_complete(tmp_path, cfg)
    assert is_complete(tmp_path, replace(cfg, workers=4))  # workers do not change the bytes
    assert not is_complete(tmp_path, replace(cfg, seed=1))
    assert not is_complete(tmp_path, replace(cfg, train_samples=21))
    (tmp_path / "dataset.json").unlink()
    assert not is_complete(tmp_path, cfg)


def test_rewrite_replaces_stale_shards(tmp_path):
    cfg = replace(SMALL, train_samples=30, shard_size=10, zeroshot_per_class=1, retrieval_images=2, workers=1)
    write_builtin_dataset(tmp_path, cfg)
    smaller = replace(cfg, train_samples=10)
    write_builtin_dataset(tmp_path, smaller)
    assert sorted(p.name for p in (tmp_path / "train").glob("*.tar")) == ["shard-00000.tar"]
    assert is_complete(tmp_path, smaller) and not is_complete(tmp_path, cfg)


# ---------------------------------------------------------------- scene kinds


def _train_meta(root: Path) -> list[dict]:
    with tarfile.open(root / "train" / "shard-00000.tar") as tar:
        return [json.loads(tar.extractfile(m).read()) for m in tar.getmembers() if m.name.endswith(".json")]


def test_large_scenes_keep_the_layouts_and_the_zeroshot_set(dataset, tmp_path):
    """`scenes="large"` changes only the object sizes: the same layouts and the same zero-shot images, so a
    model trained on either is scored on the same test."""
    out, manifest, _ = dataset
    cfg = replace(SMALL, train_samples=100, scenes="large", workers=1)
    large = write_builtin_dataset(tmp_path, cfg)
    assert "scenes" not in manifest["config"]  # "mixed" caches written before the option stay valid
    assert large["config"]["scenes"] == "large"
    assert is_complete(tmp_path, cfg) and not is_complete(tmp_path, replace(cfg, scenes="mixed"))

    mixed_meta, large_meta = _train_meta(out), _train_meta(tmp_path)
    assert {o["size"] for m in mixed_meta for o in m["objects"]} == {"small", "large"}
    assert {o["size"] for m in large_meta for o in m["objects"]} == {"large"}

    def layout(m):
        return [(o["shape"], o["colour"], o["position"]) for o in m["objects"]] + [m["background"]]
    assert [layout(m) for m in large_meta] == [layout(m) for m in mixed_meta]

    def zeroshot(root):
        return {k: v for k, v in tree_hashes(root).items() if k.startswith("zeroshot/")}
    assert zeroshot(tmp_path) == zeroshot(out)
    assert tree_hashes(tmp_path)["retrieval/captions.csv"] != tree_hashes(out)["retrieval/captions.csv"]


def test_unknown_scene_kind_is_a_config_error(tmp_path):
    from flip.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown scene kind"):
        write_builtin_dataset(tmp_path, replace(SMALL, scenes="huge"))
    assert not (tmp_path / "train").exists()  # refused before anything was written


# ---------------------------------------------------------------- what a mask hides


def test_hidden_probability_is_the_exact_hypergeometric():
    from flip.data.mask_coverage import hidden_probability

    assert hidden_probability(1, 64, 32) == 0.5
    assert hidden_probability(0, 64, 16) == 1.0  # nothing to hide
    assert hidden_probability(49, 64, 16) == 0.0  # more patches than the mask drops
    assert hidden_probability(2, 4, 2) == pytest.approx(1 / 6)


def test_mask_coverage_counts_patches_and_large_scenes_hide_less():
    from flip.data.mask_coverage import mask_coverage, object_patches

    # A large object spans 19 px of a 64 px image: 3x3 to 4x4 patches of 8 px (a ring or star, fewer).
    assert 4 <= object_patches(synth.SceneObject("square", "red", "large", cell=4), 64, 8) <= 16
    assert object_patches(synth.SceneObject("square", "red", "small", cell=4), 64, 8) <= 9
    patches, mixed = mask_coverage("mixed", (0.0, 0.5, 0.75), samples=300)
    assert patches["small"] < patches["large"]
    assert mixed[0].scenes_with_hidden_object == 0.0 and mixed[0].kept_patches == 64
    assert mixed[1].scenes_with_hidden_object < mixed[2].scenes_with_hidden_object
    assert mixed[2].hidden_by_size["small"] > mixed[2].hidden_by_size["large"]
    large_patches, large = mask_coverage("large", (0.0, 0.5, 0.75), samples=300)
    assert set(large_patches) == {"large"}
    assert large[2].scenes_with_hidden_object < mixed[2].scenes_with_hidden_object / 1.5


def test_mask_coverage_cli_reports_and_refuses_bad_input(tmp_path):
    from typer.testing import CliRunner

    from flipctl.main import app

    runner = CliRunner()
    out = tmp_path / "coverage.json"
    result = runner.invoke(app, ["data", "mask-coverage", "--samples", "50", "--json", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert [row["mask_ratio"] for row in report["rows"]] == [0.5, 0.75] and report["scenes"] == "mixed"
    for args, needle in ((["--scenes", "huge"], "unknown scene kind"),
                         (["--mask-ratios", "0.5,1.2"], "must be in [0, 1)")):
        result = runner.invoke(app, ["data", "mask-coverage", "--samples", "5", *args])
        assert result.exit_code != 0 and needle in result.output and "Traceback" not in result.output
