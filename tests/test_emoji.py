"""`flipctl data emoji`: the emoji corpus, built from a small fixture in the npm packages' layout.

The fixture mirrors emoji-datasource-{apple,facebook} 16 (`emoji.json`, `img/<vendor>/64/*.png`)
and openmoji 17 (`data/openmoji.json`, `color/svg/*.svg`) with 11 emoji, 4 of them with 5 skin
tones, and PIL-drawn art; nothing is read from a real npm install.
"""

import hashlib
import json
import shutil
import sys
import tarfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flip.data.emoji import EmojiConfig, build_emoji_corpus, read_stats
from flip.eval.datasets import load_classification, load_retrieval
from flipctl.main import app

TONE_CODES = ("1F3FB", "1F3FC", "1F3FD", "1F3FE", "1F3FF")
TONE_NAMES = ("light", "medium-light", "medium", "medium-dark", "dark")
# (unified as emoji-datasource writes it, name, short name, category, subcategory, skin tones?)
EMOJI = [
    ("1F600", "GRINNING FACE", "grinning", "Smileys & Emotion", "face-smiling", False),
    ("1F601", "GRINNING FACE WITH SMILING EYES", "grin", "Smileys & Emotion", "face-smiling", False),
    ("263A-FE0F", "WHITE SMILING FACE", "relaxed", "Smileys & Emotion", "face-affection", False),
    ("1F436", "DOG FACE", "dog", "Animals & Nature", "animal-mammal", False),
    ("1F431", "CAT FACE", "cat", "Animals & Nature", "animal-mammal", False),
    ("1F34E", "RED APPLE", "apple", "Food & Drink", "food-fruit", False),
    ("1F347", "GRAPES", "grapes", "Food & Drink", "food-fruit", False),
    ("1F44B", "WAVING HAND SIGN", "wave", "People & Body", "hand-fingers-open", True),
    ("270B", "RAISED HAND", "hand", "People & Body", "hand-fingers-open", True),
    ("1F596", "RAISED HAND WITH PART BETWEEN MIDDLE AND RING FINGERS", "spock-hand", "People & Body",
     "hand-fingers-open", True),
    ("1F91A", "RAISED BACK OF HAND", "raised_back_of_hand", "People & Body", "hand-fingers-open", True),
    ("1F3FB", "EMOJI MODIFIER FITZPATRICK TYPE-1-2", "skin-tone-2", "Component", "skin-tone", False),
]


def _colour(key: str, vendor: str) -> tuple[int, int, int]:
    digest = hashlib.sha256(f"{key}/{vendor}".encode()).digest()
    return digest[0], digest[1], digest[2]


def _png(path: Path, key: str, vendor: str) -> None:
    from PIL import Image, ImageDraw

    image = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    ImageDraw.Draw(image).ellipse((8, 8, 56, 56), fill=_colour(key, vendor) + (255,))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def _datasource(root: Path, vendor: str) -> None:
    pkg = root / f"emoji-datasource-{vendor}"
    entries = []
    for unified, name, short, category, sub, tones in EMOJI:
        entry = {"name": name, "unified": unified, "image": f"{unified.lower()}.png", "short_names": [short],
                 "category": category, "subcategory": sub, f"has_img_{vendor}": True}
        _png(pkg / "img" / vendor / "64" / entry["image"], unified, vendor)
        if tones:
            entry["skin_variations"] = {}
            for tone in TONE_CODES:
                image = f"{unified.lower()}-{tone.lower()}.png"
                entry["skin_variations"][tone] = {"unified": f"{unified}-{tone}", "image": image,
                                                  f"has_img_{vendor}": True}
                _png(pkg / "img" / vendor / "64" / image, f"{unified}-{tone}", vendor)
        entries.append(entry)
    (pkg / "emoji.json").write_text(json.dumps(entries))
    (pkg / "package.json").write_text(json.dumps({"name": pkg.name, "version": "16.0.0"}))


