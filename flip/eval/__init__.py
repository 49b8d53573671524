"""Evaluation: zero-shot classification, retrieval and linear probes, with masked-view inference.

One job per module: `datasets` (the formats), `templates` (prompt sets), `features`
(batched encoding under a masking mode, shared by all), `metrics`, and one evaluator per
task (`zeroshot`, `retrieval`, `linear_probe`), each a function of a model and a dataset.
"""
