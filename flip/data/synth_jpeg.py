"""Realistic JPEG shards for loader benchmarks: photo-sized images at img2dataset's settings.

What a decoder costs depends on the pixels and the file size, so the images are not flat
shapes: each is a colour field with a natural image's power spectrum (amplitude ~ 1/f^alpha,
alpha about 1, as photographs have) plus sensor-like noise, which at quality 90 and 384 px gives
files of about 65-75 KB, as img2dataset's 384 px LAION shards hold. The layout is img2dataset's:
`00000.tar` ... holding `{key}.jpg`, `{key}.txt` (the caption) and `{key}.json`.

Fields are drawn from a small bank of spectra and shifted per image (cheap), so thousands of
distinct images take seconds.
"""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

_WORDS = ("a photo of", "a close-up of", "an old picture of", "a painting of", "a view of")
_THINGS = ("a red car", "two dogs", "a mountain lake", "a city street", "a bowl of fruit", "an old house",
           "a child with a kite", "a wooden table", "a sailing boat", "a forest path", "a blue bicycle")
_WHERE = ("at sunset", "in the rain", "on a sunny day", "in winter", "at night", "near the sea", "")


@dataclass(frozen=True)
class JpegShardConfig:
    image_size: int = 384
    quality: int = 90
    samples: int = 1024
    shard_size: int = 256
    seed: int = 0
    bank: int = 12  # distinct spectra the images are mixed from


def _fields(rng: np.random.Generator, cfg: JpegShardConfig) -> list[np.ndarray]:
    size = cfg.image_size
    fy, fx = np.fft.fftfreq(size)[:, None], np.fft.rfftfreq(size)[None, :]
    f = np.sqrt(fx ** 2 + fy ** 2)
    f[0, 0] = 1.0
    fields = []
    for _ in range(cfg.bank):
        alpha = rng.uniform(0.9, 1.1)  # amplitude spectrum exponent (power ~ 1/f^(2 alpha))
        phase = np.exp(2j * np.pi * rng.random(f.shape))
        field = np.fft.irfft2(f ** -alpha * phase, s=(size, size))
        fields.append(((field - field.mean()) / field.std()).astype(np.float32))
    return fields


def _image(rng: np.random.Generator, fields: list[np.ndarray], noise: np.ndarray, size: int) -> Image.Image:
    def shifted(field):
        return np.roll(field, tuple(rng.integers(size, size=2)), axis=(0, 1))

    pick = rng.choice(len(fields), 4, replace=False)
    luminance = shifted(fields[pick[0]])
    channels = np.stack([0.8 * luminance + 0.35 * shifted(fields[k]) for k in pick[1:]], axis=-1)
    pixels = rng.uniform(80, 170, 3) + rng.uniform(26, 44) * channels + shifted(noise)[..., None]
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _caption(rng: np.random.Generator) -> str:
    return " ".join(w for w in (rng.choice(_WORDS), rng.choice(_THINGS), rng.choice(_WHERE)) if w)


def write_jpeg_shards(out: str | Path, cfg: JpegShardConfig = JpegShardConfig()) -> list[str]:
    """Write `cfg.samples` samples into `out/00000.tar`, ...; returns the shard paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(cfg.seed)
    fields = _fields(rng, cfg)
    noise = rng.normal(0, 2.0, (cfg.image_size, cfg.image_size)).astype(np.float32)
    paths = []
    for shard in range(-(-cfg.samples // cfg.shard_size)):
        path = out / f"{shard:05d}.tar"
        with tarfile.open(path, "w") as tar:
            for i in range(shard * cfg.shard_size, min(cfg.samples, (shard + 1) * cfg.shard_size)):
                key = f"{i:09d}"
                buffer = io.BytesIO()
                _image(rng, fields, noise, cfg.image_size).save(buffer, "JPEG", quality=cfg.quality)
                caption = _caption(rng)
                meta = {"key": key, "caption": caption, "width": cfg.image_size, "height": cfg.image_size,
                        "status": "success"}
                for name, data in ((f"{key}.jpg", buffer.getvalue()), (f"{key}.txt", caption.encode()),
                                   (f"{key}.json", json.dumps(meta).encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        paths.append(str(path))
    return paths
