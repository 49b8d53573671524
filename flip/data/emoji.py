"""A real image-text corpus from emoji npm packages: train shards, zero-shot and retrieval sets.

Human-made art (Apple's, Facebook's, OpenMoji's) of the Unicode emoji, with human-written text
(CLDR names and keywords, Unicode names, short codes, categories). Built deterministically from a
seed by `build_emoji_corpus(out, source, EmojiConfig(...))`; `flipctl data emoji` is its command.

Splits. A seeded `held_out_fraction` of the base emoji (drawn per subcategory, each with all its
skin-tone variants) is held out of training entirely ("novel" emoji); one vendor's art is held out
of training too (OpenMoji by default: flat line art, the style farthest from Apple's and Facebook's
shaded art, so retrieving it tests style transfer rather than near-duplicates). Training sees the
other vendors' art of the other emoji. Layout under `out`:

    train/shard-00000.tar ...       {key}.jpg, {key}.txt (one caption), {key}.json; sizes.json
    zeroshot/category/              novel emoji, base forms, every vendor: 9 categories
    zeroshot/skin-tone/             novel emoji's one-tone variants, every vendor: 5 tones
    zeroshot/subcategory/           novel emoji, base forms: the subcategories they fall in (the harder task)
    retrieval/style/captions.csv    held-out vendor's art of training emoji (seeded sample)
    retrieval/novel/captions.csv    novel emoji, one vendor's art each (seeded), so no two images share captions
    stats.json                      counts per split, vendor and class; chance levels; written last

Zero-shot sets are class folders with `classnames.txt` and `templates.txt`; retrieval sets are
`filepath,caption` CSVs with several captions per image. Images are 64 px JPEGs on white (q90, as
img2dataset writes them). The corpus is built in `.OUT.partial` next to `out` and renamed into
place at the end, so `out` is either absent or complete.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import random
import shutil
import tarfile
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from flip.data.emoji_sources import (
    IMAGE_SIZE,
    TONES,
    VENDORS,
    Emoji,
    Package,
    check_renderer,
    find_package,
    load_catalog,
    load_image,
)
from flip.data.synth import _add_member
from flip.errors import ConfigError, DataError

GENERATOR = "flip.data.emoji"
VERSION = 1
STATS_FILE = "stats.json"
CATEGORY_NAMES = {"smileys-emotion": "smileys and emotion", "people-body": "people and body",
                  "animals-nature": "animals and nature", "food-drink": "food and drink",
                  "travel-places": "travel and places", "activities": "activities", "objects": "objects",
                  "symbols": "symbols", "flags": "flags"}
TEMPLATES = {
    "category": ("{c} emoji", "an emoji from the {c} category.", "emoji: {c}"),
    "skin-tone": ("an emoji with {c}.", "{c} emoji", "{c}"),
    "subcategory": ("{c} emoji", "an emoji from the {c} group.", "emoji: {c}"),
}
Progress = Callable[[int, int], None]  # (images done, images in all)


@dataclass(frozen=True)
class EmojiConfig:
    """What `build_emoji_corpus` writes; every choice is a function of these and the packages."""

    seed: int = 0
    vendors: tuple[str, ...] = VENDORS
    held_out_vendor: str | None = None  # None: openmoji when among `vendors`, else the last of them
    held_out_fraction: float = 0.1  # of the base emoji, per subcategory (stochastic rounding)
    shard_size: int = 1000
    style_retrieval_images: int = 1000  # sample of the held-out vendor's art; 0 = all of it
    retrieval_captions: int = 3  # caption forms per retrieval image
    jpeg_quality: int = 90

    def resolved_held_out_vendor(self) -> str:
        if self.held_out_vendor is not None:
            return self.held_out_vendor
        return "openmoji" if "openmoji" in self.vendors else self.vendors[-1]

    def validate(self) -> None:
        unknown = [v for v in self.vendors if v not in VENDORS]
        if unknown or len(set(self.vendors)) != len(self.vendors):
            raise ConfigError(f"must be distinct names among {', '.join(VENDORS)}, got {','.join(self.vendors)}",
                              key="vendors")
        if len(self.vendors) < 2:
            raise ConfigError("needs at least two vendors: one to train on, one held out", key="vendors")
        if self.resolved_held_out_vendor() not in self.vendors:
            raise ConfigError(f"{self.held_out_vendor!r} is not among the vendors ({','.join(self.vendors)})",
                              key="held_out_vendor")
        if not 0 < self.held_out_fraction < 1:
            raise ConfigError(f"must be in (0, 1), got {self.held_out_fraction}", key="held_out_fraction")
        for key, low in (("shard_size", 1), ("style_retrieval_images", 0), ("retrieval_captions", 1),
                         ("jpeg_quality", 1)):
            if getattr(self, key) < low:
                raise ConfigError(f"must be at least {low}, got {getattr(self, key)}", key=key)
        if self.jpeg_quality > 100:
            raise ConfigError(f"must be at most 100, got {self.jpeg_quality}", key="jpeg_quality")


@dataclass
class BuildResult:
    stats: dict
    built: bool  # False: `out` already held this corpus, nothing was written


# -- captions ------------------------------------------------------------------------------------------
def _shortcode(emoji: Emoji) -> str:
    """Slack-style short code: `:wave::skin-tone-5:` (tones 2-6 are the five Fitzpatrick modifiers)."""
    tones = "".join(f":skin-tone-{list(TONES.values()).index(t) + 2}:" for t in emoji.tones)
    return f":{emoji.short_names[0]}:{tones}" if emoji.short_names else ""


def caption_forms(emoji: Emoji) -> dict[str, str]:
    """The alt-texts an image of `emoji` may carry, by form; each names the emoji (retrieval needs that)."""
    name, sub = emoji.name, emoji.subcategory.replace("-", " ")
    forms = {
        "name": name,
        "name-emoji": f"{name} emoji",
        "category": f"{CATEGORY_NAMES[emoji.category]} emoji: {name}",
        "subcategory": f"{name}, {sub} emoji",
        "shortcode": _shortcode(emoji),
        "keywords": f"{name} ({', '.join(emoji.keywords[:3])})" if emoji.keywords else "",
        "unicode-name": emoji.unicode_name if emoji.unicode_name != name.lower() else "",
    }
    return {form: text for form, text in forms.items() if text}


def _rng(cfg: EmojiConfig, *parts) -> random.Random:
    # A string seed is hashed (SHA-512) by `random`: stable across processes and Python versions.
    return random.Random("/".join(["flip-emoji", f"v{VERSION}", str(cfg.seed), *map(str, parts)]))


# -- splits ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Item:
    """One image: an emoji in one vendor's art."""

    emoji: Emoji
    vendor: str

    @property
    def file(self) -> str:
        return f"{self.emoji.key.lower()}_{self.vendor}.jpg"


