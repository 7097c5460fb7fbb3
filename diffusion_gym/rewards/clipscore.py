"""CLIPScore (Hessel et al., 2021) through open_clip, and the open_clip loading shared with ``aesthetic``.

``CLIPScore(image, prompt) = w * max(cos(E_image, E_text), 0)`` with ``w = 2.5`` (the paper's weight), so
scores lie in ``[0, 2.5]``. Higher means the image matches its prompt better.

The CLIP model is any open_clip model: a built-in name (``ViT-B-32``, ``ViT-L-14``, ...) with a
pretrained tag (``openai``, ``laion2b_s34b_b79k``, ...) or a local checkpoint file, or
``local-dir:/path`` (a folder with ``open_clip_config.json`` and the weights, open_clip's own offline
format). Defaults: ``ViT-B-32`` / ``openai``, the model the paper calibrated ``w`` on. Environment:

- ``DIFFUSION_GYM_CLIPSCORE_MODEL``: the model name (or ``local-dir:/path``);
- ``DIFFUSION_GYM_CLIPSCORE_PRETRAINED``: a pretrained tag or a local checkpoint file.

Note: OpenAI's CLIP weights use QuickGELU; load them from a local file with the ``-quickgelu`` model
name (``ViT-B-32-quickgelu``), which open_clip picks by itself only for the ``openai`` tag.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from diffusion_gym.rewards._common import env_path, eval_transform, score_in_batches

ENV_MODEL = "DIFFUSION_GYM_CLIPSCORE_MODEL"
ENV_PRETRAINED = "DIFFUSION_GYM_CLIPSCORE_PRETRAINED"
DEFAULT_MODEL = "ViT-B-32"
DEFAULT_PRETRAINED = "openai"
CLIPSCORE_WEIGHT = 2.5  # Hessel et al. (2021), "CLIPScore", Sec. 3
LOCAL_DIR_PREFIX = "local-dir:"
_CHECKPOINT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".npz")


def _looks_like_path(value: str) -> bool:
    return os.sep in value or value.startswith((".", "~")) or value.endswith(_CHECKPOINT_SUFFIXES)


class OpenClipEncoder:
    """An open_clip model with its tokenizer and its own preprocessing, done with torchvision on-device.

    Args:
        model_name: open_clip model name, or ``local-dir:/path``.
        pretrained: a pretrained tag, a local checkpoint file, or ``None`` (random weights; for tests).
        device: where the model runs.
        env_vars: environment variable(s) named in errors about missing files.
    """

    def __init__(
        self,
        model_name: str,
        pretrained: str | None,
        device: torch.device | str = "cpu",
        env_vars: Sequence[str] = (),
    ):
        import open_clip

        self.device = torch.device(device)
        hint = f" (set {' / '.join(env_vars)})" if env_vars else ""
        local: Path | None = None
        if model_name.startswith(LOCAL_DIR_PREFIX):
            local = Path(model_name[len(LOCAL_DIR_PREFIX) :]).expanduser()
            if not (local / "open_clip_config.json").is_file():
                raise FileNotFoundError(f"open_clip folder without open_clip_config.json: {local}{hint}")
            model_name = LOCAL_DIR_PREFIX + str(local)
            pretrained = None  # the folder holds the weights
        elif pretrained and _looks_like_path(pretrained):
            local = Path(pretrained).expanduser()
            if not local.is_file():
                raise FileNotFoundError(f"open_clip checkpoint not found: {local}{hint}")
            pretrained = str(local)
        try:
            model = open_clip.create_model(model_name, pretrained=pretrained, device=self.device)
        except Exception as err:  # torch, zip, safetensors and open_clip errors alike
            if local is not None:
                raise ValueError(f"could not load the open_clip model from {local}: {err}") from err
            if not env_vars:
                raise
            raise RuntimeError(
                f"could not load open_clip {model_name!r} / {pretrained!r}: {err}. "
                f"Offline, point {' / '.join(env_vars)} to local files"
            ) from err
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = open_clip.get_tokenizer(model_name)
        cfg: dict[str, Any] = dict(getattr(model.visual, "preprocess_cfg", {}) or {})
        size = cfg.get("size", getattr(model.visual, "image_size", 224))
        self.image_size: tuple[int, int] = (size, size) if isinstance(size, int) else tuple(size)
        self.mean = tuple(cfg.get("mean", model.visual.image_mean))
        self.std = tuple(cfg.get("std", model.visual.image_std))
        self.interpolation = "bilinear" if cfg.get("interpolation") == "bilinear" else "bicubic"
        self.resize_mode = cfg.get("resize_mode", "shortest")
        self.fill_color = float(cfg.get("fill_color", 0)) / 255.0
        self.transform = eval_transform(
            self.image_size, self.interpolation, self.mean, self.std, self.resize_mode, self.fill_color
        )

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` in [0, 1] -> ``(B, 3, h, w)`` normalised for the model, on its device.

        open_clip's eval transform as torchvision transforms on tensors (see :func:`eval_transform`): resize the
        shortest side and center-crop (``shortest``), resize the longest side and pad (``longest``), or resize
        both (``squash``).
        """
        return self.transform(images.to(self.device, torch.float32))

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` in [0, 1] -> ``(B, D)`` unit-norm image embeddings (float32)."""
        features = self.model.encode_image(self.preprocess(images)).float()
        return F.normalize(features, dim=-1)

    def encode_texts(self, prompts: Sequence[str]) -> torch.Tensor:
        """``B`` prompts -> ``(B, D)`` unit-norm text embeddings (float32)."""
        tokens = self.tokenizer(list(prompts)).to(self.device)
        return F.normalize(self.model.encode_text(tokens).float(), dim=-1)


class CLIPScore:
    """``fn(images, prompts) -> (B,)``: ``weight * max(cos(image, prompt), 0)``, in ``[0, weight]``.

    Args:
        model_name: open_clip model name, or ``local-dir:/path``.
        pretrained: pretrained tag or local checkpoint file (``None``: random weights, for tests).
        device: where the model runs.
        weight: ``w`` of the paper (2.5).
        batch_size: images per forward pass.
    """

    def __init__(
        self,
        model_name: str = DEFAULT_MODEL,
        pretrained: str | None = DEFAULT_PRETRAINED,
        device: torch.device | str = "cpu",
        weight: float = CLIPSCORE_WEIGHT,
        batch_size: int = 32,
        env_vars: Sequence[str] = (),
    ):
        self.encoder = OpenClipEncoder(model_name, pretrained, device, env_vars)
        self.weight = weight
        self.batch_size = batch_size

    @classmethod
    def from_env(cls, device: torch.device | str = "cpu", **kwargs: Any) -> CLIPScore:
        """Model and weights from ``DIFFUSION_GYM_CLIPSCORE_MODEL`` / ``..._PRETRAINED``, else the defaults."""
        model_name = env_path(ENV_MODEL) or DEFAULT_MODEL
        pretrained = env_path(ENV_PRETRAINED) or DEFAULT_PRETRAINED
        return cls(model_name, pretrained, device, env_vars=(ENV_MODEL, ENV_PRETRAINED), **kwargs)

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        return score_in_batches(images, prompts, self.batch_size, self._score_batch)

    def _score_batch(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        image_emb = self.encoder.encode_images(images)  # (b, D)
        text_emb = self.encoder.encode_texts(prompts)  # (b, D)
        cosine = (image_emb * text_emb).sum(dim=-1)  # (b,)
        return self.weight * cosine.clamp(min=0)
