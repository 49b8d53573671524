"""Batched, no-grad encoding of a whole evaluation set, shared by every evaluator.

Image features are computed once per call, in one pass over the images, under one of
three masking modes (FLIP paper, Table 1d):
- full image (the default, what the paper reports);
- masked: each image keeps a random `int(L * (1 - r))` of its L patches (seeded);
- K complementary views: each image's patches are split at random into K disjoint views
  that together cover every patch exactly once; the L2-normalised view embeddings are
  averaged, then renormalised.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass
from typing import Protocol, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from flip.data.tokenizer import Tokenizer
from flip.errors import ConfigError
from flip.eval.datasets import ImageDataset, ImageRef
from flip.masking import complementary_views, num_kept, random_keep_indices


@dataclass(frozen=True)
class Masking:
    """How images are shown to the model at inference."""

    mask_ratio: float = 0.0  # > 0: masked inference at this ratio
    views: int = 1  # > 1: ensemble of this many complementary masked views
    seed: int = 0  # masks are drawn from a CPU generator: the same on every device

    def __post_init__(self):
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ConfigError(f"mask ratio must be in [0, 1), got {self.mask_ratio}")
        if self.views < 1:
            raise ConfigError(f"views must be at least 1, got {self.views}")
        if self.views > 1 and self.mask_ratio > 0:
            raise ConfigError("use either a mask ratio or complementary views, not both "
                             "(K views each keep 1/K of the patches)")

    @property
    def mode(self) -> str:
        return "views" if self.views > 1 else "masked" if self.mask_ratio > 0 else "full"

    def describe(self) -> str:
        if self.mode == "views":
            return f"{self.views} complementary views (each ~{1 - 1 / self.views:.0%} masked), averaged"
        if self.mode == "masked":
            return f"masked inference at {self.mask_ratio:.0%}"
        return "full image"

    def kept_per_view(self, num_patches: int) -> list[int]:
        """Patches each forward pass of an image sees (views: `tensor_split`'s near-equal parts)."""
        if self.mode == "views":
            return [num_patches // self.views + (i < num_patches % self.views) for i in range(self.views)]
        return [num_kept(num_patches, self.mask_ratio)]

    def to_dict(self, num_patches: int) -> dict:
        return {**asdict(self), "mode": self.mode, "patches": num_patches,
                "kept_per_view": self.kept_per_view(num_patches)}


@dataclass(frozen=True)
class Runtime:
    """Where and how evaluation runs."""

    device: str | torch.device = "cpu"
    batch_size: int = 256
    precision: str = "fp32"  # or "bf16" (autocast)
    workers: int = 0  # image-decoding processes

    def __post_init__(self):
        if self.precision not in ("fp32", "bf16"):
            raise ConfigError(f"precision must be fp32 or bf16, got {self.precision!r}")
        if self.batch_size < 1:
            raise ConfigError(f"batch size must be positive, got {self.batch_size}")
        if self.workers < 0:
            raise ConfigError(f"must be at least 0, got {self.workers}", key="workers")

    def autocast(self):
        # fp32 leaves an enclosing autocast alone (the trainer's quick eval runs inside its own).
        if self.precision == "bf16":
            return torch.autocast(torch.device(self.device).type, dtype=torch.bfloat16)
        return contextlib.nullcontext()


class Progress(Protocol):
    def start(self, description: str, total: int) -> None: ...

    def advance(self, n: int) -> None: ...


class NoProgress:
    def start(self, description: str, total: int) -> None:
        pass

    def advance(self, n: int) -> None:
        pass


class Meter:
    """A `Progress` that records the items and wall time of each phase (e.g. images/s),
    passing the calls on to another (a progress bar)."""

    def __init__(self, inner: Progress | None = None):
        self.inner = inner or NoProgress()
        self.items: dict[str, int] = {}
        self.seconds: dict[str, float] = {}
        self._phase, self._start, self._before = "", 0.0, 0.0

    def start(self, description: str, total: int) -> None:
        self._phase, self._start = description, time.perf_counter()
        self._before = self.seconds.setdefault(description, 0.0)
        self.items.setdefault(description, 0)
        self.inner.start(description, total)

    def advance(self, n: int) -> None:
        self.items[self._phase] += n
        self.seconds[self._phase] = self._before + time.perf_counter() - self._start
        self.inner.advance(n)

    def rate(self, description: str) -> float:
        """Items per second of a phase (summed over its runs)."""
        seconds = self.seconds.get(description, 0.0)
        return self.items.get(description, 0) / seconds if seconds > 0 else 0.0


@contextlib.contextmanager
def _eval_mode(model: torch.nn.Module):
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def encode_batch(model, images: torch.Tensor, masking: Masking, generator: torch.Generator) -> torch.Tensor:
    """[B, 3, H, W] -> [B, D] L2-normalised features under `masking`."""
    num_patches = model.cfg.vision.num_patches
    if masking.mode == "views":
        keeps = complementary_views(num_patches, masking.views, len(images), "cpu", generator)
        views = [model.encode_image(images, keep.to(images.device)).float() for keep in keeps]
        return F.normalize(torch.stack(views).mean(dim=0), dim=-1)
    if masking.mode == "masked":
        keep = random_keep_indices(len(images), num_patches, num_kept(num_patches, masking.mask_ratio), "cpu",
                                   generator)
        return model.encode_image(images, keep.to(images.device)).float()
    return model.encode_image(images).float()


IMAGES = "encoding images"  # the phase whose rate is reported as images/s


def encode_images(model, images: Sequence[ImageRef] | torch.Tensor, masking: Masking = Masking(),
                  runtime: Runtime = Runtime(), progress: Progress | None = None,
                  description: str = IMAGES) -> torch.Tensor:
    """[n, D] L2-normalised features of every image, in order, one pass over the images.

    `images`: references (decoded by `runtime.workers` processes) or preprocessed images [n, 3, H, W].
    """
    progress = progress or NoProgress()
    preloaded = isinstance(images, torch.Tensor)
    dataset = images if preloaded else ImageDataset(images, model.cfg.vision.image_size)
    workers = 0 if preloaded else runtime.workers
    loader = DataLoader(dataset, batch_size=runtime.batch_size, shuffle=False, num_workers=workers,
                        pin_memory=torch.device(runtime.device).type == "cuda")
    generator = torch.Generator().manual_seed(masking.seed)
    progress.start(description, len(dataset))
    chunks = []
    with _eval_mode(model), runtime.autocast():
        for batch in loader:
            chunks.append(encode_batch(model, batch.to(runtime.device, non_blocking=True), masking, generator))
            progress.advance(len(batch))
    if torch.device(runtime.device).type == "cuda":
        torch.cuda.synchronize()  # so that a Meter's time covers the GPU work
        progress.advance(0)
    return torch.cat(chunks) if chunks else torch.zeros(0, model.cfg.embed_dim, device=runtime.device)


def encode_texts(model, texts: Sequence[str], runtime: Runtime = Runtime(), progress: Progress | None = None,
                 description: str = "encoding texts") -> torch.Tensor:
    """[n_texts, D] L2-normalised text features, tokenised at the model's context length."""
    progress = progress or NoProgress()
    tokenizer = Tokenizer(model.cfg.text.context_length)
    progress.start(description, len(texts))
    chunks = []
    with _eval_mode(model), runtime.autocast():
        for i in range(0, len(texts), runtime.batch_size):
            batch = list(texts[i:i + runtime.batch_size])
            chunks.append(model.encode_text(tokenizer(batch).to(runtime.device)).float())
            progress.advance(len(batch))
    return torch.cat(chunks) if chunks else torch.zeros(0, model.cfg.embed_dim, device=runtime.device)
