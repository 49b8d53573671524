"""Reading the emoji npm packages: where they are, their metadata, and their art as 64 px RGB images.

Three packages, each a vendor's art of the same Unicode emoji:
- `emoji-datasource-apple`, `emoji-datasource-facebook`: `emoji.json` (one entry per emoji: name,
  unified code points, short names, category, subcategory, `has_img_<vendor>`, `skin_variations`)
  and `img/<vendor>/64/<image>` PNGs.
- `openmoji`: `data/openmoji.json` (hexcode, CLDR annotation and keywords, group, subgroups, skin
  tone) and `color/svg/<hexcode>.svg`, rasterised here with resvg-py (the `emoji` extra).

The emoji list comes from emoji-datasource (the selected packages' union); OpenMoji, when selected,
adds its art and its CLDR names and keywords, joined on the code points without FE0F (emoji
presentation selectors, which the packages write differently). A package that is missing, lacks
a field this reader needs, or holds an image that does not decode is a `DataError`.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from flip.errors import DataError

VENDORS = ("apple", "facebook", "openmoji")
PACKAGES = {"apple": "emoji-datasource-apple", "facebook": "emoji-datasource-facebook", "openmoji": "openmoji"}
IMAGE_SIZE = 64  # the emoji-datasource PNGs' size; OpenMoji is rasterised to match
SVG_SUPERSAMPLE = 4  # render SVGs at 4x and downsample: anti-aliasing like the vendors' downscaled PNGs
RENDERER_HINT = "pip install 'flipctl[emoji]' (resvg-py), or leave OpenMoji out with --vendors apple,facebook"

# Fitzpatrick modifiers -> CLDR's skin tone names, lightest first (the zero-shot classes' order).
TONES = {"1F3FB": "light", "1F3FC": "medium-light", "1F3FD": "medium", "1F3FE": "medium-dark", "1F3FF": "dark"}
# emoji-datasource's categories -> slugs (OpenMoji's group names); "Component" (bare skin-tone and hair
# swatches, not emoji shown on their own) is left out.
CATEGORIES = {"Smileys & Emotion": "smileys-emotion", "People & Body": "people-body",
              "Animals & Nature": "animals-nature", "Food & Drink": "food-drink", "Travel & Places": "travel-places",
              "Activities": "activities", "Objects": "objects", "Symbols": "symbols", "Flags": "flags"}
DATASOURCE_FIELDS = ("name", "unified", "image", "short_names", "category", "subcategory")
OPENMOJI_FIELDS = ("hexcode", "annotation", "tags", "openmoji_tags", "group", "subgroups")


def code_key(hexcodes: str) -> str:
    """`1F44B-1F3FE`, the join key: upper-case code points without FE0F."""
    return "-".join(p for p in hexcodes.upper().split("-") if p != "FE0F")


@dataclass(frozen=True)
class Package:
    vendor: str
    name: str
    version: str
    path: Path


@dataclass(eq=False)  # one object per key: hashed by identity
class Emoji:
    """One code point sequence: a base emoji or one of its skin-tone variants."""

    key: str
    base: str  # the base emoji's key (its own for a base): the unit held out of training
    name: str  # CLDR name (OpenMoji's annotation) when known, else emoji-datasource's, lower case
    unicode_name: str  # emoji-datasource's name, lower case
    short_names: tuple[str, ...]
    category: str  # a CATEGORIES slug
    subcategory: str
    tones: tuple[str, ...] = ()  # TONES names, one per modifier; () for no skin tone
    keywords: tuple[str, ...] = ()
    images: dict[str, Path] = field(default_factory=dict)  # vendor -> its art


# -- finding packages ------------------------------------------------------------------------------
def _candidates(root: Path, name: str) -> list[Path]:
    """Where `name` may be under `root`: a node_modules folder, a project holding one, or unpacked tarballs
    (`npm pack` unpacks to `package/`, in a folder named after the package or its tarball)."""
    spots = [root / name, root / "node_modules" / name]
    spots += sorted(p for p in root.glob(f"{name}-*") if p.is_dir())
    return [q for p in spots for q in (p, p / "package")]


def find_package(root: Path, vendor: str) -> Package:
    name = PACKAGES[vendor]
    for path in _candidates(root, name):
        manifest = path / "package.json"
        if manifest.is_file():
            meta = read_json(manifest, f"{name}'s package.json")
            if isinstance(meta, dict) and meta.get("name") == name:
                return Package(vendor, name, str(meta.get("version", "?")), path)
    raise DataError(f"npm package {name} not found in {root} (looked for {root / name}/package.json): "
                    f"npm install {name}, or leave {vendor} out with --vendors")


def read_json(path: Path, what: str):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{what} not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read {what} {path}: {exc}") from None


def _entries(pkg: Package, relpath: str, fields: tuple[str, ...]) -> list[dict]:
    """The package's metadata list, every entry holding `fields` (else: a package of another layout)."""
    path = pkg.path / relpath
    entries = read_json(path, f"{pkg.name} {pkg.version} metadata")
    if not isinstance(entries, list) or not entries:
        raise DataError(f"{path} ({pkg.name} {pkg.version}) is not a list of emoji: a version with another layout?")
    for i, entry in enumerate(entries):
        missing = [f for f in fields if not isinstance(entry, dict) or f not in entry]
        if missing:
            raise DataError(f"{path} ({pkg.name} {pkg.version}): entry {i} lacks {', '.join(missing)}; this reader "
                            f"needs {', '.join(fields)} (as in {pkg.name} 16/17): a version with another layout?")
    return entries


