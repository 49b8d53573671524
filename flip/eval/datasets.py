"""Evaluation data in the formats that CLIP_benchmark and OpenCLIP numbers come from.

Loaders read *which* images there are and their labels or captions; pixels are decoded
later, batch by batch, by `ImageDataset`, so an ImageNet-size set never sits in memory.
Images inside webdataset shards are referenced by their byte offset in the (uncompressed)
tar, which gives random access without extracting anything.

Every problem with the data is a `DataError` with a one-line message that names the file.

Formats
- classification: a folder with one sub-folder per class (class names from
  `classnames.txt` when present, else the folder names), or CLIP_benchmark's webdataset
  layout: `{root}/{split}/*.tar` with `.cls` labels, plus `classnames.txt` and
  `zeroshot_classification_templates.txt` in `{root}`.
- retrieval: Karpathy-split JSON (Flickr30k/COCO, or the `[{image, caption}]` list
  CLIP_benchmark/LAVIS use), a CSV/TSV of `filepath,caption` rows (a repeated path means
  several captions), or webdataset shards whose `.txt` holds one caption per line.
"""

from __future__ import annotations

import io
import json
import random
import tarfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator, Sequence, Union

import pandas as pd
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from flip.data.pipeline import eval_transform
from flip.data.shards import expand_urls
from flip.errors import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
CLASSNAMES_FILE = "classnames.txt"
TEMPLATE_FILES = ("zeroshot_classification_templates.txt", "templates.txt")  # CLIP_benchmark's, built-in's


@dataclass(frozen=True)
class TarMember:
    """An image stored in an uncompressed tar shard, read by offset."""

    tar: str
    offset: int
    size: int
    name: str

    def read(self) -> bytes:
        with open(self.tar, "rb") as f:
            f.seek(self.offset)
            return f.read(self.size)

    def __str__(self) -> str:
        return f"{self.tar}:{self.name}"


ImageRef = Union[Path, TarMember]


class ImageDataset(Dataset):
    """Decoded, CLIP-preprocessed images, in the order of `refs`."""

    def __init__(self, refs: Sequence[ImageRef], image_size: int):
        self.refs = refs
        self.transform = eval_transform(image_size)

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, i: int) -> torch.Tensor:
        ref = self.refs[i]
        try:
            data = ref.read() if isinstance(ref, TarMember) else Path(ref).read_bytes()
            image = Image.open(io.BytesIO(data)).convert("RGB")
        except UnidentifiedImageError:
            raise DataError(f"cannot read image {ref}: not an image file PIL can decode") from None
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read image {ref}: {exc}") from None
        return self.transform(image)


@dataclass
class ClassificationSet:
    images: list[ImageRef]
    labels: torch.Tensor  # [n] class indices
    classnames: list[str]
    templates: list[str] | None = None  # prompt templates shipped with the data, if any
    source: str = ""
    format: str = ""  # "class-folders" or "webdataset"

    def subset(self, indices: Sequence[int]) -> "ClassificationSet":
        return replace(self, images=[self.images[i] for i in indices], labels=self.labels[list(indices)])


@dataclass
class RetrievalSet:
    images: Sequence[ImageRef] | torch.Tensor  # references, or preprocessed images [n, 3, H, W]
    captions: list[str]
    text_to_image: torch.Tensor  # [n_texts]: the image each caption describes
    source: str = ""
    format: str = ""  # "csv", "karpathy-json" or "webdataset"


# -- small readers ----------------------------------------------------------------------------------
def read_lines(path: Path, what: str) -> list[str]:
    """Non-empty stripped lines of a text file.

    Lines end at line breaks only (\\n, \\r\\n, \\r), not at the other characters `str.splitlines`
    takes for one (\\x1c, \\x85, \\u2028, ...), which may be part of a class name or template.
    """
    try:
        lines = [line.strip() for line in Path(path).read_text(encoding="utf-8").split("\n")]
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {what} {path}: {exc}") from None
    lines = [line for line in lines if line]
    if not lines:
        raise DataError(f"{what} {path} is empty")
    return lines


def _check_captions(captions_per_image: list[list[str]], names: list[str], source: str) -> None:
    for name, captions in zip(names, captions_per_image):
        if not captions:
            raise DataError(f"image {name} in {source} has no caption")


def _retrieval_set(refs: list[ImageRef], captions_per_image: list[list[str]], source: str,
                   fmt: str) -> RetrievalSet:
    if not refs:
        raise DataError(f"no images in {source}")
    _check_captions(captions_per_image, [str(r) for r in refs], source)
    captions = [c for cs in captions_per_image for c in cs]
    owners = [i for i, cs in enumerate(captions_per_image) for _ in cs]
    return RetrievalSet(refs, captions, torch.tensor(owners), source=source, format=fmt)


