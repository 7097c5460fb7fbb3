"""RWR's diffusion target against hand-computed values (its weights and update: tests/test_agents_run.py)."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import DDIMScheduler

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


def test_with_agent_defaults_fills_only_an_unset_learning_rate():
    from agents.config import AgentConfig

    assert AgentConfig().with_agent_defaults("ddpo").learning_rate == 1e-3
    assert AgentConfig().with_agent_defaults("rwr").learning_rate == 1e-4
    assert AgentConfig(herd_base="rwr").with_agent_defaults("herd").learning_rate == 1e-4
    assert AgentConfig(herd_base="loop").with_agent_defaults("herd").learning_rate == 1e-3
    assert AgentConfig(learning_rate=5e-2).with_agent_defaults("rwr").learning_rate == 5e-2
