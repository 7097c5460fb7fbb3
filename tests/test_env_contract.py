"""The Gymnasium / SB3 contract of DiffusionT2I-v1, on a tiny random pipeline, on the CPU."""

from __future__ import annotations

import copy
import dataclasses
import inspect
import pickle
import subprocess
import sys
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.error import ResetNeeded

import diffusion_gym
from diffusion_gym.core import EnvConfig
from diffusion_gym.env import DiffusionT2IEnv
from diffusion_gym.models import UnknownModelError
from diffusion_gym.rewards import UnknownRewardError
from diffusion_gym.sampling import PretrainedPolicy
from diffusion_gym.vector_env import DiffusionT2IVectorEnv

PROMPTS = ["A red circle on the left. A blue square on the right.", "A green triangle. A gray background."]
STEPS = 3


def make_env(tiny_pipeline: str, **overrides) -> gym.Env:
    kwargs = dict(model=tiny_pipeline, reward="jpeg-incompressibility", prompts=PROMPTS, num_inference_steps=STEPS)
    return gym.make(diffusion_gym.ENV_ID, **{**kwargs, **overrides})


def make_vec(tiny_pipeline: str, num_envs: int, **overrides):
    kwargs = dict(model=tiny_pipeline, reward="jpeg-incompressibility", prompts=PROMPTS, num_inference_steps=STEPS)
    return gym.make_vec(
        diffusion_gym.ENV_ID, num_envs=num_envs, vectorization_mode="vector_entry_point", **{**kwargs, **overrides}
    )


def rollout(env: gym.Env, seed: int, actions: list[np.ndarray]) -> tuple[list[dict], list[float], dict]:
    observation, info = env.reset(seed=seed)
    observations, rewards = [observation], []
    for action in actions:
        observation, reward, terminated, truncated, info = env.step(action)
        observations.append(observation)
        rewards.append(reward)
    assert terminated and not truncated
    return observations, rewards, info


def fixed_actions(shape: tuple[int, ...], seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape).astype(np.float32) for _ in range(STEPS)]


# ------------------------------------------------------------------------------------------ registration
def test_registered_with_both_entry_points() -> None:
    spec = gym.spec(diffusion_gym.ENV_ID)
    assert spec.entry_point == "diffusion_gym.env:DiffusionT2IEnv"
    assert spec.vector_entry_point == "diffusion_gym.vector_env:DiffusionT2IVectorEnv"


def test_module_prefixed_id_works_without_import(tiny_pipeline: str) -> None:
    code = (
        "import gymnasium as gym\n"
        f"env = gym.make('diffusion_gym:DiffusionT2I-v1', model={tiny_pipeline!r}, "
        "reward='jpeg-compressibility', prompts=['a cat'], num_inference_steps=2)\n"
        "obs, info = env.reset(seed=0)\n"
        "print(sorted(obs))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "achieved_goal" in result.stdout


# ------------------------------------------------------------------------------------------ checkers
# Warnings the checkers may raise on this env: message fragment -> why it is allowed.
ALLOWED_WARNINGS = {
    "symmetric and normalized Box action space": (
        "SB3 recommends actions in [-1, 1]; the action here *is* the next latent, whose natural scale is "
        "about N(0, 1), and latent_bound is a sanity limit, not a normalisation"
    ),
    # SB3 takes any 3-D Box for an image; the latent is a float feature map (its CombinedExtractor flattens it).
    "observation latent is an image but its `dtype`": "the latent is not an image",
    "observation space latent is an image but the upper and lower bounds": "the latent is not an image",
    "minimal resolution for an image is 36x36": "the latent is not an image",
    "observation prompt_embedding has an unconventional shape": "(S, D) hidden states, as the UNet consumes them",
    "minimum value is -infinity": "prompt_embedding holds unbounded text-encoder hidden states",
    "maximum value is infinity": "prompt_embedding holds unbounded text-encoder hidden states",
}


def assert_only_allowed(caught: list[warnings.WarningMessage]) -> None:
    unexpected = [str(w.message) for w in caught if not any(allowed in str(w.message) for allowed in ALLOWED_WARNINGS)]
    assert not unexpected, unexpected


def test_gymnasium_check_env(tiny_pipeline: str) -> None:
    from gymnasium.utils.env_checker import check_env

    env = make_env(tiny_pipeline)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env.unwrapped, skip_render_check=True)
    assert_only_allowed(caught)