def _openmoji(root: Path) -> None:
    pkg = root / "openmoji"
    (pkg / "data").mkdir(parents=True)
    (pkg / "color" / "svg").mkdir(parents=True)
    rows = []
    for unified, name, short, category, sub, tones in EMOJI:
        hexcode = unified.replace("-FE0F", "")  # OpenMoji writes some code points without FE0F
        codes = [(hexcode, "")] + ([(f"{hexcode}-{t}", t) for t in TONE_CODES] if tones else [])
        for code, tone in codes:
            tone_name = f": {TONE_NAMES[TONE_CODES.index(tone)]} skin tone" if tone else ""
            rows.append({"hexcode": code, "annotation": name.lower().replace(" sign", "") + tone_name,
                         "tags": "" if tone else f"{short}, test", "openmoji_tags": "", "group": category.lower(),
                         "subgroups": sub, "skintone": TONE_CODES.index(tone) + 1 if tone else ""})
            r, g, b = _colour(code, "openmoji")
            (pkg / "color" / "svg" / f"{code}.svg").write_text(
                f'<svg viewBox="0 0 72 72" xmlns="http://www.w3.org/2000/svg"><circle cx="36" cy="36" r="24" '
                f'fill="#{r:02x}{g:02x}{b:02x}" stroke="#000000" stroke-width="2"/></svg>')
    (pkg / "data" / "openmoji.json").write_text(json.dumps(rows))
    (pkg / "package.json").write_text(json.dumps({"name": "openmoji", "version": "17.0.0"}))


@pytest.fixture
def packages(tmp_path):
    root = tmp_path / "node_modules"
    _datasource(root, "apple")
    _datasource(root, "facebook")
    _openmoji(root)
    return root


# Two vendors: no SVG renderer needed; facebook is the held-out style. Half the emoji held out, so the
# 11-emoji fixture leaves some in every zero-shot task.
CFG = EmojiConfig(seed=3, vendors=("apple", "facebook"), held_out_fraction=0.5, shard_size=10,
                  style_retrieval_images=0)
FLAGS = ["--vendors", "apple,facebook", "--held-out-fraction", "0.5", "--shard-size", "10", "--seed", "3"]


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _train_items(root: Path) -> list[dict]:
    metas = []
    for shard in sorted((root / "train").glob("*.tar")):
        with tarfile.open(shard) as tar:
            metas += [json.loads(tar.extractfile(m).read()) for m in tar if m.name.endswith(".json")]
    return metas


