"""Linear probe: logistic regression on frozen image features (CLIP paper, Sec. 3.2).

As CLIP does: an L2-regularised multinomial logistic regression fitted with L-BFGS on the
whole training set at once, its regularisation strength chosen by accuracy on a
validation split (a log-spaced sweep, then a finer step around the best); the chosen
strength is refitted on train + validation and scored once on the test split.
Implemented in torch on the features (scikit-learn is not needed, and it runs on the GPU).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from flip.errors import ConfigError, DataError
from flip.eval.datasets import ClassificationSet
from flip.eval.features import Masking, Progress, Runtime, encode_images
from flip.eval.metrics import classification_metrics


@dataclass(frozen=True)
class ProbeConfig:
    l2_grid: tuple[float, ...] = tuple(10.0 ** e for e in range(2, -7, -1))  # strong -> weak: warm starts
    refine: bool = True  # also try half a decade either side of the best
    max_iter: int = 1000

    def __post_init__(self):
        if self.max_iter < 1:
            raise ConfigError(f"must be at least 1, got {self.max_iter}", key="max_iter")
        if not self.l2_grid:
            raise ConfigError("the L2 grid is empty")


@dataclass
class LinearClassifier:
    weight: torch.Tensor  # [D, classes]
    bias: torch.Tensor  # [classes]
    mean: torch.Tensor  # [D] feature standardisation, from the training features
    std: torch.Tensor

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return ((features - self.mean) / self.std) @ self.weight + self.bias


def fit_logistic_regression(features: torch.Tensor, labels: torch.Tensor, num_classes: int, l2: float,
                            max_iter: int = 1000, init: LinearClassifier | None = None) -> LinearClassifier:
    """Minimise mean cross-entropy + l2/2 ||W||^2 (bias unpenalised) with full-batch L-BFGS."""
    mean, std = features.mean(dim=0), features.std(dim=0).clamp_min(1e-6)
    x = (features - mean) / std
    dim = features.shape[1]
    weight = (init.weight.clone() if init else torch.zeros(dim, num_classes, device=x.device)).requires_grad_()
    bias = (init.bias.clone() if init else torch.zeros(num_classes, device=x.device)).requires_grad_()
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, history_size=20,
                                  tolerance_grad=1e-5, tolerance_change=1e-9, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(x @ weight + bias, labels) + 0.5 * l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return LinearClassifier(weight.detach(), bias.detach(), mean, std)


def _accuracy(classifier: LinearClassifier, features: torch.Tensor, labels: torch.Tensor) -> float:
    return (classifier.logits(features).argmax(dim=1) == labels).float().mean().item()


def select_l2(train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor,
              num_classes: int, config: ProbeConfig = ProbeConfig()) -> tuple[float, dict[float, float]]:
    """The regularisation strength with the best validation accuracy (ties: the stronger one)."""
    scores: dict[float, float] = {}
    previous = None
    for l2 in config.l2_grid:
        previous = fit_logistic_regression(train_x, train_y, num_classes, l2, config.max_iter, previous)
        scores[l2] = _accuracy(previous, val_x, val_y)
    best = max(scores, key=lambda l2: (scores[l2], l2))
    if config.refine:
        for l2 in (best * 10 ** 0.5, best * 10 ** -0.5):
            scores[l2] = _accuracy(fit_logistic_regression(train_x, train_y, num_classes, l2, config.max_iter),
                                   val_x, val_y)
        best = max(scores, key=lambda l2: (scores[l2], l2))
    return best, scores


def evaluate_linear_probe(model, train: ClassificationSet, val: ClassificationSet, test: ClassificationSet,
                          masking: Masking = Masking(), runtime: Runtime = Runtime(),
                          progress: Progress | None = None,
                          config: ProbeConfig = ProbeConfig()) -> dict[str, float]:
    """Test top1 (top5 with >= 5 classes), mean_per_class_recall (percent), the chosen l2 and its val top1."""
    num_classes = len(train.classnames)
    if not len(val.classnames) == len(test.classnames) == num_classes:
        raise DataError(f"the splits have different classes ({num_classes}, {len(val.classnames)}, "
                         f"{len(test.classnames)})")
    x = {name: encode_images(model, split.images, masking, runtime, progress)
         for name, split in (("train", train), ("val", val), ("test", test))}
    y = {name: split.labels.to(x[name].device) for name, split in (("train", train), ("val", val), ("test", test))}
    l2, scores = select_l2(x["train"], y["train"], x["val"], y["val"], num_classes, config)
    final = fit_logistic_regression(torch.cat([x["train"], x["val"]]), torch.cat([y["train"], y["val"]]),
                                    num_classes, l2, config.max_iter)
    metrics = classification_metrics(final.logits(x["test"]), y["test"])
    return {**metrics, "l2": l2, "val_top1": 100.0 * scores[l2]}