def test_passive_checker_through_make(tiny_pipeline: str) -> None:
    env = make_env(tiny_pipeline, render_mode="rgb_array", disable_env_checker=False)  # gym.make adds none by default
    assert isinstance(env, gym.wrappers.PassiveEnvChecker)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        env.reset(seed=0)
        for _ in range(STEPS):
            env.step(env.action_space.sample())
        frame = env.render()
    assert_only_allowed(caught)
    assert frame.shape == (32, 32, 3) and frame.dtype == np.uint8


def test_sb3_check_env_including_goal_env_checks(tiny_pipeline: str) -> None:
    from stable_baselines3.common.env_checker import check_env

    env = make_env(tiny_pipeline)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env.unwrapped, warn=True, skip_render_check=True)
    assert_only_allowed(caught)


def test_sac_with_her_replay_buffer_smoke(tiny_pipeline: str) -> None:
    from stable_baselines3 import SAC, HerReplayBuffer

    env = make_env(tiny_pipeline, num_inference_steps=2)
    model = SAC(
        "MultiInputPolicy",
        env,
        replay_buffer_class=HerReplayBuffer,
        replay_buffer_kwargs=dict(n_sampled_goal=2, goal_selection_strategy="future"),
        buffer_size=400,
        learning_starts=20,
        batch_size=16,
        policy_kwargs=dict(net_arch=[32, 32]),
        seed=0,
        device="cpu",
    )
    model.learn(total_timesteps=200)
    assert model.replay_buffer.size() > 0


# ------------------------------------------------------------------------------------------ the MDP
def test_reward_is_terminal_and_matches_compute_reward(tiny_pipeline: str) -> None:
    env = make_env(tiny_pipeline)
    observations, rewards, info = rollout(env, seed=0, actions=fixed_actions(env.action_space.shape))
    assert rewards[:-1] == [0.0] * (STEPS - 1)
    assert rewards[-1] > 0  # a JPEG file has a positive size
    for observation, reward in zip(observations[1:], rewards, strict=True):
        recomputed = env.unwrapped.compute_reward(observation["achieved_goal"], observation["desired_goal"], {})
        assert recomputed == reward
    # vectorised over a batch, including a not-yet-generated goal (reward 0)
    achieved = np.stack([observations[-1]["achieved_goal"], observations[1]["achieved_goal"]])
    desired = np.stack([observations[-1]["desired_goal"], observations[1]["desired_goal"]])
    batch = env.unwrapped.compute_reward(achieved, desired, {})
    assert batch.shape == (2,) and batch[0] == rewards[-1] and batch[1] == 0.0
    assert info["final_image"].shape == (32, 32, 3)


def test_timesteps_follow_the_ddim_schedule(tiny_pipeline: str) -> None:
    env = make_env(tiny_pipeline, num_inference_steps=4)
    observation, _ = env.reset(seed=0)
    seen = [int(observation["timestep"][0])]
    for _ in range(3):
        observation, *_ = env.step(np.zeros(env.action_space.shape, np.float32))
        seen.append(int(observation["timestep"][0]))
    assert seen == env.unwrapped.mdp.timesteps.tolist() == [751, 501, 251, 1]


def test_goal_is_lossless_and_relabelable(tiny_pipeline: str) -> None:
    env = make_env(tiny_pipeline)
    observation, info = env.reset(seed=3, options={"prompt": "Ünïcode prompt. With Two Sentences."})
    codec = env.unwrapped.mdp.codec
    assert codec.decode_prompts(observation["desired_goal"][None]) == ["Ünïcode prompt. With Two Sentences."]
    relabeled = codec.relabel(torch.as_tensor(observation["desired_goal"][None]), ["With Two Sentences."])
    assert codec.decode_prompts(relabeled) == ["With Two Sentences."]


