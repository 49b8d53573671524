"""Retrieval and classification metrics, with CLIP_benchmark's semantics."""

from __future__ import annotations

import torch


def retrieval_recall(scores: torch.Tensor, text_to_image: torch.Tensor,
                     ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    """Recall@k both ways from a similarity matrix.

    scores: [n_images, n_texts]; text_to_image: [n_texts], the image each caption belongs to.
    image->text: a hit when any of the image's captions is among its top k texts.
    text->image: per caption, a hit when its image is among its top k images.
    Ties are broken by index order, as `torch.topk` (and CLIP_benchmark) does.
    """
    n_images, n_texts = scores.shape
    positives = torch.zeros(n_images, n_texts, dtype=torch.bool, device=scores.device)
    positives[text_to_image, torch.arange(n_texts, device=scores.device)] = True
    metrics = {}
    for k in ks:
        top_texts = scores.topk(min(k, n_texts), dim=1).indices  # [n_images, k]
        i2t = positives.gather(1, top_texts).any(dim=1).float().mean().item()
        top_images = scores.T.topk(min(k, n_images), dim=1).indices  # [n_texts, k]
        t2i = (top_images == text_to_image[:, None]).any(dim=1).float().mean().item()
        metrics[f"image_to_text_R@{k}"] = 100.0 * i2t
        metrics[f"text_to_image_R@{k}"] = 100.0 * t2i
    return metrics
