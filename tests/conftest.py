"""Shared fixtures: a tiny random Stable Diffusion pipeline built offline once per test session, and the env
settings of the agents' tests on it."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def one_torch_thread():
    """One intra-op thread for the test: tiny models gain nothing from threads, and with another torch process on
    the 2 cores, 2 spinning threads run far slower. Modules opt in with ``pytestmark = usefixtures(...)``."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory) -> str:
    """Folder of a tiny random ``StableDiffusionPipeline`` (UNet, VAE, CLIP text encoder + BPE tokenizer, DDIM)."""
    from diffusion_gym.models import build_tiny_pipeline

    return str(build_tiny_pipeline(tmp_path_factory.mktemp("models") / "tiny-sd", seed=0))


@pytest.fixture(scope="session")
def tiny_env_settings(tiny_pipeline: str):
    """:class:`agents.EnvConfig` of the tiny pipeline with ``EnvConfig.tiny``'s reward, prompts and latent bound
    and 3 DDIM steps; a test replaces fields (``dataclasses.replace``) and builds its env with ``.make(num_envs)``."""
    from agents.envs import TINY_LATENT_BOUND, TINY_PROMPTS, TINY_REWARD, EnvConfig

    return EnvConfig(tiny_pipeline, TINY_REWARD, TINY_PROMPTS, num_inference_steps=3, latent_bound=TINY_LATENT_BOUND)
