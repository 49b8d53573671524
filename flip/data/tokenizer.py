"""The CLIP BPE tokenizer, reading the vocabulary that open_clip_torch ships (offline)."""

from __future__ import annotations

import functools

import torch
from open_clip.tokenizer import SimpleTokenizer

from flip.errors import ConfigError


@functools.lru_cache(maxsize=None)
def _bpe() -> SimpleTokenizer:
    # Building the BPE merges table takes ~0.3 s; share one per process.
    return SimpleTokenizer()


class Tokenizer:
    """texts -> LongTensor [N, context_length]: SOT, BPE ids, EOT, zero padding.

    Captions longer than the context are cut and keep their EOT token (open_clip's rule).
    Padding id is 0, which the text tower treats as padding.
    """

    def __init__(self, context_length: int = 32):
        if context_length < 3:
            raise ConfigError("must be at least 3 (SOT, one token, EOT)", key="context_length")
        self.context_length = context_length
        self.pad_id = 0

    @property
    def vocab_size(self) -> int:
        return len(_bpe().encoder)

    def __call__(self, texts: str | list[str]) -> torch.Tensor:
        return _bpe()(texts, context_length=self.context_length)
