"""Issue 19: Gymnasium's stock vector wrappers on the native vector env, and its two array backends.

``RecordEpisodeStatistics``, ``NormalizeReward`` and ``DictInfoToList`` failed on it (torch rewards and
terminations, ``info["prompt"]`` a list without its ``_prompt`` mask). The default numpy backend follows
Gymnasium's vector conventions; ``array_backend="torch"`` gives the same values as tensors on the env's device.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.wrappers import vector as vector_wrappers

import diffusion_gym

PROMPTS = ["A red circle on the left. A blue square on the right.", "A green triangle. A gray background."]
STEPS = 3
NUM_ENVS = 2

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_vec(tiny_pipeline: str, **overrides) -> gym.vector.VectorEnv:
    kwargs = dict(model=tiny_pipeline, reward="jpeg-incompressibility", prompts=PROMPTS, num_inference_steps=STEPS)
    return gym.make_vec(
        diffusion_gym.ENV_ID, num_envs=NUM_ENVS, vectorization_mode="vector_entry_point", **{**kwargs, **overrides}
    )


def actions(seed: int = 0) -> list[np.ndarray]:
    """Per-step actions ``(N, 4, 8, 8)`` that differ between the sub-envs (so do their rewards)."""
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((NUM_ENVS, 4, 8, 8)).astype(np.float32) for _ in range(STEPS)]


def episode(env, seed: int = 0, to_action=lambda action: action) -> tuple[list, dict]:
    """``reset(seed)`` then the ``STEPS`` steps of an episode: ``([reset result, step results...], last info)``."""
    results = [env.reset(seed=seed)]
    for action in actions(seed):
        results.append(env.step(to_action(action)))
    return results, results[-1][-1]


def raw_terminal_rewards(tiny_pipeline: str, seed: int = 0) -> np.ndarray:
    results, _ = episode(make_vec(tiny_pipeline), seed)
    return results[-1][1]


# ------------------------------------------------------------------------------------------ the two backends
def test_the_numpy_backend_follows_gymnasiums_vector_conventions(tiny_pipeline: str) -> None:
    env = make_vec(tiny_pipeline)
    assert env.unwrapped.array_backend == "numpy"
    results, info = episode(env)
    observation, reset_info = results[0]
    assert env.observation_space.contains(observation)
    assert isinstance(reset_info["prompt"], np.ndarray) and reset_info["prompt"].shape == (NUM_ENVS,)
    assert all(isinstance(prompt, str) for prompt in reset_info["prompt"]) and reset_info["_prompt"].all()
    for observation, rewards, terminated, truncated, _ in results[1:]:
        assert all(isinstance(value, np.ndarray) for value in observation.values())
        assert env.observation_space.contains(observation)
        assert rewards.dtype == np.float64 and rewards.shape == (NUM_ENVS,)
        assert terminated.dtype == truncated.dtype == np.bool_ and terminated.shape == (NUM_ENVS,)
        assert not truncated.any()
    assert terminated.all() and rewards.min() > 0 and rewards[0] != rewards[1]  # JPEG sizes of two images
    assert info["final_images"].shape == (NUM_ENVS, 3, 32, 32) and info["final_images"].dtype == np.float32
    assert info["_final_images"].dtype == np.bool_ and info["_final_images"].all()
    rewards_again = env.unwrapped.compute_reward(observation["achieved_goal"], observation["desired_goal"], {})
    assert rewards_again.dtype == np.float32 and np.array_equal(rewards_again, rewards.astype(np.float32))
    # the arrays are copies: writing into one does not write into the env's state
    observation["desired_goal"][:] = 0
    assert env.unwrapped.mdp.desired_goals.abs().sum() > 0


def test_the_torch_backend_gives_the_same_values_as_tensors_on_the_device(tiny_pipeline: str) -> None:
    numpy_results, numpy_info = episode(make_vec(tiny_pipeline), seed=3)
    env = make_vec(tiny_pipeline, array_backend="torch")
    torch_results, torch_info = episode(env, seed=3, to_action=torch.as_tensor)
    device = env.unwrapped.device
    for numpy_step, torch_step in zip(numpy_results[1:], torch_results[1:], strict=True):
        for numpy_value, torch_value in zip(numpy_step[:4], torch_step[:4], strict=True):
            if isinstance(numpy_value, dict):
                assert numpy_value.keys() == torch_value.keys()
                numpy_value, torch_value = list(numpy_value.values()), list(torch_value.values())
            else:
                numpy_value, torch_value = [numpy_value], [torch_value]
            for a, b in zip(numpy_value, torch_value, strict=True):
                assert isinstance(b, torch.Tensor) and b.device == device
                np.testing.assert_array_equal(a, b.cpu().numpy())
    assert torch_results[-1][1].dtype == torch.float32 and torch_results[-1][2].dtype == torch.bool
    assert numpy_info.keys() == torch_info.keys()
    assert list(torch_info["prompt"]) == list(numpy_info["prompt"])
    assert torch_info["_prompt"].dtype == torch.bool and torch_info["_final_images"].device == device
    np.testing.assert_array_equal(numpy_info["final_images"], torch_info["final_images"].cpu().numpy())
    observation = torch_results[-1][0]
    rewards = env.unwrapped.compute_reward(observation["achieved_goal"], observation["desired_goal"], {})
    assert isinstance(rewards, torch.Tensor) and torch.equal(rewards, torch_results[-1][1])


def test_a_sibling_env_keeps_the_array_backend(tiny_pipeline: str) -> None:
    for backend in ("numpy", "torch"):
        sibling = make_vec(tiny_pipeline, array_backend=backend).unwrapped.diffusion.new_vector_env(3)
        assert sibling.array_backend == backend and sibling.num_envs == 3
        sibling.close()
    single = gym.make(diffusion_gym.ENV_ID, model=tiny_pipeline, reward="jpeg-incompressibility", prompts=PROMPTS)
    assert single.unwrapped.diffusion.new_vector_env(2).array_backend == "numpy"
    with pytest.raises(ValueError, match="array_backend"):
        make_vec(tiny_pipeline, array_backend="jax")


# ------------------------------------------------------------------------------------------ stock wrappers
def test_record_episode_statistics(tiny_pipeline: str) -> None:
    env = vector_wrappers.RecordEpisodeStatistics(make_vec(tiny_pipeline))
    results, info = episode(env)
    rewards = results[-1][1]
    assert info["_episode"].all()
    np.testing.assert_array_equal(info["episode"]["r"], rewards)  # the reward is terminal: the return is it
    assert info["episode"]["l"].tolist() == [STEPS] * NUM_ENVS
    assert list(env.return_queue) == rewards.tolist() and env.episode_count == NUM_ENVS
    _, autoreset_rewards, terminated, _, autoreset_info = env.step(actions()[0])  # NEXT_STEP autoreset: no episode
    assert not terminated.any() and "episode" not in autoreset_info and np.all(autoreset_rewards == 0)


def test_normalize_reward(tiny_pipeline: str) -> None:
    raw = raw_terminal_rewards(tiny_pipeline)
    env = vector_wrappers.NormalizeReward(make_vec(tiny_pipeline), gamma=0.99)
    results, _ = episode(env)
    normalized = results[-1][1]
    np.testing.assert_allclose(normalized, raw / np.sqrt(env.return_rms.var + env.epsilon), rtol=1e-6)
    assert not np.allclose(normalized, raw)


def test_clip_and_transform_reward(tiny_pipeline: str) -> None:
    raw = raw_terminal_rewards(tiny_pipeline)
    low, high = 0.0, float(raw.min() + raw.max()) / 2  # clips one sub-env's reward and not the other's
    clipped = episode(vector_wrappers.ClipReward(make_vec(tiny_pipeline), low, high))[0][-1][1]
    np.testing.assert_array_equal(clipped, np.clip(raw, low, high))
    assert (clipped == high).sum() == 1
    doubled = episode(vector_wrappers.TransformReward(make_vec(tiny_pipeline), lambda reward: 2 * reward))[0][-1][1]
    np.testing.assert_array_equal(doubled, 2 * raw)


def test_dict_info_to_list(tiny_pipeline: str) -> None:
    env = vector_wrappers.DictInfoToList(make_vec(tiny_pipeline))
    results, infos = episode(env)
    reset_infos = results[0][1]
    assert [info["prompt"] for info in reset_infos] == list(env.unwrapped.mdp.prompts)
    assert len(infos) == NUM_ENVS
    for info in infos:
        assert info["prompt"] in PROMPTS and info["final_images"].shape == (3, 32, 32)


def test_numpy_to_torch(tiny_pipeline: str) -> None:
    pytest.importorskip("array_api_compat", reason="Gymnasium's array conversions need array-api-compat (dev extra)")
    torch_results, torch_info = episode(make_vec(tiny_pipeline, array_backend="torch"), to_action=torch.as_tensor)
    env = vector_wrappers.NumpyToTorch(make_vec(tiny_pipeline))
    results, info = episode(env, to_action=torch.as_tensor)
    observation, rewards, terminated, _, _ = results[-1]
    assert all(isinstance(value, torch.Tensor) for value in observation.values())
    assert isinstance(rewards, torch.Tensor) and isinstance(terminated, torch.Tensor) and bool(terminated.all())
    torch.testing.assert_close(rewards.float(), torch_results[-1][1])  # float64 from numpy, float32 natively
    assert torch.equal(observation["achieved_goal"], torch_results[-1][0]["achieved_goal"])
    assert list(info["prompt"]) == list(torch_info["prompt"])  # the strings pass through the conversion
    assert torch.equal(info["final_images"], torch_info["final_images"])