def test_same_seed_same_bytes_other_seed_other_split(packages, tmp_path):
    a = build_emoji_corpus(tmp_path / "a", packages, CFG)
    b = build_emoji_corpus(tmp_path / "b", packages, CFG)
    assert a.built and b.built
    hashes = _hashes(tmp_path / "a")
    assert hashes == _hashes(tmp_path / "b")
    assert sum(name.endswith(".tar") for name in hashes) == -(-a.stats["sets"]["train"]["samples"] // 10) >= 2
    c = build_emoji_corpus(tmp_path / "c", packages, EmojiConfig(**{**CFG.__dict__, "seed": 4}))
    assert {m["emoji"] for m in _train_items(tmp_path / "c")} != {m["emoji"] for m in _train_items(tmp_path / "a")}
    assert c.stats["sets"]["train"]["samples"] == sum(
        json.loads((tmp_path / "c/train/sizes.json").read_text()).values())


def test_held_out_emoji_and_vendor_never_reach_training(packages, tmp_path):
    stats = build_emoji_corpus(tmp_path / "out", packages, CFG).stats
    out = tmp_path / "out"
    train = _train_items(out)
    base = {m["emoji"]: m["emoji"].split("-1F3F")[0] for m in train}  # a variant's base: strip the tone
    assert {m["vendor"] for m in train} == {"apple"} and stats["held_out_vendor"] == "facebook"
    train_pairs = {(m["emoji"].lower(), m["vendor"]) for m in train}
    novel = [p for p in (out / "zeroshot").rglob("*.jpg")] + list((out / "retrieval/novel/images").glob("*.jpg"))
    novel_pairs = {tuple(p.stem.split("_")) for p in novel}
    assert novel_pairs and not novel_pairs & train_pairs
    novel_bases = {k.upper().split("-1F3F")[0] for k, _ in novel_pairs}
    assert not novel_bases & set(base.values())  # held out with all its skin tones and every vendor's art
    assert {v for _, v in novel_pairs} == {"apple", "facebook"}
    style = {tuple(p.stem.split("_")) for p in (out / "retrieval/style/images").glob("*.jpg")}
    assert {v for _, v in style} == {"facebook"} and {k.upper() for k, _ in style} == set(base)
    assert stats["emoji"]["held_out_base_emoji"] == len(novel_bases)
    assert stats["emoji"]["left_out_by_category"] == {"Component": 1}


def test_sets_load_with_the_projects_loaders(packages, tmp_path):
    stats = build_emoji_corpus(tmp_path / "out", packages, CFG).stats
    out = tmp_path / "out"
    tones = load_classification(out / "zeroshot" / "skin-tone")
    assert tones.classnames == ["light skin tone", "medium-light skin tone", "medium skin tone",
                                "medium-dark skin tone", "dark skin tone"]
    assert tones.templates and all("{c}" in t for t in tones.templates)
    for task in ("category", "skin-tone", "subcategory"):
        data = load_classification(out / "zeroshot" / task)
        assert len(data.images) == stats["sets"][f"zeroshot/{task}"]["images"]
        assert stats["sets"][f"zeroshot/{task}"]["chance_top1"] == pytest.approx(100 / len(data.classnames), abs=0.01)
    for name in ("style", "novel"):
        data = load_retrieval(out / "retrieval" / name / "captions.csv")
        assert len(data.images) == stats["sets"][f"retrieval/{name}"]["images"]
        assert len(data.captions) == 3 * len(data.images) and len(set(data.captions)) == len(data.captions)


@pytest.mark.integration  # trains
def test_flipctl_train_reads_the_shards(packages, tmp_path):
    build_emoji_corpus(tmp_path / "out", packages, CFG)
    out = tmp_path / "out"
    run = tmp_path / "run"
    result = CliRunner().invoke(app, [
        "train", "--data", str(out / "train"), "--eval-zeroshot", str(out / "zeroshot" / "category"),
        "--eval-data", str(out / "retrieval" / "novel" / "captions.csv"), "--samples", "16", "--batch-size", "8",
        "--workers", "0", "--out", str(run)])
    assert result.exit_code == 0, result.output
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 2 and "zeroshot_top1" in summary["eval"] and "image_to_text_R@1" in summary["eval"]
    assert not summary.get("skipped_by_kind")


def _emoji_cli(out: Path, packages: Path, *extra: str):
    return CliRunner().invoke(app, ["data", "emoji", str(out), "--from", str(packages), *FLAGS, *extra])


def _assert_one_line_error(result, needle: str, out: Path) -> None:
    assert result.exit_code == 2, (result.output, repr(result.exception))
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], result.stderr
    assert not out.exists() and not list(out.parent.glob(f".{out.name}*"))  # nothing half-written


def _drop_field(packages: Path) -> None:
    path = packages / "emoji-datasource-apple" / "emoji.json"
    entries = json.loads(path.read_text())
    for entry in entries:
        entry.pop("subcategory")
    path.write_text(json.dumps(entries))


@pytest.mark.parametrize("break_it, needle", [
    (lambda p: shutil.rmtree(p / "emoji-datasource-facebook"), "npm install emoji-datasource-facebook"),
    (_drop_field, "lacks subcategory"),
    (lambda p: (p / "emoji-datasource-apple/img/apple/64/1f436.png").write_bytes(b"not a png"), "1f436.png"),
    (lambda p: (p / "emoji-datasource-apple/img/apple/64/1f44b-1f3fd.png").unlink(), "1f44b-1f3fd.png"),
    (lambda p: (p / "emoji-datasource-apple/emoji.json").write_text("{"), "cannot read"),
])
def test_bad_packages_are_one_line_and_leave_nothing(packages, tmp_path, break_it, needle):
    break_it(packages)
    _assert_one_line_error(_emoji_cli(tmp_path / "corpus", packages), needle, tmp_path / "corpus")