# -- emoji-datasource ------------------------------------------------------------------------------
def _variant_rows(entry: dict) -> list[tuple[str, dict]]:
    """(modifier key, row) for the base emoji (key "") and each skin variation."""
    variations = entry.get("skin_variations") or {}
    if not isinstance(variations, dict):
        raise DataError(f"emoji {entry['unified']}: skin_variations is not a table")
    return [("", entry)] + list(variations.items())


def _tones(modifiers: str, where: str) -> tuple[str, ...]:
    if not modifiers:
        return ()
    try:
        return tuple(TONES[m] for m in modifiers.upper().split("-"))
    except KeyError:
        raise DataError(f"{where}: unknown skin tone modifier in {modifiers!r}") from None


def _datasource_emoji(pkg: Package, catalog: dict[str, Emoji], skipped: dict[str, set[str]]) -> None:
    """Add the package's emoji to `catalog` (first package wins for metadata) and its art to their images."""
    flag = f"has_img_{pkg.vendor}"
    art = pkg.path / "img" / pkg.vendor / str(IMAGE_SIZE)
    for entry in _entries(pkg, "emoji.json", DATASOURCE_FIELDS + (flag,)):
        category = CATEGORIES.get(entry["category"])
        if category is None:
            skipped.setdefault(str(entry["category"]), set()).add(code_key(entry["unified"]))
            continue
        base = code_key(entry["unified"])
        name = str(entry["name"]).lower()
        for modifiers, row in _variant_rows(entry):
            if not isinstance(row, dict) or "unified" not in row or "image" not in row:
                raise DataError(f"{pkg.path / 'emoji.json'}: skin variation {modifiers} of {base} lacks unified/image")
            key = code_key(row["unified"])
            tones = _tones(modifiers, f"{pkg.path / 'emoji.json'} {base}")
            full_name = name + (": " + ", ".join(f"{t} skin tone" for t in tones) if tones else "")
            emoji = catalog.setdefault(key, Emoji(key, base, full_name, full_name, tuple(entry["short_names"]),
                                                  category, str(entry["subcategory"]), tones))
            if row.get(flag, entry[flag]):
                emoji.images[pkg.vendor] = art / row["image"]


