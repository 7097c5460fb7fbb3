"""The LAION aesthetic predictor, as used by DDPO and TRL, through open_clip.

``score = MLP(E / |E|)`` where ``E`` is the CLIP ViT-L/14 image embedding (768-d) and the MLP is
768 -> 1024 -> 128 -> 64 -> 16 -> 1, linear layers only (with dropout in training), trained on
SAC + LOGOS + AVA ratings (``sac+logos+ava1-l14-linearMSE.pth``, christophschuhmann's
improved-aesthetic-predictor). Scores are roughly on the 1-10 rating scale; higher is better.

Where the weights come from, in order:

1. explicit arguments: ``AestheticScorer(mlp_weights, clip_model, clip_pretrained)``;
2. environment: ``DIFFUSION_GYM_AESTHETIC_PATH`` (the MLP weights: ``.safetensors``, or a torch state dict
   read with ``weights_only=True``); ``DIFFUSION_GYM_AESTHETIC_CLIP_MODEL`` (open_clip name, default
   ``ViT-L-14``, or ``local-dir:/path``) and ``DIFFUSION_GYM_AESTHETIC_CLIP_PRETRAINED`` (tag, default
   ``openai``, or a local checkpoint file; for OpenAI's weights from a file use ``ViT-L-14-quickgelu``);
3. otherwise the hub: TRL's copy of the MLP (``trl-lib/ddpo-aesthetic-predictor``,
   ``aesthetic-model.pth``) and open_clip's ``ViT-L-14`` / ``openai``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from diffusion_gym.rewards._common import env_path, load_state_dict_file, score_in_batches
from diffusion_gym.rewards.clipscore import OpenClipEncoder

ENV_PATH = "DIFFUSION_GYM_AESTHETIC_PATH"
ENV_CLIP_MODEL = "DIFFUSION_GYM_AESTHETIC_CLIP_MODEL"
ENV_CLIP_PRETRAINED = "DIFFUSION_GYM_AESTHETIC_CLIP_PRETRAINED"
DEFAULT_CLIP_MODEL = "ViT-L-14"
DEFAULT_CLIP_PRETRAINED = "openai"
HUB_REPO = "trl-lib/ddpo-aesthetic-predictor"
HUB_FILENAME = "aesthetic-model.pth"
EMBED_DIM = 768  # CLIP ViT-L/14 image embedding


class AestheticMLP(nn.Module):
    """The predictor's head; parameter names (``layers.0`` ... ``layers.7``) match the released weights."""

    def __init__(self, input_size: int = EMBED_DIM):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(input_size, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        """``(B, 768)`` unit-norm embeddings -> ``(B, 1)`` scores."""
        return self.layers(embeddings)


def load_aesthetic_mlp(path: str | Path, env_var: str | None = None) -> AestheticMLP:
    """Read the MLP weights (safetensors or a torch state dict, never arbitrary pickles)."""
    state = load_state_dict_file(path, "aesthetic predictor MLP weights", env_var)
    mlp = AestheticMLP()
    try:
        mlp.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"{path} is not the aesthetic predictor's MLP (768-1024-128-64-16-1): {err}") from err
    return mlp


class AestheticScorer:
    """``fn(images, prompts) -> (B,)`` aesthetic scores; the prompts are ignored.

    Args:
        mlp_weights: the MLP's weights file.
        clip_model: open_clip model name, or ``local-dir:/path``; its image embedding must be 768-d.
        clip_pretrained: pretrained tag, local checkpoint file, or ``None`` (random weights; tests).
        device: where the models run.
        batch_size: images per forward pass.
    """

    def __init__(
        self,
        mlp_weights: str | Path,
        clip_model: str = DEFAULT_CLIP_MODEL,
        clip_pretrained: str | None = DEFAULT_CLIP_PRETRAINED,
        device: torch.device | str = "cpu",
        batch_size: int = 32,
        env_vars: Sequence[str] = (),
    ):
        self.device = torch.device(device)
        self.batch_size = batch_size
        mlp_env = ENV_PATH if ENV_PATH in env_vars else None
        self.mlp = load_aesthetic_mlp(mlp_weights, mlp_env).to(self.device).eval().requires_grad_(False)
        clip_env = [v for v in env_vars if v != ENV_PATH]
        self.encoder = OpenClipEncoder(clip_model, clip_pretrained, self.device, clip_env)
        embed_dim = getattr(self.encoder.model.visual, "output_dim", EMBED_DIM)
        if embed_dim != EMBED_DIM:
            raise ValueError(f"the aesthetic MLP needs {EMBED_DIM}-d CLIP embeddings; {clip_model} gives {embed_dim}")

    @classmethod
    def from_env(cls, device: torch.device | str = "cpu", **kwargs: Any) -> AestheticScorer:
        """Weights from the ``DIFFUSION_GYM_AESTHETIC_*`` variables where set, else from the hub."""
        mlp_weights = env_path(ENV_PATH)
        if mlp_weights is None:
            from huggingface_hub import hf_hub_download

            try:
                mlp_weights = hf_hub_download(HUB_REPO, HUB_FILENAME)
            except Exception as err:  # offline, or the hub is unreachable
                raise RuntimeError(
                    f"could not fetch the aesthetic MLP from the hub ({HUB_REPO}/{HUB_FILENAME}): {err}. "
                    f"Offline, set {ENV_PATH} (and {ENV_CLIP_MODEL} / {ENV_CLIP_PRETRAINED}) to local files"
                ) from err
        return cls(
            mlp_weights,
            env_path(ENV_CLIP_MODEL) or DEFAULT_CLIP_MODEL,
            env_path(ENV_CLIP_PRETRAINED) or DEFAULT_CLIP_PRETRAINED,
            device,
            env_vars=(ENV_PATH, ENV_CLIP_MODEL, ENV_CLIP_PRETRAINED),
            **kwargs,
        )

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor, prompts: Sequence[str] | None = None) -> torch.Tensor:
        return score_in_batches(images, prompts, self.batch_size, self._score_batch)

    def _score_batch(self, images: torch.Tensor, prompts: Sequence[str] | None) -> torch.Tensor:
        embeddings = self.encoder.encode_images(images)  # (b, 768)
        return self.mlp(embeddings)  # (b, 1)
