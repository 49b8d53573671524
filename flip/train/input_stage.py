"""The step's input stage: what the loader hands over -> normalised float images on the device.

Workers keep to the work only the CPU can do (see `flip.data.decode`), and the rest runs here, on
the device, before the training step:

- uint8 images (`--decode worker`, the default): moved as uint8 (a quarter of float32's bytes),
  then converted and normalised in one multiply-add.
- an encoded batch (`--decode device`): decoded on the device (nvJPEG on CUDA), cropped, resized,
  mirrored and normalised as a batch (`flip.data.device_decode`).
- float images (`--decode legacy`): already normalised by the workers; only moved.
"""

from __future__ import annotations

import torch

from flip.data.augment import AugmentConfig, Normalise
from flip.data.device_decode import EncodedBatch, decode_batch, is_encoded


class InputStage:
    def __init__(self, device: torch.device, augment: AugmentConfig):
        self.device, self.augment = device, augment
        self.normalise = Normalise(device)

    def __call__(self, images: torch.Tensor | dict[str, torch.Tensor]) -> torch.Tensor:
        if is_encoded(images):
            return self.normalise(decode_batch(EncodedBatch.from_dict(images), self.augment, self.device))
        images = images.to(self.device, non_blocking=True)
        if images.dtype == torch.uint8:
            return self.normalise(images).contiguous()  # workers send channels-last batches
        return images
