"""Evaluation: zero-shot classification, retrieval and linear probes, with masked-view inference.

One job per module: `datasets` (the formats), `templates` (prompt sets), `features`
(batched encoding under a masking mode, shared by all), `metrics`, one evaluator per
task (`zeroshot`, `retrieval`, `linear_probe`), each a function of a model and a dataset,
and `api`: `evaluate_checkpoint`, from a checkpoint to the full record of one task.
"""

from flip.eval.api import TASKS, evaluate_checkpoint
from flip.eval.features import Masking, Runtime
from flip.eval.linear_probe import ProbeConfig

__all__ = ["TASKS", "Masking", "ProbeConfig", "Runtime", "evaluate_checkpoint"]
