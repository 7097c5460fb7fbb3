"""Issue 19, "Defects" 1-8: bad input found from outside. Each test failed before its fix; each keeps the repro."""

from __future__ import annotations

import json
import pathlib
import shutil

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.error import ClosedEnvironmentError

import diffusion_gym
from diffusion_gym.vector_env import DiffusionT2IVectorEnv

PROMPTS = ["A red circle on the left.", "A blue square. A gray background."]
STEPS = 2
CAT = "a photo of a cat"  # outside the Shapes gold scorer's grammar

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_env(model: str, **overrides) -> gym.Env:
    kwargs = dict(model=model, reward="jpeg-incompressibility", prompts=PROMPTS, num_inference_steps=STEPS)
    return gym.make(diffusion_gym.ENV_ID, **{**kwargs, **overrides})


def make_vec(model: str, num_envs: int = 2, **overrides):
    kwargs = dict(model=model, reward="jpeg-incompressibility", prompts=PROMPTS, num_inference_steps=STEPS)
    return gym.make_vec(
        diffusion_gym.ENV_ID, num_envs=num_envs, vectorization_mode="vector_entry_point", **{**kwargs, **overrides}
    )


def zeros(env) -> np.ndarray:
    return np.zeros(env.action_space.shape, np.float32)


def variant(tiny_pipeline: str, folder: pathlib.Path, edit) -> str:
    """A copy of the tiny pipeline, edited by ``edit(folder)`` (a new path: models are cached per folder)."""
    shutil.copytree(tiny_pipeline, folder)
    edit(folder)
    return str(folder)


def edit_json(path: pathlib.Path, **changes) -> None:
    data = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    path.write_text(json.dumps(data))


# ------------------------------------------------------------------------------------------ defect 1
def test_1_a_reward_other_than_gold_works_on_a_prompt_gold_cannot_parse() -> None:
    """Repro: ``reward='shapes-clip'``, reset on "a photo of a cat", step zeros twice: it died at the last step."""
    env = gym.make(diffusion_gym.ENV_ID, reward="shapes-clip", num_inference_steps=2)
    env.reset(seed=0, options={"prompt": CAT})
    for _ in range(2):
        _, reward, terminated, _, info = env.step(zeros(env))
    assert terminated and np.isfinite(reward)
    assert "gold_score" not in info  # the gold scorer does not apply to this prompt
    assert info["proxy_score"] == reward  # the world's proxy is the env's reward here
    env.reset(seed=0, options={"prompt": "A red circle."})  # a prompt of the grammar: gold is reported
    for _ in range(2):
        _, reward, terminated, _, info = env.step(zeros(env))
    assert 0.0 <= info["gold_score"] <= 1.0


def test_1_gold_in_a_vector_batch_is_nan_and_masked_where_it_does_not_apply() -> None:
    env = gym.make_vec(
        diffusion_gym.ENV_ID,
        num_envs=2,
        vectorization_mode="vector_entry_point",
        reward="jpeg-compressibility",
        num_inference_steps=2,
    )
    env.reset(seed=0, options={"prompts": ["A red circle.", CAT]})
    for _ in range(2):
        _, rewards, terminated, _, info = env.step(np.zeros(env.action_space.shape, np.float32))
    assert terminated.all() and np.isfinite(rewards).all()
    assert info["_gold_score"].tolist() == [True, False]
    assert 0.0 <= info["gold_score"][0] <= 1.0 and np.isnan(info["gold_score"][1])
    assert info["_proxy_score"].tolist() == [True, True] and np.isfinite(info["proxy_score"]).all()
    env.reset(seed=0, options={"prompts": [CAT, CAT]})
    for _ in range(2):
        _, rewards, *_, info = env.step(np.zeros(env.action_space.shape, np.float32))
    assert "gold_score" not in info and "_gold_score" not in info  # applies to no row: absent, as in the single env


