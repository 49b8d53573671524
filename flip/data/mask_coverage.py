"""How often a random patch mask hides a whole object of a built-in scene.

A caption that names an object the mask hid no longer describes the view the image encoder sees; how
often that happens decides how much a masked sample is worth on this data. For each object we count
the patches holding any of its pixels (rendered alone, at the training resolution) and take the exact
probability that FLIP's random mask, keeping `keep` of `num_patches`, drops all of them
(hypergeometric: C(N - n, keep) / C(N, keep)). The training crop (90-100% of the area on the built-in
data) is ignored.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from flip.data.synth import SCENE_KINDS, SIZES, SceneObject, check_scene_kind, render_object, sample_scene
from flip.errors import ConfigError
from flip.masking import num_kept


@dataclass(frozen=True)
class CoverageRow:
    """One mask ratio's figures over the sampled scenes."""

    mask_ratio: float
    kept_patches: int
    hidden_by_size: dict[str, float]  # P(every patch of an object is dropped), per object size
    scenes_with_hidden_object: float  # expected fraction of scenes with at least one object fully hidden


def object_patches(obj: SceneObject, image_size: int, patch_size: int) -> int:
    """Patches (of an image_size / patch_size grid) holding at least one pixel of `obj`."""
    grid = image_size // patch_size
    drawn = np.asarray(render_object(obj, image_size).convert("L"))[:grid * patch_size, :grid * patch_size] > 0
    return int(drawn.reshape(grid, patch_size, grid, patch_size).any(axis=(1, 3)).sum())


def hidden_probability(object_patches: int, num_patches: int, keep: int) -> float:
    """P(a uniformly random set of `keep` kept patches misses all `object_patches` of an object)."""
    return math.comb(num_patches - object_patches, keep) / math.comb(num_patches, keep)


def mask_coverage(scenes: str = "mixed", mask_ratios: Sequence[float] = (0.5, 0.75), samples: int = 2000,
                  image_size: int = 64, patch_size: int = 8,
                  seed: int = 0) -> tuple[dict[str, float], list[CoverageRow]]:
    """Mean patches per object size, and each mask ratio's hidden-object figures, over `samples` scenes."""
    check_scene_kind(scenes)
    if samples < 1 or patch_size < 1 or image_size < patch_size:
        raise ConfigError("needs samples >= 1 and 1 <= patch size <= image size")
    if any(not 0 <= r < 1 for r in mask_ratios):
        raise ConfigError(f"must be in [0, 1), got {list(mask_ratios)}", key="mask_ratios")
    num_patches = (image_size // patch_size) ** 2
    rng = random.Random(seed)
    objects = [[(o.size, object_patches(o, image_size, patch_size)) for o in
                sample_scene(rng, sizes=SCENE_KINDS[scenes]).objects] for _ in range(samples)]
    sizes = [s for s in SIZES if any(size == s for scene in objects for size, _ in scene)]
    patches = {s: float(np.mean([n for scene in objects for size, n in scene if size == s])) for s in sizes}
    rows = []
    for ratio in mask_ratios:
        keep = num_kept(num_patches, ratio)  # as the training step's mask
        def hidden(n):
            return hidden_probability(n, num_patches, keep)
        rows.append(CoverageRow(
            mask_ratio=ratio, kept_patches=keep,
            hidden_by_size={s: float(np.mean([hidden(n) for scene in objects for size, n in scene if size == s]))
                            for s in sizes},
            scenes_with_hidden_object=float(np.mean([1 - math.prod(1 - hidden(n) for _, n in scene)
                                                     for scene in objects]))))
    return patches, rows
