"""The evaluation a training run does every `eval_every` steps and at the end.

Held-out image<->text retrieval (`eval_data`) and zero-shot classification (`eval_zeroshot`, as
OpenCLIP's periodic ImageNet zero-shot), computed by flip.eval as `flipctl eval` computes them.
Both sets are loaded and decoded once, before the first step: data that is missing or
unreadable stops the run before it trains, and each evaluation only runs the model.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from itertools import zip_longest

import torch

from flip.errors import ConfigError, DataError
from flip.eval.datasets import ClassificationSet, ImageDataset, RetrievalSet, load_classification, load_retrieval
from flip.eval.features import Runtime
from flip.eval.retrieval import evaluate_retrieval
from flip.eval.templates import Template, resolve_templates
from flip.eval.zeroshot import evaluate_zeroshot
from flip.train.config import TrainConfig

ZEROSHOT_PREFIX = "zeroshot_"  # zero-shot metrics sit beside the retrieval ones: zeroshot_top1, ...


@dataclass
class PeriodicEval:
    retrieval: RetrievalSet | None = None  # images decoded: [n, 3, H, W]
    zeroshot: ClassificationSet | None = None  # images decoded: [n, 3, H, W]
    templates: list[Template] | None = None  # zero-shot prompt templates

    @classmethod
    def load(cls, cfg: TrainConfig, image_size: int) -> "PeriodicEval":
        """The sets `cfg` names, at most `eval_images` / `eval_zeroshot_images` images each."""
        retrieval = zeroshot = templates = None
        if cfg.eval_data is not None:
            try:
                retrieval = _decoded(_first_images(load_retrieval(cfg.eval_data), cfg.eval_images), image_size)
            except DataError as exc:
                raise ConfigError(f"cannot be used: {exc}", key="eval_data") from None
        if cfg.eval_zeroshot is not None:
            try:
                data = load_classification(cfg.eval_zeroshot)
                zeroshot = _decoded(_spread_over_classes(data, cfg.eval_zeroshot_images), image_size)
            except DataError as exc:
                raise ConfigError(f"cannot be used: {exc}", key="eval_zeroshot") from None
            try:
                templates = resolve_templates(cfg.eval_templates, zeroshot.templates)[1]
            except DataError as exc:
                raise ConfigError(f"cannot be used: {exc}", key="eval_templates") from None
        return cls(retrieval, zeroshot, templates)

    def __bool__(self) -> bool:
        return self.retrieval is not None or self.zeroshot is not None

    def run(self, model, device: torch.device, precision: str = "fp32") -> dict[str, float]:
        """Retrieval R@1/5/10 and zero-shot top1/top5/mean_per_class_recall (prefixed), in percent."""
        runtime = Runtime(device=device, precision=precision)
        metrics: dict[str, float] = {}
        if self.retrieval is not None:
            metrics.update(evaluate_retrieval(model, self.retrieval, runtime=runtime))
        if self.zeroshot is not None:
            scores = evaluate_zeroshot(model, self.zeroshot, self.templates, runtime=runtime)
            metrics.update({ZEROSHOT_PREFIX + name: value for name, value in scores.items()})
        return metrics


def headline(metrics: dict[str, float]) -> str:
    """The figures a progress line shows: R@1, R@5 and zero-shot top-1/top-5."""
    return "  ".join(f"{k} {v:.1f}" for k, v in metrics.items()
                     if k.endswith(("@1", "@5", "top1", "top5")))


def _first_images(data: RetrievalSet, limit: int) -> RetrievalSet:
    """The first `limit` images (in the data's order) and their captions."""
    if limit >= len(data.images):
        return data
    keep = data.text_to_image < limit
    return replace(data, images=data.images[:limit],
                   captions=[c for c, k in zip(data.captions, keep.tolist()) if k],
                   text_to_image=data.text_to_image[keep])


def _spread_over_classes(data: ClassificationSet, limit: int) -> ClassificationSet:
    """At most `limit` images, taken round-robin over the classes (every class keeps its share)."""
    if limit >= len(data.images):
        return data
    per_class = [(data.labels == c).nonzero().flatten().tolist() for c in range(len(data.classnames))]
    order = [i for rank in zip_longest(*per_class) for i in rank if i is not None]
    return data.subset(sorted(order[:limit]))


def _decoded(data, image_size: int):
    images = ImageDataset(data.images, image_size)
    return replace(data, images=torch.stack([images[i] for i in range(len(images))]))
