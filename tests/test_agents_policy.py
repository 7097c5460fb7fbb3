"""The LoRA diffusion policy on the tiny random pipeline: exact log-probs, zero KL at init, shared-UNet safety,
PPO's first-step gradient equal to REINFORCE's, and HERD's relabeling."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import diffusion_gym  # noqa: F401  (registers the env)
from agents import AgentConfig, make_agent
from agents.algorithms.buffers import StepBatch, Trajectories
from agents.algorithms.herd import relabel
from agents.algorithms.math import gaussian_step_kl, ppo_clipped_loss
from agents.algorithms.policy import DiffusionPolicy
from agents.algorithms.reinforce import ReinforceAgent
from agents.algorithms.rollout import collect_trajectories
from diffusion_gym.sampling import PolicyStep

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


# ------------------------------------------------------------------------------------------ KL to the base policy
class OffsetPolicy:
    """A toy pair of policies on ``(1, 2, 2)`` latents: at step ``j`` the policy's mean is the reference's plus
    ``offsets[j]`` (one per trajectory), both with the std ``stds[j]``; ``stochastic`` flags the steps with a
    density. The rest of :class:`DiffusionPolicy` is not needed by :meth:`DiffusionPolicy.kl_to_reference`."""

    def __init__(self, timesteps: list[int], offsets: torch.Tensor, stds: list[float], stochastic: list[bool]):
        self.index = {t: j for j, t in enumerate(timesteps)}
        self.offsets, self.stds, self.stochastic = offsets, stds, torch.tensor(stochastic)

    def stochastic_steps(self) -> torch.Tensor:
        return self.stochastic

    def reference(self, latents, timesteps, prompt_embeddings, action) -> PolicyStep:
        j = self.index[int(timesteps[0])]
        std = torch.full((len(latents),), self.stds[j])  # (B,)
        return PolicyStep(action, torch.zeros(len(latents)), latents.clone(), std, std > 0)

    def __call__(self, latents, timesteps, prompt_embeddings, action) -> PolicyStep:
        step = self.reference(latents, timesteps, prompt_embeddings, action)
        j = self.index[int(timesteps[0])]
        return step._replace(mean=step.mean + self.offsets[j].view(-1, 1, 1, 1))  # (B, 1, 2, 2)


def toy_trajectories(timesteps: list[int], stochastic: list[bool]) -> Trajectories:
    """Two trajectories of ``(1, 2, 2)`` latents over ``timesteps``; only the states and the schedule matter."""
    batch, steps = 2, len(timesteps)
    latents = torch.randn(batch, steps, 1, 2, 2)  # (B, T, C, H, W)
    return Trajectories(
        latents=latents,
        next_latents=torch.randn(batch, steps, 1, 2, 2),
        timesteps=torch.tensor(timesteps),
        log_probs=torch.zeros(batch, steps),
        stochastic=torch.tensor(stochastic),
        prompt_embeddings=torch.zeros(batch, 1, 3),
        prompts=["a", "b"],
        rewards=torch.zeros(batch),
        achieved_goals=torch.zeros(batch, 1),
        desired_goals=torch.zeros(batch, 1),
    )


def test_the_kl_to_the_base_sums_the_stochastic_steps_by_hand():
    """Three steps, the middle one deterministic. Per step, KL = ||mu_theta - mu_pre||^2 / (2 sigma_t^2), summed over
    the 4 latent dims: step 0 (sigma 0.5), offsets (1, 0.5): 4 * 1 / 0.5 = 8 and 4 * 0.25 / 0.5 = 2; step 2
    (sigma 2), offsets (2, 2): 4 * 4 / 8 = 2 each. The deterministic step (offset 5, sigma 0) has no density and
    counts for nothing. Totals: (10, 4) nats."""
    timesteps, stochastic = [900, 500, 100], [True, False, True]
    offsets = torch.tensor([[1.0, 0.5], [5.0, 5.0], [2.0, 2.0]])  # (T, B)
    toy = OffsetPolicy(timesteps, offsets, [0.5, 0.0, 2.0], stochastic)
    kl = DiffusionPolicy.kl_to_reference(toy, toy_trajectories(timesteps, stochastic))
    torch.testing.assert_close(kl, torch.tensor([10.0, 4.0]))
    with pytest.raises(ValueError, match="stochastic steps"):  # recorded with another schedule
        DiffusionPolicy.kl_to_reference(toy, toy_trajectories(timesteps, [True, True, True]))


def test_generate_estimates_the_kl_to_the_base_without_touching_the_samples_or_any_rng(env):
    agent = make_agent("ddpo", env, AgentConfig(batch_size=2, lora_rank=4, seed=3))
    try:
        prompts = [*PROMPTS, PROMPTS[0]]  # three: the last chunk is padded
        plain = agent.generate(prompts, seed=5)
        assert plain.kl_to_base is None  # not asked: not computed
        rngs = (agent.generator.get_state(), agent.rng.bit_generator.state, torch.get_rng_state())
        at_init = agent.generate(prompts, seed=5, kl_to_base=True)
        assert torch.equal(at_init.images, plain.images) and torch.equal(at_init.rewards, plain.rewards)
        assert torch.equal(agent.generator.get_state(), rngs[0]) and agent.rng.bit_generator.state == rngs[1]
        assert torch.equal(torch.get_rng_state(), rngs[2])
        # LoRA's B is 0 at init: the policy is exactly the pretrained one, every step's means are equal
        assert torch.equal(at_init.kl_to_base, torch.zeros(3))
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():  # move the adapter off the pretrained model
            for name, parameter in agent.policy.named_trainable_parameters().items():
                if "lora_B" in name:
                    parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
        moved = agent.generate(prompts, seed=5, kl_to_base=True)
        assert moved.kl_to_base.shape == (3,) and bool((moved.kl_to_base > 0).all())
        assert bool(torch.isfinite(moved.kl_to_base).all())
    finally:
        agent.close()
