"""Every agent end to end on the tiny random pipeline: epochs, generation, reproducibility, resume, bad configs."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

import diffusion_gym  # noqa: F401  (registers the env)
from agents import AGENT_NAMES, AgentConfig, Generation, make_agent

PROMPTS = ["A cat. A dog on a mat.", "A red box. A blue sky."]
TIMING_KEYS = {"epoch_seconds", "samples_per_second"}


@pytest.fixture(scope="module")
def env(tiny_env_settings):
    return dataclasses.replace(tiny_env_settings, prompts=PROMPTS).make(num_envs=2)


def untimed(metrics: dict[str, float]) -> dict[str, float]:
    """The metrics a seeded run reproduces exactly (not the wall-clock ones)."""
    return {k: v for k, v in metrics.items() if k not in TIMING_KEYS}


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
        assert untimed(a.metrics) == untimed(b.metrics)
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
    state, expected = state_and_next_epoch(env, name, config, epochs=2)  # HERD: the buffer is now full
    assert _plain(state)
    assert untimed(next_epoch_from(env, name, config, state)) == untimed(expected)


def test_learning_rate_schedule_follows_the_epochs_done_and_resumes(env):
    # cosine over 2 epochs from 1e-3 to 0.5 x 1e-3: epochs 1, 2, 3 train at 1e-3, 0.75e-3, 0.5e-3, then stay
    config = tiny_config(learning_rate=1e-3, lr_decay_epochs=2, lr_final_fraction=0.5)
    agent = make_agent("ddpo", env, config)
    try:
        rates = [agent.train_epoch().metrics["learning_rate"] for _ in range(2)]
        state = agent.state_dict()
        rates += [agent.train_epoch().metrics["learning_rate"] for _ in range(2)]
    finally:
        agent.close()
    assert rates == pytest.approx([1e-3, 0.75e-3, 0.5e-3, 0.5e-3])
    assert next_epoch_from(env, "ddpo", config, state)["learning_rate"] == pytest.approx(0.5e-3)  # not restarted
    constant, _ = run(env, "ddpo", epochs=2, learning_rate=1e-3)
    assert [result.metrics["learning_rate"] for result in constant] == [1e-3, 1e-3]


def state_and_next_epoch(env, name: str, config: AgentConfig, epochs: int) -> tuple[dict, dict[str, float]]:
    """An agent's state after ``epochs`` epochs, and the metrics of the epoch it then trains."""
    agent = make_agent(name, env, config)
    try:
        for _ in range(epochs):
            agent.train_epoch()
        return agent.state_dict(), agent.train_epoch().metrics
    finally:
        agent.close()


def next_epoch_from(env, name: str, config: AgentConfig, state: dict) -> dict[str, float]:
    """The metrics of the epoch a new agent trains after loading ``state``."""
    agent = make_agent(name, env, config)
    try:
        agent.load_state_dict(state)
        return agent.train_epoch().metrics
    finally:
        agent.close()


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
        ("ddpo", {"lr_decay_epochs": 0}, "lr_decay_epochs must be >= 1"),
        ("ddpo", {"lr_final_fraction": 1.5}, "lr_final_fraction must be in"),
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
    import agents.algorithms.base

    trained: list[int] = []
    real_step_batch = agents.algorithms.base.StepBatch

    def recording_step_batch(**fields):
        trained.extend(fields["timesteps"].tolist())
        return real_step_batch(**fields)

    monkeypatch.setattr(agents.algorithms.base, "StepBatch", recording_step_batch)
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
    assert AGENT_NAMES == ("reinforce", "ddpo", "dpok", "loop", "rwr", "nft", "herd")


# ------------------------------------------------------------------------------------------ HERD composes
def test_herd_is_its_base_agent_with_a_relabeler(env):
    from agents import HindsightRelabeler, agent_class, agent_spec
    from agents.algorithms.loop import LOOPAgent

    agent = make_agent("herd", env, tiny_config(herd_base="loop"))
    try:
        assert type(agent) is LOOPAgent and isinstance(agent.relabeler, HindsightRelabeler)
        name, config = agent_spec(agent)
        assert (name, config.herd_base) == ("herd", "loop")
        plain = make_agent("loop", env, tiny_config())
        try:
            assert plain.relabeler is None and agent_spec(plain)[0] == "loop"
        finally:
            plain.close()
    finally:
        agent.close()
    with pytest.raises(ValueError, match="relabeler composed with another agent"):
        agent_class("herd")


