"""flip: FLIP (masked CLIP) pre-training - model, masking, losses, data, training, evaluation.

The library under the `flipctl` command line: it computes and writes, and returns what there is to
show (the CLI prints it). Subpackages, each stating its own public names:

- `flip.models`: the network (a masked ViT image tower, a text tower), its presets, the MAE decoder.
- `flip.data`: the built-in and emoji datasets, webdataset shards, decoding, augmentation, tokenizer.
- `flip.train`: a training run: its config (every setting), the step, the loop, checkpoints, logs.
- `flip.eval`: zero-shot classification, retrieval and linear probes of a checkpoint.
- `flip.export`: a model in open_clip's format.
- `flip.bench`: `flipctl bench`: step speed, FLOPs, peak memory and data-loader rate.
- `flip.sweep`: a study's runs planned, trained once on a shared store, and reported.

Modules at the top serve several of them: `masking`, `loss`, `flops`, `distributed`, `precision`
and `compile` (parts of a training step and its set-up), `saved_model` (a model on disk), `capacity`
(`flipctl plan`: does a run fit its GPUs), `launch` (torchrun and SLURM), `choices` and `errors`
(names and errors the CLI shares without importing torch), `resources` and `files`.
"""

from flip._lazy import lazy_exports

__version__ = "0.1.0"

__all__ = ["CheckpointError", "ConfigError", "DataError", "FlipError", "__version__"]

__getattr__, __dir__ = lazy_exports(__name__, {
    "errors": ("CheckpointError", "ConfigError", "DataError", "FlipError"),
})