def test_1_a_prompt_the_reward_cannot_score_is_refused_at_construction_and_reset() -> None:
    with pytest.raises(ValueError, match=r"reward 'shapes-gold' cannot score the prompt 'a photo of a cat'"):
        gym.make(diffusion_gym.ENV_ID, reward="shapes-gold", prompts=[CAT], num_inference_steps=2)
    with pytest.raises(ValueError, match=r"reward 'shapes-gold' cannot score"):
        gym.make(diffusion_gym.ENV_ID, reward="jpeg-compressibility:1,shapes-gold:0.5", prompts=CAT)
    env = gym.make(diffusion_gym.ENV_ID, reward="shapes-gold", num_inference_steps=2)
    with pytest.raises(ValueError, match="cannot parse the sentence 'a photo of a cat'"):
        env.reset(seed=0, options={"prompt": CAT})
    vector_env = gym.make_vec(
        diffusion_gym.ENV_ID, num_envs=2, vectorization_mode="vector_entry_point", num_inference_steps=2
    )
    with pytest.raises(ValueError, match="cannot score the prompt 'a photo of a cat'"):
        vector_env.reset(seed=0, options={"prompts": ["A red circle.", CAT]})


def test_1_an_unknown_prompt_set_name_is_an_error_naming_the_registered_sets(tiny_pipeline: str) -> None:
    with pytest.raises(ValueError, match=r"unknown prompt set 'shapes-trian'.*shapes-train"):
        gym.make(diffusion_gym.ENV_ID, prompts="shapes-trian")
    with pytest.raises(ValueError, match="unknown prompt set 'my_prompts'"):
        make_env(tiny_pipeline, prompts="my_prompts")
    # a real one-word prompt that looks like a set name: pass it in a list
    env = make_env(tiny_pipeline, prompts=["self-portrait"])
    assert env.unwrapped.diffusion.prompt_pool == ("self-portrait",)
    assert make_env(tiny_pipeline, prompts="A cat.").unwrapped.diffusion.prompt_pool == ("A cat.",)


# ------------------------------------------------------------------------------------------ defect 2
def test_2_actions_that_require_grad_are_copied_without_their_graph(tiny_pipeline: str) -> None:
    """Repro: ``v.step(torch.zeros(2, 4, 8, 8) * torch.ones((), requires_grad=True))``."""
    weight = torch.ones((), requires_grad=True)
    vector_env = make_vec(tiny_pipeline, array_backend="torch").unwrapped
    vector_env.reset(seed=0)
    observation, *_ = vector_env.step(torch.zeros(2, 4, 8, 8) * weight)
    assert observation["latent"].grad_fn is None and not observation["latent"].requires_grad
    single = make_env(tiny_pipeline).unwrapped
    single.reset(seed=0)
    observation, *_ = single.step(torch.zeros(4, 8, 8) * weight)
    assert isinstance(observation["latent"], np.ndarray) and single.mdp.step_index == 1


def test_2_a_refused_step_or_reset_changes_nothing(tiny_pipeline: str) -> None:
    reference = make_env(tiny_pipeline).unwrapped
    expected = [reference.reset(seed=4)[0]] + [reference.step(zeros(reference))[0] for _ in range(STEPS)]
    env = make_env(tiny_pipeline).unwrapped
    observations = [env.reset(seed=4)[0]]
    for bad in (np.full((4, 8, 8), np.nan, np.float32), np.zeros((4, 8, 9), np.float32), np.zeros((4, 8, 8), int)):
        with pytest.raises((ValueError, TypeError)):
            env.step(bad)
    observations += [env.step(zeros(env))[0] for _ in range(STEPS)]
    for got, want in zip(observations, expected, strict=True):
        assert all(np.array_equal(got[key], want[key]) for key in want)
    # a refused reset draws nothing from the RNGs: the next unseeded reset is the one the reference makes
    vector_env, reference = make_vec(tiny_pipeline).unwrapped, make_vec(tiny_pipeline).unwrapped
    vector_env.reset(seed=9)
    reference.reset(seed=9)
    with pytest.raises(ValueError, match="empty prompt"):
        vector_env.reset(options={"prompts": ["A cat.", " "]})
    with pytest.raises(ValueError, match="expected 2 seeds"):
        vector_env.reset(seed=[1, 2, 3])
    np.testing.assert_array_equal(vector_env.reset()[0]["latent"], reference.reset()[0]["latent"])


