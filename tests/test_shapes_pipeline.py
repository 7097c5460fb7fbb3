"""The shipped Shapes pipeline and proxy: load offline, generate, follow text, keep a safe scheduler."""

import json

import numpy as np
import pytest
import torch

from diffusion_gym.ddim import check_scheduler_config
from diffusion_gym.rewards import make_reward
from diffusion_gym.shapes import ASSETS_DIR, PIPELINE_DIR, PROXY_DIR
from diffusion_gym.shapes.gold import gold_score
from diffusion_gym.shapes.offline.evaluate import load_pipeline, position_word_effect, sample
from diffusion_gym.shapes.prompt_sets import heldout_scenes_and_prompts
from diffusion_gym.shapes.scenes import render


@pytest.fixture(scope="module")
def pipeline():
    torch.set_num_threads(2)
    return load_pipeline(PIPELINE_DIR)


def test_folder_layout_metadata_and_size():
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (PIPELINE_DIR / part).is_dir()
    assert not list(ASSETS_DIR.rglob("*.bin")) and not list(ASSETS_DIR.rglob("*.pt"))  # safetensors only
    index = json.loads((PIPELINE_DIR / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline" and index["requires_safety_checker"] is False
    metadata = json.loads((PIPELINE_DIR / "diffusion_gym.json").read_text())
    assert metadata["world"] == "shapes" and metadata["gold_reward"] == "shapes-gold"
    assert metadata["proxy_reward"] == "shapes-clip" and metadata["eta"] == 1.0
    assert metadata["default_prompts"] == "shapes-train" and metadata["eval_prompts"] == "shapes-heldout"
    assert metadata["guidance_scale"] > 1 and metadata["num_inference_steps"] > 0
    total = sum(f.stat().st_size for f in ASSETS_DIR.rglob("*") if f.is_file())
    assert total <= 25 * 2**20, total


def test_scheduler_config_guard():
    config = json.loads((PIPELINE_DIR / "scheduler" / "scheduler_config.json").read_text())
    assert config["_class_name"] == "DDIMScheduler"
    assert config["clip_sample"] is False and config["set_alpha_to_one"] is False
    # v-prediction on a zero-terminal-SNR schedule, sampled from t = 999 (shapes.offline.train.build_scheduler)
    assert config["prediction_type"] == "v_prediction" and config["rescale_betas_zero_snr"] is True
    assert config["timestep_spacing"] == "trailing"
    from diffusers import DDIMScheduler

    check_scheduler_config(DDIMScheduler.from_pretrained(PIPELINE_DIR / "scheduler"))
    with pytest.raises(ValueError, match="clip_sample"):
        check_scheduler_config(DDIMScheduler(clip_sample=True))


def test_pipeline_loads_offline_and_generates(pipeline):
    assert pipeline.unet.dtype == torch.float32 and pipeline.text_encoder.dtype == torch.float32
    assert pipeline.vae.config.scaling_factor != 0.18215  # measured on the data, not SD's constant
    assert pipeline.unet.config.sample_size == 8 and pipeline.unet.config.in_channels == 4
    out = pipeline(["A red circle. A gray background."] * 2, num_inference_steps=3, output_type="np")
    assert out.images.shape == (2, 32, 32, 3)
    assert np.isfinite(out.images).all()


def test_a_quick_sample_follows_the_text(pipeline):
    """Gold on matching prompts beats the same images scored against other prompts (the shuffled floor)."""
    metadata = json.loads((PIPELINE_DIR / "diffusion_gym.json").read_text())
    _, prompts = heldout_scenes_and_prompts()
    chosen = list(prompts[:16])  # one-object prompts
    images = sample(pipeline, chosen, guidance_scale=metadata["guidance_scale"], num_inference_steps=8, seed=0)
    assert images.shape == (16, 3, 32, 32)
    matched = gold_score(images, chosen).mean()
    shuffled = gold_score(images, chosen[1:] + chosen[:1]).mean()
    assert matched > shuffled + 0.15, (matched, shuffled)


def test_proxy_reward_prefers_true_captions():
    assert (PROXY_DIR / "model.safetensors").is_file() and (PROXY_DIR / "config.json").is_file()
    scenes, prompts = heldout_scenes_and_prompts()
    images = torch.from_numpy(np.stack([render(s) for s in scenes[:64]])).permute(0, 3, 1, 2).float() / 255
    reward = make_reward("shapes-clip")
    true = reward(images, list(prompts[:64]))
    shuffled = reward(images, list(prompts[1:65]))
    assert true.shape == (64,) and true.dtype == torch.float32
    assert true.mean() > shuffled.mean()


def test_position_word_effect_on_a_hand_made_probe():
    # noise 0 lands in (0, 0) under both phrases: a hit for "top left", not moved;
    # noise 1 lands where each phrase says: two hits, moved; noise 2 draws no object: no hit, not moved.
    placed = {(0, 0): [(0, 0), (0, 0), None], (2, 2): [(0, 0), (2, 2), None]}
    hit_rate, moved = position_word_effect(placed)
    assert hit_rate == pytest.approx(3 / 6) and moved == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="same number of noises"):
        position_word_effect({(0, 0): [(0, 0)], (2, 2): []})


def test_the_world_env_starts_at_pure_noise_and_every_step_has_a_density():
    """The world's zero-terminal-SNR schedule through the env: t = 999 first, finite log-probs at every step."""
    import gymnasium as gym

    import diffusion_gym
    from diffusion_gym.sampling import PretrainedPolicy

    vector_env = gym.make_vec(
        diffusion_gym.ENV_ID, num_envs=2, vectorization_mode="vector_entry_point", num_inference_steps=4
    )
    observation, _ = vector_env.reset(seed=0)
    assert observation["timestep"][:, 0].tolist() == [999, 999]
    assert vector_env.mdp.scheduler.alphas_cumprod[999] == 0
    policy = PretrainedPolicy(vector_env, seed=0)
    for _ in range(4):
        step = policy(observation)
        assert bool(step.stochastic.all()) and torch.isfinite(step.log_prob).all()
        observation, rewards, terminated, *_ = vector_env.step(step.action)
    assert terminated.all() and ((rewards >= 0) & (rewards <= 1)).all()
