"""``shapes-clip``: a tiny CLIP trained contrastively on Shapes scenes, the learned proxy reward of the world.

It is built from open_clip's own classes (``open_clip.CLIP`` with a tiny custom ViT / text-transformer
config) and trained with ``open_clip.ClipLoss`` on VAE reconstructions of generated scenes and their
captions (by :func:`diffusion_gym.shapes.offline.train.train_proxy`). It is the ImageReward of this world:
it correlates with the gold scorer, imperfectly.

Reward: ``100 * cos(image_embedding, text_embedding)`` (CLIPScore without the clamp and the 2.5 factor),
in ``[-100, 100]``. The weights are stored as fp16 safetensors with a JSON config, and loaded as fp32.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


@dataclass(frozen=True)
class ProxyConfig:
    """The tiny CLIP's architecture (open_clip ``CLIPVisionCfg`` / ``CLIPTextCfg`` fields)."""

    embed_dim: int = 64
    image_size: int = 32
    patch_size: int = 4
    vision_width: int = 64
    vision_layers: int = 3
    vision_heads: int = 4
    context_length: int = 48
    vocab_size: int = 49408
    text_width: int = 32
    text_layers: int = 2
    text_heads: int = 4


def build_model(config: ProxyConfig) -> torch.nn.Module:
    """An ``open_clip.CLIP`` with the tiny config (randomly initialised)."""
    import open_clip
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    vision = CLIPVisionCfg(
        layers=config.vision_layers,
        width=config.vision_width,
        head_width=config.vision_width // config.vision_heads,
        mlp_ratio=2.0,
        patch_size=config.patch_size,
        image_size=config.image_size,
    )
    text = CLIPTextCfg(
        context_length=config.context_length,
        vocab_size=config.vocab_size,
        width=config.text_width,
        heads=config.text_heads,
        layers=config.text_layers,
        mlp_ratio=2.0,
    )
    return open_clip.CLIP(embed_dim=config.embed_dim, vision_cfg=vision, text_cfg=text)


def tokenize(prompts: Sequence[str], context_length: int) -> torch.Tensor:
    """open_clip's CLIP BPE tokenizer: ``(B, context_length)`` token ids."""
    import open_clip

    return open_clip.tokenize(list(prompts), context_length=context_length)


def _normalise_images(images: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)`` in [0, 1] -> ``(B, 3, 32, 32)`` in [-1, 1]."""
    if images.shape[-2:] != (32, 32):
        images = torch.nn.functional.interpolate(images, size=(32, 32), mode="area")
    return images * 2 - 1


class ShapesClipReward:
    """``fn(images, prompts) -> 100 * cosine`` of the tiny CLIP's image and text embeddings."""

    def __init__(self, model: torch.nn.Module, config: ProxyConfig, device: torch.device | str = "cpu"):
        self.model = model.to(device).eval().requires_grad_(False)
        self.config = config
        self.device = torch.device(device)

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: torch.device | str = "cpu") -> ShapesClipReward:
        from safetensors.torch import load_file

        folder = Path(folder)
        config = ProxyConfig(**json.loads((folder / CONFIG_NAME).read_text()))
        model = build_model(config)
        state = {k: v.float() for k, v in load_file(folder / WEIGHTS_NAME).items()}
        model.load_state_dict(state)
        return cls(model, config, device)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        if images.shape[0] != len(prompts):
            raise ValueError(f"got {images.shape[0]} images but {len(prompts)} prompts")
        pixels = _normalise_images(images.detach().float().to(self.device))
        tokens = tokenize(prompts, self.config.context_length).to(self.device)
        image_features = torch.nn.functional.normalize(self.model.encode_image(pixels), dim=-1)  # (B, D)
        text_features = torch.nn.functional.normalize(self.model.encode_text(tokens), dim=-1)  # (B, D)
        return (100 * (image_features * text_features).sum(-1)).float().cpu()


def save_proxy(model: torch.nn.Module, config: ProxyConfig, folder: str | Path) -> Path:
    """Write ``model.safetensors`` (fp16) and ``config.json`` into ``folder``."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    save_file(state, folder / WEIGHTS_NAME, metadata={"format": "pt", "storage": "fp16"})
    (folder / CONFIG_NAME).write_text(json.dumps(asdict(config), indent=2) + "\n")
    return folder
