"""Stable Diffusion v1.5's real shapes, without its weights (issue 19): a slow test, opt in with ``-m slow``.

A randomly initialised pipeline with SD v1.5's exact configs (written out below, no download): the 860 M
UNet2DConditionModel, the CLIP ViT-L/14 text encoder (77 tokens x 768), the AutoencoderKL and SD's PNDM scheduler
config, with the real CLIP BPE tokenizer that :mod:`diffusion_gym.tokenizer` builds offline. It is saved with
``save_pretrained`` (in a child process, so that building and serialising it does not count in this process's
peak memory) and loaded through the env, as ``stable-diffusion-v1-5`` would be. Then, in float32 on the CPU: one
env episode (2 DDIM steps, 4 x 64 x 64 latents, 512 px images, guidance 7.5), one DDPO and one HERD update with
LoRA rank 4 and gradient checkpointing (batch 1, a 2-step schedule), a checkpoint save and a LoRA export.

It prints each phase's peak resident memory and time; ``docs/scale.md`` (section 3) has the numbers of a run::

    nice -n 10 env PYTHONPATH=$PWD python -m pytest -q -s -m slow tests/test_sd15_shapes.py
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent

# unet/config.json of stable-diffusion-v1-5
SD15_UNET = dict(
    act_fn="silu",
    attention_head_dim=8,
    block_out_channels=(320, 640, 1280, 1280),
    center_input_sample=False,
    cross_attention_dim=768,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    downsample_padding=1,
    flip_sin_to_cos=True,
    freq_shift=0,
    in_channels=4,
    layers_per_block=2,
    mid_block_scale_factor=1,
    norm_eps=1e-5,
    norm_num_groups=32,
    out_channels=4,
    sample_size=64,
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
)
# text_encoder/config.json: the text tower of openai/clip-vit-large-patch14
SD15_TEXT_ENCODER = dict(
    vocab_size=49408,
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
    projection_dim=768,
    attention_dropout=0.0,
    dropout=0.0,
    initializer_factor=1.0,
    initializer_range=0.02,
    bos_token_id=0,
    eos_token_id=2,
    pad_token_id=1,
)
# vae/config.json
SD15_VAE = dict(
    act_fn="silu",
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4,
    in_channels=3,
    latent_channels=4,
    layers_per_block=2,
    norm_num_groups=32,
    out_channels=3,
    sample_size=512,
    up_block_types=("UpDecoderBlock2D",) * 4,
)
# scheduler/scheduler_config.json (SD v1.5 ships a PNDM config, with a clip_sample that PNDM does not take; the env
# builds its DDIM scheduler from the file)
SD15_SCHEDULER = dict(
    _class_name="PNDMScheduler",
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    num_train_timesteps=1000,
    set_alpha_to_one=False,
    skip_prk_steps=True,
    steps_offset=1,
    clip_sample=False,
    trained_betas=None,
)
# Parameter counts of docs/scale.md, section 3 (counted there on the same configs)
UNET_PARAMETERS, TEXT_ENCODER_PARAMETERS, VAE_PARAMETERS = 859_520_964, 123_060_480, 83_653_863
LORA_PARAMETERS, LORA_TENSORS = 797_184, 256
PROMPT = "A black cat and golden retriever dog. A hot ocean-side beach."  # two sentences: HERD relabels one
STEPS = 2


def build_sd15_shaped_pipeline(folder: Path, seed: int = 0) -> None:
    """A randomly initialised pipeline with SD v1.5's configs, saved with ``save_pretrained`` (float32 safetensors)."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from diffusion_gym.tokenizer import save_clip_tokenizer

    torch.manual_seed(seed)
    tokenizer_folder = save_clip_tokenizer(folder.parent / f"{folder.name}-tokenizer", model_max_length=77)
    pipeline = StableDiffusionPipeline(
        unet=UNet2DConditionModel(**SD15_UNET),
        vae=AutoencoderKL(**SD15_VAE),
        text_encoder=CLIPTextModel(CLIPTextConfig(**SD15_TEXT_ENCODER)),
        tokenizer=CLIPTokenizer.from_pretrained(tokenizer_folder),
        scheduler=PNDMScheduler(**{k: v for k, v in SD15_SCHEDULER.items() if k not in ("_class_name", "clip_sample")}),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.save_pretrained(folder, safe_serialization=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(SD15_SCHEDULER, indent=2))  # SD's own


class Phases:
    """Peak resident memory (``VmHWM``, reset between phases where Linux allows) and wall time of each phase.

    Resident memory, not allocated memory: safetensors maps the weights lazily (they become resident when first
    used, so the load phase looks small), and the allocator keeps freed memory (the RSS after a phase stays near
    its peak).
    """

    def __init__(self) -> None:
        self.rows: list[tuple[str, float, float, float]] = []  # (phase, peak GiB, RSS after GiB, seconds)
        self._reset_peak()
        self._start = time.perf_counter()

    @staticmethod
    def _status(field: str) -> float:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 2**20  # kB -> GiB
        return float("nan")

    @staticmethod
    def _reset_peak() -> None:
        with contextlib.suppress(OSError):
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS

    def end(self, phase: str) -> None:
        gc.collect()
        now = time.perf_counter()
        self.rows.append((phase, self._status("VmHWM"), self._status("VmRSS"), now - self._start))
        self._reset_peak()
        self._start = time.perf_counter()

    def report(self) -> str:
        lines = [f"{'phase':<44} {'peak GiB':>9} {'RSS after':>9} {'seconds':>8}"]
        lines += [f"{name:<44} {peak:9.2f} {after:9.2f} {seconds:8.1f}" for name, peak, after, seconds in self.rows]
        lines.append(f"process peak: {max(peak for _, peak, _, _ in self.rows):.2f} GiB")  # VmHWM is reset per phase
        return "\n".join(lines)


@pytest.mark.slow
def test_sd15_shaped_pipeline_runs_the_env_ddpo_herd_a_checkpoint_and_a_lora_export(tmp_path) -> None:
    import gymnasium as gym

    import diffusion_gym
    from agents import AgentConfig, make_agent
    from agents.checkpoint import export_lora_diffusers, load_checkpoint, save_checkpoint
    from diffusion_gym.sampling import PretrainedPolicy

    torch.set_num_threads(os.cpu_count() or 1)
    folder = tmp_path / "sd15-shaped"
    started = time.perf_counter()
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, __file__, str(folder)], check=True, env=environment, timeout=3600)
    build_seconds = time.perf_counter() - started
    build_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    phases = Phases()

    # ---- load through the env, as stable-diffusion-v1-5 would be
    env = gym.make_vec(
        diffusion_gym.ENV_ID,
        num_envs=1,
        vectorization_mode="vector_entry_point",
        model=folder,
        reward="jpeg-compressibility",
        prompts=[PROMPT],
        num_inference_steps=STEPS,
        array_backend="torch",
    )
    diffusion = env.unwrapped.diffusion
    assert diffusion.latent_shape == (4, 64, 64) and diffusion.embedding_dim == 768
    assert env.unwrapped.single_observation_space["prompt_embedding"].shape == (77, 768)
    assert sum(p.numel() for p in diffusion.unet.parameters()) == UNET_PARAMETERS
    assert sum(p.numel() for p in diffusion.text_encoder.parameters()) == TEXT_ENCODER_PARAMETERS
    assert sum(p.numel() for p in diffusion.vae.parameters()) == VAE_PARAMETERS
    assert diffusion.timesteps.tolist() == [501, 1]  # SD's "leading" spacing with steps_offset 1
    phases.end("load through the env (fp32)")

    # ---- one env episode, driven by the pretrained model with classifier-free guidance
    observation, info = env.reset(seed=0)
    assert observation["latent"].shape == (1, 4, 64, 64) and observation["prompt_embedding"].shape == (1, 77, 768)
    policy = PretrainedPolicy(env, guidance_scale=7.5, eta=1.0)
    for _ in range(STEPS):
        observation, rewards, terminated, _, info = env.step(policy(observation).action)
    assert bool(terminated.all()) and torch.isfinite(rewards).all()
    assert info["final_images"].shape == (1, 3, 512, 512)
    phases.end(f"env episode ({STEPS} steps x 2 UNet rows, 1 decode)")

    # ---- one DDPO and one HERD update, LoRA rank 4, gradient checkpointing
    config = AgentConfig(
        batch_size=1,
        batches_per_epoch=1,
        train_batch_size=1,
        inner_epochs=1,
        lora_rank=4,
        gradient_checkpointing=True,
        guidance_scale=7.5,
    )
    for name in ("ddpo", "herd"):  # the HERD agent is kept for the checkpoint below
        agent = make_agent(name, env, config)
        lora = agent.policy.trainable_parameters()
        assert (len(lora), sum(p.numel() for p in lora)) == (LORA_TENSORS, LORA_PARAMETERS)
        metrics = agent.train_epoch().metrics
        assert all(torch.isfinite(torch.as_tensor(float(v))) for v in metrics.values() if isinstance(v, (int, float)))
        phases.end(f"{name} update (sample + train, batch 1)")
        if name == "ddpo":
            agent.close()  # releases its adapter from the shared UNet

    # ---- a checkpoint save and a LoRA export of the HERD agent
    checkpoint = save_checkpoint(tmp_path / "run", "epoch-0001", agent.state_dict(), keep_last=None)
    assert load_checkpoint(checkpoint)["epoch"] == 1
    exported = export_lora_diffusers(diffusion.unet, tmp_path / "lora", adapter_name=agent.policy.adapter_name)
    from safetensors.torch import load_file

    assert len(load_file(exported)) == LORA_TENSORS
    phases.end("checkpoint save + LoRA export")
    agent.close()
    env.close()
    print(f"\nSD1.5-shaped pipeline, float32 on the CPU ({torch.get_num_threads()} threads)")
    print(f"build + save_pretrained (child process): peak {build_peak:.2f} GiB, {build_seconds:.0f} s")
    print(phases.report())


if __name__ == "__main__":  # the child process of the test: build and save the pipeline
    build_sd15_shaped_pipeline(Path(sys.argv[1]))