def test_same_seed_is_bitwise_identical_and_seeds_differ(tiny_pipeline: str) -> None:
    env = make_env(tiny_pipeline)
    actions = fixed_actions(env.action_space.shape)
    first, rewards_first, _ = rollout(env, seed=7, actions=actions)
    second, rewards_second, _ = rollout(env, seed=7, actions=actions)
    for a, b in zip(first, second, strict=True):
        for key in a:
            assert np.array_equal(a[key], b[key]), key
    assert rewards_first == rewards_second
    other, _, _ = rollout(env, seed=8, actions=actions)
    assert not np.array_equal(first[0]["latent"], other[0]["latent"])


def test_vector_env_agrees_with_single_envs(tiny_pipeline: str) -> None:
    num_envs, seed = 3, 11
    vector_env = make_vec(tiny_pipeline, num_envs)
    assert isinstance(vector_env, gym.vector.VectorEnv)
    assert vector_env.metadata["autoreset_mode"] == gym.vector.AutoresetMode.NEXT_STEP
    single = make_env(tiny_pipeline)
    per_env_actions = [fixed_actions(single.action_space.shape, seed=i) for i in range(num_envs)]

    observation, info = vector_env.reset(seed=seed)
    vector_initial = observation["latent"].copy()
    for step in range(STEPS):
        batch = np.stack([per_env_actions[i][step] for i in range(num_envs)])  # (N, C, H, W)
        observation, vector_rewards, terminated, _, vector_info = vector_env.step(batch)
    assert terminated.all()
    for i in range(num_envs):
        observations, rewards, _ = rollout(single, seed=seed + i, actions=per_env_actions[i])
        assert np.array_equal(vector_initial[i], observations[0]["latent"])
        assert info["prompt"][i] == single.unwrapped.mdp.prompts[0]
        assert vector_rewards[i] == pytest.approx(rewards[-1], rel=1e-6)
    # NEXT_STEP autoreset: the step after termination resets and gives reward 0
    observation, rewards, terminated, _, _ = vector_env.step(batch)
    assert np.all(rewards == 0) and not terminated.any()
    assert int(observation["timestep"][0, 0]) == int(vector_env.unwrapped.diffusion.timesteps[0])


def test_vector_env_returns_tensors_on_device_and_batches_calls(tiny_pipeline: str, monkeypatch) -> None:
    vector_env = make_vec(tiny_pipeline, 4, latent_bound=1e4, array_backend="torch").unwrapped  # a random UNet drifts
    model = vector_env.diffusion.model
    calls = {"encode": 0, "decode": 0}
    original_encode, original_decode = model.encode_prompts, model.decode_latents

    def counting_encode(prompts, *args):
        calls["encode"] += 1
        return original_encode(prompts, *args)

    def counting_decode(latents):
        calls["decode"] += 1
        return original_decode(latents)

    monkeypatch.setattr(model, "encode_prompts", counting_encode)
    monkeypatch.setattr(model, "decode_latents", counting_decode)
    observation, _ = vector_env.reset(seed=0)
    assert all(isinstance(value, torch.Tensor) and value.device == vector_env.device for value in observation.values())
    policy = PretrainedPolicy(vector_env, guidance_scale=1.0)
    for _ in range(STEPS):
        observation, rewards, *_ = vector_env.step(policy(observation).action)
    assert calls == {"encode": 2, "decode": 1}  # reset + the policy's negative prompt; one batched decode
    assert rewards.shape == (4,)


def test_spec_copies_do_not_copy_weights(tiny_pipeline: str) -> None:
    env = make_env(tiny_pipeline)
    assert len(pickle.dumps(env.spec)) < 10_000
    copied = copy.deepcopy(env.spec)
    assert copied.kwargs["model"] == tiny_pipeline
    # models are cached per process: a second env shares the first one's weights
    assert make_env(tiny_pipeline).unwrapped.mdp.model.unet is env.unwrapped.mdp.model.unet


