"""The reward registry: weighted sums, unknown names, bad weights, lazy full-scale registrations."""

from __future__ import annotations

import pytest
import torch

from diffusion_gym.rewards import (
    UnknownRewardError,
    WeightedSumReward,
    make_reward,
    parse_reward_weights,
    register_reward,
    registered_rewards,
    registry,
    reward_spec,
    validate_reward,
)


class Constant:
    def __init__(self, value: float):
        self.value = value

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return torch.full((images.shape[0],), self.value)


class MeanPixel:
    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return images.mean(dim=(1, 2, 3)).double()  # not float32 on purpose: the sum casts


@pytest.fixture(autouse=True)
def test_rewards(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two extra rewards, registered in a copy of the registry that is restored after each test."""
    registered_rewards()  # the built-in rewards first
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_CACHE", {})
    register_reward("test-constant-three", lambda device: Constant(3.0), description="3", uses_prompt=False)
    register_reward("test-mean-pixel", lambda device: MeanPixel(), description="mean", uses_prompt=False)


def test_full_scale_rewards_are_registered_without_loading_anything() -> None:
    names = registered_rewards()
    for name in ("imagereward", "aesthetic", "clipscore"):
        assert name in names and names[name].description
    assert names["clipscore"].value_range == (0.0, 2.5)
    # Checking a reward string builds no model (and needs no weights).
    assert validate_reward("imagereward:1.0,aesthetic:0.1") == "imagereward:1.0,aesthetic:0.1"


def test_weighted_sum() -> None:
    images = torch.rand(4, 3, 8, 8)
    reward = make_reward("test-constant-three:2.0,test-mean-pixel:-0.5")
    assert isinstance(reward, WeightedSumReward)
    scores = reward(images, ["p"] * 4)
    assert scores.shape == (4,) and scores.dtype == torch.float32
    torch.testing.assert_close(scores, 6.0 - 0.5 * images.mean(dim=(1, 2, 3)))


def test_weighted_sum_of_builtin_rewards_and_parsing() -> None:
    images = torch.rand(2, 3, 16, 16)
    both = make_reward("jpeg-compressibility:1.0, jpeg-incompressibility:1")  # spaces allowed
    torch.testing.assert_close(both(images, ["a", "b"]), torch.zeros(2))
    assert parse_reward_weights("imagereward:1.0,aesthetic:0.1") == [("imagereward", 1.0), ("aesthetic", 0.1)]
    assert parse_reward_weights("clipscore") == [("clipscore", 1.0)]
    assert parse_reward_weights("aesthetic:1e-1") == [("aesthetic", 0.1)]
    # A single name with weight 1 is the reward itself, cached per name and device.
    assert make_reward("test-mean-pixel") is make_reward("test-mean-pixel:1.0")


@pytest.mark.parametrize(
    "spec",
    ["no-such-reward", "imagereward:1.0,no-such-reward:0.5", "ImageReward", ":1.0", "imagereward,"],
)
def test_unknown_names(spec: str) -> None:
    with pytest.raises(UnknownRewardError, match="registered rewards") as raised:
        validate_reward(spec)
    assert isinstance(raised.value, KeyError)
    assert "imagereward" in str(raised.value)  # the message lists what is registered
    with pytest.raises(UnknownRewardError):
        make_reward(spec)
    with pytest.raises(KeyError):
        reward_spec("no-such-reward")


@pytest.mark.parametrize("spec", ["imagereward:abc", "imagereward:", "aesthetic:0.1:2", "clipscore:1,0"])
def test_bad_weights(spec: str) -> None:
    with pytest.raises((ValueError, UnknownRewardError)):
        validate_reward(spec)


@pytest.mark.parametrize("spec", ["", "   ", None, 3])
def test_empty_or_non_string(spec: object) -> None:
    with pytest.raises(ValueError, match="non-empty string"):
        validate_reward(spec)  # type: ignore[arg-type]


def test_names_may_not_contain_separators_or_repeat() -> None:
    for bad in ("a:b", "a,b"):
        with pytest.raises(ValueError, match="may not contain"):
            register_reward(bad, lambda device: Constant(0.0), description="", uses_prompt=False)
    with pytest.raises(ValueError, match="already registered"):
        register_reward("imagereward", lambda device: Constant(0.0), description="", uses_prompt=True)


def test_brightness_is_the_mean_pixel_value_by_hand() -> None:
    # Image 0: black except one white pixel in channel 0 of a 2x2 image: 1 / 12 of the 12 values.
    # Image 1: the red channel 1, the green 0.5, the blue 0 everywhere: (1 + 0.5 + 0) / 3 = 0.5.
    images = torch.zeros(2, 3, 2, 2)
    images[0, 0, 1, 1] = 1.0
    images[1, 0], images[1, 1] = 1.0, 0.5
    reward = make_reward("brightness")
    scores = reward(images, ["a red circle", "anything"])  # the prompt is ignored
    assert scores.shape == (2,) and scores.dtype == torch.float32 and scores.device.type == "cpu"
    torch.testing.assert_close(scores, torch.tensor([1.0 / 12.0, 0.5]))
    spec = reward_spec("brightness")
    assert not spec.uses_prompt and spec.value_range == (0.0, 1.0)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        reward(torch.zeros(2, 1, 2, 2), ["a", "b"])
    # darkness mirrors it: 1 - 1/12 and 1 - 0.5
    torch.testing.assert_close(make_reward("darkness")(images, ["a", "b"]), torch.tensor([11.0 / 12.0, 0.5]))
    assert reward_spec("darkness").value_range == (0.0, 1.0)