# ------------------------------------------------------------------------------------------ defects 3 and 5
BAD_ARGUMENTS = [
    ("num_inference_steps", 0),  # ran the world's 20 (here the default 50)
    ("num_inference_steps", True),  # ran 1
    ("num_inference_steps", 2.0),
    ("num_inference_steps", 1001),  # above the scheduler's 1000 training steps
    ("reward", ""),  # used the world's reward
    ("reward", 3),
    ("image_cache_size", -1),  # failed at step T with KeyError
    ("image_cache_size", 2.5),
    ("image_cache_size", True),
    ("max_prompt_bytes", 0),
    ("max_prompt_bytes", True),
    ("max_prompt_chunks", True),
    ("max_prompt_chunks", 0),
    ("latent_bound", True),
    ("latent_bound", "50"),
    ("latent_bound", float("nan")),
    ("dtype", "float8"),  # AttributeError: module 'torch' has no attribute 'float8'
    ("dtype", "int64"),
    ("dtype", 32),
    ("device", "tpu"),
    ("device", 3.5),
    ("model", 42),
    ("model", ""),
    ("prompts", 42),
    ("prompts", {"A cat.", "A dog."}),  # a set has no order: the prompt pool would differ between processes
    ("prompts", []),
    ("prompts", ["A cat.", 3]),
    ("render_mode", "ansi"),
]


@pytest.mark.parametrize(("argument", "value"), BAD_ARGUMENTS, ids=[f"{a}={v!r}" for a, v in BAD_ARGUMENTS])
def test_3_5_a_bad_argument_is_an_error_naming_it(tiny_pipeline: str, argument: str, value) -> None:
    with pytest.raises((ValueError, TypeError), match=argument):
        make_env(tiny_pipeline, **{argument: value})


def test_3_an_empty_reward_is_an_error_not_the_worlds_default() -> None:
    """Repro: ``reward=""`` used the Shapes world's default reward (shapes-gold)."""
    with pytest.raises(ValueError, match="reward must be a registered reward name"):
        gym.make(diffusion_gym.ENV_ID, reward="", num_inference_steps=2)


@pytest.mark.parametrize("num_envs", [2.5, 0, -1, True, "2"])
def test_5_a_bad_num_envs_is_an_error_naming_it(tiny_pipeline: str, num_envs) -> None:
    with pytest.raises((ValueError, TypeError), match="num_envs"):
        DiffusionT2IVectorEnv(num_envs, model=tiny_pipeline, reward="jpeg-compressibility", prompts=PROMPTS)


def test_5_cuda_without_cuda_is_a_clear_error_at_construction(tiny_pipeline: str) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match="device='cuda'.*CUDA is not available"):
        make_env(tiny_pipeline, device="cuda")


def test_5_a_pathlib_model_folder_is_accepted(tiny_pipeline: str) -> None:
    env = make_env(pathlib.Path(tiny_pipeline))
    assert env.unwrapped.diffusion.model is make_env(tiny_pipeline).unwrapped.diffusion.model


def test_5_a_tokenizer_without_model_max_length_is_a_clear_error(tiny_pipeline: str, tmp_path) -> None:
    """Was numpy's "Maximum allowed dimension exceeded" (transformers' default model_max_length is 1e30)."""
    folder = variant(
        tiny_pipeline,
        tmp_path / "no-max",
        lambda f: edit_json(f / "tokenizer" / "tokenizer_config.json", model_max_length=None),
    )
    with pytest.raises(ValueError, match=r"tokenizer.*model_max_length.*max_position_embeddings=77"):
        make_env(folder)


def test_5_a_tokenizer_longer_than_the_text_encoder_is_a_clear_error(tiny_pipeline: str, tmp_path) -> None:
    folder = variant(
        tiny_pipeline,
        tmp_path / "long",
        lambda f: edit_json(f / "tokenizer" / "tokenizer_config.json", model_max_length=100),
    )
    with pytest.raises(ValueError, match=r"model_max_length=100.*max_position_embeddings=77"):
        make_env(folder)


def test_5_a_missing_tokenizer_folder_is_a_clear_error(tiny_pipeline: str, tmp_path) -> None:
    folder = variant(tiny_pipeline, tmp_path / "no-tokenizer", lambda f: shutil.rmtree(f / "tokenizer"))
    with pytest.raises(FileNotFoundError, match="has no tokenizer/ folder"):
        make_env(folder)


