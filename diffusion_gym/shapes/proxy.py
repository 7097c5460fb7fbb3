"""``shapes-clip``: a tiny CLIP trained contrastively on Shapes scenes, the learned proxy reward of the world.

It is built from open_clip's own classes (``open_clip.CLIP`` with a tiny custom ViT / text-transformer
config) and trained with ``open_clip.ClipLoss`` on VAE reconstructions of generated scenes and their
captions. It is the ImageReward of this world: it correlates with the gold scorer, imperfectly.

Reward: ``100 * cos(image_embedding, text_embedding)`` (CLIPScore without the clamp and the 2.5 factor),
in ``[-100, 100]``. The weights are stored as fp16 safetensors with a JSON config, and loaded as fp32.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
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


def train_proxy(
    images: np.ndarray,
    captions: Sequence[Sequence[str]],
    *,
    steps: int,
    batch_size: int = 256,
    lr: float = 2e-3,
    seed: int = 0,
    config: ProxyConfig | None = None,
    progress: bool = True,
) -> tuple[torch.nn.Module, ProxyConfig]:
    """Train the tiny CLIP contrastively (``open_clip.ClipLoss``) on ``(N, 32, 32, 3)`` uint8 images.

    ``captions[i]`` holds one or more true captions of image ``i``; one is drawn per step.
    """
    import open_clip
    from tqdm.auto import tqdm

    config = config or ProxyConfig()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = build_model(config).train()
    loss_fn = open_clip.ClipLoss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / 50) * 0.5 * (1 + math.cos(math.pi * min(s / steps, 1.0)))
    )
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2)  # (N, 3, 32, 32) uint8
    variants = len(captions[0])
    flat = [c for group in captions for c in group]
    tokens = tokenize(flat, config.context_length).view(len(captions), variants, -1)  # (N, V, L)
    for _ in tqdm(range(steps), desc="proxy CLIP", disable=not progress):
        index = torch.from_numpy(rng.choice(len(pixels), size=batch_size, replace=False))
        choice = torch.from_numpy(rng.integers(variants, size=batch_size))
        batch = pixels[index].float() / 127.5 - 1
        batch = batch + 0.03 * torch.randn_like(batch)  # mild noise, as in imperfect samples
        image_features = torch.nn.functional.normalize(model.encode_image(batch), dim=-1)
        text_features = torch.nn.functional.normalize(model.encode_text(tokens[index, choice]), dim=-1)
        loss = loss_fn(image_features, text_features, model.logit_scale.exp())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
    return model.eval(), config