def held_out_bases(catalog: dict[str, Emoji], cfg: EmojiConfig) -> set[str]:
    """A seeded `held_out_fraction` of the base emoji of each subcategory (stochastic rounding keeps the
    expected fraction exact, also for subcategories of a few emoji)."""
    by_sub: dict[str, list[str]] = {}
    for emoji in catalog.values():
        if emoji.key == emoji.base:
            by_sub.setdefault(emoji.subcategory, []).append(emoji.key)
    held: set[str] = set()
    for sub, keys in sorted(by_sub.items()):
        rng = _rng(cfg, "held-out", sub)
        keys = sorted(keys)
        rng.shuffle(keys)
        held.update(keys[:math.floor(cfg.held_out_fraction * len(keys) + rng.random())])
    return held


@dataclass
class Splits:
    train: list[Item]
    style: list[Item]  # the held-out vendor's art of training emoji
    novel: list[Item]  # every vendor's art of held-out emoji
    held_out: set[str]


def make_splits(catalog: dict[str, Emoji], cfg: EmojiConfig) -> Splits:
    held, vendor = held_out_bases(catalog, cfg), cfg.resolved_held_out_vendor()
    splits = Splits([], [], [], held)
    for key in sorted(catalog):
        emoji = catalog[key]
        for v in cfg.vendors:
            if v not in emoji.images:
                continue
            part = splits.novel if emoji.base in held else splits.style if v == vendor else splits.train
            part.append(Item(emoji, v))
    _rng(cfg, "train-order").shuffle(splits.train)  # shards mix vendors and categories
    return splits