def _require_files(paths: list[Path], source: str, hint: str) -> None:
    for path in paths:
        if not path.is_file():
            raise DataError(f"image not found: {path} (listed in {source}){hint}")


# -- webdataset shards ------------------------------------------------------------------------------
def _tar_samples(url: str) -> Iterator[tuple[str, dict[str, tarfile.TarInfo], Callable[[tarfile.TarInfo], str]]]:
    """(key, {extension: member}, read_text) per sample of one shard, in file order."""
    try:
        tar = tarfile.open(url, "r:")  # uncompressed only: members are then addressable by offset
    except (OSError, tarfile.TarError) as exc:
        raise DataError(f"cannot read shard {url} (uncompressed .tar expected): {exc}") from None
    with tar:
        samples: dict[str, dict[str, tarfile.TarInfo]] = {}
        try:
            for member in tar:
                folder, _, base = member.name.rpartition("/")
                stem, dot, ext = base.partition(".")  # webdataset: the key ends at the first dot
                if member.isreg() and dot:
                    samples.setdefault(f"{folder}/{stem}", {})[ext.lower()] = member
        except tarfile.TarError as exc:
            raise DataError(f"corrupt shard {url}: {exc}") from None

        def read_text(member: tarfile.TarInfo) -> str:
            return tar.extractfile(member).read().decode("utf-8")

        for key, members in samples.items():
            yield key, members, read_text


def _image_member(url: str, key: str, members: dict[str, tarfile.TarInfo]) -> TarMember:
    for ext in ("jpg", "jpeg", "png", "webp"):
        if ext in members:
            m = members[ext]
            return TarMember(url, m.offset_data, m.size, m.name)
    raise DataError(f"sample {key} in {url} has no image (.jpg/.png/.webp)")


def _shards(spec: str | Path) -> list[str]:
    urls = expand_urls(str(spec))
    if any("://" in u or u.startswith("pipe:") for u in urls):
        raise DataError("evaluation reads local shards only; download remote shards first")
    return urls


# -- classification ---------------------------------------------------------------------------------
def _template_file(*folders: Path) -> list[str] | None:
    for folder in folders:
        for name in TEMPLATE_FILES:
            if (folder / name).is_file():
                return read_lines(folder / name, "templates file")
    return None


def _classnames_file(*folders: Path) -> list[str] | None:
    for folder in folders:
        if (folder / CLASSNAMES_FILE).is_file():
            return read_lines(folder / CLASSNAMES_FILE, "class names file")
    return None


def _has_tars(folder: Path) -> bool:
    return folder.is_dir() and any(folder.glob("*.tar"))


def load_class_folders(folder: str | Path, meta_dir: str | Path | None = None) -> ClassificationSet:
    """One sub-folder per class, in sorted order (ImageFolder's labels).

    `classnames.txt` and a templates file are looked up in `folder`, then in `meta_dir`.
    """
    folder = Path(folder)
    meta = [folder] + ([Path(meta_dir)] if meta_dir else [])
    class_dirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataError(f"no class folders in {folder}: expected one sub-folder of images per class")
    images: list[ImageRef] = []
    labels: list[int] = []
    for label, class_dir in enumerate(class_dirs):
        files = sorted(p for p in class_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise DataError(f"class folder {class_dir} has no images ({'/'.join(IMAGE_SUFFIXES)})")
        images += files
        labels += [label] * len(files)
    names = _classnames_file(*meta)
    if names is None:
        names = [d.name.replace("_", " ") for d in class_dirs]
    elif len(names) != len(class_dirs):
        raise DataError(f"{CLASSNAMES_FILE} lists {len(names)} class names but {folder} has "
                        f"{len(class_dirs)} class folders")
    return ClassificationSet(images, torch.tensor(labels), names, _template_file(*meta), str(folder),
                             "class-folders")


def load_wds_classification(split_dir: str | Path, meta_dir: str | Path | None = None) -> ClassificationSet:
    """CLIP_benchmark's webdataset layout: `.cls` labels in the shards, class names in a text file."""
    split_dir = Path(split_dir)
    meta_dir = Path(meta_dir) if meta_dir else split_dir.parent
    names = _classnames_file(meta_dir, split_dir)
    if names is None:
        raise DataError(f"no {CLASSNAMES_FILE} in {meta_dir} or {split_dir}: webdataset classification "
                        "sets need one, a class name a line in label order")
    images: list[ImageRef] = []
    labels: list[int] = []
    for url in _shards(split_dir):
        for key, members, read_text in _tar_samples(url):
            if "cls" not in members:
                raise DataError(f"sample {key} in {url} has no .cls label")
            try:
                label = int(read_text(members["cls"]).strip())
            except ValueError:
                raise DataError(f"sample {key} in {url}: .cls is not an integer label") from None
            if not 0 <= label < len(names):
                raise DataError(f"sample {key} in {url} has label {label}, but {CLASSNAMES_FILE} lists "
                                f"{len(names)} classes")
            images.append(_image_member(url, key, members))
            labels.append(label)
    if not images:
        raise DataError(f"no samples in the shards of {split_dir}")
    return ClassificationSet(images, torch.tensor(labels), names, _template_file(meta_dir, split_dir),
                             str(split_dir), "webdataset")


def load_classification(path: str | Path, split: str = "test") -> ClassificationSet:
    """A classification set from a class-folder tree or CLIP_benchmark webdataset folder.

    `path` may be the set itself, or a root holding `split` (e.g. `test/`) as a folder of
    class folders or of shards.
    """
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"classification data not found: {path} (expected a folder)")
    if _has_tars(path):
        return load_wds_classification(path)
    if _has_tars(path / split):
        return load_wds_classification(path / split, path)
    if (path / split).is_dir():
        return load_class_folders(path / split, path)
    return load_class_folders(path)


