"""Issue 30, the env's items: the design's ``DiffusionT2I-v0``, seeds, prompts that are not Unicode text, a bare
``str`` given as a list of prompts, DDIM's eta outside [0, 1], and SB3's ``check_env`` on what ``gym.make`` returns.
Each test with a repro failed before its fix."""

from __future__ import annotations

import json
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.error import ResetNeeded

import diffusion_gym
from diffusion_gym.ddim import ddim_step_coefficients
from diffusion_gym.env import DiffusionT2IEnv
from diffusion_gym.models import WorldInfo
from diffusion_gym.vector_env import DiffusionT2IVectorEnv
from tests.test_env_contract import ALLOWED_WARNINGS

PROMPTS = ["A red circle on the left.", "A blue square. A gray background."]
STEPS = 2
LONE_SURROGATE = "a red \ud800 circle"  # not Unicode text: no UTF-8 encoding (was a raw UnicodeEncodeError)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def env_kwargs(model: str, **overrides) -> dict:
    return {
        **dict(model=model, reward="jpeg-incompressibility", prompts=PROMPTS, num_inference_steps=STEPS),
        **overrides,
    }


def make_env(model: str, env_id: str = diffusion_gym.ENV_ID, **overrides) -> gym.Env:
    return gym.make(env_id, **env_kwargs(model, **overrides))


def make_vec(model: str, num_envs: int = 2, env_id: str = diffusion_gym.ENV_ID, **overrides):
    return gym.make_vec(
        env_id, num_envs=num_envs, vectorization_mode="vector_entry_point", **env_kwargs(model, **overrides)
    )


def zeros(env) -> np.ndarray:
    return np.zeros(env.action_space.shape, np.float32)


def unexpected_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    """The checkers' warnings other than the ones the contract tests allow (and say why)."""
    return [str(w.message) for w in caught if not any(fragment in str(w.message) for fragment in ALLOWED_WARNINGS)]


# ------------------------------------------------------------------------------------------ 1. DiffusionT2I-v0
V0_WARNING = r"DiffusionT2I-v0 makes the DiffusionT2I-v1 env"


def test_v0_makes_the_v1_env_with_a_warning_that_says_what_differs(tiny_pipeline: str) -> None:
    """Repro: ``gym.make('DiffusionT2I-v0')``, the design's own call, raised Gymnasium's ``DeprecatedEnv``."""
    with pytest.warns(UserWarning, match=V0_WARNING) as caught:
        env = make_env(tiny_pipeline, "DiffusionT2I-v0")
    message = next(str(w.message) for w in caught if "DiffusionT2I-v0 makes" in str(w.message))
    for difference in ("fourth weights", "999", "array_backend='torch'", "env.unwrapped.diffusion"):
        assert difference in message, (difference, message)
    assert type(env.unwrapped) is DiffusionT2IEnv and env.spec.id == "DiffusionT2I-v0"
    reference = make_env(tiny_pipeline)  # v0 is v1: the same episode for the same seed
    observation, _ = env.reset(seed=3)
    expected, _ = reference.reset(seed=3)
    for key in expected:
        np.testing.assert_array_equal(observation[key], expected[key])


@pytest.mark.parametrize("env_id", ["DiffusionT2I-v0", "DiffusionT2I-v1"])
def test_both_ids_pass_gymnasiums_env_checker(tiny_pipeline: str, env_id: str) -> None:
    from gymnasium.utils.env_checker import check_env

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # v0's own warning: tested above
        env = make_env(tiny_pipeline, env_id)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env.unwrapped, skip_render_check=True)  # its close check makes another env from the spec
    assert not [message for message in unexpected_warnings(caught) if "DiffusionT2I-v0 makes" not in message]


@pytest.mark.parametrize("env_id", ["DiffusionT2I-v0", "DiffusionT2I-v1"])
def test_both_ids_make_the_native_vector_env(tiny_pipeline: str, env_id: str) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        vector_env = make_vec(tiny_pipeline, env_id=env_id)
    assert any("DiffusionT2I-v0 makes" in str(w.message) for w in caught) == (env_id == "DiffusionT2I-v0")
    assert type(vector_env.unwrapped) is DiffusionT2IVectorEnv and vector_env.unwrapped.spec.id == env_id
    observation, info = vector_env.reset(seed=0)
    assert vector_env.observation_space.contains(observation)
    for _ in range(STEPS):
        observation, rewards, terminated, truncated, info = vector_env.step(zeros(vector_env))
        assert vector_env.observation_space.contains(observation)
    assert terminated.all() and rewards.shape == (2,) and not truncated.any()
    vector_env.close()