def _zeroshot_sets(novel: list[Item]) -> dict[str, list[tuple[str, Item]]]:
    """(class, item) per task: category and subcategory of base forms, tone of one-tone variants."""
    bases = [i for i in novel if not i.emoji.tones]
    return {
        "category": [(i.emoji.category, i) for i in bases],
        "skin-tone": [(i.emoji.tones[0], i) for i in novel if len(i.emoji.tones) == 1],
        "subcategory": [(i.emoji.subcategory, i) for i in bases],
    }


def _class_names(task: str, labels: list[str]) -> list[str]:
    """Classes present, in a fixed order (categories and tones as listed, subcategories sorted)."""
    order = {"category": list(CATEGORY_NAMES), "skin-tone": list(TONES.values())}.get(task)
    present = set(labels)
    return [c for c in order if c in present] if order else sorted(present)


def _readable(task: str, label: str) -> str:
    if task == "category":
        return CATEGORY_NAMES[label]
    return f"{label} skin tone" if task == "skin-tone" else label.replace("-", " ")


def _style_sample(style: list[Item], cfg: EmojiConfig) -> list[Item]:
    if cfg.style_retrieval_images == 0 or len(style) <= cfg.style_retrieval_images:
        return list(style)
    picked = _rng(cfg, "style-sample").sample(range(len(style)), cfg.style_retrieval_images)
    return [style[i] for i in sorted(picked)]


def _one_vendor_each(novel: list[Item], cfg: EmojiConfig) -> list[Item]:
    """One art per novel emoji (a seeded vendor), so no two retrieval images carry the same captions."""
    by_key: dict[str, list[Item]] = {}
    for item in novel:
        by_key.setdefault(item.emoji.key, []).append(item)
    return [_rng(cfg, "novel-vendor", key).choice(items) for key, items in sorted(by_key.items())]


# -- writing ---------------------------------------------------------------------------------------
class _Images:
    """Each item's JPEG, encoded once and reused by every set that shows it; counts progress."""

    def __init__(self, cfg: EmojiConfig, total: int, progress: Progress | None):
        self.cfg, self.total, self.progress = cfg, total, progress
        self.cache: dict[Item, bytes] = {}

    def __call__(self, item: Item) -> bytes:
        if item not in self.cache:
            buffer = io.BytesIO()
            load_image(item.emoji.images[item.vendor]).save(buffer, "JPEG", quality=self.cfg.jpeg_quality)
            self.cache[item] = buffer.getvalue()
            if self.progress is not None:
                self.progress(len(self.cache), self.total)
        return self.cache[item]


def _write_train(root: Path, items: list[Item], images: _Images, cfg: EmojiConfig) -> dict:
    folder = root / "train"
    folder.mkdir(parents=True)
    sizes, forms = {}, Counter()
    for start in range(0, len(items), cfg.shard_size):
        name = f"shard-{start // cfg.shard_size:05d}.tar"
        with tarfile.open(folder / name, "w", format=tarfile.USTAR_FORMAT) as tar:
            for index, item in enumerate(items[start:start + cfg.shard_size], start=start):
                key, captions = f"{index:09d}", caption_forms(item.emoji)
                form = _rng(cfg, "train-caption", item.emoji.key, item.vendor).choice(sorted(captions))
                forms[form] += 1
                meta = {"key": key, "caption": captions[form], "status": "success", "width": IMAGE_SIZE,
                        "height": IMAGE_SIZE, "emoji": item.emoji.key, "vendor": item.vendor,
                        "category": item.emoji.category, "subcategory": item.emoji.subcategory,
                        "tones": list(item.emoji.tones), "captions": captions}
                _add_member(tar, f"{key}.jpg", images(item))
                _add_member(tar, f"{key}.txt", captions[form].encode("utf-8"))
                _add_member(tar, f"{key}.json", json.dumps(meta, sort_keys=True, ensure_ascii=False).encode("utf-8"))
        sizes[name] = min(cfg.shard_size, len(items) - start)
    (folder / "sizes.json").write_text(json.dumps(sizes, indent=1) + "\n")
    return {"samples": len(items), "shards": len(sizes), "caption_forms": dict(sorted(forms.items()))}