def test_a_herd_checkpoint_of_the_wrapper_layout_still_loads(env):
    """A state saved when HERD was a wrapper agent (``{"agent": "herd", "base": ..., "herd_history": ...}``) loads
    into today's composed agent and continues exactly as the new layout does."""
    from agents.algorithms.base import upgrade_herd_state

    state, expected = state_and_next_epoch(env, "herd", tiny_config(), epochs=1)  # the buffer is full
    base_state = {key: value for key, value in state.items() if key != "relabeler"}
    old = {"agent": "herd", "epoch": 1, "base": base_state, "herd_history": state["relabeler"]["history"]}
    assert upgrade_herd_state(old).keys() == state.keys()
    assert untimed(next_epoch_from(env, "herd", tiny_config(), old)) == untimed(expected)


def test_a_state_with_or_without_relabeling_loads_only_into_the_same_kind(env):
    herd, ddpo = make_agent("herd", env, tiny_config(herd_base="ddpo")), make_agent("ddpo", env, tiny_config())
    try:
        with pytest.raises(ValueError, match="saved with HERD relabeling, and this agent runs without it"):
            ddpo.load_state_dict(herd.state_dict())
        with pytest.raises(ValueError, match="saved without HERD relabeling, and this agent runs with it"):
            herd.load_state_dict(ddpo.state_dict())
    finally:
        herd.close()
        ddpo.close()


# ------------------------------------------------------------------------------------------ wrapped envs
def numpy_env(env):
    """Stock wrappers that return numpy observations and rewards (as a numpy-mode vector env would)."""
    from gymnasium.wrappers.vector import TransformObservation, TransformReward

    observations = TransformObservation(env, lambda obs: {k: v.cpu().numpy() for k, v in obs.items()})
    return TransformReward(observations, lambda rewards: rewards.cpu().numpy())


def test_an_agent_trains_on_wrapped_envs_with_torch_or_numpy_observations(env):
    """Stock vector wrappers around ``gym.make_vec``: the agent drives their reset/step; numpy observations come
    back as numpy actions; the episodes, rewards and training are the same as on the bare env."""
    from gymnasium.vector import VectorWrapper
    from gymnasium.wrappers.vector import TransformAction, TransformReward

    actions: list[type] = []

    def record(action):
        actions.append(type(action))
        return action

    wrapped = {
        "bare": env,
        "torch": TransformReward(VectorWrapper(env), lambda rewards: rewards),
        "numpy": TransformAction(numpy_env(env), record, env.action_space),
    }
    results = {}
    for name, vector_env in wrapped.items():
        results[name] = run(vector_env, "herd", epochs=2)
    assert actions and set(actions) == {np.ndarray}  # numpy in, numpy out
    for name in ("torch", "numpy"):
        (epochs, parameters), (bare_epochs, bare_parameters) = results[name], results["bare"]
        for a, b in zip(epochs, bare_epochs, strict=True):
            assert untimed(a.metrics) == untimed(b.metrics), name
            assert torch.equal(a.final_images, b.final_images)
        assert all(torch.equal(parameters[k], bare_parameters[k]) for k in parameters)


def test_async_reward_refuses_a_wrapped_env(env):
    """async_reward drives env.unwrapped's step_async/step_wait, which Gymnasium's wrappers do not forward."""
    from gymnasium.vector import VectorWrapper

    with pytest.raises(ValueError, match="async_reward drives env.unwrapped through step_async/step_wait"):
        make_agent("ddpo", VectorWrapper(env), tiny_config(async_reward=True, batches_per_epoch=2))
    agent = make_agent("ddpo", VectorWrapper(env), tiny_config(async_reward=True))  # one batch: nothing overlaps
    agent.close()
