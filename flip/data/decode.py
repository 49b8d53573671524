"""Per-sample image work in a DataLoader worker: bytes -> a cropped, resized uint8 image.

Three ways, chosen by `StreamConfig.decode`:

- `worker` (default): the leanest CPU path. JPEGs are decoded by libjpeg-turbo (simplejpeg's binding),
  cropped (a view) and resized in uint8 (antialiased bilinear, torch's uint8 kernel); when the crop
  is at least twice the output size in both directions, the JPEG is decoded at 1/2, 1/4 or 1/8 scale
  in the DCT domain (part of the decode work skipped), then cropped and resized by PIL in uint8.
  PNG, WebP and CMYK JPEGs go through PIL. The result stays uint8: float conversion and
  normalisation happen on the device (`flip.train.input_stage`).
- `device`: JPEGs are not decoded here at all (only their header is checked, `jpeg_header`); the
  input stage decodes the batch. Other formats are decoded here as in `worker`.
- `legacy`: the original path, PIL decode + torchvision's RandomResizedCrop (bicubic) + flip +
  ToTensor + Normalize per sample, float32 out. Kept to measure the others against.
"""

from __future__ import annotations

import io

import numpy as np
import simplejpeg
import torch
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from PIL import Image
from torch.utils.data import get_worker_info
from torchvision import transforms as T

from flip.data.augment import AugmentConfig, CropBox

JPEG_MAGIC = b"\xff\xd8\xff"
JPEG_EOI = b"\xff\xd9"
# JPEGs torchvision's decoders turn into RGB as PIL does: greyscale and YCbCr / RGB (1 or 3 components);
# others (CMYK, ...) are decoded by PIL in the worker.
DEVICE_JPEG_COMPONENTS = (1, 3)


class Undecodable(Exception):
    """The bytes are not an image this path can read (counted as `undecodable_image`)."""


def is_jpeg(data: bytes) -> bool:
    return data[:3] == JPEG_MAGIC


def jpeg_size(data: bytes) -> tuple[int, int, int] | None:
    """(height, width, colour components) from a JPEG's frame header, read directly from the markers
    (PIL's header parse costs ~0.1 ms a sample); None when there is no readable frame header."""
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if 0xD0 <= marker <= 0xD8 or marker == 0x01:  # markers without a length
            i += 2
            continue
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # SOFn (not DHT, JPG, DAC)
            if i + 10 > n:
                return None
            return (int.from_bytes(data[i + 5:i + 7], "big"), int.from_bytes(data[i + 7:i + 9], "big"),
                    data[i + 9])
        i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    return None


def jpeg_header(data: bytes) -> tuple[int, int] | None:
    """(height, width) of a JPEG the device path can decode, from its header alone; None when it should
    be decoded in the worker (not a JPEG, or a colour mode other than RGB / greyscale, e.g. CMYK). A JPEG
    without a frame header or its end-of-image marker (a truncated file) is `Undecodable`, so bad bytes
    are still caught and counted in the worker (the device decodes only what passed)."""
    if not is_jpeg(data):
        return None
    size = jpeg_size(data)
    if size is None or not size[0] or not size[1]:
        raise Undecodable("no readable JPEG frame header")
    if not data.rstrip(b"\x00").endswith(JPEG_EOI):
        raise Undecodable("truncated JPEG (no end-of-image marker)")
    return size[:2] if size[2] in DEVICE_JPEG_COMPONENTS else None


def decode_jpeg_rgb(data: bytes) -> torch.Tensor:
    """A JPEG -> (3, H, W) uint8 RGB in channels-last memory, by simplejpeg's libjpeg-turbo binding: the
    same pixels as torchvision.io's decoder (same library and settings) at ~10% less time, since it
    reads the bytes in place and skips torch's operator dispatch."""
    return torch.from_numpy(simplejpeg.decode_jpeg(data, colorspace="RGB")).permute(2, 0, 1)


def draft_factor(box: CropBox, size: int) -> int:
    """The largest JPEG DCT scaling (1, 2, 4 or 8) that still leaves the crop at least `size` px wide and high."""
    factor = 1
    while factor < 8 and min(box.height, box.width) >= 2 * factor * size:
        factor *= 2
    return factor


def _from_pil(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(image, dtype=np.uint8, copy=True)).permute(2, 0, 1)