def _write_zeroshot(root: Path, task: str, pairs: list[tuple[str, Item]], images: _Images) -> dict:
    classes = _class_names(task, [label for label, _ in pairs])
    if len(classes) < 2:
        raise DataError(f"zero-shot {task}: the held-out emoji fall in {len(classes)} class(es), too few to "
                        "classify: raise --held-out-fraction or use more of the packages' emoji")
    folder = root / "zeroshot" / task
    for index, label in enumerate(classes):
        class_dir = folder / f"{index:03d}_{label}"
        class_dir.mkdir(parents=True)
        for item in (i for lab, i in pairs if lab == label):
            (class_dir / item.file).write_bytes(images(item))
    names = [_readable(task, c) for c in classes]
    (folder / "classnames.txt").write_text("".join(n + "\n" for n in names))
    (folder / "templates.txt").write_text("".join(t + "\n" for t in TEMPLATES[task]))
    counts = Counter(label for label, _ in pairs)
    return {"images": len(pairs), "classes": len(classes),
            "by_class": {n: counts[c] for n, c in zip(names, classes)},
            "by_vendor": dict(sorted(Counter(i.vendor for _, i in pairs).items())),
            "chance_top1": round(100 / len(classes), 2),
            "chance_mean_per_class_recall": round(100 / len(classes), 2),
            "majority_top1": round(100 * max(counts.values()) / len(pairs), 2)}


def _write_retrieval(root: Path, name: str, items: list[Item], images: _Images, cfg: EmojiConfig) -> dict:
    if not items:
        raise DataError(f"retrieval {name}: no images; raise --held-out-fraction or check the packages' art")
    folder = root / "retrieval" / name
    (folder / "images").mkdir(parents=True)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["filepath", "caption"])
    captions = 0
    for item in items:
        forms = caption_forms(item.emoji)
        picked = _rng(cfg, "retrieval-captions", name, item.emoji.key).sample(
            sorted(forms), min(cfg.retrieval_captions, len(forms)))
        (folder / "images" / item.file).write_bytes(images(item))
        writer.writerows((f"images/{item.file}", forms[f]) for f in picked)
        captions += len(picked)
    (folder / "captions.csv").write_text(buffer.getvalue(), encoding="utf-8")
    n = len(items)
    return {"images": n, "captions": captions, "by_vendor": dict(sorted(Counter(i.vendor for i in items).items())),
            "by_category": dict(sorted(Counter(i.emoji.category for i in items).items())),
            "chance_image_to_text_R@1": round(100 / n, 3), "chance_text_to_image_R@1": round(100 / n, 3),
            "chance_R@5": round(min(100.0, 500 / n), 3)}


# -- the corpus ------------------------------------------------------------------------------------
def _content(cfg: EmojiConfig, packages: list[Package]) -> dict:
    """What determines the bytes written: the config and the packages' versions."""
    return {"config": {**asdict(cfg), "vendors": list(cfg.vendors),
                       "held_out_vendor": cfg.resolved_held_out_vendor()},
            "packages": {p.vendor: {"name": p.name, "version": p.version} for p in packages}}


def _catalog_stats(catalog: dict[str, Emoji], splits: Splits, skipped: dict[str, int]) -> dict:
    bases = {e.base for e in catalog.values()}
    return {"base_emoji": len(bases), "emoji_with_variants": len(catalog),
            "held_out_base_emoji": len(splits.held_out),
            "held_out_emoji_with_variants": sum(e.base in splits.held_out for e in catalog.values()),
            "left_out_by_category": skipped,
            "images_by_vendor": dict(Counter(v for e in catalog.values() for v in e.images))}


