from flip.models.config import PRESETS, ModelConfig, TextConfig, VisionConfig, get_preset
from flip.models.flip_model import FLIP, TextTower, VisionTower

__all__ = ["FLIP", "ModelConfig", "PRESETS", "TextConfig", "TextTower", "VisionConfig", "VisionTower", "get_preset"]