# ------------------------------------------------------------------------------------------ bad input
@pytest.fixture()
def running_env(tiny_pipeline: str):
    env = make_env(tiny_pipeline).unwrapped
    env.reset(seed=0)
    return env


def test_wrong_action_shape(running_env) -> None:
    with pytest.raises(ValueError, match=r"action has shape \(4, 4\)"):
        running_env.step(np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match="expected"):
        running_env.step(np.zeros((4, 8, 9), np.float32))


def test_wrong_action_dtype(running_env) -> None:
    with pytest.raises(TypeError, match="floating-point dtype"):
        running_env.step(np.zeros((4, 8, 8), np.int64))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_action(running_env, bad: float) -> None:
    action = np.zeros((4, 8, 8), np.float32)
    action[1, 2, 3] = bad
    with pytest.raises(ValueError, match="NaN or inf"):
        running_env.step(action)


def test_out_of_bound_action(running_env) -> None:
    with pytest.raises(ValueError, match="latent bounds"):
        running_env.step(np.full((4, 8, 8), 51.0, np.float32))


def test_step_before_reset_and_after_termination(tiny_pipeline: str) -> None:
    env = make_env(tiny_pipeline).unwrapped
    with pytest.raises(ResetNeeded, match="before reset"):
        env.step(np.zeros((4, 8, 8), np.float32))
    env.reset(seed=0)
    for _ in range(STEPS):
        env.step(np.zeros((4, 8, 8), np.float32))
    with pytest.raises(ResetNeeded, match="terminated"):
        env.step(np.zeros((4, 8, 8), np.float32))
    vector_env = make_vec(tiny_pipeline, 2).unwrapped
    with pytest.raises(ResetNeeded):
        vector_env.step(torch.zeros(2, 4, 8, 8))


def test_unknown_model_and_reward_names(tiny_pipeline: str) -> None:
    with pytest.raises(UnknownModelError, match="unknown model 'no-such-model'"):
        make_env(tiny_pipeline, model="no-such-model")
    with pytest.raises(UnknownRewardError, match="unknown reward 'no-such-reward'"):
        make_env(tiny_pipeline, reward="no-such-reward")
    with pytest.raises(UnknownRewardError, match="unknown reward"):
        make_env(tiny_pipeline, reward="jpeg-compressibility:1,nope:2")


