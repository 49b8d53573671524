"""Model configuration: plain dataclasses and the named presets.

The paper's presets follow FLIP's appendix (Tables 9/10): ViT image towers, a
non-autoregressive text tower of length 32, and an embedding width of 512 / 768 /
1024 for B / L / H. `tiny` and `small` are our own CPU-scale models; `tiny`'s text
tower costs under 10% of its unmasked image tower, as in the paper (4.4%), so
mask-ratio speed-ups measured on it are representative.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


@dataclass(frozen=True)
class VisionConfig:
    image_size: int = 224
    patch_size: int = 16
    width: int = 768
    depth: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size**2

    def at_image_size(self, image_size: int | None) -> "VisionConfig":
        """The tower's shapes at another input size (a training size, `--image-size`); None: its own."""
        return self if image_size is None else dataclasses.replace(self, image_size=image_size)


@dataclass(frozen=True)
class TextConfig:
    context_length: int = 32
    vocab_size: int = 49408  # CLIP BPE
    width: int = 512
    depth: int = 12
    heads: int = 8
    mlp_ratio: float = 4.0
    pad_id: int = 0  # open_clip's tokenizer pads with 0
    pad_mask: bool = False  # True: padding is not attended to (see TextTower)


@dataclass(frozen=True)
class ModelConfig:
    name: str = "custom"
    embed_dim: int = 512
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    init_temperature: float = 0.07  # logit scale starts at 1/0.07
    max_logit_scale: float = 100.0  # log-scale clamped to [0, ln 100]
    # SigLIP's learnable logit bias b and its initial value; None: no bias (the contrastive model)
    init_logit_bias: float | None = None

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        if d["init_logit_bias"] is None:  # a contrastive model's config reads as before the bias existed
            del d["init_logit_bias"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        d = dict(d)
        vision = VisionConfig(**d.pop("vision", {}))
        text = TextConfig(**d.pop("text", {}))
        return cls(vision=vision, text=text, **d)

    def with_context_length(self, length: int) -> "ModelConfig":
        return dataclasses.replace(self, text=dataclasses.replace(self.text, context_length=length))

    def with_loss(self, loss: str) -> "ModelConfig":
        """The model a loss trains: for `sigmoid`, SigLIP's init t = 10 (temperature 0.1) and a learnable
        bias b = -10 (with n-1 negatives per positive, the loss starts near its prior); else unchanged."""
        if loss == "sigmoid":
            return dataclasses.replace(self, init_temperature=0.1, init_logit_bias=-10.0)
        return self


def _preset(name, embed_dim, image_size, patch, width, depth, heads, t_width, t_depth, t_heads) -> ModelConfig:
    return ModelConfig(
        name=name,
        embed_dim=embed_dim,
        vision=VisionConfig(image_size=image_size, patch_size=patch, width=width, depth=depth, heads=heads),
        text=TextConfig(width=t_width, depth=t_depth, heads=t_heads),
    )


PRESETS: dict[str, ModelConfig] = {
    "tiny": _preset("tiny", 128, 64, 8, 192, 6, 3, 128, 2, 2),
    # 2.4x tiny's FLOPs on the same 64 px data: the model axis of the scaling study at CPU scale
    # (the paper's L/16 -> H/14 is 2.7x).
    "mini": _preset("mini", 128, 64, 8, 256, 8, 4, 128, 2, 2),
    "small": _preset("small", 256, 96, 8, 384, 8, 6, 256, 4, 4),
    "B/16": _preset("B/16", 512, 224, 16, 768, 12, 12, 512, 12, 8),
    "L/16": _preset("L/16", 768, 224, 16, 1024, 24, 16, 768, 12, 12),
    "L/14": _preset("L/14", 768, 224, 14, 1024, 24, 16, 768, 12, 12),
    "H/14": _preset("H/14", 1024, 224, 14, 1280, 32, 16, 1024, 24, 16),
}


def get_preset(name: str) -> ModelConfig:
    """Look a preset up by name; `B-16`, `b/16` and `ViT-B/16` all mean `B/16`."""
    key = name.strip().removeprefix("ViT-").removeprefix("vit-").replace("-", "/")
    for preset_name, cfg in PRESETS.items():
        if preset_name.lower() == key.lower():
            return cfg
    raise KeyError(f"unknown model preset {name!r}; choose one of: {', '.join(PRESETS)}")