# -- OpenMoji --------------------------------------------------------------------------------------
def _split_tags(*texts: str) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for text in texts:
        seen.update(dict.fromkeys(t.strip() for t in str(text or "").split(",") if t.strip()))
    return tuple(seen)


def _openmoji_emoji(pkg: Package, catalog: dict[str, Emoji]) -> None:
    """Give the catalog's emoji OpenMoji's CLDR names and keywords (a variant: its base's) and its SVGs."""
    svgs = pkg.path / "color" / "svg"
    rows = {code_key(e["hexcode"]): e for e in _entries(pkg, "data/openmoji.json", OPENMOJI_FIELDS)}
    for emoji in catalog.values():
        row = rows.get(emoji.key)
        if row is None:
            continue
        if str(row["annotation"]).strip():
            emoji.name = str(row["annotation"]).strip()
        base = rows.get(emoji.base, row)
        emoji.keywords = _split_tags(row["tags"] or base["tags"], row["openmoji_tags"] or base["openmoji_tags"])
        emoji.images[pkg.vendor] = svgs / f"{row['hexcode']}.svg"


def load_catalog(packages: list[Package]) -> tuple[dict[str, Emoji], dict[str, int]]:
    """Every emoji of the selected emoji-datasource packages, with each selected vendor's art; and the
    counts of entries left out by category."""
    catalog: dict[str, Emoji] = {}
    skipped: dict[str, set[str]] = {}
    for pkg in packages:
        if pkg.vendor != "openmoji":
            _datasource_emoji(pkg, catalog, skipped)
    if not catalog:
        raise DataError("no emoji-datasource package selected: the emoji list comes from one "
                        "(--vendors apple and/or facebook)")
    for pkg in packages:
        if pkg.vendor == "openmoji":
            _openmoji_emoji(pkg, catalog)
    for emoji in catalog.values():
        for vendor, path in emoji.images.items():
            if not path.is_file():
                raise DataError(f"{PACKAGES[vendor]} lists {emoji.key} ({emoji.name}) but its image is missing: {path}")
    return catalog, {category: len(keys) for category, keys in sorted(skipped.items())}


# -- images ----------------------------------------------------------------------------------------
def check_renderer() -> None:
    """OpenMoji's SVGs need resvg-py (the `emoji` extra); say how to get it before any work."""
    try:
        import resvg_py  # noqa: F401
    except ImportError:
        raise DataError(f"rasterising OpenMoji's SVGs needs resvg-py: {RENDERER_HINT}") from None


def _on_white(image: Image.Image) -> Image.Image:
    """RGB on white: the loaders' `convert("RGB")` would drop alpha and show transparent pixels' colour."""
    rgba = image.convert("RGBA")
    if rgba.size != (IMAGE_SIZE, IMAGE_SIZE):
        rgba = rgba.resize((IMAGE_SIZE, IMAGE_SIZE), Image.LANCZOS)
    canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(canvas, rgba).convert("RGB")


def _rasterise(path: Path) -> Image.Image:
    import resvg_py

    side = IMAGE_SIZE * SVG_SUPERSAMPLE
    png = resvg_py.svg_to_bytes(svg_path=str(path), width=side, height=side, skip_system_fonts=True)
    return Image.open(io.BytesIO(bytes(png)))


def load_image(path: Path) -> Image.Image:
    """A vendor's art as an IMAGE_SIZE RGB image on white; a file that does not decode is a DataError."""
    try:
        image = _rasterise(path) if path.suffix.lower() == ".svg" else Image.open(path)
        image.load()
        return _on_white(image)
    except UnidentifiedImageError:
        raise DataError(f"cannot decode image {path}: not an image file PIL can read") from None
    except (OSError, ValueError, SyntaxError) as exc:  # truncated PNG, resvg's parse error, PIL's decoder errors
        raise DataError(f"cannot decode image {path}: "
                        f"{str(exc).strip().splitlines()[0] if str(exc).strip() else exc}") from None
