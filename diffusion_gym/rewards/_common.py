"""Helpers shared by the full-scale rewards: input checks, on-device torchvision preprocessing, safe weight loading."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import torch
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as TF

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


def score_in_batches(
    images: torch.Tensor,
    prompts: Sequence[str] | None,
    batch_size: int,
    score: Callable[[torch.Tensor, Sequence[str] | None], torch.Tensor],
) -> torch.Tensor:
    """``score(images, prompts)`` of ``batch_size`` images (and their prompts) at a time, after :func:`check_batch`:
    the scores ``(B,)`` as float32 on the CPU (``score`` returns ``b`` scores, any shape, of a batch of ``b``)."""
    check_batch(images, prompts)
    scores = []
    for start in range(0, images.shape[0], batch_size):
        batch_prompts = None if prompts is None else prompts[start : start + batch_size]
        scores.append(score(images[start : start + batch_size], batch_prompts).reshape(-1).float().cpu())  # (b,)
    return torch.cat(scores)


def clamp_unit(images: torch.Tensor) -> torch.Tensor:
    """Clamp to [0, 1]: what PIL's 8-bit output does to the overshoot of bicubic resampling."""
    return images.clamp(0, 1)


def eval_transform(
    size: int | tuple[int, int],
    interpolation: str,
    mean: Sequence[float],
    std: Sequence[float],
    resize_mode: str = "shortest",
    fill: float = 0.0,
) -> v2.Compose:
    """The eval transform of a CLIP-style image encoder as torchvision transforms on ``(B, 3, H, W)`` float tensors
    in [0, 1], on their device (no PIL round trip): resize, crop (or pad), clamp to [0, 1], normalise.

    It is the transform ImageReward (``Resize(224, BICUBIC), CenterCrop(224), ..., Normalize``) and open_clip
    (``image_transform(..., is_train=False)``) apply to PIL images, with a clamp for PIL's 8-bit output:

    * ``shortest`` (a square ``size``): ``Resize(size)`` (the shorter side to ``size``, the longer to
      ``int(size * long / short)``), then ``CenterCrop(size)``;
    * ``shortest`` (a non-square size) and ``longest``: open_clip's ``ResizeKeepRatio`` (the shorter, resp.
      longer, side fits, the other scaled and rounded), then its ``CenterCropOrPad`` (pads with ``fill``);
    * ``squash``: ``Resize((h, w))``.

    Resizing is antialiased, like PIL's: bicubic with ``a = -0.5``, as PIL's filter. ``interpolation`` is
    ``"bicubic"`` or ``"bilinear"``; ``fill`` is in [0, 1].
    """
    out_h, out_w = (size, size) if isinstance(size, int) else size
    mode = InterpolationMode(interpolation)
    if resize_mode == "squash":
        geometry = [v2.Resize((out_h, out_w), interpolation=mode, antialias=True)]
    elif resize_mode == "shortest" and out_h == out_w:
        geometry = [v2.Resize(out_h, interpolation=mode, antialias=True), v2.CenterCrop(out_h)]
    elif resize_mode in ("shortest", "longest"):
        geometry = [
            v2.Lambda(partial(_resize_keep_ratio, size=(out_h, out_w), longest=resize_mode == "longest", mode=mode)),
            v2.Lambda(partial(_center_crop_or_pad, size=(out_h, out_w), fill=fill)),
        ]
    else:
        raise ValueError(f"resize_mode must be 'shortest', 'longest' or 'squash', got {resize_mode!r}")
    return v2.Compose([*geometry, v2.Lambda(clamp_unit), v2.Normalize(list(mean), list(std))])


def _resize_keep_ratio(
    images: torch.Tensor, size: tuple[int, int], longest: bool, mode: InterpolationMode
) -> torch.Tensor:
    """open_clip's ``ResizeKeepRatio``: scale by the larger (``longest``) or smaller ratio of the image's sides
    to ``size``'s, rounding each side."""
    height, width = images.shape[-2:]
    ratios = (height / size[0], width / size[1])
    ratio = max(ratios) if longest else min(ratios)
    return TF.resize(images, [round(height / ratio), round(width / ratio)], interpolation=mode, antialias=True)


def _center_crop_or_pad(images: torch.Tensor, size: tuple[int, int], fill: float) -> torch.Tensor:
    """open_clip's ``CenterCropOrPad``: pad a side shorter than ``size`` with ``fill`` (the extra pixel of an odd
    margin at the right / bottom), then ``CenterCrop``."""
    height, width = images.shape[-2:]
    pad_h, pad_w = max(size[0] - height, 0), max(size[1] - width, 0)
    if pad_h or pad_w:
        images = TF.pad(images, [pad_w // 2, pad_h // 2, (pad_w + 1) // 2, (pad_h + 1) // 2], fill=fill)
    return TF.center_crop(images, list(size))


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
