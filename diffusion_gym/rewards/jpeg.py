"""JPEG compressibility and incompressibility, the simplest rewards of the DDPO paper.

The score is the size of the image saved as a JPEG at quality 95, in kilobytes: ``jpeg-incompressibility``
rewards large files (detail, noise) and ``jpeg-compressibility`` rewards small ones (its negative).
They ignore the prompt.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from diffusion_gym.images import to_uint8_hwc

JPEG_QUALITY = 95


def images_to_uint8(images: torch.Tensor) -> np.ndarray:
    """``(B, 3, H, W)`` float in [0, 1] -> ``(B, H, W, 3)`` uint8, rounding to the nearest level."""
    return to_uint8_hwc(images)  # (B, H, W, 3)


def jpeg_size_kb(images: torch.Tensor) -> torch.Tensor:
    """JPEG file size of each image in kB, ``(B,)`` float32."""
    sizes = []
    for pixels in images_to_uint8(images):
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=JPEG_QUALITY)
        sizes.append(buffer.tell() / 1000.0)
    return torch.tensor(sizes, dtype=torch.float32)


class JpegIncompressibility:
    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        return jpeg_size_kb(images)


class JpegCompressibility:
    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        return -jpeg_size_kb(images)
