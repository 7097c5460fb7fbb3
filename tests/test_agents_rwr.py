"""RWR's pieces: the diffusion target against hand-computed values, and the weights reaching the update."""

from __future__ import annotations

import math

import gymnasium as gym
import pytest
import torch
from diffusers import DDIMScheduler

import diffusion_gym  # noqa: F401  (registers the env)
from agents import AgentConfig, make_agent
from agents.rwr import diffusion_target


def _scheduler(prediction_type: str) -> DDIMScheduler:
    return DDIMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", prediction_type=prediction_type)


def test_diffusion_target_hand_computed():
    clean, noise = torch.full((1, 1, 1, 1), 2.0), torch.full((1, 1, 1, 1), -1.0)
    timesteps = torch.tensor([500])
    alpha_prod_t = float(_scheduler("v_prediction").alphas_cumprod[500])
    # v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x_0
    expected_v = math.sqrt(alpha_prod_t) * -1.0 - math.sqrt(1 - alpha_prod_t) * 2.0
    v = diffusion_target(_scheduler("v_prediction"), clean, noise, timesteps)
    assert v.item() == pytest.approx(expected_v, rel=1e-5)
    assert torch.equal(diffusion_target(_scheduler("epsilon"), clean, noise, timesteps), noise)
    assert torch.equal(diffusion_target(_scheduler("sample"), clean, noise, timesteps), clean)
    scheduler = _scheduler("epsilon")
    scheduler.register_to_config(prediction_type="flow")
    with pytest.raises(ValueError, match="prediction_type 'flow'"):
        diffusion_target(scheduler, clean, noise, timesteps)


@pytest.fixture(scope="module")
def env(tiny_pipeline):
    return gym.make_vec(
        "DiffusionT2I-v0",
        num_envs=2,
        vectorization_mode="vector_entry_point",
        model=tiny_pipeline,
        reward="jpeg-incompressibility",
        prompts=["A cat. A dog.", "A red box."],
        num_inference_steps=3,
        latent_bound=1e4,
    )


def test_rwr_weights_are_what_the_update_learns_from(env):
    config = AgentConfig(batch_size=2, batches_per_epoch=1, lora_rank=2, seed=0, rwr_temperature=0.5)
    agent = make_agent("rwr", env, config)
    try:
        samples = agent.collect()[0]
        weights = agent.advantages(samples)
        assert weights.mean().item() == pytest.approx(1.0, rel=1e-5)
        assert (weights.argmax() == samples.rewards.argmax()).item()  # the better sample weighs more
        lora_b = {k: v for k, v in agent.policy.named_trainable_parameters().items() if "lora_B" in k}
        agent.update(samples, torch.zeros(2))  # zero weights: zero gradient, B stays at its zero init
        assert all(bool((v == 0).all()) for v in lora_b.values())
        stats = agent.update(samples, weights)
        assert any(bool((v != 0).any()) for v in lora_b.values())
        assert math.isfinite(stats["loss"])
    finally:
        agent.close()


def test_rwr_baseline_makes_the_weights_signed_with_mean_zero(env):
    config = AgentConfig(batch_size=2, batches_per_epoch=1, lora_rank=2, seed=0, rwr_baseline=True)
    agent = make_agent("rwr", env, config)
    try:
        samples = agent.collect()[0]
        signed = agent.advantages(samples)
        assert abs(signed.mean().item()) < 1e-6
        assert signed.min() < 0 < signed.max()  # two samples of different rewards: one pushed up, one down
    finally:
        agent.close()