def test_v1_makes_no_v0_warning(tiny_pipeline: str) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make_env(tiny_pipeline)
    assert not [w for w in caught if "DiffusionT2I-v0" in str(w.message)]


# ------------------------------------------------------------------------------------------ 2. seeds
@pytest.mark.parametrize(
    ("seed", "error"), [(True, TypeError), (False, TypeError), (1.5, TypeError), ("3", TypeError), (-1, ValueError)]
)
def test_single_and_vector_env_refuse_the_same_bad_seeds_alike(tiny_pipeline: str, seed, error) -> None:
    """Repro: the single env took ``reset(seed=True)`` as seed 1 while the vector env refused it."""
    single = make_env(tiny_pipeline).unwrapped
    vector_env = make_vec(tiny_pipeline).unwrapped
    messages = []
    for env in (single, vector_env):
        with pytest.raises(error, match=r"^seed must be an int >= 0") as caught:
            env.reset(seed=seed)
        assert repr(seed) in str(caught.value)
        messages.append(str(caught.value))
    assert messages[0].split(";")[-1] == messages[1].split(";")[-1]  # the same "got <type>: <value>" in both
    with pytest.raises(TypeError, match=r"^seed\[1\] must be an int >= 0.*got bool: True"):
        vector_env.reset(seed=[1, True])


def test_a_refused_seed_changes_nothing_and_numpy_integer_seeds_work_in_both(tiny_pipeline: str) -> None:
    single = make_env(tiny_pipeline).unwrapped
    reference = make_env(tiny_pipeline).unwrapped
    single.reset(seed=5)
    reference.reset(seed=5)
    with pytest.raises(TypeError, match="seed"):
        single.reset(seed=True)
    single.step(zeros(single))  # the episode still runs: the refused reset did not touch it
    np.testing.assert_array_equal(single.reset()[0]["latent"], reference.reset()[0]["latent"])  # nor the RNG
    vector_env = make_vec(tiny_pipeline, num_envs=1).unwrapped
    np.testing.assert_array_equal(single.reset(seed=np.int64(7))[0]["latent"], single.reset(seed=7)[0]["latent"])
    np.testing.assert_array_equal(vector_env.reset(seed=np.int64(7))[0]["latent"][0], single.reset(seed=7)[0]["latent"])


# ------------------------------------------------------------------------------------------ 2. prompts
def assert_clear_prompt_error(caught: pytest.ExceptionInfo, where: str) -> None:
    error = caught.value
    assert type(error) is ValueError, f"{type(error).__name__}: {error}"  # not UnicodeEncodeError
    assert str(error).startswith(where) and "lone surrogate" in str(error) and "U+D800" in str(error), str(error)


def test_a_prompt_that_is_not_unicode_text_is_a_clear_error_everywhere(tiny_pipeline: str) -> None:
    """Repro: a lone surrogate raised a raw ``UnicodeEncodeError`` ('utf-8' codec can't encode ...)."""
    single = make_env(tiny_pipeline).unwrapped
    vector_env = make_vec(tiny_pipeline).unwrapped
    cases = [
        (lambda: single.reset(options={"prompt": LONE_SURROGATE}), "options['prompt']"),
        (lambda: vector_env.reset(options={"prompt": LONE_SURROGATE}), "options['prompt']"),
        (lambda: vector_env.reset(options={"prompts": [PROMPTS[0], LONE_SURROGATE]}), "options['prompts'][1]"),
        (lambda: make_env(tiny_pipeline, prompts=LONE_SURROGATE), "prompts"),
        (lambda: make_env(tiny_pipeline, prompts=[PROMPTS[0], LONE_SURROGATE]), "prompts[1]"),
        (lambda: single.diffusion.encode_prompts([LONE_SURROGATE]), "prompts[0]"),
        (lambda: single.diffusion.codec.encode([LONE_SURROGATE]), "prompt"),
        (lambda: single.diffusion.model.encode_prompts([LONE_SURROGATE]), "prompts[0]"),
    ]
    for call, where in cases:
        with pytest.raises(ValueError) as caught:
            call()
        assert_clear_prompt_error(caught, where)


