"""Mean brightness and its mirror, darkness: the simplest rewards there are, for tests that an agent climbs a
reward, and climbs the one it is given.

``brightness`` is the mean of every pixel and channel of the decoded image, in ``[0, 1]`` (0: black, 1: white);
``darkness`` is ``1 - brightness``. Both ignore the prompt. They are meant for learning tests
(``tests/test_agent_learning.py``): an agent must raise each of the two, so whatever moves the images one way
whatever the reward (damage from a large learning rate, drift from self-training) cannot pass for learning, and an
agent that descends its reward (a flipped sign) fails one of them. Probes:
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


class Darkness:
    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        return 1.0 - mean_brightness(images)
