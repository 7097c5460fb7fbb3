"""Reward functions behind one interface, looked up by name (see :mod:`.registry`)."""

from diffusion_gym.rewards.brightness import Brightness, Darkness
from diffusion_gym.rewards.jpeg import JpegCompressibility, JpegIncompressibility
from diffusion_gym.rewards.registry import (
    RewardFn,
    RewardSpec,
    UnknownRewardError,
    WeightedSumReward,
    check_reward_prompt,
    make_reward,
    parse_reward_weights,
    register_reward,
    registered_rewards,
    reward_can_score,
    reward_spec,
    validate_reward,
)

register_reward(
    "jpeg-compressibility",
    lambda device: JpegCompressibility(),
    description="minus the JPEG (q=95) file size in kB (DDPO)",
    uses_prompt=False,
)
register_reward(
    "jpeg-incompressibility",
    lambda device: JpegIncompressibility(),
    description="the JPEG (q=95) file size in kB (DDPO)",
    uses_prompt=False,
)

register_reward(
    "brightness",
    lambda device: Brightness(),
    description="the mean pixel value of the image, in [0, 1] (prompt-blind; for learning tests)",
    uses_prompt=False,
    value_range=(0.0, 1.0),
)
register_reward(
    "darkness",
    lambda device: Darkness(),
    description="1 - the mean pixel value of the image, in [0, 1] (prompt-blind; for learning tests)",
    uses_prompt=False,
    value_range=(0.0, 1.0),
)

__all__ = [
    "RewardFn",
    "RewardSpec",
    "UnknownRewardError",
    "WeightedSumReward",
    "check_reward_prompt",
    "make_reward",
    "parse_reward_weights",
    "register_reward",
    "registered_rewards",
    "reward_can_score",
    "reward_spec",
    "validate_reward",
]
