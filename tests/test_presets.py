"""The HERD paper's presets: every one resolves, the prompts are the paper's, the forest prompt needs 2 windows."""

from __future__ import annotations

import dataclasses
import glob
import re
from pathlib import Path

import pytest
import torch

from agents.experiments.presets import (
    FOREST_PROMPT,
    PRESETS,
    STANDARD_PROMPT,
    Preset,
    agent_config_kwargs,
    apply_preset,
    env_settings,
)

PAPER = sorted(glob.glob(str(Path(__file__).resolve().parents[2] / "shared" / "papers" / "000_*.txt")))


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """One intra-op thread: with another torch process on the 2 cores, 2 spinning threads run ~30x slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def test_the_grid_of_presets():
    expected = {
        f"{agent}-{prompt}-{reward}"
        for agent in ("ddpo", "dpok", "herd", "herd-b2")
        for prompt in ("standard", "forest")
        for reward in ("imagereward", "aesthetic")
    }
    assert set(PRESETS) == expected
    herd_b2 = PRESETS["herd-b2-forest-aesthetic"]
    assert (herd_b2.agent, herd_b2.herd_buffer_batches, herd_b2.reward) == ("herd", 2, "aesthetic")
    assert (herd_b2.prompts, herd_b2.max_prompt_chunks) == (FOREST_PROMPT, 2)
    herd = PRESETS["herd-standard-imagereward"]
    assert (herd.agent, herd.herd_buffer_batches, herd.max_prompt_chunks) == ("herd", 1, 1)
    assert dict(herd.overrides) == {"herd_base": "ddpo"}
    assert PRESETS["dpok-standard-imagereward"].agent == "dpok"
    for preset in PRESETS.values():  # the paper's setup
        assert (preset.model, preset.epochs, preset.batch_size, preset.batches_per_epoch) == (
            "stable-diffusion-v1-5/stable-diffusion-v1-5",
            100,
            12,
            3,
        )
        assert (preset.num_inference_steps, preset.eta, preset.lora_rank) == (50, 1.0, 4)
    with pytest.raises(dataclasses.FrozenInstanceError):
        herd.epochs = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        herd.overrides["herd_base"] = "dpok"  # type: ignore[index]


@pytest.mark.skipif(not PAPER, reason="the HERD paper is not next to the repository")
def test_prompts_are_the_papers_text():
    quoted = re.findall(r"“([^”]*)”", Path(PAPER[0]).read_text())
    assert STANDARD_PROMPT in quoted and FOREST_PROMPT in quoted
    assert STANDARD_PROMPT.startswith("A black cat and golden retriever dog.")
    assert FOREST_PROMPT.startswith("Deep in an ancient forest")


def test_every_preset_resolves_into_env_and_agent_settings():
    from agents import AGENT_NAMES
    from agents.config import AgentConfig

    for name in PRESETS:
        settings = apply_preset(name, {"model": "/tmp/tiny", "epochs": 2, "learning_rate": None})
        assert settings["preset"] == name and settings["epochs"] == 2 and "learning_rate" not in settings
        assert settings["agent"] in AGENT_NAMES
        config = AgentConfig(**agent_config_kwargs(settings))
        config.validate()
        assert (config.batch_size, config.batches_per_epoch, config.lora_rank) == (12, 3, 4)
        assert config.guidance_scale == 7.5
        env = env_settings(settings)
        assert settings["batch_size"] == 12 and env.model == "/tmp/tiny" and len(env.prompts) == 1
        assert env.max_prompt_chunks == (2 if "forest" in name else 1)


def test_unknown_names_and_settings_are_clear_errors():
    with pytest.raises(ValueError, match=r"unknown preset 'herd-b3'.*ddpo-forest-aesthetic.*herd-standard-imagereward"):
        apply_preset("herd-b3")
    with pytest.raises(ValueError, match=r"unknown settings \['lerning_rate'\]"):
        agent_config_kwargs(apply_preset("ddpo-standard-aesthetic", {"lerning_rate": 1e-4}))
    assert agent_config_kwargs(apply_preset("ddpo-standard-aesthetic", {"device": "cuda"}), extra_keys=("device",))
    with pytest.raises(ValueError, match="preset"):
        apply_preset("ddpo-standard-aesthetic", {"preset": "x"})
    assert isinstance(PRESETS["ddpo-standard-aesthetic"], Preset)


def test_forest_prompt_needs_two_windows_and_encodes_through_the_env(tiny_pipeline):
    import torch

    from diffusion_gym.models import load_model

    model = load_model(tiny_pipeline)
    assert model.count_prompt_chunks(FOREST_PROMPT) == 2 and model.count_prompt_chunks(STANDARD_PROMPT) == 1
    tokens = len(model.tokenizer(FOREST_PROMPT, truncation=False).input_ids)
    assert 77 < tokens <= 2 * 75 + 2, tokens  # the paper's long prompt: 94 CLIP tokens with BOS/EOS

    settings = apply_preset(
        "herd-forest-imagereward", {"model": tiny_pipeline, "reward": "jpeg-incompressibility", "batch_size": 2}
    )
    env = dataclasses.replace(env_settings(settings), num_inference_steps=2, latent_bound=1e4).make(num_envs=2)
    try:
        observation, info = env.reset(seed=0)
        assert list(info["prompt"]) == [FOREST_PROMPT, FOREST_PROMPT]
        assert observation["prompt_embedding"].shape == (2, 2 * 77, 32)
        for _ in range(2):
            observation, reward, terminated, _, _ = env.step(torch.zeros_like(observation["latent"]))
        assert bool(terminated.all()) and torch.isfinite(reward).all()
    finally:
        env.close()


@pytest.mark.parametrize(
    "name",
    [
        "dpok-standard-aesthetic",
        "herd-b2-standard-imagereward",
        "herd-forest-imagereward",
    ],
)
def test_presets_train_on_the_tiny_pipeline(tiny_pipeline, name):
    """Smoke: a preset's settings drive a real agent (tiny pipeline, cheap stand-in reward, 2 steps, 1 batch)."""
    from agents import make_agent
    from agents.config import AgentConfig

    overrides = {"model": tiny_pipeline, "reward": "jpeg-incompressibility", "batch_size": 2, "batches_per_epoch": 1}
    settings = apply_preset(name, {**overrides, "num_inference_steps": 2})
    env = dataclasses.replace(env_settings(settings), latent_bound=1e4).make(settings["batch_size"])
    agent = make_agent(settings["agent"], env, AgentConfig(**agent_config_kwargs(settings)))
    try:
        epochs = 2 if settings["agent"] == "herd" else 1  # HERD replays from its 2nd epoch on
        for _ in range(epochs):
            metrics = agent.train_epoch().metrics
        replayed = metrics["num_train_samples"] - 2  # HERD: relabeled trajectories of the previous epoch
        assert replayed > 0 if epochs == 2 else replayed == 0
    finally:
        agent.close()
        env.close()
