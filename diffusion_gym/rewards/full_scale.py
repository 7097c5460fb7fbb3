"""Registers the full-scale rewards: ``imagereward``, ``aesthetic`` and ``clipscore``.

The factories import their models only when called, so importing :mod:`diffusion_gym.rewards` stays
cheap. Each loads from the environment when its variables are set (offline) and from the hub otherwise:

==============  ========================================================================================
reward          environment
==============  ========================================================================================
``imagereward`` ``DIFFUSION_GYM_IMAGEREWARD_PATH``: folder with ``ImageReward.pt``, ``med_config.json``,
                ``tokenizer/`` (BERT ``vocab.txt``)
``aesthetic``   ``DIFFUSION_GYM_AESTHETIC_PATH`` (MLP weights file),
                ``DIFFUSION_GYM_AESTHETIC_CLIP_MODEL``, ``DIFFUSION_GYM_AESTHETIC_CLIP_PRETRAINED``
``clipscore``   ``DIFFUSION_GYM_CLIPSCORE_MODEL``, ``DIFFUSION_GYM_CLIPSCORE_PRETRAINED``
==============  ========================================================================================

Weighted sums come from the registry: ``make_reward("imagereward:1.0,aesthetic:0.1", device)``.
"""

from __future__ import annotations

import torch

from diffusion_gym.rewards.registry import RewardFn, register_reward


def _imagereward(device: torch.device) -> RewardFn:
    from diffusion_gym.rewards.imagereward import ImageRewardScorer

    return ImageRewardScorer.from_env(device)


def _aesthetic(device: torch.device) -> RewardFn:
    from diffusion_gym.rewards.aesthetic import AestheticScorer

    return AestheticScorer.from_env(device)


def _clipscore(device: torch.device) -> RewardFn:
    from diffusion_gym.rewards.clipscore import CLIPScore

    return CLIPScore.from_env(device)


register_reward(
    "imagereward",
    _imagereward,
    description="ImageReward-v1.0 (BLIP ViT-L + BERT cross-encoder + MLP), standardised human preference",
    uses_prompt=True,
)
register_reward(
    "aesthetic",
    _aesthetic,
    description="LAION aesthetic predictor (CLIP ViT-L/14 embedding -> MLP), roughly a 1-10 rating (DDPO)",
    uses_prompt=False,
)
register_reward(
    "clipscore",
    _clipscore,
    description="CLIPScore, 2.5 * max(cos(image, prompt), 0) with open_clip (Hessel et al. 2021)",
    uses_prompt=True,
    value_range=(0.0, 2.5),
)
