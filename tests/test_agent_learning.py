r"""Learning tests: every agent raises a strong-signal reward on the Shapes world within a few epochs of one prompt.

Marked ``learning``: not in the default ``pytest`` run (about 2 CPU-minutes in total, one thread), run by CI
(``.ci/run``: ``make test-learning``); alone: ``pytest -m learning``.

**The reward** is ``jpeg-incompressibility`` (the JPEG size of the decoded image in kB, DDPO's simplest reward) on
the embedded Shapes world (its trained 8x8x4-latent UNet, 32 px images), the standard prompt, 4 DDIM steps. The
base model draws flat-coloured shapes on a flat background, so the reward sits at about 1.03 kB with a per-image
standard deviation of about 0.022 kB over seeds (16 images, measured on 2026-12-04); a policy that adds texture
raises it by several of those standard deviations within 8 epochs of 8 samples, so the margin is unambiguous.
(``jpeg-compressibility``, the same number negated, would fail a model that is merely damaged, see below; whether
every agent raises it in 8 epochs is not measured yet. The gold reward moves far less in a few epochs.)

**The assertion** is on the improvement, against noise measured in the test itself: the policy generates the same
16 seeded images before and after training; the base model's per-image standard deviation :math:`s` over those
seeds gives the standard error of a 16-image mean, :math:`s/\sqrt{16}`; the mean reward must rise by more than
:data:`MARGIN` of those. Everything is seeded, so each run gives the same numbers.

Each test fails if its agent does not train (by reasoning, not run by hand: a detached log-prob or RWR prediction
makes the backward pass fail, or, in DPOK, leaves only the KL, whose gradient is 0 at the base). It does **not**
catch a flipped sign: with the signs of REINFORCE's, PPO's and RWR's losses flipped by hand, 5 of the 6 tests still
passed (LOOP failed, +1.8 standard errors): an agent that descends the reward at this learning rate damages the
model, and damage adds texture, which raises the JPEG size. The sign mutations are caught by
``tests/test_agent_directions.py`` (``docs/experiments/2026-12-04-mutation-testing.md``).
"""

from __future__ import annotations

import math

import pytest
import torch

from agents import AgentConfig, make_agent
from agents.envs import EnvSettings

pytestmark = [pytest.mark.learning, pytest.mark.usefixtures("one_torch_thread")]

MARGIN = 5.0  # standard errors of the base model's 16-image mean reward
EVAL_IMAGES = 16
EVAL_SEED = 10_000
EPOCHS = 8


@pytest.fixture(scope="module")
def env():
    from diffusion_gym.shapes import STANDARD_PROMPT

    settings = EnvSettings(reward="jpeg-incompressibility", prompts=(STANDARD_PROMPT,), num_inference_steps=4)
    return settings.make(num_envs=8)


def learning_config(**overrides) -> AgentConfig:
    """Small and fast: 8 samples an epoch, every step trained, one optimiser step per epoch, a high LoRA rate."""
    defaults = {
        "seed": 0,
        "batch_size": 8,
        "batches_per_epoch": 1,
        "lora_rank": 4,
        "loop_k": 4,
        "learning_rate": 3e-2,
        "train_batch_size": None,
        "train_timestep_fraction": 1.0,
        "inner_epochs": 1,
        "per_prompt_stats": False,
    }
    return AgentConfig(**{**defaults, **overrides})


@pytest.mark.parametrize(
    "name, overrides",
    [
        ("reinforce", {}),
        ("ddpo", {"inner_epochs": 2}),  # the second pass is off-policy: PPO's ratio and clipping at work
        # DPOK's default beta = 0.01 on a KL summed over the latent dims holds the policy near the base within a few
        # epochs (probe: +0.5 to +1 base standard deviations in 8 epochs); the KL term has its own direction test
        ("dpok", {"kl_beta": 1e-4}),
        ("loop", {}),
        ("rwr", {}),
        ("herd", {}),  # HERD over LOOP (its default base): a relabeled sentence gets the same prompt-blind reward
    ],
)
def test_agent_raises_the_jpeg_size_far_beyond_seed_noise(env, name, overrides):
    """The agent's 16 seeded images gain more than MARGIN standard errors of mean JPEG size in EPOCHS epochs.

    Catches: an agent that does not train (a detached log-prob or prediction: a gain of 0). Not a flipped sign
    (see the module docstring)."""
    from diffusion_gym.shapes import STANDARD_PROMPT

    agent = make_agent(name, env, learning_config(**overrides))
    try:
        prompts = [STANDARD_PROMPT] * EVAL_IMAGES
        before = agent.generate(prompts, seed=EVAL_SEED).rewards  # (16,): the base model (LoRA's B is 0)
        for _ in range(EPOCHS):
            agent.train_epoch()
        after = agent.generate(prompts, seed=EVAL_SEED).rewards  # the same initial noises
    finally:
        agent.close()
    standard_error = before.std().item() / math.sqrt(EVAL_IMAGES)
    gain = (after.mean() - before.mean()).item()
    assert standard_error > 0 and torch.isfinite(after).all()
    assert gain > MARGIN * standard_error, (
        f"{name}: mean JPEG size {before.mean():.4f} -> {after.mean():.4f} kB, a gain of "
        f"{gain / standard_error:.1f} standard errors ({standard_error:.4f} kB); needs {MARGIN}"
    )
