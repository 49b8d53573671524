"""The CLIP BPE tokenizer, reading the vocabulary that open_clip_torch ships (offline)."""

from __future__ import annotations

import functools
import re
from typing import Iterable

import torch
from open_clip.tokenizer import SimpleTokenizer

from flip.errors import ConfigError

# Text that open_clip's cleaning (ftfy.fix_text, HTML unescaping, whitespace, lower case) changes only by
# whitespace and case: printable ASCII, tabs and line breaks, no '&' (an entity) and no escape or other
# control character (ftfy removes those). Most captions are; ftfy costs about half of their tokenising.
_PLAIN = re.compile(r"[\t\n\r\x20-\x25\x27-\x7e]*")


def _clean(bpe: SimpleTokenizer, text: str) -> str:
    if _PLAIN.fullmatch(text):
        return " ".join(text.split()).lower()
    return bpe.clean_fn(text)


@functools.lru_cache(maxsize=None)
def _bpe() -> SimpleTokenizer:
    # Building the BPE merges table takes ~0.3 s; share one per process.
    return SimpleTokenizer()


@functools.lru_cache(maxsize=None)
def _longest_token_bytes() -> int:
    """Bytes of the longest vocabulary entry (32): a word of n bytes is at least n / this many tokens."""
    return max(len(token.removesuffix("</w>")) for token in _bpe().encoder)


class Tokenizer:
    """texts -> LongTensor [N, context_length]: SOT, BPE ids, EOT, zero padding.

    Captions longer than the context are cut and keep their EOT token (open_clip's rule), and
    counted in `truncated`. The ids are open_clip's, computed lazily: BPE stops once the
    context is full, and a word longer than the context could hold even as the longest
    vocabulary entries is cut to that length first (BPE's time is quadratic in a word's
    length; such a caption is cut either way).
    Padding id is 0, which the text tower treats as padding.
    """

    def __init__(self, context_length: int = 32):
        if context_length < 3:
            raise ConfigError("must be at least 3 (SOT, one token, EOT)", key="context_length")
        self.context_length = context_length
        self.pad_id = 0
        self.truncated = 0  # texts cut to the context so far

    @property
    def vocab_size(self) -> int:
        return len(_bpe().encoder)

    def encode(self, text: str) -> tuple[list[int], bool]:
        """(SOT, BPE ids, EOT: at most `context_length` ids; whether the text had to be cut)."""
        bpe = _bpe()
        ids, _, _, cut = self._encode(text)
        return [bpe.sot_token_id, *ids, bpe.eot_token_id], cut

    def _encode(self, text: str) -> tuple[list[int], list[int], list[str], bool]:
        """The BPE ids between SOT and EOT (at most the room), the index of the word each id is a piece of,
        the words read (as BPE splits the cleaned text), and whether the text had to be cut."""
        bpe = _bpe()
        room = self.context_length - 2  # between SOT and EOT
        max_word_bytes = (room + 1) * _longest_token_bytes()  # longer: more tokens than the room, surely
        ids: list[int] = []
        word_of: list[int] = []
        words: list[str] = []
        for word in bpe.pat.findall(_clean(bpe, text)):
            data = word.encode("utf-8", errors="replace")[:max_word_bytes]
            chars = "".join(bpe.byte_encoder[b] for b in data)
            pieces = [bpe.encoder[piece] for piece in bpe.bpe(chars).split(" ")]
            ids.extend(pieces)
            word_of.extend([len(words)] * len(pieces))
            words.append(word)
            if len(ids) > room:
                break
        return ids[:room], word_of[:room], words, len(ids) > room

    def count_truncated(self, texts: Iterable[str]) -> int:
        """How many of `texts` do not fit the context (without touching `truncated`)."""
        return sum(self.encode(text)[1] for text in texts)

    def __call__(self, texts: str | list[str]) -> torch.Tensor:
        texts = [texts] if isinstance(texts, str) else texts
        result = torch.zeros(len(texts), self.context_length, dtype=torch.long)
        for i, text in enumerate(texts):
            ids, cut = self.encode(text)
            result[i, :len(ids)] = torch.tensor(ids)
            self.truncated += cut
        return result

    def with_word_classes(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """`self(texts)` and, per position, the class syntax text masking keeps in order (`WORD_CLASSES`):
        uint8 [N, context_length]. Each BPE piece takes its word's class, from a part-of-speech tagger run
        once per caption here, in the data loader's workers, not in the training step."""
        bpe = _bpe()
        tokens = torch.zeros(len(texts), self.context_length, dtype=torch.long)
        classes = torch.full((len(texts), self.context_length), WORD_CLASSES["padding"], dtype=torch.uint8)
        for i, text in enumerate(texts):
            ids, word_of, words, cut = self._encode(text)
            tags = [_word_class(tag) for tag in tag_words(words)]
            tokens[i, :len(ids) + 2] = torch.tensor([bpe.sot_token_id, *ids, bpe.eot_token_id])
            classes[i, :len(ids) + 2] = torch.tensor([WORD_CLASSES["sot"], *(tags[w] for w in word_of),
                                                      WORD_CLASSES["other"]], dtype=torch.uint8)
            self.truncated += cut
        return tokens, classes


# Syntax text masking (CLIPA) keeps a caption's tokens in this order of their words' classes, as open_clip's
# `syntax_mask_tokenize` ranks NLTK's tags: nouns, adjectives, verbs, then everything else (function words,
# numbers, punctuation, EOT); SOT, where the text feature is read, always first and padding last.
WORD_CLASSES = {"sot": 0, "noun": 1, "adjective": 2, "verb": 3, "other": 4, "padding": 5}


def _word_class(tag: str) -> int:
    for prefix, name in (("NN", "noun"), ("JJ", "adjective"), ("VB", "verb")):
        if tag.startswith(prefix):
            return WORD_CLASSES[name]
    return WORD_CLASSES["other"]


def tag_words(words: list[str]) -> list[str]:
    """Penn Treebank part-of-speech tags of `words` (a tokenised caption).

    The tagger is TextBlob's copy of the pattern library's English tagger (a 100k-word lexicon of each
    word's most frequent tag, with suffix rules for unknown words): its data ships inside the PyPI wheel,
    so it runs offline. NLTK's averaged perceptron (what open_clip uses) and spaCy's models are downloaded
    at run time from outside any package registry, which a training machine may not reach.
    """
    if not words:
        return []
    from textblob.en import parser  # imported once per worker process, and only for syntax masking

    return [tag for _, tag in parser.find_tags(words)]
