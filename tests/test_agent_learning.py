r"""Learning tests: every agent raises the reward it is given on the Shapes world, whichever way that reward points.

Marked ``learning``: not in the default ``pytest`` run (about 4 CPU-minutes in total, one thread), run by CI
(``.ci/run``: ``make test-learning``); alone: ``pytest -m learning``.

**The rewards** are ``brightness`` (the mean pixel value of the decoded image) and its mirror ``darkness``
(``1 - brightness``), on the embedded Shapes world (its trained 8x8x4-latent UNet, 32 px images), the standard
prompt, 4 DDIM steps. Every agent is trained twice from the same seed, once on each, and must raise each one.
Nothing that moves the images one way whatever the reward can pass both: not the damage of a large learning rate,
not the drift of training on the model's own samples, not HERD's replay under other sentences. And an agent whose
sign is flipped descends the reward it is given, so it fails at least one of the pair (in practice both).
The base model's 16 seeded images have a mean brightness of 0.473 with a per-image standard deviation of 0.018
(standard error of the 16-image mean 0.0046, measured 2026-12-04); the agents move it by 14 to 93 of those
standard errors in 8 epochs of 16 samples.

**The assertion** is on the improvement, against noise measured in the test itself: the policy generates the same
16 seeded images before and after training; the base model's per-image standard deviation :math:`s` over those
seeds gives the standard error of a 16-image mean, :math:`s/\sqrt{16}`; the mean reward must rise by more than
:data:`MARGIN` of those. Everything is seeded, so each run gives the same numbers.

**What the tests catch**, checked by applying each mutation to a copy of the code and running these tests
(``docs/experiments/2026-12-04-mutation-testing.md``, "Third session: learning tests that bite", which gives each
mutation's gains); each agent's pair of tests fails under:

- ``reinforce``: ``reinforce-loss-sign`` (``loss = +(w A log_prob).mean()``), ``normalize-sign`` (the
  advantage's sign in :func:`agents.algorithms.math.normalize_advantages`), ``reinforce-detach-logp``;
- ``ddpo``: ``ppo-loss-sign`` (``loss = objective.mean()`` in :func:`agents.algorithms.math.ppo_clipped_loss`),
  ``ppo-ratio-swapped``, ``normalize-sign``, ``ddpo-adv-sign``, ``ddpo-swap-old-new``, ``ddpo-detach-logp``;
- ``dpok``: ``ppo-loss-sign``, ``dpok-policy-sign``, ``dpok-policy-detached`` (gain 0: only the KL is left);
- ``loop``: ``ppo-loss-sign``, ``loop-adv-sign``, ``loop-swap-old-new``;
- ``rwr``: ``rwr-loss-sign``, ``rwr-weights-sign``, ``rwr-prediction-detached``;
- ``herd``: ``ppo-loss-sign``, ``loop-adv-sign`` (the LOOP advantage of its base).

A detached log-prob or RWR prediction, or old and new log-probs swapped, leaves nothing to differentiate: the
backward pass raises. A flipped sign gives gains of -14 to -94 standard errors.

The agents' settings differ from their defaults where the defaults are built for long runs, not for 8 epochs:
a learning rate of 1e-2 on a rank-4 LoRA; DDPO two minibatches an epoch (the second is off-policy, so PPO's ratio
and clip are at work); DPOK's KL coefficient 1e-4 (its default 0.01, on a KL summed over the latent dims, holds
the policy near the base in a few epochs; the KL has its own direction test); RWR with signed weights
(``rwr_baseline``: without it every sample is also self-training data, which darkens the images whatever the
reward).
"""

from __future__ import annotations

import math

import pytest
import torch

from agents import AgentConfig, make_agent
from agents.envs import EnvConfig

pytestmark = [pytest.mark.learning, pytest.mark.usefixtures("one_torch_thread")]

MARGIN = 5.0  # standard errors of the base model's 16-image mean reward
EVAL_IMAGES = 16
EVAL_SEED = 10_000
EPOCHS = 8
SAMPLES_PER_EPOCH = 16


@pytest.fixture(scope="module")
def envs():
    """One 16-env vector env per reward, built on first use and closed at the end of the module."""
    from diffusion_gym.shapes import STANDARD_PROMPT

    built = {}

    def env_for(reward: str):
        if reward not in built:
            settings = EnvConfig(reward=reward, prompts=(STANDARD_PROMPT,), num_inference_steps=4)
            built[reward] = settings.make(num_envs=SAMPLES_PER_EPOCH)
        return built[reward]

    yield env_for
    for env in built.values():
        env.close()


def learning_config(**overrides) -> AgentConfig:
    """Small and fast: 16 samples an epoch, every step trained, one optimiser step per epoch, a high LoRA rate."""
    defaults = {
        "seed": 0,
        "batch_size": SAMPLES_PER_EPOCH,
        "batches_per_epoch": 1,
        "lora_rank": 4,
        "loop_k": 4,
        "learning_rate": 1e-2,
        "train_batch_size": None,
        "train_timestep_fraction": 1.0,
        "inner_epochs": 1,
        "per_prompt_stats": False,
    }
    return AgentConfig(**{**defaults, **overrides})


@pytest.mark.parametrize("reward", ["brightness", "darkness"])
@pytest.mark.parametrize(
    "name, overrides",
    [
        ("reinforce", {}),
        ("ddpo", {"train_batch_size": SAMPLES_PER_EPOCH // 2}),  # two optimiser steps an epoch: the second off-policy
        ("dpok", {"kl_beta": 1e-4}),  # see the module docstring
        ("loop", {}),
        ("rwr", {"rwr_baseline": True}),  # signed weights: see the module docstring
        ("nft", {}),
        ("herd", {}),  # HERD over LOOP (its default base): a relabeled sentence gets the same prompt-blind reward
    ],
    ids=["reinforce", "ddpo", "dpok", "loop", "rwr", "nft", "herd"],
)
def test_agent_raises_the_reward_it_is_given_far_beyond_seed_noise(envs, name, overrides, reward):
    """The agent's 16 seeded images gain more than MARGIN standard errors of mean reward in EPOCHS epochs.

    Catches: a flipped sign (the agent descends: one of ``brightness`` / ``darkness`` falls) and an agent that does
    not train (a gain of 0, or an error). See the module docstring for the mutations checked."""
    from diffusion_gym.shapes import STANDARD_PROMPT

    agent = make_agent(name, envs(reward), learning_config(**overrides))
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
        f"{name}: mean {reward} {before.mean():.4f} -> {after.mean():.4f}, a gain of "
        f"{gain / standard_error:.1f} standard errors ({standard_error:.4f}); needs {MARGIN}"
    )
