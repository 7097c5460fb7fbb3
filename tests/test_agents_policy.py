"""The LoRA diffusion policy on the tiny random pipeline: exact log-probs, zero KL at init, shared-UNet safety,
PPO's first-step gradient equal to REINFORCE's, and HERD's relabeling."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import diffusion_gym  # noqa: F401  (registers the env)
from agents import AgentConfig, make_agent
from agents.buffers import StepBatch
from agents.herd import relabel
from agents.math import gaussian_step_kl, ppo_clipped_loss
from agents.policy import DiffusionPolicy
from agents.reinforce import ReinforceAgent
from agents.rollout import collect_trajectories

PROMPTS = ["A large red circle on the left. A gray background.", "A small blue square at the top. A white background."]


@pytest.fixture(scope="module")
def env(tiny_env_settings):
    return dataclasses.replace(tiny_env_settings, prompts=PROMPTS).make(num_envs=2).unwrapped


@pytest.fixture
def policy(env):
    with torch.random.fork_rng():
        torch.manual_seed(0)
        policy = DiffusionPolicy(env, lora_rank=4)
    yield policy
    policy.close()


def test_recomputed_log_probs_match_sampling_and_kl_is_zero_at_init(env, policy):
    samples = collect_trajectories(env, policy, PROMPTS, seed=0, generator=torch.Generator().manual_seed(0))
    assert samples.latents.shape == (2, 3, 4, 8, 8) and samples.log_probs.shape == (2, 3)
    assert bool(samples.stochastic.all())
    for j in range(3):
        timesteps = samples.timesteps[j].repeat(2)
        with torch.no_grad():
            step = policy(samples.latents[:, j], timesteps, samples.prompt_embeddings, samples.next_latents[:, j])
        torch.testing.assert_close(step.log_prob, samples.log_probs[:, j], rtol=1e-5, atol=1e-3)
        reference = policy.reference(
            samples.latents[:, j], timesteps, samples.prompt_embeddings, samples.next_latents[:, j]
        )
        # B = 0 at init: the adapter adds exactly nothing, so the KL to the pretrained policy is 0
        assert gaussian_step_kl(step.mean, reference.mean, step.std_dev_t).abs().max().item() < 1e-10


def test_adapter_is_disabled_outside_the_policy_and_gradients_reach_lora(env, policy):
    unet = env.diffusion.unet
    latents = torch.randn(2, 4, 8, 8)
    timesteps = env.diffusion.timesteps[:1].repeat(2)
    embeddings = env.diffusion.encode_prompts(PROMPTS)
    with torch.no_grad():  # make the adapter non-trivial
        for name, parameter in policy.named_trainable_parameters().items():
            if "lora_B" in name:
                parameter.normal_(0, 0.1)
    step = policy(latents, timesteps, embeddings)
    with torch.no_grad():
        base = unet(latents, timesteps, encoder_hidden_states=embeddings).sample  # anyone else sees the base model
        reference = policy.reference(latents, timesteps, embeddings, step.action)
    assert not torch.allclose(step.mean, reference.mean)  # the adapter does something ...
    # ... and is off again after the call: the pretrained UNet's output
    with policy._adapter(False), torch.no_grad():
        assert torch.equal(base, unet(latents, timesteps, encoder_hidden_states=embeddings).sample)
    step.mean.square().sum().backward()  # the graph was built with the adapter on; the backward runs after
    grads = [p.grad for p in policy.named_trainable_parameters().values()]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_two_policies_share_the_unet_independently(env):
    first = DiffusionPolicy(env, lora_rank=2)
    second = DiffusionPolicy(env, lora_rank=2)
    assert first.adapter_name != second.adapter_name
    first_ids = {id(p) for p in first.named_trainable_parameters().values()}
    assert first_ids.isdisjoint(id(p) for p in second.named_trainable_parameters().values())
    assert set(first.named_trainable_parameters()) == set(second.named_trainable_parameters())  # portable names
    with torch.no_grad():
        for parameter in first.named_trainable_parameters().values():
            parameter.fill_(0.05)
    latents = torch.randn(2, 4, 8, 8)
    timesteps, embeddings = env.diffusion.timesteps[:1].repeat(2), env.diffusion.encode_prompts(PROMPTS)
    action = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        second_step = second(latents, timesteps, embeddings, action)
        reference = second.reference(latents, timesteps, embeddings, action)
        first_step = first(latents, timesteps, embeddings, action)
    torch.testing.assert_close(second_step.mean, reference.mean)  # second's B is still 0
    assert not torch.allclose(first_step.mean, reference.mean)
    first.close()
    second.close()
    assert not getattr(env.diffusion.unet, "peft_config", {})


def test_full_finetune_trains_a_private_copy(env):
    policy = DiffusionPolicy(env, lora_rank=0)
    assert policy.unet is not env.diffusion.unet
    shared = {id(p) for p in env.diffusion.unet.parameters()}
    assert all(id(p) not in shared for p in policy.trainable_parameters())
    assert all(not p.requires_grad for name, p in env.diffusion.unet.named_parameters() if "lora" not in name)
    policy.close()  # no adapter to remove: a no-op


def test_ppo_first_step_ratio_is_one_and_gradient_equals_reinforce(env):
    agent = make_agent("ddpo", env, AgentConfig(batch_size=2, lora_rank=4, seed=3))
    try:
        samples = collect_trajectories(env, agent.policy, PROMPTS, seed=1, generator=torch.Generator().manual_seed(1))
        advantages = torch.tensor([1.5, -0.5])
        j = 1
        batch = StepBatch(
            latents=samples.latents[:, j],
            next_latents=samples.next_latents[:, j],
            timesteps=samples.timesteps[j].repeat(2),
            prompt_embeddings=samples.prompt_embeddings,
            old_log_probs=samples.log_probs[:, j],
            advantages=advantages,
            relabeled=torch.zeros(2, dtype=torch.bool),
        )
        parameters = agent.policy.named_trainable_parameters()

        def gradient(loss_fn) -> dict[str, torch.Tensor]:
            for p in parameters.values():
                p.grad = None
            step = agent.policy(batch.latents, batch.timesteps, batch.prompt_embeddings, batch.next_latents)
            loss_fn(step).backward()
            return {name: p.grad.clone() for name, p in parameters.items()}

        step = agent.policy(batch.latents, batch.timesteps, batch.prompt_embeddings, batch.next_latents)
        ratio = torch.exp(step.log_prob - batch.old_log_probs)
        torch.testing.assert_close(ratio, torch.ones(2), rtol=0, atol=1e-3)
        ppo = gradient(lambda s: agent.step_loss(batch, s).loss)
        reinforce = gradient(lambda s: ReinforceAgent.step_loss(agent, batch, s).loss)
        plain = gradient(lambda s: -(advantages * s.log_prob).mean())  # textbook REINFORCE
        assert any(g.abs().sum() > 0 for g in ppo.values())
        for name in ppo:
            torch.testing.assert_close(ppo[name], reinforce[name], rtol=2e-3, atol=1e-6)
            torch.testing.assert_close(ppo[name], plain[name], rtol=2e-3, atol=1e-6)
        loss, clipfrac, _ = ppo_clipped_loss(step.log_prob, batch.old_log_probs, advantages, 0.2)
        assert clipfrac.item() == 0.0
    finally:
        agent.close()


def test_herd_relabel_keeps_latents_and_changes_only_goal_embedding_reward(tiny_env_settings):
    # shapes-gold is prompt-dependent: the reward of a sentence differs from the full prompt's
    env = dataclasses.replace(tiny_env_settings, reward="shapes-gold", prompts=PROMPTS).make(num_envs=2).unwrapped
    policy = DiffusionPolicy(env, lora_rank=2)
    try:
        samples = collect_trajectories(env, policy, PROMPTS, seed=5, generator=torch.Generator().manual_seed(5))
        sentences = ["A gray background.", "A small blue square at the top."]
        relabeled = relabel(env.diffusion, samples, sentences)
        for name in ("latents", "next_latents", "log_probs", "timesteps", "stochastic", "achieved_goals"):
            assert torch.equal(getattr(relabeled, name), getattr(samples, name)), name
        assert torch.equal(relabeled.final_images, samples.final_images)
        assert relabeled.prompts == sentences and samples.prompts == PROMPTS
        assert env.diffusion.codec.decode_prompts(relabeled.desired_goals) == sentences
        torch.testing.assert_close(relabeled.prompt_embeddings, env.diffusion.encode_prompts(sentences))
        assert not torch.equal(relabeled.prompt_embeddings, samples.prompt_embeddings)
        # the reward of the relabeled goal, through the env's compute_reward, equals the reward model's score
        from diffusion_gym.rewards import make_reward

        torch.testing.assert_close(relabeled.rewards, make_reward("shapes-gold")(samples.final_images, sentences))
        torch.testing.assert_close(samples.rewards, make_reward("shapes-gold")(samples.final_images, PROMPTS))
        assert bool(relabeled.is_relabeled.all()) and not bool(samples.is_relabeled.any())
    finally:
        policy.close()
