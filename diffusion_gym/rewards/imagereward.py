"""ImageReward-v1.0 (Xu et al., 2023) through the ``image-reward`` package.

The model is BLIP's ViT-L image encoder, a BERT text encoder that cross-attends to the image, and an MLP
on the ``[CLS]`` feature; scores are standardised (mean 0, std 1 over the authors' data). Higher is better.

Where the weights come from, in order:

1. explicit paths: ``ImageRewardScorer(checkpoint, med_config, tokenizer_dir)``;
2. ``DIFFUSION_GYM_IMAGEREWARD_PATH``: a folder with ``ImageReward.pt`` (the state dict),
   ``med_config.json`` and a BERT tokenizer folder ``tokenizer/`` (``bert-base-uncased``'s files,
   at least ``vocab.txt``);
3. otherwise the hub (``THUDM/ImageReward`` and ``bert-base-uncased``), as ``ImageReward.load`` does.

Install: ``pip install --no-deps image-reward==1.5`` plus ``clip-anytorch fairscale datasets
'setuptools<81'`` (the package pins transformers 4; :mod:`._transformers_compat` makes it run on 5).
"""

from __future__ import annotations

import contextlib
import importlib
import threading
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from diffusion_gym.rewards._common import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    env_path,
    eval_transform,
    load_state_dict_file,
    require_file,
    score_in_batches,
)
from diffusion_gym.rewards._transformers_compat import import_image_reward

ENV_PATH = "DIFFUSION_GYM_IMAGEREWARD_PATH"
HUB_REPO = "THUDM/ImageReward"
HUB_TOKENIZER = "bert-base-uncased"
CHECKPOINT_NAME = "ImageReward.pt"
MED_CONFIG_NAME = "med_config.json"
TOKENIZER_DIR_NAME = "tokenizer"
IMAGE_SIZE = 224  # BLIP ViT-L input
MAX_PROMPT_TOKENS = 35  # as ImageReward.score

_BUILD_LOCK = threading.Lock()


def _init_tokenizer(source: str) -> Any:
    """BLIP's ``init_tokenizer``, from ``source`` (a local folder or a hub name): BERT + ``[DEC]``, ``[ENC]``."""
    from transformers import BertTokenizer

    tokenizer = BertTokenizer.from_pretrained(source)
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    tokenizer.enc_token_id = tokenizer.additional_special_tokens_ids[0]
    return tokenizer


@contextlib.contextmanager
def _tokenizer_from(source: str) -> Iterator[None]:
    """Make BLIP build its tokenizer from ``source`` (it hard-codes the hub name ``bert-base-uncased``)."""
    from ImageReward.models.BLIP import blip_pretrain

    original = blip_pretrain.init_tokenizer
    blip_pretrain.init_tokenizer = lambda: _init_tokenizer(source)
    try:
        yield
    finally:
        blip_pretrain.init_tokenizer = original


def _tokenizer_source(tokenizer_dir: str | Path | None, env_var: str | None) -> str:
    if tokenizer_dir is None:
        return HUB_TOKENIZER
    path = Path(tokenizer_dir).expanduser()
    require_file(path / "vocab.txt", "BERT tokenizer vocabulary (vocab.txt)", env_var)
    return str(path)


