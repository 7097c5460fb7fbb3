"""Every agent end to end on the tiny random pipeline: epochs, generation, reproducibility, resume, bad configs."""

from __future__ import annotations

import math

import gymnasium as gym
import pytest
import torch

import diffusion_gym  # noqa: F401  (registers the env)
from agents import AGENT_NAMES, AgentConfig, Generation, make_agent

PROMPTS = ["A cat. A dog on a mat.", "A red box. A blue sky."]
TIMING_KEYS = {"epoch_seconds", "samples_per_second"}


@pytest.fixture(scope="module")
def env(tiny_pipeline):
    return gym.make_vec(
        "DiffusionT2I-v1",
        num_envs=2,
        vectorization_mode="vector_entry_point",
        model=tiny_pipeline,
        reward="jpeg-incompressibility",
        prompts=PROMPTS,
        num_inference_steps=3,
        latent_bound=1e4,
        array_backend="torch",
    )


def tiny_config(**overrides) -> AgentConfig:
    defaults = {"batch_size": 2, "batches_per_epoch": 1, "lora_rank": 2, "loop_k": 2, "seed": 0}
    return AgentConfig(**{**defaults, **overrides})


def run(env, name: str, epochs: int, **overrides):
    agent = make_agent(name, env, tiny_config(**overrides))
    try:
        results = [agent.train_epoch() for _ in range(epochs)]
        parameters = {k: v.detach().clone() for k, v in agent.policy.named_trainable_parameters().items()}
    finally:
        agent.close()
    return results, parameters


@pytest.mark.parametrize(
    "name, overrides",
    [
        ("reinforce", {}),
        ("ddpo", {"inner_epochs": 2, "train_timestep_fraction": 0.5}),
        ("dpok", {}),
        ("loop", {}),
        ("rwr", {"inner_epochs": 2}),
        ("rwr", {"rwr_baseline": True, "rwr_temperature": 0.5}),
        ("herd", {}),
        ("herd", {"herd_base": "rwr"}),
        ("herd", {"herd_base": "loop", "herd_off_policy_correction": False}),
        ("herd", {"herd_base": "dpok", "herd_keep_history": True, "herd_buffer_batches": 2}),
        ("ddpo", {"lora_rank": 0, "per_prompt_stats": False}),
    ],
)
def test_agent_runs_end_to_end(env, name, overrides):
    results, parameters = run(env, name, epochs=2, **overrides)
    for result in results:
        metrics = result.metrics
        uses_ratios = "rwr" not in (name, overrides.get("herd_base"))  # RWR has no importance ratio
        ratio_keys = ("approx_kl", "clipfrac") if uses_ratios else ()
        for key in ("reward_mean", "reward_std", "loss", *ratio_keys, "epoch_seconds", "num_train_samples"):
            assert key in metrics and math.isfinite(metrics[key]), key
        assert result.final_images.shape == (2, 3, 32, 32)
        assert float(result.final_images.min()) >= 0.0 and float(result.final_images.max()) <= 1.0
        assert len(result.prompts) == 2 and set(result.prompts) <= set(PROMPTS)
    if name == "dpok":
        assert {"kl_to_reference", "value_loss"} <= set(results[0].metrics)
    if name == "herd":
        assert "herd_relabeled_reward_mean" not in results[0].metrics  # the buffer starts empty
        assert results[1].metrics["num_train_samples"] > results[0].metrics["num_train_samples"]
        assert math.isfinite(results[1].metrics["herd_relabeled_reward_mean"])
    if overrides.get("lora_rank", 2) > 0:
        trained = [v for k, v in parameters.items() if "lora_B" in k]
        assert any(v.abs().sum() > 0 for v in trained)  # B moved away from its zero init


def test_rwr_weights_are_what_the_update_learns_from(env):
    agent = make_agent("rwr", env, tiny_config(rwr_temperature=0.5))
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
    agent = make_agent("rwr", env, tiny_config(rwr_baseline=True))
    try:
        samples = agent.collect()[0]
        signed = agent.advantages(samples)
        assert abs(signed.mean().item()) < 1e-6
        assert signed.min() < 0 < signed.max()  # two samples of different rewards: one pushed up, one down
    finally:
        agent.close()


def test_seeded_run_is_reproducible(env):
    first, first_parameters = run(env, "herd", epochs=2, inner_epochs=2)
    second, second_parameters = run(env, "herd", epochs=2, inner_epochs=2)
    for a, b in zip(first, second, strict=True):
        assert {k: v for k, v in a.metrics.items() if k not in TIMING_KEYS} == {
            k: v for k, v in b.metrics.items() if k not in TIMING_KEYS
        }
        assert torch.equal(a.final_images, b.final_images)
    assert all(torch.equal(first_parameters[k], second_parameters[k]) for k in first_parameters)
    other, _ = run(env, "herd", epochs=1, seed=1)
    assert other[0].metrics["reward_mean"] != first[0].metrics["reward_mean"]


