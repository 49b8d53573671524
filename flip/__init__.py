"""flip: FLIP (masked CLIP) pre-training - model, masking, losses, data, training, evaluation."""

__version__ = "0.1.0"