def _pil_crop_resize(image: Image.Image, box: CropBox, size: int, scale_y: float = 1.0, scale_x: float = 1.0
                     ) -> torch.Tensor:
    """PIL's one-pass crop + antialiased bilinear resize in uint8; the box is in source pixels, `scale`d
    to the image's (a sub-pixel region: PIL resamples it exactly)."""
    region = (box.left * scale_x, box.top * scale_y, (box.left + box.width) * scale_x,
              (box.top + box.height) * scale_y)
    out = image.convert("RGB").resize((size, size), Image.BILINEAR, box=region)
    if box.flip:
        out = out.transpose(Image.FLIP_LEFT_RIGHT)
    return _from_pil(out)


def resize_crop(image: torch.Tensor, box: CropBox, size: int) -> torch.Tensor:
    """Crop (a view) and resize a (3, H, W) uint8 image to (3, size, size) uint8, then mirror if the box says so."""
    crop = image[None, :, box.top:box.top + box.height, box.left:box.left + box.width]
    # channels-last is what torch's vectorised uint8 antialiased kernel reads fastest
    out = F.interpolate(crop.contiguous(memory_format=torch.channels_last), size=(size, size), mode="bilinear",
                        antialias=True, align_corners=False)[0]
    return out.flip(-1) if box.flip else out  # channels-last: the batch's stack makes it contiguous


def decode_crop(data: bytes, box_for, size: int) -> torch.Tensor:
    """Image bytes -> (3, size, size) uint8, cropped by `box_for(height, width)` (a `CropBox`)."""
    try:
        header = jpeg_size(data) if is_jpeg(data) else None
        if header is not None and header[2] in DEVICE_JPEG_COMPONENTS:
            height, width, _ = header
            box = box_for(height, width)
            factor = draft_factor(box, size)
            if factor == 1:  # the common case: libjpeg-turbo at full size, then uint8 crop + resize
                return resize_crop(decode_jpeg_rgb(data), box, size)
            # DCT-domain downscale: libjpeg-turbo skips the fine coefficients; the box follows the scale
            image = simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=-(-height // factor),
                                           min_width=-(-width // factor))
            scaled_h, scaled_w = image.shape[:2]
            return _pil_crop_resize(Image.fromarray(image), box, size, scaled_h / height, scaled_w / width)
        image = Image.open(io.BytesIO(data))  # PNG, WebP, CMYK JPEGs: PIL (header first, for the box)
        width, height = image.size
        return _pil_crop_resize(image, box_for(height, width), size)
    except Exception as exc:  # PIL and torchvision raise many types for bad bytes
        raise Undecodable(str(exc)) from None


def stack_channels_last(images: list[torch.Tensor]) -> torch.Tensor:
    """(3, S, S) uint8 images -> an (n, 3, S, S) batch in channels-last memory: the layout the decoders and
    the resize produce, so each sample is one plain copy (an NCHW stack would transpose every pixel; the
    input stage makes the normalised batch contiguous on the device).

    In a DataLoader worker the batch is written straight into shared memory, as torch's own collate does:
    otherwise handing it to the main process copies it there once more (a 224 px batch of 256 is 38 MB)."""
    n, (c, h, w) = len(images), images[0].shape
    if get_worker_info() is None:
        batch = torch.empty((n, c, h, w), dtype=torch.uint8, memory_format=torch.channels_last)
    else:  # an NHWC block of shared memory, seen as NCHW: channels-last strides
        storage = torch.UntypedStorage._new_shared(n * c * h * w)
        batch = torch.empty(0, dtype=torch.uint8).set_(storage).view(n, h, w, c).permute(0, 3, 1, 2)
    for slot, image in zip(batch, images):
        slot.copy_(image)
    return batch


def legacy_transform(cfg: AugmentConfig) -> T.Compose:
    ops = [T.RandomResizedCrop(cfg.image_size, scale=cfg.crop_scale, interpolation=T.InterpolationMode.BICUBIC)]
    if cfg.hflip:
        ops.append(T.RandomHorizontalFlip())
    ops += [T.ToTensor(), T.Normalize(OPENAI_DATASET_MEAN, OPENAI_DATASET_STD)]
    return T.Compose(ops)


def legacy_decode(data: bytes, seed: int, transform: T.Compose) -> torch.Tensor:
    """The original per-sample path: PIL decode, then `transform` under a per-sample torch seed."""
    try:
        image = Image.open(io.BytesIO(data)).convert("RGB")
    except Exception as exc:
        raise Undecodable(str(exc)) from None
    with torch.random.fork_rng(devices=[]):
        # The CPU generator only: torch.manual_seed would also queue a lazy CUDA seeding, with a
        # formatted stack trace, per sample (a third of the loader's time, and a leak).
        torch.random.default_generator.manual_seed(seed)
        return transform(image)
