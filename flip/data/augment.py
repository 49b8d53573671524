"""Training augmentation as data: the random-resized crop and flip of a sample, and CLIP's normalisation.

A sample's crop box and flip are a function of its seed and its image's size only (`crop_box`), so
the worker path (decode + crop in a DataLoader worker) and the device path (the whole batch decoded
and cropped in the step's input stage) cut exactly the same boxes, and a resumed run the same ones
as an uninterrupted run. The sampling is torchvision's `RandomResizedCrop.get_params` (area fraction
uniform in `crop_scale`, log-uniform aspect ratio in [3/4, 4/3], 10 tries, then the centre crop of
the clamped ratio), drawn from SplitMix64 seeded by the sample: a few microseconds, where seeding
torch's generator or Python's Mersenne twister per sample costs tens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

# CLIP's normalisation constants, shared with open_clip so exported models see the same inputs.
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

ASPECT_RATIO = (3 / 4, 4 / 3)


@dataclass(frozen=True)
class AugmentConfig:
    image_size: int = 224
    crop_scale: tuple[float, float] = (0.5, 1.0)
    hflip: bool = True


@dataclass(frozen=True)
class CropBox:
    """A crop in source pixels (integers, as torchvision's) and whether the result is mirrored."""

    top: int
    left: int
    height: int
    width: int
    flip: bool


_MASK64 = (1 << 64) - 1


class SplitMix64:
    """A tiny seeded generator (Steele et al.'s SplitMix64): cheap to seed, one per sample."""

    def __init__(self, seed: int):
        self.state = seed & _MASK64

    def next(self) -> int:
        self.state = (self.state + 0x9E3779B97F4A7C15) & _MASK64
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        return z ^ (z >> 31)

    def random(self) -> float:
        return (self.next() >> 11) * (1.0 / (1 << 53))  # uniform in [0, 1)

    def uniform(self, low: float, high: float) -> float:
        return low + (high - low) * self.random()

    def randint(self, low: int, high: int) -> int:
        return low + self.next() % (high - low + 1)  # inclusive; the modulo bias is ~2^-50


def crop_box(seed: int, height: int, width: int, cfg: AugmentConfig) -> CropBox:
    rng = SplitMix64(seed)
    area = height * width
    log_ratio = (math.log(ASPECT_RATIO[0]), math.log(ASPECT_RATIO[1]))
    box = None
    for _ in range(10):
        target = area * rng.uniform(*cfg.crop_scale)
        ratio = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * ratio)))
        h = int(round(math.sqrt(target / ratio)))
        if 0 < w <= width and 0 < h <= height:
            box = (rng.randint(0, height - h), rng.randint(0, width - w), h, w)
            break
    if box is None:  # centre crop of the whole image at the nearest allowed aspect ratio
        in_ratio = width / height
        if in_ratio < ASPECT_RATIO[0]:
            w, h = width, int(round(width / ASPECT_RATIO[0]))
        elif in_ratio > ASPECT_RATIO[1]:
            h, w = height, int(round(height * ASPECT_RATIO[1]))
        else:
            w, h = width, height
        box = ((height - h) // 2, (width - w) // 2, h, w)
    # Drawn after the box, always: the flip of a sample does not depend on whether flips are on.
    flip = rng.random() < 0.5
    return CropBox(*box, flip=cfg.hflip and flip)


class Normalise:
    """uint8 (or float in [0, 255]) images -> CLIP-normalised float32, as one multiply-add on the device:
    ToTensor + Normalize folded into x * (1 / (255 std)) - mean / std."""

    def __init__(self, device: torch.device | str = "cpu"):
        std = torch.tensor(OPENAI_DATASET_STD, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        mean = torch.tensor(OPENAI_DATASET_MEAN, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self.scale, self.shift = 1.0 / (255.0 * std), -mean / std

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.shift, images.float(), self.scale)