def test_missing_model_folder(tiny_pipeline: str, tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        make_env(tiny_pipeline, model=str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        make_env(tiny_pipeline, model=str(tmp_path))


def test_empty_prompt_is_an_error(tiny_pipeline: str) -> None:
    with pytest.raises(ValueError, match="empty prompt"):
        make_env(tiny_pipeline, prompts=[""])
    env = make_env(tiny_pipeline).unwrapped
    with pytest.raises(ValueError, match="empty prompt"):
        env.reset(seed=0, options={"prompt": "   "})


def test_prompt_longer_than_the_tokenizer_limit_is_an_error(tiny_pipeline: str) -> None:
    long_prompt = " ".join(["word"] * 100)
    with pytest.raises(ValueError, match="at most 77"):
        make_env(tiny_pipeline, prompts=[long_prompt])


def test_prompt_longer_than_the_goal_capacity_is_an_error(tiny_pipeline: str) -> None:
    with pytest.raises(ValueError, match="max_prompt_bytes"):
        make_env(tiny_pipeline, prompts=["a cat"], max_prompt_bytes=3)


def test_bad_render_mode_and_steps(tiny_pipeline: str) -> None:
    with pytest.raises(ValueError, match="render_mode"):
        make_env(tiny_pipeline, render_mode="ansi")
    with pytest.raises(ValueError, match="num_inference_steps"):
        make_env(tiny_pipeline, num_inference_steps=-1)


@pytest.mark.parametrize("env_class", [DiffusionT2IEnv, DiffusionT2IVectorEnv])
def test_the_env_arguments_are_the_config_fields_with_their_defaults(env_class) -> None:
    """``EnvConfig.from_arguments(locals())`` builds the config: each field is an argument, with the same default."""
    parameters = inspect.signature(env_class).parameters
    for field in dataclasses.fields(EnvConfig):
        assert field.name in parameters, f"{env_class.__name__} has no argument {field.name}"
        assert parameters[field.name].default == field.default, field.name
    assert EnvConfig.from_arguments({**dataclasses.asdict(EnvConfig()), "render_mode": None}) == EnvConfig()


def test_single_window_encoding_is_stable_diffusions_own(tiny_pipeline: str) -> None:
    model = make_env(tiny_pipeline).unwrapped.mdp.model
    tokens = model.tokenizer(PROMPTS, padding="max_length", max_length=model.max_prompt_tokens, return_tensors="pt")
    with torch.no_grad():
        expected = model.text_encoder(tokens.input_ids)[0]
    torch.testing.assert_close(model.encode_prompts(PROMPTS), expected)


def test_long_prompts_are_encoded_in_windows_when_asked(tiny_pipeline: str) -> None:
    long_prompt = " ".join(["word"] * 100) + "."
    env = make_vec(tiny_pipeline, 2, prompts=[long_prompt, "A short one."], max_prompt_chunks=2).unwrapped
    observation, _ = env.reset(seed=0)
    assert observation["prompt_embedding"].shape == (2, 154, 32)
    assert env.single_observation_space["prompt_embedding"].shape == (154, 32)
    assert env.diffusion.unconditional_embedding.shape == (1, 154, 32)
    # a short prompt's second window is the empty window
    short = env.diffusion.encode_prompts(["A short one."])
    torch.testing.assert_close(short[:, 77:], env.diffusion.unconditional_embedding[:, 77:])
    with pytest.raises(ValueError, match="max_prompt_chunks=2"):
        env.diffusion.encode_prompts([" ".join(["word"] * 200)])


@pytest.mark.parametrize("weight", ["nan", "inf", "-inf", "abc"])
def test_bad_reward_weights(tiny_pipeline: str, weight: str) -> None:
    with pytest.raises(ValueError, match="weight"):
        make_env(tiny_pipeline, reward=f"jpeg-compressibility:{weight}")


def test_v1_is_the_current_id_and_v0_makes_it_with_a_warning(tiny_pipeline: str) -> None:
    assert diffusion_gym.ENV_ID == "DiffusionT2I-v1"  # more in tests/test_env_hardening_round3.py
    with pytest.warns(UserWarning, match="DiffusionT2I-v0 makes the DiffusionT2I-v1 env"):
        env = gym.make("DiffusionT2I-v0", model=tiny_pipeline, reward="jpeg-compressibility", prompts=PROMPTS)
    assert type(env.unwrapped) is DiffusionT2IEnv


def test_the_public_handle_is_the_same_interface_on_the_single_and_the_vector_env(tiny_pipeline: str) -> None:
    single = make_env(tiny_pipeline).unwrapped.diffusion
    vector = make_vec(tiny_pipeline, 2).unwrapped.diffusion
    assert single.unet is vector.unet and single.latent_shape == vector.latent_shape == (4, 8, 8)
    assert single.num_inference_steps == len(single.timesteps) == STEPS
    assert torch.equal(single.timesteps, vector.timesteps)
    assert single.embedding_dim == single.unconditional_embedding.shape[-1] == 32
    assert single.prompt_pool == tuple(PROMPTS)
    torch.testing.assert_close(single.encode_prompts(PROMPTS[:1]), vector.encode_prompts(PROMPTS[:1]))
    with pytest.raises(ValueError, match="empty prompt"):
        vector.encode_prompts([""])  # a goal must say something; the CFG null prompt is unconditional_embedding
    sibling = vector.new_vector_env(3)
    try:
        assert sibling.num_envs == 3 and sibling.diffusion.unet is vector.unet
    finally:
        sibling.close()
