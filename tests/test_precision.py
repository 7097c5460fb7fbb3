"""Mixed precision and gradient checkpointing on the tiny random pipeline.

* ``dtype`` bfloat16 (on the CPU): the frozen UNet, VAE and text encoder are bfloat16, the LoRA weights, their
  gradients, the optimiser and the log-probs float32; a DDPO epoch trains.
* float16: a loss scaler (``torch.amp.GradScaler``) skips the optimiser steps whose gradients overflowed; its
  state is checkpointed. The CPU tests cover the logic; the ``gpu`` test runs a float16 epoch on CUDA.
* gradient checkpointing gives the gradients of the plain backward pass, really recomputes the blocks (with the
  LoRA adapter on, although the recomputation runs after the policy's forward pass), and leaves the shared UNet
  as it found it.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

import diffusion_gym  # noqa: F401  (registers the env)
from agents import AgentConfig, EnvConfig, make_agent
from agents.algorithms.math import ppo_clipped_loss
from agents.algorithms.policy import DiffusionPolicy
from agents.algorithms.rollout import collect_trajectories
from agents.checkpoint import load_checkpoint, save_checkpoint

PROMPTS = ["A cat. A dog on a mat.", "A red box. A blue sky."]
ADVANTAGES = torch.tensor([1.0, -0.5])


def make_env(settings: EnvConfig, dtype: str, device: str = "cpu"):
    return dataclasses.replace(settings, prompts=PROMPTS, dtype=dtype, device=device).make(num_envs=2)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models: one thread is fastest, above all on a CPU shared with other jobs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def envs(tiny_env_settings):
    made = {dtype: make_env(tiny_env_settings, dtype) for dtype in ("float32", "bfloat16", "float16")}
    yield made
    for env in made.values():
        env.close()


def tiny_config(**overrides) -> AgentConfig:
    defaults = {"batch_size": 2, "batches_per_epoch": 1, "lora_rank": 2, "seed": 0}
    return AgentConfig(**{**defaults, **overrides})


def frozen_parameters(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for name, p in module.named_parameters() if "lora_" not in name]


def test_bfloat16_keeps_lora_optimizer_and_log_probs_in_float32(envs):
    env = envs["bfloat16"].unwrapped
    model = env.diffusion.model
    agent = make_agent("ddpo", env, tiny_config())
    try:
        policy = agent.policy
        assert {p.dtype for p in frozen_parameters(model.unet)} == {torch.bfloat16}
        assert {p.dtype for p in model.vae.parameters()} | {p.dtype for p in model.text_encoder.parameters()} == {
            torch.bfloat16
        }
        trainable = policy.named_trainable_parameters()
        assert trainable and {p.dtype for p in trainable.values()} == {torch.float32}
        assert all(p.dtype == torch.float32 for group in agent.optimizer.param_groups for p in group["params"])
        assert not agent.scaler.is_enabled()  # bfloat16 has float32's range

        samples = collect_trajectories(env, policy, PROMPTS, seed=0, generator=torch.Generator().manual_seed(0))
        assert samples.latents.dtype == torch.float32 and samples.next_latents.dtype == torch.float32
        assert samples.log_probs.dtype == torch.float32 and bool(torch.isfinite(samples.log_probs).all())
        step = policy(
            samples.latents[:, 1], samples.timesteps[[1, 1]], samples.prompt_embeddings, samples.next_latents[:, 1]
        )
        assert step.log_prob.dtype == torch.float32 and step.mean.dtype == torch.float32
        torch.testing.assert_close(step.log_prob.detach(), samples.log_probs[:, 1])  # same path, same numbers
        loss, _, _ = ppo_clipped_loss(step.log_prob, samples.log_probs[:, 1], ADVANTAGES, 0.2)
        loss.backward()
        grads = [p.grad for p in trainable.values()]
        assert all(g is not None and g.dtype == torch.float32 and bool(torch.isfinite(g).all()) for g in grads)
        assert any(float(g.abs().sum()) > 0 for g in grads)  # lora_B's gradients (A's are 0 while B = 0)
        agent.optimizer.zero_grad(set_to_none=True)

        before = {name: p.detach().clone() for name, p in trainable.items()}
        metrics = agent.train_epoch().metrics
        assert all(math.isfinite(metrics[key]) for key in ("reward_mean", "loss", "approx_kl"))
        after = policy.named_trainable_parameters()
        assert {p.dtype for p in after.values()} == {torch.float32}
        assert all(bool(torch.isfinite(p).all()) for p in after.values())
        assert any(not torch.equal(before[name], p) for name, p in after.items() if "lora_B" in name)
        assert {p.dtype for p in frozen_parameters(model.unet)} == {torch.bfloat16}  # the base stays frozen, bf16
        assert all(not p.requires_grad for p in frozen_parameters(model.unet))
        state = agent.state_dict()
        assert {t.dtype for t in state["policy"].values()} == {torch.float32} and state["scaler"] == {}
    finally:
        agent.close()


def test_bfloat16_full_fine_tune_trains_a_float32_copy(envs):
    env = envs["bfloat16"].unwrapped
    policy = DiffusionPolicy(env, lora_rank=0)
    samples = collect_trajectories(env, policy, PROMPTS, seed=0, generator=torch.Generator().manual_seed(0))
    assert policy.unet is not env.diffusion.unet and policy.unet.dtype == torch.float32
    assert env.diffusion.unet.dtype == torch.bfloat16  # the reference
    step = policy(
        samples.latents[:, 1], samples.timesteps[[1, 1]], samples.prompt_embeddings, samples.next_latents[:, 1]
    )
    torch.testing.assert_close(step.log_prob.detach(), samples.log_probs[:, 1])
    ppo_clipped_loss(step.log_prob, samples.log_probs[:, 1], ADVANTAGES, 0.2)[0].backward()
    grads = [p.grad for p in policy.trainable_parameters() if p.grad is not None]
    assert grads and all(g.dtype == torch.float32 and bool(torch.isfinite(g).all()) for g in grads)


def test_float16_loss_scaler_skips_overflowing_steps_and_is_checkpointed(envs, tmp_path):
    """float16 on the CPU (slow there, but it runs): the scaler's logic, not float16 speed."""
    env = envs["float16"].unwrapped
    config = tiny_config(inner_epochs=1)
    agent = make_agent("ddpo", env, config)
    resumed = None
    try:
        assert agent.scaler.is_enabled() and agent.scaler.get_scale() == 1.0
        assert {p.dtype for p in agent.parameters} == {torch.float32}
        metrics = agent.train_epoch().metrics  # at scale 1 the summed-log-prob gradients fit float16
        assert math.isfinite(metrics["loss"]) and agent.scaler.get_scale() == 1.0
        assert any(
            float(p.detach().abs().sum()) > 0
            for n, p in agent.policy.named_trainable_parameters().items()
            if "lora_B" in n
        )

        state = agent.scaler.state_dict()
        agent.scaler.load_state_dict({**state, "scale": 2.0**16})  # far too large: the gradients overflow
        before = {n: p.detach().clone() for n, p in agent.policy.named_trainable_parameters().items()}
        samples = collect_trajectories(env, agent.policy, PROMPTS, seed=1, generator=torch.Generator().manual_seed(1))
        agent.update(samples, ADVANTAGES)  # one optimiser step, skipped
        after = agent.policy.named_trainable_parameters()
        assert all(torch.equal(before[n], p) for n, p in after.items())  # untouched, no inf/NaN written
        assert agent.scaler.get_scale() == 2.0**15

        path = save_checkpoint(tmp_path, "epoch-0001", agent.state_dict(), keep_last=1)
        loaded = load_checkpoint(path)
        assert loaded["scaler"]["scale"] == 2.0**15
        resumed = make_agent("ddpo", env, config)
        resumed.load_state_dict(loaded)
        assert resumed.scaler.get_scale() == 2.0**15
        assert resumed.scaler.state_dict() == agent.scaler.state_dict()
    finally:
        agent.close()
        if resumed is not None:
            resumed.close()