def test_openmoji_without_the_renderer_says_how_to_install_it(packages, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "resvg_py", None)  # an import of it now fails
    out = tmp_path / "corpus"
    result = CliRunner().invoke(app, ["data", "emoji", str(out), "--from", str(packages)])
    _assert_one_line_error(result, "pip install 'flipctl[emoji]'", out)


def test_bad_settings_are_one_line(packages, tmp_path):
    out = tmp_path / "corpus"
    for extra, needle in ((["--vendors", "apple"], "--vendors"),
                          (["--held-out-vendor", "openmoji"], "--held-out-vendor"),
                          (["--held-out-fraction", "1"], "--held-out-fraction"),
                          (["--shard-size", "0"], "--shard-size")):
        _assert_one_line_error(_emoji_cli(out, packages, *extra), needle, out)
    _assert_one_line_error(CliRunner().invoke(app, ["data", "emoji", str(out), "--from", str(tmp_path / "nowhere")]),
                           "not a folder", out)


def test_rerun_says_so_and_replaces_only_with_force(packages, tmp_path):
    out = tmp_path / "corpus"
    assert _emoji_cli(out, packages).exit_code == 0
    before = _hashes(out)
    again = _emoji_cli(out, packages)
    assert again.exit_code == 0 and "already holds this corpus" in again.output and _hashes(out) == before
    other = _emoji_cli(out, packages, "--seed", "4")
    assert other.exit_code == 2 and "--force" in other.stderr and _hashes(out) == before
    assert _emoji_cli(out, packages, "--seed", "4", "--force").exit_code == 0
    assert read_stats(out)["config"]["seed"] == 4 and not list(tmp_path.glob(".corpus*"))
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    result = _emoji_cli(foreign, packages, "--force")
    assert result.exit_code == 2 and "holds no emoji corpus" in result.stderr and (foreign / "notes.txt").exists()


def test_openmoji_svgs_are_rasterised_and_held_out(packages, tmp_path):
    pytest.importorskip("resvg_py", reason="the SVG renderer is the `emoji` extra: pip install 'flipctl[emoji]'")
    from PIL import Image

    stats = build_emoji_corpus(tmp_path / "out", packages, EmojiConfig(seed=3, held_out_fraction=0.5)).stats
    out = tmp_path / "out"
    assert stats["held_out_vendor"] == "openmoji" and stats["train_vendors"] == ["apple", "facebook"]
    assert stats["emoji"]["images_by_vendor"]["openmoji"] == 31  # every emoji joined, 263A-FE0F = 263A
    style = sorted((out / "retrieval/style/images").glob("*.jpg"))
    assert style and all(p.stem.endswith("_openmoji") for p in style)
    image = Image.open(style[0])
    assert image.size == (64, 64) and image.mode == "RGB"
    assert image.getpixel((0, 0)) == pytest.approx((255, 255, 255), abs=8)  # transparency became white
    assert image.getpixel((32, 32)) != image.getpixel((0, 0))  # the drawn circle is there
    captions = ({m["caption"] for m in _train_items(out)}
                | {c for m in _train_items(out) for c in m["captions"].values()})
    assert any("(wave, test)" in c or "(grinning, test)" in c for c in captions)  # OpenMoji's keywords used
    (packages / "openmoji/color/svg/1F436.svg").write_text("<svg viewBox='0 0 72 72'")  # cut short
    broken = tmp_path / "broken"
    result = CliRunner().invoke(app, ["data", "emoji", str(broken), "--from", str(packages)])
    _assert_one_line_error(result, "1F436.svg", broken)
