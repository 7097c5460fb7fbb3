"""RWR's diffusion target and loss against hand-computed values (its weights and update: tests/test_agents_run.py)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from diffusers import DDIMScheduler

from agents.algorithms.rwr import diffusion_target


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


def _rwr_stand_in(train_timestep_min: int, seen: list[torch.Tensor]) -> SimpleNamespace:
    """What :meth:`RWRAgent.diffusion_loss` reads of an agent: its config, generator (seed 0), a v-prediction
    scheduler and ``predict`` (here a UNet that predicts 0, recording in ``seen`` the timesteps it is called at)."""
    from agents.config import AgentConfig

    def predict(noisy, timesteps, embeddings):
        seen.append(timesteps)
        return torch.zeros_like(noisy)

    return SimpleNamespace(
        config=AgentConfig(train_timestep_min=train_timestep_min),
        generator=torch.Generator().manual_seed(0),
        policy=SimpleNamespace(scheduler=_scheduler("v_prediction"), predict=predict),
    )


def test_rwr_diffusion_loss_by_hand_from_the_agents_own_draws():
    r"""With a UNet that predicts 0, the loss is :math:`\frac1M\sum_i w_i\,\overline{y_t^{(i)2}}`: recomputed here from
    the same generator's draws (timesteps in ``[train_timestep_min, T)``, then the noise) and the v-prediction target
    of the clean latents. The draws come from the agent's generator, not torch's global RNG, and respect
    ``train_timestep_min``.

    Catches (mutmut): the generator dropped from the timestep or noise draw (the loss then depends on the global
    RNG), ``train_timestep_min`` dropped, the clean latents or timesteps not passed to the v target."""
    from agents.algorithms.rwr import RWRAgent

    clean = torch.randn(3, 4, 2, 2, generator=torch.Generator().manual_seed(1))  # (M, C, H, W)
    embeddings, weights = torch.zeros(3, 1, 1), torch.tensor([0.5, 1.0, 1.5])
    losses, seen = [], []
    for global_seed in (10, 11):  # whatever the global RNG holds
        with torch.random.fork_rng():
            torch.manual_seed(global_seed)
            agent = _rwr_stand_in(train_timestep_min=900, seen=seen)
            losses.append(RWRAgent.diffusion_loss(agent, clean, embeddings, weights))
    assert torch.equal(losses[0], losses[1])
    assert all(bool((t >= 900).all()) for t in seen)
    generator = torch.Generator().manual_seed(0)
    timesteps = torch.randint(900, 1000, (3,), generator=generator)  # (M,)
    noise = torch.randn(clean.shape, generator=generator)  # (M, C, H, W)
    alpha_prod_t = _scheduler("v_prediction").alphas_cumprod[timesteps].reshape(3, 1, 1, 1)
    target = alpha_prod_t.sqrt() * noise - (1 - alpha_prod_t).sqrt() * clean  # v = sqrt(a) eps - sqrt(1 - a) x_0
    expected = (weights * target.pow(2).mean(dim=(1, 2, 3))).mean()
    torch.testing.assert_close(losses[0], expected)