# ---------------------------------------------------------------------------------------------- checkpointing
def one_step_gradients(policy: DiffusionPolicy, samples, j: int = 1) -> tuple[torch.Tensor, list[torch.Tensor]]:
    parameters = policy.trainable_parameters()
    step = policy(
        samples.latents[:, j], samples.timesteps[[j, j]], samples.prompt_embeddings, samples.next_latents[:, j]
    )
    loss, _, _ = ppo_clipped_loss(step.log_prob, samples.log_probs[:, j] + 0.1, ADVANTAGES, 0.2)
    loss.backward()
    grads = [p.grad.clone() for p in parameters]
    for p in parameters:
        p.grad = None
    return loss.detach(), grads


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_gradient_checkpointing_gives_the_same_gradients_and_recomputes(envs, dtype):
    env = envs[dtype].unwrapped
    unet = env.diffusion.unet
    with torch.random.fork_rng():
        torch.manual_seed(0)
        policy = DiffusionPolicy(env, lora_rank=2)
    try:
        with torch.no_grad():  # B != 0, so that A gets gradients too
            generator = torch.Generator().manual_seed(1)
            for name, p in policy.named_trainable_parameters().items():
                if "lora_B" in name:
                    p.copy_(0.05 * torch.randn(p.shape, generator=generator))
        samples = collect_trajectories(env, policy, PROMPTS, seed=0, generator=torch.Generator().manual_seed(0))

        # blocks diffusers checkpoints, both on the gradient path (one without any is never recomputed): a resnet
        # after the first LoRA layers, and a transformer block that holds LoRA layers. Pre-hooks: the recomputation
        # stops early, once it has what backward() needs, so the blocks do not always return
        blocks = {
            "resnet": unet.mid_block.resnets[1],
            "transformer": unet.down_blocks[0].attentions[0].transformer_blocks[0],
        }
        calls = dict.fromkeys(blocks, 0)
        flags: list[bool] = []
        hooks = [
            block.register_forward_pre_hook(lambda *_, key=key: calls.__setitem__(key, calls[key] + 1))
            for key, block in blocks.items()
        ]
        hooks.append(unet.register_forward_hook(lambda *_: flags.append(unet.is_gradient_checkpointing)))
        try:
            plain_loss, plain = one_step_gradients(policy, samples)
            assert calls == {"resnet": 1, "transformer": 1} and flags == [False]
            policy.gradient_checkpointing = True
            calls.update(dict.fromkeys(blocks, 0))
            loss, checkpointed = one_step_gradients(policy, samples)
            assert calls == {"resnet": 2, "transformer": 2}  # forward, then recomputed in backward()
            assert flags == [False, True]
            assert not unet.is_gradient_checkpointing  # restored: the shared UNet is as it was
            with torch.no_grad():  # sampling does not checkpoint
                policy(samples.latents[:, 0], samples.timesteps[[0, 0]], samples.prompt_embeddings)
            assert flags == [False, True, False]
        finally:
            for hook in hooks:
                hook.remove()
        torch.testing.assert_close(loss, plain_loss, rtol=0, atol=0)
        assert any(float(g.abs().sum()) > 0 for g in plain)
        for a, b in zip(checkpointed, plain, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    finally:
        policy.close()


def test_gradient_checkpointing_config_trains_like_without(envs):
    env = envs["float32"]
    trained = []
    for checkpointing in (False, True):
        agent = make_agent("ddpo", env, tiny_config(gradient_checkpointing=checkpointing))
        try:
            assert agent.policy.gradient_checkpointing is checkpointing
            metrics = agent.train_epoch().metrics
            trained.append(
                (metrics, {n: p.detach().clone() for n, p in agent.policy.named_trainable_parameters().items()})
            )
        finally:
            agent.close()
    (plain_metrics, plain), (metrics, parameters) = trained
    for key in ("reward_mean", "loss", "approx_kl"):
        assert metrics[key] == pytest.approx(plain_metrics[key], rel=1e-5, abs=1e-6)
    for name, value in parameters.items():
        torch.testing.assert_close(value, plain[name], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------- CUDA
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_float16_ddpo_epoch_on_cuda(tiny_env_settings):
    env = make_env(tiny_env_settings, "float16", device="cuda")
    agent = make_agent("ddpo", env, tiny_config(gradient_checkpointing=True))
    try:
        assert {p.dtype for p in frozen_parameters(env.unwrapped.diffusion.unet)} == {torch.float16}
        assert {p.dtype for p in agent.parameters} == {torch.float32} and agent.scaler.is_enabled()
        for _ in range(2):
            metrics = agent.train_epoch().metrics
            assert all(math.isfinite(metrics[key]) for key in ("reward_mean", "loss", "approx_kl"))
        parameters = agent.policy.named_trainable_parameters()
        assert all(p.dtype == torch.float32 and bool(torch.isfinite(p).all()) for p in parameters.values())
        assert any(float(p.abs().sum()) > 0 for n, p in parameters.items() if "lora_B" in n)
        assert agent.state_dict()["scaler"]["scale"] > 0
    finally:
        agent.close()
        env.close()
