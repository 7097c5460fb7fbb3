"""Mean brightness: the simplest reward there is, for tests that an agent climbs a reward at all.

The score is the mean of every pixel and channel of the decoded image, in ``[0, 1]`` (0: black, 1: white). It
ignores the prompt. It is meant for learning tests: unlike the JPEG size, which rewards the texture that a model
damaged by training draws, brightness is not raised by damage (on the Shapes world, damage darkens the images), so
an agent that descends the reward cannot pass for one that climbs it. Probes at the learning tests' settings:
``docs/experiments/2026-12-04-mutation-testing.md``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def mean_brightness(images: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)`` float in ``[0, 1]`` -> ``(B,)`` float32 CPU: the mean over channels and pixels."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, H, W), got shape {tuple(images.shape)}")
    return images.float().mean(dim=(1, 2, 3)).cpu()  # (B,)


class Brightness:
    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        return mean_brightness(images)