# ------------------------------------------------------------------------------------------ defects 4 and 5: options
def test_4_5_reset_options_and_seeds_are_checked(tiny_pipeline: str) -> None:
    """Repro: vector ``reset(options={"prompts": "abc"})`` used the prompts ['a', 'b', 'c']."""
    vector_env = make_vec(tiny_pipeline).unwrapped
    single = make_env(tiny_pipeline).unwrapped
    cases = [
        (vector_env, {"options": {"prompts": "ab"}}, r"options\['prompts'\] must be a list"),
        (vector_env, {"options": {"prompts": ["A cat.", 3]}}, r"options\['prompts'\]"),
        (vector_env, {"options": {"prompt": "A cat.", "prompts": ["A cat.", "A dog."]}}, "either"),
        (vector_env, {"options": {"promtps": ["A cat.", "A dog."]}}, r"unknown reset option.*'promtps'"),
        (vector_env, {"options": "junk"}, "options must be a dict"),
        (vector_env, {"seed": (1, 2, 3)}, "expected 2 seeds"),
        (vector_env, {"seed": 1.5}, "seed"),
        (vector_env, {"seed": [1, "2"]}, "seed"),
        (vector_env, {"seed": -1}, "seed"),
        (single, {"options": {"prompts": ["A cat."]}}, r"unknown reset option.*'prompts'.*vector env"),
        (single, {"options": {"prompt": 3}}, r"options\['prompt'\] must be a str"),
        (single, {"options": "junk"}, "options must be a dict"),
    ]
    for env, kwargs, message in cases:
        with pytest.raises((ValueError, TypeError), match=message):
            env.reset(**kwargs)
    assert vector_env.reset(seed=(1, 2))[1]["prompt"].shape == (2,)  # a tuple of seeds, one per sub-env, is fine


# ------------------------------------------------------------------------------------------ defect 6
def test_6_a_closed_vector_env_refuses_step_and_reset(tiny_pipeline: str) -> None:
    vector_env = make_vec(tiny_pipeline).unwrapped
    vector_env.reset(seed=0)
    vector_env.close()
    with pytest.raises(ClosedEnvironmentError, match="step"):
        vector_env.step(np.zeros((2, 4, 8, 8), np.float32))
    with pytest.raises(ClosedEnvironmentError, match="reset"):
        vector_env.reset(seed=0)


# ------------------------------------------------------------------------------------------ defect 7
def test_7_compute_reward_refuses_goals_that_are_not_goals(tiny_pipeline: str) -> None:
    env = make_env(tiny_pipeline).unwrapped
    observation, _ = env.reset(seed=0)
    for _ in range(STEPS):
        observation, reward, *_ = env.step(zeros(env))
    achieved, desired = observation["achieved_goal"], observation["desired_goal"]
    assert env.compute_reward(achieved, desired, {}) == reward
    codec = env.diffusion.codec
    nan_latent = achieved.copy()
    nan_latent[codec.flag_index + 3] = np.nan  # was scored 0.0
    with pytest.raises(ValueError, match="NaN or inf"):
        env.compute_reward(nan_latent, desired, {})
    fractional_flag = achieved.copy()
    fractional_flag[codec.flag_index] = 0.7  # was taken as generated
    with pytest.raises(ValueError, match="generated flag.*0 or 1"):
        env.compute_reward(fractional_flag, desired, {})
    bad_byte = desired.copy()
    bad_byte[0] = 65.5
    with pytest.raises(ValueError, match="prompt bytes"):
        env.compute_reward(achieved, bad_byte, {})
    bad_byte[0] = 300
    with pytest.raises(ValueError, match="prompt bytes"):
        env.compute_reward(achieved, bad_byte, {})
    not_utf8 = desired.copy()
    not_utf8[0] = 0xFF
    with pytest.raises(ValueError, match="UTF-8"):
        env.compute_reward(achieved, not_utf8, {})


# ------------------------------------------------------------------------------------------ defect 8
def test_8_a_clip_sample_scheduler_is_refused_from_the_folders_own_config(tiny_pipeline: str, tmp_path) -> None:
    """diffusers' pipeline rewrites ``clip_sample=True`` to False (a FutureWarning) before the env saw it."""
    folder = variant(
        tiny_pipeline,
        tmp_path / "clip",
        lambda f: edit_json(f / "scheduler" / "scheduler_config.json", clip_sample=True),
    )
    with pytest.raises(ValueError, match="clip_sample=True"):
        make_env(folder)
