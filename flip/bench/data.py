"""Throughput of the training data loader alone: shard reading, decode, augment, tokenise, collate.

The loader is the trainer's (`make_loader` over `ShardStream`), on the built-in shards, with the
paper's augmentation (RandomResizedCrop scale (0.5, 1) + horizontal flip: at least the work the
trainer does per sample). Nothing else runs meanwhile, so the figure is the loader's ceiling on
this machine; in training the workers share the cores with the step.

Timing starts once the first `skip` batches are consumed: those cover the workers' start-up,
the shuffle buffer's fill and the prefetch queue that filled meanwhile (`workers x 4` batches),
so what is timed is the steady-state rate at which the workers produce batches.
"""

from __future__ import annotations

import time
from pathlib import Path

from flip.data.pipeline import AugmentConfig, StreamConfig, make_loader
from flip.data.shards import expand_urls
from flip.models import ModelConfig

PREFETCH_FACTOR = 4  # make_loader's


def loader_throughput(cfg: ModelConfig, data: str | Path, batch: int, workers: int, batches: int = 12,
                      skip: int | None = None, seed: int = 0) -> dict:
    """Samples/s the loader delivers over `batches` batches after `skip` (default: the prefetch queue)."""
    urls = expand_urls(str(data))
    stream = StreamConfig(urls=tuple(urls), batch_size=batch, context_length=cfg.text.context_length,
                          augment=AugmentConfig(cfg.vision.image_size, (0.5, 1.0), hflip=True), seed=seed)
    skip = max(1, workers * PREFETCH_FACTOR) if skip is None else skip
    loader = make_loader(stream, workers)
    iterator = iter(loader)
    try:
        start_up = time.perf_counter()
        for _ in range(skip):
            next(iterator)
        start = time.perf_counter()
        for _ in range(batches):
            images, tokens, _meta = next(iterator)
        elapsed = time.perf_counter() - start
    finally:
        del iterator  # shuts the workers down
    return {
        "workers": workers, "batch_size": batch, "batches_timed": batches, "batches_skipped": skip,
        "samples_per_s": batches * batch / elapsed, "startup_s": start - start_up,
        "augment": "RandomResizedCrop(0.5, 1) + hflip", "shards": len(urls),
    }