def _write_corpus(root: Path, catalog: dict[str, Emoji], splits: Splits, cfg: EmojiConfig,
                  progress: Progress | None) -> dict:
    zeroshot = _zeroshot_sets(splits.novel)
    retrieval = {"style": _style_sample(splits.style, cfg), "novel": _one_vendor_each(splits.novel, cfg)}
    used = set(splits.train) | {i for pairs in zeroshot.values() for _, i in pairs}
    used |= {i for items in retrieval.values() for i in items}
    images = _Images(cfg, len(used), progress)
    sets = {"train": _write_train(root, splits.train, images, cfg)}
    sets["train"]["by_vendor"] = dict(sorted(Counter(i.vendor for i in splits.train).items()))
    sets["train"]["by_category"] = dict(sorted(Counter(i.emoji.category for i in splits.train).items()))
    for task, pairs in zeroshot.items():
        sets[f"zeroshot/{task}"] = _write_zeroshot(root, task, pairs, images)
    for name, items in retrieval.items():
        sets[f"retrieval/{name}"] = _write_retrieval(root, name, items, images, cfg)
    return sets


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def read_stats(out: str | os.PathLike) -> dict | None:
    """A complete corpus's stats.json (the last file written), or None."""
    try:
        stats = json.loads((Path(out) / STATS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return stats if isinstance(stats, dict) and stats.get("generator") == GENERATOR else None


def _check_out(out: Path, content: dict, force: bool) -> dict | None:
    """The existing corpus's stats when `out` already holds this very corpus; refuse anything else unless
    `force` may replace it (only ever an emoji corpus: never a folder of something else)."""
    if not out.exists():
        return None
    if not out.is_dir():
        raise ConfigError(f"{out} is a file, not a folder to write the corpus to")
    stats = read_stats(out)
    if stats is None:
        if any(out.iterdir()):
            raise DataError(f"{out} is not empty and holds no emoji corpus: choose a new or empty folder")
        return None
    same = {k: stats.get(k) for k in content} == content and stats.get("version") == VERSION
    if same and not force:
        return stats
    if not force:
        raise DataError(f"{out} already holds an emoji corpus built with other settings or packages; "
                        "pass --force to replace it, or choose another folder")
    return None


def _move_into_place(tmp: Path, out: Path) -> None:
    old = out.with_name(f".{out.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def build_emoji_corpus(out: str | os.PathLike, source: str | os.PathLike, cfg: EmojiConfig = EmojiConfig(), *,
                       force: bool = False, progress: Progress | None = None) -> BuildResult:
    """Build the corpus from the npm packages under `source` into `out`; see the module's docstring.

    Nothing is written when `out` already holds the corpus these settings and packages make (the result
    says `built=False`); another corpus there is replaced only with `force`. `progress(done, total)` is
    called as images are encoded.
    """
    cfg.validate()
    out, source = Path(out).resolve(), Path(source)
    if not source.is_dir():
        raise DataError(f"--from {source}: not a folder (give a node_modules folder, or one holding the packages)")
    packages = [find_package(source, v) for v in cfg.vendors]
    content = _content(cfg, packages)
    existing = _check_out(out, content, force)
    if existing is not None:
        return BuildResult(existing, built=False)
    if "openmoji" in cfg.vendors:
        check_renderer()
    catalog, skipped = load_catalog(packages)
    splits = make_splits(catalog, cfg)
    tmp = out.with_name(f".{out.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)  # a killed build's leftovers
    try:
        tmp.mkdir(parents=True)
        sets = _write_corpus(tmp, catalog, splits, cfg, progress)
        stats = {"generator": GENERATOR, "version": VERSION, **content,
                 "held_out_vendor": cfg.resolved_held_out_vendor(),
                 "train_vendors": [v for v in cfg.vendors if v != cfg.resolved_held_out_vendor()],
                 "emoji": _catalog_stats(catalog, splits, skipped), "sets": sets}
        stats["bytes"] = _folder_bytes(tmp)
        (tmp / STATS_FILE).write_text(json.dumps(stats, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        _move_into_place(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return BuildResult(stats, built=True)