def with_classnames(data: ClassificationSet, names: list[str], source: str) -> ClassificationSet:
    """Replace the class names (e.g. ImageNet's for a folder of WordNet ids); the count must match."""
    if len(names) != len(data.classnames):
        raise DataError(f"{source} has {len(names)} class names but {data.source} has "
                        f"{len(data.classnames)} classes")
    return replace(data, classnames=list(names))


def split_by_class(data: ClassificationSet, fractions: Sequence[float], seed: int = 0) -> list[ClassificationSet]:
    """Split every class by the given fractions (the last part takes the rest), seeded.

    Each part keeps at least one image of every class that has enough images.
    """
    parts: list[list[int]] = [[] for _ in fractions]
    rng = random.Random(seed)
    for label in range(len(data.classnames)):
        idx = (data.labels == label).nonzero().flatten().tolist()
        rng.shuffle(idx)
        start = 0
        for p, fraction in enumerate(fractions):
            count = len(idx) - start if p == len(fractions) - 1 else max(1, round(fraction * len(idx)))
            parts[p] += idx[start:start + count]
            start += count
    for p, part in enumerate(parts):
        if not part:
            raise DataError(f"{data.source}: too few images to split by {list(fractions)}")
    return [data.subset(sorted(part)) for part in parts]


# -- retrieval ------------------------------------------------------------------------------------
def load_caption_table(path: str | Path, images_root: str | Path | None = None) -> RetrievalSet:
    """CSV (or .tsv) with `filepath` and `caption` (or OpenCLIP's `title`) columns."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"retrieval captions file not found: {path}")
    try:
        table = pd.read_csv(path, sep="\t" if path.suffix.lower() == ".tsv" else ",", dtype=str,
                            keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"cannot parse {path}: {str(exc).strip().splitlines()[0]}") from None
    caption_col = next((c for c in ("caption", "title") if c in table.columns), None)
    if "filepath" not in table.columns or caption_col is None:
        raise DataError(f"{path} needs 'filepath' and 'caption' columns, found {list(table.columns)}")
    for row, (file, caption) in enumerate(zip(table["filepath"], table[caption_col]), start=2):
        if not file.strip():
            raise DataError(f"{path} line {row}: empty filepath")
        if not caption.strip():
            raise DataError(f"{path} line {row}: image {file} has an empty caption")
    root = Path(images_root) if images_root else path.parent
    by_file: dict[str, list[str]] = {}
    for file, caption in zip(table["filepath"], table[caption_col]):
        by_file.setdefault(file, []).append(caption.strip())  # first-seen image order
    refs = [root / f for f in by_file]
    _require_files(refs, str(path), "" if images_root else "; set --images-root")
    return _retrieval_set(refs, list(by_file.values()), str(path), "csv")


def load_karpathy_json(path: str | Path, images_root: str | Path | None = None,
                       split: str = "test") -> RetrievalSet:
    """Karpathy's `dataset_{flickr30k,coco}.json` (entries filtered by `split`), or the
    `[{"image": file, "caption": [..]}]` list of CLIP_benchmark/LAVIS annotation files."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    except RecursionError:
        raise DataError(f"cannot read {path}: JSON nested too deeply") from None
    root = Path(images_root) if images_root else path.parent
    files: list[Path] = []
    captions: list[list[str]] = []
    try:
        if isinstance(doc, dict) and "images" in doc:
            entries = doc["images"]
            if any("split" in e for e in entries):
                splits = sorted({e.get("split", "") for e in entries})
                entries = [e for e in entries if e.get("split") == split]
                if not entries:
                    raise DataError(f"no images of split {split!r} in {path} (splits: {', '.join(splits)})")
            for e in entries:
                files.append(root / e.get("filepath", "") / e["filename"])
                captions.append([s["raw"].strip() for s in e["sentences"] if s["raw"].strip()])
        elif isinstance(doc, list):
            for e in doc:
                caps = [e["caption"]] if isinstance(e["caption"], str) else e["caption"]
                files.append(root / e["image"])
                captions.append([c.strip() for c in caps if c.strip()])
        else:
            raise KeyError("images")
    except (KeyError, TypeError, AttributeError) as exc:
        raise DataError(f"{path} is not a Karpathy-style retrieval JSON (missing {exc})") from None
    _check_captions(captions, [str(f) for f in files], str(path))
    _require_files(files, str(path), "" if images_root else "; set --images-root")
    return _retrieval_set(files, captions, str(path), "karpathy-json")


