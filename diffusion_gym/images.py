"""Image conventions shared by the env, the rewards and the reports: float images in [0, 1] and 8-bit ones."""

from __future__ import annotations

import numpy as np
import torch


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Float images in [0, 1] (any shape, e.g. ``(B, 3, H, W)``) -> ``uint8`` in [0, 255], same shape and device.

    Values are clamped to [0, 1] and rounded to the nearest level: the quantisation of a saved PNG.
    """
    if not images.is_floating_point():
        raise TypeError(f"expected a floating-point image tensor in [0, 1], got {images.dtype}")
    return (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)


def to_uint8_hwc(images: torch.Tensor) -> np.ndarray:
    """Float images ``(B, 3, H, W)`` in [0, 1] -> a ``(B, H, W, 3)`` uint8 numpy array (PIL's and NumPy's layout)."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
    return to_uint8(images).permute(0, 2, 3, 1).cpu().numpy()  # (B, H, W, 3)
