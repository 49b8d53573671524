"""Evaluation: zero-shot classification, retrieval and linear probes, with masked-view inference.

One job per module: `datasets` (the formats), `templates` (prompt sets), `features`
(batched encoding under a masking mode, shared by all), `metrics`, one evaluator per
task (`zeroshot`, `retrieval`, `linear_probe`), each a function of a model and a dataset,
and `api`: `evaluate_checkpoint`, from a checkpoint to the full record of one task.
"""

from flip._lazy import lazy_exports

__all__ = ["TASKS", "Masking", "ProbeConfig", "Runtime", "check_eval_sets", "evaluate_checkpoint",
           "evaluate_retrieval", "evaluate_zeroshot"]

__getattr__, __dir__ = lazy_exports(__name__, {
    "api": ("TASKS", "evaluate_checkpoint"),
    "features": ("Masking", "Runtime"),
    "linear_probe": ("ProbeConfig",),
    "datasets": ("check_eval_sets",),
    "retrieval": ("evaluate_retrieval",),
    "zeroshot": ("evaluate_zeroshot",),
})