def load_wds_retrieval(spec: str | Path) -> RetrievalSet:
    """Webdataset shards whose `.txt` holds the image's captions, one per line."""
    refs: list[ImageRef] = []
    captions: list[list[str]] = []
    for url in _shards(spec):
        for key, members, read_text in _tar_samples(url):
            if "txt" not in members:
                raise DataError(f"image {key} in {url} has no caption (.txt)")
            refs.append(_image_member(url, key, members))
            captions.append([c.strip() for c in read_text(members["txt"]).splitlines() if c.strip()])
    return _retrieval_set(refs, captions, str(spec), "webdataset")


def load_retrieval(path: str | Path, images_root: str | Path | None = None, split: str = "test") -> RetrievalSet:
    """Pick the loader from the path: .json, .csv/.tsv, else webdataset shards."""
    suffix = Path(str(path)).suffix.lower()
    if suffix == ".json":
        return load_karpathy_json(path, images_root, split)
    if suffix in (".csv", ".tsv"):
        return load_caption_table(path, images_root)
    return load_wds_retrieval(path)


def load_probe_splits(path: str | Path, val_fraction: float = 0.2, test_fraction: float = 0.3,
                      seed: int = 0) -> tuple[ClassificationSet, ClassificationSet, ClassificationSet]:
    """(train, val, test) for a linear probe.

    With `train/` and `test/` split folders (class folders or shards), those; the
    validation split is `val/` when present, else `val_fraction` of train. Without splits,
    one class-folder set divided per class by `val_fraction` and `test_fraction` (seeded).
    """
    path = Path(path)
    if (path / "train").is_dir():
        if not (path / "test").is_dir():
            raise DataError(f"{path} has a train/ split but no test/ split")
        train, test = load_classification(path, "train"), load_classification(path, "test")
        if (path / "val").is_dir():
            val = load_classification(path, "val")
        elif 0 < val_fraction < 1:
            train, val = split_by_class(train, [1.0 - val_fraction, val_fraction], seed)
        else:
            raise DataError("--val-fraction must be in (0, 1)")
    else:
        if not (val_fraction > 0 and test_fraction > 0 and val_fraction + test_fraction < 1):
            raise DataError("--val-fraction and --test-fraction must be positive and sum to less than 1")
        train, val, test = split_by_class(load_classification(path),
                                          [1.0 - val_fraction - test_fraction, val_fraction, test_fraction], seed)
    for split in (val, test):
        if split.classnames != train.classnames:
            raise DataError(f"{split.source} has other classes than {train.source}")
    return train, val, test


def check_eval_sets(eval_data: str | None, eval_zeroshot: str | None, eval_templates: str | None = None) -> None:
    """Read the evaluation sets a run or sweep names as its evaluations will (their lists of images and
    captions, no image decoded), and a templates file it names: a wrong path or format fails before any
    training or data generation."""
    from flip.errors import ConfigError
    from flip.eval.templates import resolve_templates  # it reads its files with this module's helpers

    for key, path, load in (("eval_data", eval_data, load_retrieval),
                            ("eval_zeroshot", eval_zeroshot, load_classification)):
        if path is not None:
            try:
                load(path)
            except DataError as exc:
                raise ConfigError(f"cannot be used: {exc}", key=key) from None
    # `dataset` needs the zero-shot set's own templates, which the periodic evaluation checks as it loads it.
    if eval_templates is not None and eval_templates != "dataset":
        try:
            resolve_templates(eval_templates, None)
        except DataError as exc:
            raise ConfigError(f"cannot be used: {exc}", key="eval_templates") from None
