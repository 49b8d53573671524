"""`--decode device`: a batch of encoded JPEGs -> cropped, resized, mirrored images on the device.

The workers send the batch's JPEG bytes as one uint8 tensor with each sample's length, batch
position and augmentation seed (`EncodedBatch`), plus the samples they had to decode themselves
(PNG, WebP, unusual JPEGs) already cropped. Here the JPEGs are decoded as one list
(`torchvision.io.decode_jpeg`, which on CUDA is nvJPEG's batched decoder; on CPU libjpeg-turbo),
each sample's crop box is drawn from its seed exactly as the worker path draws it
(`flip.data.augment.crop_box`), and all crops of images of one size are resampled in one
`torchvision.ops.roi_align` call. Its adaptive sampling (ceil(box / output) samples per output
pixel in each direction, averaged) is an area-averaging downscale, close to the worker path's
antialiased bilinear resize.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.ops import roi_align

from flip.data.augment import AugmentConfig, CropBox, crop_box
from flip.data.decode import stack_channels_last

ENCODED_KEYS = ("jpeg_bytes", "jpeg_lengths", "jpeg_index", "jpeg_seeds", "decoded", "decoded_index")


@dataclass
class EncodedBatch:
    """A batch as `--decode device` workers send it (as a dict of tensors: DataLoader pins and moves those)."""

    jpeg_bytes: torch.Tensor  # uint8 (total bytes,): the JPEGs, concatenated
    jpeg_lengths: torch.Tensor  # int64 (k,)
    jpeg_index: torch.Tensor  # int64 (k,): their positions in the batch
    jpeg_seeds: torch.Tensor  # int64 (k,): their augmentation seeds
    decoded: torch.Tensor  # uint8 (m, 3, S, S): samples the worker decoded and cropped
    decoded_index: torch.Tensor  # int64 (m,)

    @classmethod
    def build(cls, jpegs: list[tuple[int, bytes, int]], decoded: list[tuple[int, torch.Tensor]],
              size: int) -> "EncodedBatch":
        """From (position, bytes, seed) of each JPEG and (position, image) of each worker-decoded sample."""
        blob = bytearray().join(data for _, data, _ in jpegs)
        return cls(
            jpeg_bytes=torch.frombuffer(blob, dtype=torch.uint8) if blob else torch.empty(0, dtype=torch.uint8),
            jpeg_lengths=torch.tensor([len(data) for _, data, _ in jpegs], dtype=torch.int64),
            jpeg_index=torch.tensor([i for i, _, _ in jpegs], dtype=torch.int64),
            jpeg_seeds=torch.tensor([seed for _, _, seed in jpegs], dtype=torch.int64),
            decoded=stack_channels_last([image for _, image in decoded]) if decoded
            else torch.empty(0, 3, size, size, dtype=torch.uint8),
            decoded_index=torch.tensor([i for i, _ in decoded], dtype=torch.int64),
        )

    def to_dict(self) -> dict[str, torch.Tensor]:
        return {key: getattr(self, key) for key in ENCODED_KEYS}

    @classmethod
    def from_dict(cls, d: dict[str, torch.Tensor]) -> "EncodedBatch":
        return cls(**{key: d[key] for key in ENCODED_KEYS})

    def __len__(self) -> int:
        return len(self.jpeg_index) + len(self.decoded_index)


def is_encoded(batch) -> bool:
    return isinstance(batch, dict) and "jpeg_bytes" in batch


def crop_boxes(seeds: list[int], sizes: list[tuple[int, int]], cfg: AugmentConfig) -> list[CropBox]:
    return [crop_box(seed, h, w, cfg) for seed, (h, w) in zip(seeds, sizes)]


def decode_images(batch: EncodedBatch, device: torch.device) -> list[torch.Tensor]:
    """The batch's JPEGs as (3, H, W) uint8 images on `device`."""
    if not len(batch.jpeg_index):
        return []
    # decode_jpeg reads host memory (nvJPEG copies it itself): pinned bytes that the loader moved
    # to the device come back first.
    blob = batch.jpeg_bytes.cpu()
    encoded = list(torch.split(blob, batch.jpeg_lengths.tolist()))
    try:
        return decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device)
    except RuntimeError:  # a JPEG whose header passed the worker's check but whose data is corrupt
        return [_decode_one(data, device) for data in encoded]


def _decode_one(data: torch.Tensor, device: torch.device) -> torch.Tensor:
    """One JPEG: the device's decoder, else PIL's (more tolerant), else a mid-grey image and a warning: the
    batch has its size already, and one unusable picture must not stop a run."""
    try:
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    except RuntimeError:
        pass
    try:
        image = Image.open(io.BytesIO(data.numpy().tobytes())).convert("RGB")
        return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).to(device)
    except Exception as exc:  # PIL raises many types for bad bytes
        warnings.warn(f"--decode device: a JPEG could not be decoded ({exc}); it is replaced by a grey image")
        return torch.full((3, 8, 8), 127, dtype=torch.uint8, device=device)


def crop_resize(images: list[torch.Tensor], boxes: list[CropBox], size: int) -> torch.Tensor:
    """(k, 3, size, size) float in [0, 255]: each image's box resampled by roi_align, mirrored where
    its box says so. One roi_align call per distinct image size (all of them, usually one)."""
    device = images[0].device
    out = torch.empty(len(images), 3, size, size, device=device)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, image in enumerate(images):
        groups.setdefault(tuple(image.shape[-2:]), []).append(i)
    for members in groups.values():
        stacked = torch.stack([images[i] for i in members]).float()
        # roi_align boxes: (batch index, x1, y1, x2, y2) in pixel-edge coordinates (aligned=True)
        rois = torch.tensor([[j, boxes[i].left, boxes[i].top, boxes[i].left + boxes[i].width,
                              boxes[i].top + boxes[i].height] for j, i in enumerate(members)],
                            dtype=torch.float32, device=device)
        out[members] = roi_align(stacked, rois, output_size=size, spatial_scale=1.0, sampling_ratio=0,
                                 aligned=True)
    flips = torch.tensor([box.flip for box in boxes], device=device)
    return torch.where(flips[:, None, None, None], out.flip(-1), out)


def decode_batch(batch: EncodedBatch, cfg: AugmentConfig, device: torch.device) -> torch.Tensor:
    """The whole batch, (n, 3, S, S) float in [0, 255] on `device`, in batch order."""
    size = cfg.image_size
    out = torch.empty(len(batch), 3, size, size, device=device)
    if len(batch.decoded_index):
        out[batch.decoded_index.to(device)] = batch.decoded.to(device, non_blocking=True).float()
    images = decode_images(batch, device)
    if images:
        sizes = [tuple(image.shape[-2:]) for image in images]
        boxes = crop_boxes(batch.jpeg_seeds.tolist(), sizes, cfg)
        out[batch.jpeg_index.to(device)] = crop_resize(images, boxes, size)
    return out
