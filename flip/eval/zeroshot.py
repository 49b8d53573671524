"""Zero-shot classification, computed as CLIP_benchmark and open_clip do.

Class embedding: fill every template with the class name, encode, L2-normalise, average
over the templates, renormalise (open_clip's `build_zero_shot_classifier`). Logits are
100 x image features @ class embeddings.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from flip.errors import DataError
from flip.eval.datasets import ClassificationSet
from flip.eval.features import Masking, Progress, Runtime, encode_images, encode_texts
from flip.eval.metrics import classification_metrics
from flip.eval.templates import Template


def zeroshot_classifier(model, classnames: Sequence[str], templates: Sequence[Template],
                        runtime: Runtime = Runtime(), progress: Progress | None = None) -> torch.Tensor:
    """[classes, D] unit class embeddings."""
    if not templates:
        raise DataError("no templates")
    texts = [template(name) for name in classnames for template in templates]
    features = encode_texts(model, texts, runtime, progress, description="encoding class prompts")
    per_class = features.view(len(classnames), len(templates), -1).mean(dim=1)
    return F.normalize(per_class, dim=-1)


def evaluate_zeroshot(model, dataset: ClassificationSet, templates: Sequence[Template],
                      masking: Masking = Masking(), runtime: Runtime = Runtime(),
                      progress: Progress | None = None) -> dict[str, float]:
    """top1, top5 (with >= 5 classes) and mean_per_class_recall, in percent.

    Pass a `features.Meter` as `progress` to measure images/s.
    """
    classifier = zeroshot_classifier(model, dataset.classnames, templates, runtime, progress)
    images = encode_images(model, dataset.images, masking, runtime, progress)
    logits = 100.0 * images @ classifier.T
    return classification_metrics(logits, dataset.labels.to(logits.device))