class ImageRewardScorer:
    """``fn(images, prompts) -> (B,)`` ImageReward scores, with the model from explicit local files.

    Args:
        checkpoint: ``ImageReward.pt``, the model's state dict (read with ``weights_only=True``).
        med_config: BLIP's ``med_config.json`` (the BERT cross-encoder's config).
        tokenizer_dir: a BERT tokenizer folder (``vocab.txt``); ``None`` loads ``bert-base-uncased``.
        device: where the model runs.
        batch_size: images per forward pass (bounds memory).
        dtype: the model's dtype (``torch.float16`` halves its ~1.8 GB on a GPU).
        env_var: named in the errors for missing files (set by :meth:`from_env`).
    """

    def __init__(
        self,
        checkpoint: str | Path,
        med_config: str | Path,
        tokenizer_dir: str | Path | None = None,
        device: torch.device | str = "cpu",
        batch_size: int = 16,
        dtype: torch.dtype = torch.float32,
        env_var: str | None = None,
    ):
        import_image_reward()
        model_cls = importlib.import_module("ImageReward.ImageReward").ImageReward
        self.device = torch.device(device)
        self.batch_size = batch_size
        med_config = require_file(med_config, "ImageReward med_config.json", env_var)
        checkpoint = require_file(checkpoint, "ImageReward checkpoint", env_var)
        source = _tokenizer_source(tokenizer_dir, env_var)
        state = load_state_dict_file(checkpoint, "ImageReward checkpoint", env_var)

        # Parameters on the meta device (no random init of ~450M of them), then adopt the checkpoint's.
        from accelerate import init_empty_weights

        with _BUILD_LOCK, _tokenizer_from(source), init_empty_weights(include_buffers=False):
            model = model_cls(med_config=str(med_config), device=self.device)
        try:
            missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
        except RuntimeError as err:  # shape mismatches
            raise ValueError(f"{checkpoint} does not fit the model of {med_config}: {err}") from err
        if unexpected:  # the package loads with strict=False too; a wrong file fails on missing keys below
            warnings.warn(
                f"{checkpoint}: ignoring {len(unexpected)} unexpected keys, e.g. {unexpected[:3]}", stacklevel=2
            )
        still_missing = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
        if still_missing:
            raise ValueError(
                f"{checkpoint} is not an ImageReward state dict (or does not match {med_config}): "
                f"{len(still_missing)} missing tensors, e.g. {still_missing[:5]}"
            )
        del state
        self.dtype = dtype
        self.model = model.to(self.device, dtype).eval().requires_grad_(False)
        self.tokenizer = model.blip.tokenizer
        # ImageReward's own: Resize(224, BICUBIC), CenterCrop(224), Normalize(CLIP's mean and std), on tensors.
        self.transform = eval_transform(IMAGE_SIZE, "bicubic", OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)

    @classmethod
    def from_folder(
        cls, folder: str | Path, device: torch.device | str = "cpu", env_var: str | None = None, **kwargs: Any
    ) -> ImageRewardScorer:
        """Load from a folder holding ``ImageReward.pt``, ``med_config.json`` and ``tokenizer/``."""
        folder = Path(folder).expanduser()
        if not folder.is_dir():
            hint = f" (from {env_var})" if env_var else ""
            raise FileNotFoundError(f"ImageReward folder not found: {folder}{hint}")
        return cls(
            folder / CHECKPOINT_NAME,
            folder / MED_CONFIG_NAME,
            folder / TOKENIZER_DIR_NAME,
            device=device,
            env_var=env_var,
            **kwargs,
        )

    @classmethod
    def from_hub(
        cls, device: torch.device | str = "cpu", cache_dir: str | None = None, **kwargs: Any
    ) -> ImageRewardScorer:
        """Download ImageReward-v1.0 (``THUDM/ImageReward``) and ``bert-base-uncased`` from the hub."""
        from huggingface_hub import hf_hub_download

        try:
            checkpoint = hf_hub_download(HUB_REPO, CHECKPOINT_NAME, cache_dir=cache_dir)
            med_config = hf_hub_download(HUB_REPO, MED_CONFIG_NAME, cache_dir=cache_dir)
        except Exception as err:  # offline, or the hub is unreachable
            raise RuntimeError(
                f"could not fetch ImageReward from the hub ({HUB_REPO}): {err}. Offline, set {ENV_PATH} to a "
                f"folder with {CHECKPOINT_NAME}, {MED_CONFIG_NAME} and {TOKENIZER_DIR_NAME}/vocab.txt"
            ) from err
        return cls(checkpoint, med_config, tokenizer_dir=None, device=device, **kwargs)

    @classmethod
    def from_env(cls, device: torch.device | str = "cpu", **kwargs: Any) -> ImageRewardScorer:
        """``$DIFFUSION_GYM_IMAGEREWARD_PATH`` if set (offline), else the hub."""
        folder = env_path(ENV_PATH)
        if folder is not None:
            return cls.from_folder(folder, device=device, env_var=ENV_PATH, **kwargs)
        return cls.from_hub(device=device, **kwargs)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` in [0, 1] -> ``(B, 3, 224, 224)`` normalised, on the model's device."""
        return self.transform(images.to(self.device, torch.float32)).to(self.dtype)

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        return score_in_batches(images, prompts, self.batch_size, self._score_batch)

    def _score_batch(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        pixels = self.preprocess(images)  # (b, 3, 224, 224)
        text = self.tokenizer(
            list(prompts), padding="max_length", truncation=True, max_length=MAX_PROMPT_TOKENS, return_tensors="pt"
        ).to(self.device)
        return self.model.score_gard(text.input_ids, text.attention_mask, pixels)  # (b, 1)
