"""Classification and retrieval metrics with CLIP_benchmark's semantics, in percent.

Ranking ties are broken by index order (a stable descending sort): of two candidates
with the same score, the one with the lower index ranks first. `torch.topk`, which
CLIP_benchmark uses, leaves tie order unspecified; a fixed rule makes the numbers
reproducible across devices and lets tests state the expected result by hand.
"""

from __future__ import annotations

import torch

from flip.errors import DataError


def stable_ranks(scores: torch.Tensor, target: torch.Tensor, rows: torch.Tensor | None = None,
                 chunk: int = 1024) -> torch.Tensor:
    """0-based rank of column `target[i]` within row `rows[i]` of `scores`, best score first.

    scores: [n, m]; target: [q] column indices; rows: [q] row indices (default: row i for
    query i) -> [q] ranks, where rank = #(higher scores) + #(equal scores at a lower index).
    Works in chunks of queries, so no [q, m] matrix is ever held at once (COCO: 25k x 5k).
    """
    ranks = []
    columns = torch.arange(scores.shape[1], device=scores.device)
    for start in range(0, target.shape[0], chunk):
        tgt = target[start:start + chunk]
        block = scores[rows[start:start + chunk] if rows is not None else slice(start, start + chunk)]  # [c, m]
        own = block.gather(1, tgt[:, None])  # [c, 1]
        ahead = (block > own) | ((block == own) & (columns[None, :] < tgt[:, None]))
        ranks.append(ahead.sum(dim=1))
    return torch.cat(ranks) if ranks else torch.zeros(0, dtype=torch.long, device=scores.device)


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """top1, top5 (only with at least 5 classes, as CLIP_benchmark) and mean per-class recall.

    logits: [n, classes], labels: [n]. Mean per-class recall (balanced accuracy) averages the
    top-1 recall over the classes that have at least one sample, as scikit-learn's
    `balanced_accuracy_score` does.
    """
    n, num_classes = logits.shape
    if n == 0:
        raise DataError("no samples to score")
    ranks = stable_ranks(logits.float(), labels)
    metrics = {"top1": 100.0 * (ranks < 1).float().mean().item()}
    if num_classes >= 5:
        metrics["top5"] = 100.0 * (ranks < 5).float().mean().item()
    hits = torch.zeros(num_classes, device=logits.device).index_add_(0, labels, (ranks < 1).float())
    counts = torch.bincount(labels, minlength=num_classes).float()
    present = counts > 0
    metrics["mean_per_class_recall"] = 100.0 * (hits[present] / counts[present]).mean().item()
    return metrics


def retrieval_recall(scores: torch.Tensor, text_to_image: torch.Tensor,
                     ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    """Recall@k both ways from a similarity matrix.

    scores: [n_images, n_texts]; text_to_image: [n_texts], the image each caption belongs to.
    image->text: a hit when any of the image's captions is among its top k texts.
    text->image: per caption, a hit when its image is among its top k images.
    """
    n_images, n_texts = scores.shape
    text_to_image = text_to_image.to(scores.device)
    captions_per_image = torch.bincount(text_to_image, minlength=n_images)
    if (captions_per_image == 0).any():
        missing = int((captions_per_image == 0).nonzero()[0])
        raise DataError(f"image {missing} has no caption: image->text recall is undefined")
    scores = scores.float()
    text_ranks = stable_ranks(scores.T, text_to_image)  # [n_texts]: rank of the caption's image
    # Rank of each caption within its own image's row, then the best caption per image.
    caption_ranks = stable_ranks(scores, torch.arange(n_texts, device=scores.device), rows=text_to_image)
    image_ranks = torch.full((n_images,), n_texts, dtype=caption_ranks.dtype, device=scores.device)
    image_ranks = image_ranks.scatter_reduce(0, text_to_image, caption_ranks, reduce="amin")
    metrics = {f"image_to_text_R@{k}": 100.0 * (image_ranks < k).float().mean().item() for k in ks}
    metrics |= {f"text_to_image_R@{k}": 100.0 * (text_ranks < k).float().mean().item() for k in ks}
    return metrics