def _plain(value) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, (str, int)) and _plain(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    return value is None or isinstance(value, (torch.Tensor, str, int, float, bool))


@pytest.mark.parametrize("name, overrides", [("herd", {"herd_base": "dpok"}), ("loop", {})])
def test_state_dict_resumes_exactly(env, name, overrides):
    config = tiny_config(**overrides)
    agent = make_agent(name, env, config)
    try:
        agent.train_epoch()
        agent.train_epoch()  # HERD: the buffer is now full
        state = agent.state_dict()
        assert _plain(state)
        expected = agent.train_epoch().metrics
    finally:
        agent.close()
    resumed = make_agent(name, env, config)
    try:
        resumed.load_state_dict(state)
        got = resumed.train_epoch().metrics
    finally:
        resumed.close()
    assert {k: v for k, v in got.items() if k not in TIMING_KEYS} == {
        k: v for k, v in expected.items() if k not in TIMING_KEYS
    }


def test_generate_pads_chunks_and_is_seeded(env):
    agent = make_agent("ddpo", env, tiny_config())
    try:
        three = agent.generate(["A cat.", "A dog.", "A red box."], seed=7)
        assert isinstance(three, Generation)
        assert three.images.shape == (3, 3, 32, 32) and three.rewards.shape == (3,)
        assert three.gold_scores is None and three.proxy_scores is None
        two = agent.generate(["A cat.", "A dog."], seed=7)
        assert torch.equal(three.images[:2], two.images)  # sample i depends on (seed, i) only
        assert torch.equal(three.rewards[:2], two.rewards)
        with pytest.raises(ValueError, match="at least one prompt"):
            agent.generate([], seed=0)
    finally:
        agent.close()


@pytest.mark.parametrize(
    "name, overrides, match",
    [
        ("ddpo", {"batch_size": 3}, "num_envs"),
        ("loop", {"batch_size": 2, "loop_k": 3}, "multiple of loop_k"),
        ("ddpo", {"learning_rate": -1.0}, "learning_rate"),
        ("ddpo", {"eta": 0.0}, "eta"),
        ("ddpo", {"train_timestep_fraction": 0.0}, "train_timestep_fraction"),
        ("ddpo", {"train_timestep_min": -1}, "train_timestep_min"),
        ("ddpo", {"clip_range": 0.0}, "clip_range"),
        ("ddpo", {"lora_rank": -1}, "lora_rank"),
        ("loop", {"loop_k": 1}, "loop_k"),
        ("rwr", {"rwr_temperature": 0.0}, "rwr_temperature must be > 0"),
        ("herd", {"herd_base": "herd"}, "herd_base"),
        ("herd", {"herd_base": "ppo"}, "herd_base"),
        ("herd", {"herd_buffer_batches": 0}, "herd_buffer_batches"),
        ("sac", {}, "unknown agent"),
    ],
)
def test_bad_config_values_give_clear_errors(env, name, overrides, match):
    with pytest.raises(ValueError, match=match):
        make_agent(name, env, tiny_config(**overrides))


def test_train_timestep_min_trains_only_the_noisiest_steps(env, monkeypatch):
    import agents.common

    trained: list[int] = []
    real_step_batch = agents.common.StepBatch

    def recording_step_batch(**fields):
        trained.extend(fields["timesteps"].tolist())
        return real_step_batch(**fields)

    monkeypatch.setattr(agents.common, "StepBatch", recording_step_batch)
    agent = make_agent("ddpo", env, tiny_config(train_timestep_min=500, train_timestep_fraction=1.0))
    try:
        timesteps = env.unwrapped.diffusion.timesteps.tolist()  # 3 steps, e.g. [999, 666, 333]
        agent.train_epoch()
    finally:
        agent.close()
    expected = {t for t in timesteps if t >= 500}
    assert trained and set(trained) == expected and len(expected) < len(timesteps)


def test_train_timestep_min_above_every_step_is_an_error(env):
    with pytest.raises(ValueError, match="train_timestep_min=10000 leaves no step to train on"):
        make_agent("ddpo", env, tiny_config(train_timestep_min=10_000))


def test_agent_names_are_the_interface():
    assert AGENT_NAMES == ("reinforce", "ddpo", "dpok", "loop", "rwr", "herd")
