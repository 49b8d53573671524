"""The FLIP network: a ViT image tower that encodes only the patches a mask keeps, a text tower,
their presets, and the MAE decoder of the reconstruction ablation (paper Table 1f).

- `config`: `ModelConfig` (`VisionConfig`, `TextConfig`) and the named presets (`get_preset`);
  plain dataclasses, no torch.
- `flip_model`: `FLIP`, `VisionTower`, `TextTower`.
- `decoder`: `DecoderConfig`, `MAEDecoder`; `pretrainer`: `Pretrainer`, what a training step runs
  forward (the model, plus the decoder when there is a reconstruction loss).
"""

from flip._lazy import lazy_exports

__all__ = ["FLIP", "PRESETS", "DecoderConfig", "MAEDecoder", "ModelConfig", "Pretrainer", "TextConfig", "TextTower",
           "VisionConfig", "VisionTower", "get_preset"]

# The presets and configs are cheap; the network (torch, timm) loads on first use of its names.
__getattr__, __dir__ = lazy_exports(__name__, {
    "config": ("PRESETS", "ModelConfig", "TextConfig", "VisionConfig", "get_preset"),
    "flip_model": ("FLIP", "TextTower", "VisionTower"),
    "decoder": ("DecoderConfig", "MAEDecoder"),
    "pretrainer": ("Pretrainer",),
})
