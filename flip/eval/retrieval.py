"""Image-text retrieval on a set with several captions per image (CLIP_benchmark's protocol)."""

from __future__ import annotations

from pathlib import Path

import torch

from flip.eval.datasets import ImageDataset, RetrievalSet, load_caption_table
from flip.eval.features import Masking, Progress, Runtime, encode_images, encode_texts
from flip.eval.metrics import retrieval_recall

__all__ = ["evaluate_retrieval", "load_csv_retrieval_set"]


def load_csv_retrieval_set(csv_path: str | Path, image_size: int, images_root: str | Path | None = None,
                           limit: int | None = None) -> RetrievalSet:
    """A `filepath,caption` CSV with its images decoded up front (for the trainer's repeated quick eval).

    `limit` keeps the first images (in first-seen order) and their captions. Captions are
    tokenised at evaluation time, with the model's own context length.
    """
    data = load_caption_table(csv_path, images_root)
    if limit is not None and limit < len(data.images):
        keep = data.text_to_image < limit
        data.images = data.images[:limit]
        data.captions = [c for c, k in zip(data.captions, keep.tolist()) if k]
        data.text_to_image = data.text_to_image[keep]
    decoded = ImageDataset(data.images, image_size)
    data.images = torch.stack([decoded[i] for i in range(len(decoded))])
    return data


def evaluate_retrieval(model, data: RetrievalSet, device: str | torch.device | None = None,
                       batch_size: int = 256, *, masking: Masking = Masking(), runtime: Runtime | None = None,
                       progress: Progress | None = None) -> dict[str, float]:
    """Image->text and text->image R@1/5/10, in percent.

    `runtime` overrides `device`/`batch_size` (kept as arguments for the trainer's quick eval).
    Pass a `features.Meter` as `progress` to measure images/s.
    """
    runtime = runtime or Runtime(device=device or "cpu", batch_size=batch_size)
    images = encode_images(model, data.images, masking, runtime, progress)
    texts = encode_texts(model, data.captions, runtime, progress, description="encoding captions")
    return retrieval_recall(images @ texts.T, data.text_to_image.to(images.device))
