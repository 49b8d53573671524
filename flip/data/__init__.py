"""Training and evaluation data: the built-in dataset, the emoji corpus, webdataset shards and the
stream that turns them into batches.

- `synth`: the procedural built-in image-caption dataset (`SynthConfig`, `write_builtin_dataset`);
  `builtin`: where it is cached (`builtin_dir`, `ensure_builtin`).
- `emoji`, `emoji_sources`: a real image-text corpus from emoji packages (`flipctl data emoji`).
- `synth_jpeg`: photo-sized JPEG shards for loader benchmarks.
- `shards`: finding shards (`expand_urls`, `check_shards`, `count_samples`).
- `pipeline`: the training stream (`StreamConfig`, `make_loader`), built from `augment` (the crop and
  flip as data), `decode` (bytes -> image in a worker), `device_decode` (`--decode device`) and
  `tokenizer` (CLIP's BPE).
- `mask_coverage`: how often a patch mask hides a whole object of a built-in scene.
"""

from flip._lazy import lazy_exports

__all__ = ["AugmentConfig", "EmojiConfig", "StreamConfig", "SynthConfig", "Tokenizer", "build_emoji_corpus",
           "builtin_dir", "check_shards", "count_samples", "ensure_builtin", "expand_urls", "make_loader",
           "write_builtin_dataset"]

__getattr__, __dir__ = lazy_exports(__name__, {
    "synth": ("SynthConfig", "write_builtin_dataset"),
    "builtin": ("builtin_dir", "ensure_builtin"),
    "emoji": ("EmojiConfig", "build_emoji_corpus"),
    "shards": ("check_shards", "count_samples", "expand_urls"),
    "augment": ("AugmentConfig",),
    "pipeline": ("StreamConfig", "make_loader"),
    "tokenizer": ("Tokenizer",),
})