def test_encode_prompts_refuses_a_bare_str(tiny_pipeline: str) -> None:
    """Repro: ``diffusion.encode_prompts("a str")`` encoded each character as a prompt: ``(5, S, D)``."""
    diffusion = make_env(tiny_pipeline).unwrapped.diffusion
    with pytest.raises(TypeError, match=r"prompts must be a list or tuple of prompts.*\['A red circle.'\]"):
        diffusion.encode_prompts("A red circle.")
    with pytest.raises(TypeError, match="prompts must be a list or tuple"):
        diffusion.model.encode_prompts("A red circle.")
    assert diffusion.encode_prompts(("A red circle.",)).shape[0] == 1  # a tuple is a list of prompts
    vector_env = make_vec(tiny_pipeline).unwrapped
    _, info = vector_env.reset(seed=0)
    torch.testing.assert_close(  # so is a vector step's info["prompt"], a 1-D array of str
        vector_env.diffusion.encode_prompts(info["prompt"]), diffusion.encode_prompts(list(info["prompt"]))
    )
    with pytest.raises(TypeError, match=r"prompts must be a list or tuple"):
        diffusion.codec.encode("A red circle.")
    with pytest.raises(TypeError, match=r"prompts must be a list or tuple"):
        diffusion.score_images(torch.zeros(1, 3, 32, 32), "A red circle.")


# ------------------------------------------------------------------------------------------ 3. eta
@pytest.mark.parametrize("eta", [5.0, 1.0001, -0.1, float("nan"), float("inf"), True, "1"])
def test_ddim_refuses_eta_outside_0_1(tiny_pipeline: str, eta) -> None:
    """Repro: eta=5 was taken and the DDIM direction term silently clamped to zero."""
    scheduler = make_env(tiny_pipeline).unwrapped.diffusion.scheduler
    with pytest.raises((ValueError, TypeError), match=r"^eta must be a number in \[0, 1\]"):
        ddim_step_coefficients(scheduler, torch.tensor([999]), eta)


def test_eta_0_and_1_are_the_bounds(tiny_pipeline: str) -> None:
    scheduler = make_env(tiny_pipeline).unwrapped.diffusion.scheduler
    timesteps = make_env(tiny_pipeline).unwrapped.diffusion.timesteps
    assert float(ddim_step_coefficients(scheduler, timesteps, 0.0).std_dev_t.abs().max()) == 0.0
    assert bool(ddim_step_coefficients(scheduler, timesteps[:1], 1).is_stochastic.all())


def test_the_pretrained_policy_and_a_world_file_refuse_eta_outside_0_1(tiny_pipeline: str, tmp_path) -> None:
    from diffusion_gym.sampling import PretrainedPolicy

    vector_env = make_vec(tiny_pipeline)
    with pytest.raises(ValueError, match=r"eta must be a number in \[0, 1\]"):
        PretrainedPolicy(vector_env, eta=5.0)
    world_file = tmp_path / "diffusion_gym.json"
    world_file.write_text(json.dumps({"eta": 5}))
    with pytest.raises(ValueError, match=r"diffusion_gym.json.*eta must be a number in \[0, 1\]"):
        WorldInfo.from_file(world_file)


# ------------------------------------------------------------------------------------------ 4. SB3 and gym.make
def test_sb3_check_env_passes_on_what_gym_make_returns(tiny_pipeline: str) -> None:
    """Repro: SB3's ``check_env(gym.make(...))`` failed: 'OrderEnforcing' object has no attribute 'compute_reward'."""
    from stable_baselines3.common.env_checker import check_env

    env = make_env(tiny_pipeline)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env, warn=True, skip_render_check=True)
    assert not unexpected_warnings(caught)
    observation, _ = env.reset(seed=0)
    for _ in range(STEPS):
        observation, reward, *_ = env.step(zeros(env))
    assert env.compute_reward(observation["achieved_goal"], observation["desired_goal"], {}) == reward


def test_the_env_enforces_the_call_order_itself(tiny_pipeline: str) -> None:
    """What ``OrderEnforcing`` did, the env does: ``step`` and ``render`` before ``reset`` raise ``ResetNeeded``."""
    env = make_env(tiny_pipeline, render_mode="rgb_array")
    with pytest.raises(ResetNeeded):
        env.step(zeros(env))
    with pytest.raises(ResetNeeded):
        env.render()
    checked = make_env(tiny_pipeline, disable_env_checker=False)  # Gymnasium's passive checker, when asked for
    assert isinstance(checked, gym.wrappers.PassiveEnvChecker)
    checked.reset(seed=0)
