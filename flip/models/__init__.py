from flip.models.config import PRESETS, ModelConfig, TextConfig, VisionConfig, get_preset

_MODEL_NAMES = ("FLIP", "TextTower", "VisionTower")


def __getattr__(name):
    # The network (torch, timm) loads on first use, so the presets and configs stay cheap to import.
    if name in _MODEL_NAMES:
        from flip.models import flip_model

        return getattr(flip_model, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = ["FLIP", "ModelConfig", "PRESETS", "TextConfig", "TextTower", "VisionConfig", "VisionTower", "get_preset"]
