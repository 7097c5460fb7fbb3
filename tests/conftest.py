"""Shared fixtures: a tiny random Stable Diffusion pipeline built offline once per test session."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory) -> str:
    """Folder of a tiny random ``StableDiffusionPipeline`` (UNet, VAE, CLIP text encoder + BPE tokenizer, DDIM)."""
    from diffusion_gym.models import build_tiny_pipeline

    return str(build_tiny_pipeline(tmp_path_factory.mktemp("models") / "tiny-sd", seed=0))
