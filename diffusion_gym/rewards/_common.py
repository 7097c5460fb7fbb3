"""Helpers shared by the full-scale rewards: input checks, on-device preprocessing, safe weight loading."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

# CLIP's (and BLIP's, and ImageReward's) normalisation constants.
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def check_batch(images: torch.Tensor, prompts: Sequence[str] | None) -> None:
    """Raise ``ValueError`` unless ``images`` is ``(B, 3, H, W)`` and there are ``B`` prompts."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"expected images of shape (B, 3, H, W) in [0, 1], got {shape}")
    if prompts is not None and len(prompts) != images.shape[0]:
        raise ValueError(f"got {images.shape[0]} images but {len(prompts)} prompts")


def resize_center_crop(
    images: torch.Tensor, size: int | tuple[int, int], interpolation: str = "bicubic"
) -> torch.Tensor:
    """Resize the shorter side to ``size`` then center-crop, on the images' device (no PIL round trip).

    ``(B, 3, H, W)`` float in [0, 1] -> ``(B, 3, h, w)`` float in [0, 1]. Antialiased like PIL's resize, and
    clamped like PIL's 8-bit output. A ``(h, w)`` size resizes so that both fit, then crops.
    """
    out_h, out_w = (size, size) if isinstance(size, int) else size
    height, width = images.shape[-2:]
    scale = max(out_h / height, out_w / width)
    new_h, new_w = max(out_h, round(height * scale)), max(out_w, round(width * scale))
    if (new_h, new_w) != (height, width):
        images = F.interpolate(images, size=(new_h, new_w), mode=interpolation, antialias=True).clamp(0, 1)
    top, left = (new_h - out_h) // 2, (new_w - out_w) // 2
    return images[..., top : top + out_h, left : left + out_w]


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``(images - mean) / std`` per channel, ``(B, 3, H, W)``."""
    mean_t = torch.tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images - mean_t) / std_t


def env_path(var: str) -> str | None:
    """The value of environment variable ``var``, or ``None`` if unset or empty."""
    value = os.environ.get(var, "").strip()
    return value or None


def require_file(path: str | os.PathLike[str], what: str, env_var: str | None = None) -> Path:
    """``Path(path)`` if it is a file, else ``FileNotFoundError`` naming the path (and the env var)."""
    path = Path(path).expanduser()
    if not path.is_file():
        hint = f" (check {env_var})" if env_var else ""
        raise FileNotFoundError(f"{what} not found: {path}{hint}")
    return path


def load_state_dict_file(
    path: str | os.PathLike[str], what: str, env_var: str | None = None
) -> dict[str, torch.Tensor]:
    """Load a state dict from ``.safetensors`` or a torch file, never unpickling arbitrary objects.

    Torch files are read with ``torch.load(..., weights_only=True)``; a ``{"state_dict": ...}`` or
    ``{"model": ...}`` wrapper is unwrapped.

    Raises:
        FileNotFoundError: ``path`` is not a file (the message names it and ``env_var``).
        ValueError: the file is corrupt or does not hold a state dict of tensors (the message names it).
    """
    path = require_file(path, what, env_var)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle/zip/safetensors errors all mean the same thing here
        raise ValueError(f"could not read {what} from {path}: corrupt file or not a weights file ({err})") from err
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors ({what})")
    return state
