"""Train the Shapes world's miniature Stable Diffusion and its CLIP proxy, from scratch, on the CPU.

    python -m diffusion_gym.shapes.offline.train --output diffusion_gym/assets/shapes

Stages (seeded; each with a progress bar):

1. generate ``--num-scenes`` scenes with two captions each, skipping the held-out / standard / long scenes;
2. a tiny ``AutoencoderKL`` (32x32x3 -> 4x8x8); its ``scaling_factor`` is measured on the data so that
   scaled latents have unit variance;
3. a tiny ``CLIPTextModel`` (real CLIP BPE tokenizer, hidden 64) jointly with a ``UNet2DConditionModel``
   (v-prediction on a zero-terminal-SNR schedule with half of every batch at the noisiest steps, see
   :func:`sample_training_timesteps`; classifier-free guidance dropout of the caption; the saved weights are
   diffusers' ``EMAModel`` average, see :func:`make_ema`);
4. the ``shapes-clip`` proxy (see :mod:`diffusion_gym.shapes.proxy`) on VAE reconstructions.

Every stage optimises with AdamW on diffusers' cosine learning-rate schedule with a linear warmup
(:func:`adamw_with_cosine_schedule`).

Writes ``<output>/pipeline`` (a ``StableDiffusionPipeline.save_pretrained`` folder with the matching DDIM
scheduler, trailing timestep spacing, and ``diffusion_gym.json``) and ``<output>/proxy_clip``. Weights are
stored in fp16 to keep the repository small; ``from_pretrained`` loads them as fp32 (the configs say so).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers.optimization import get_cosine_schedule_with_warmup
from diffusers.training_utils import EMAModel
from scipy import ndimage
from tqdm.auto import tqdm

from diffusion_gym.ddim import check_scheduler_config
from diffusion_gym.shapes.gold import gold_score
from diffusion_gym.shapes.prompt_sets import is_excluded
from diffusion_gym.shapes.proxy import ProxyConfig, build_model, save_proxy, tokenize
from diffusion_gym.shapes.scenes import caption, render, sample_scene

logger = logging.getLogger(__name__)

MODEL_MAX_LENGTH = 48  # tokens; the longest generated caption has 48 with <start> and <end>
NUM_TRAIN_TIMESTEPS = 1000
BETA_START, BETA_END = 0.00085, 0.012  # Stable Diffusion's scaled_linear schedule
WARMUP_STEPS = 100  # learning-rate warmup of the VAE, decoder and UNet stages
PROXY_WARMUP_STEPS = 50  # learning-rate warmup of the proxy stage
FOREGROUND_WEIGHT = 10.0  # VAE loss weight of object pixels (and their 1-px ring) relative to the background
_FOUR_NEIGHBOURS = ndimage.generate_binary_structure(2, 1)  # (3, 3) cross: the dilation of the edge ring


@dataclass
class TrainConfig:
    output: str = "diffusion_gym/assets/shapes"
    seed: int = 0
    threads: int = 2
    num_scenes: int = 40_000
    vae_steps: int = 900
    vae_batch: int = 16
    vae_lr: float = 2e-3
    kl_weight: float = 1e-6
    decoder_steps: int = 600
    decoder_batch: int = 32
    decoder_lr: float = 1e-3
    unet_steps: int = 4000  # half of each batch goes to t >= late_min; the README's world history has the rest
    unet_batch: int = 32
    unet_lr: float = 1.5e-3
    prediction_type: str = "v_prediction"  # or "epsilon" (the first three worlds)
    zero_terminal_snr: bool = True  # rescale the betas so that alpha_bar_T = 0 (Lin et al., 2024)
    late_fraction: float = 0.5  # share of every UNet batch drawn at t >= late_min (0: uniform t)
    late_min: int = 900
    cfg_dropout: float = 0.1
    ema_decay: float = 0.998
    proxy_steps: int = 150
    proxy_batch: int = 256
    guidance_scale: float = 4.0  # the defaults written to diffusion_gym.json
    num_inference_steps: int = 20


# The --help line of each TrainConfig field (parse_args makes one flag per field; a test checks none is missing).
FIELD_HELP: dict[str, str] = {
    "output": "folder that receives pipeline/ and proxy_clip/ (the default overwrites the committed world)",
    "seed": "seed of the scenes, the initialisations and every stage's batches",
    "threads": "torch CPU threads",
    "num_scenes": "procedural training scenes, two captions each (held-out, standard and long scenes skipped)",
    "vae_steps": "VAE stage: optimiser steps",
    "vae_batch": "VAE stage: images per step",
    "vae_lr": "VAE stage: AdamW learning rate (cosine schedule)",
    "kl_weight": "VAE stage: weight of the KL term beside the weighted L1 reconstruction loss",
    "decoder_steps": "decoder refinement stage (encoder frozen): optimiser steps",
    "decoder_batch": "decoder refinement stage: images per step",
    "decoder_lr": "decoder refinement stage: AdamW learning rate (cosine schedule)",
    "unet_steps": "text encoder + UNet stage: optimiser steps",
    "unet_batch": "text encoder + UNet stage: scenes per step",
    "unet_lr": "text encoder + UNet stage: AdamW learning rate (cosine schedule)",
    "prediction_type": "what the UNet predicts: v_prediction or epsilon",
    "zero_terminal_snr": "rescale the betas so that alpha_bar_T = 0 (needs v_prediction)",
    "late_fraction": "share of every UNet batch drawn at t >= --late-min (0: uniform timesteps)",
    "late_min": "the first timestep counted as late, for --late-fraction",
    "cfg_dropout": "probability that a training caption is replaced by the empty prompt (classifier-free guidance)",
    "ema_decay": "decay of the UNet's and text encoder's exponential moving average (the saved weights)",
    "proxy_steps": "shapes-clip proxy stage: optimiser steps",
    "proxy_batch": "shapes-clip proxy stage: image-caption pairs per step",
    "guidance_scale": "guidance scale written to diffusion_gym.json as the world's default",
    "num_inference_steps": "DDIM steps written to diffusion_gym.json as the world's default",
}


@dataclass(frozen=True)
class Dataset:
    images: np.ndarray  # (N, 32, 32, 3) uint8
    captions: list[tuple[str, str]]  # two true captions per scene


def make_dataset(num_scenes: int, seed: int) -> Dataset:
    """``num_scenes`` random scenes (1-3 objects) with two captions each, none of them held out."""
    rng = np.random.default_rng(seed)
    images, captions = [], []
    while len(images) < num_scenes:
        scene = sample_scene(rng)
        pair = (caption(scene, rng), caption(scene, rng))
        if any(is_excluded(scene, c) for c in pair):
            continue
        images.append(render(scene))
        captions.append(pair)
    return Dataset(np.stack(images), captions)


def _to_model_space(images: np.ndarray) -> torch.Tensor:
    """``(N, 32, 32, 3)`` uint8 -> ``(N, 3, 32, 32)`` float in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1


def adamw_with_cosine_schedule(
    params: list[torch.nn.Parameter], lr: float, steps: int, warmup: int = WARMUP_STEPS, weight_decay: float = 0.0
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW and diffusers' ``get_cosine_schedule_with_warmup``, the optimiser of every stage.

    The learning rate of optimiser step ``s = 0, 1, ..., steps - 1`` is ``lr * s / warmup`` while ``s < warmup``,
    then ``lr * 0.5 * (1 + cos(pi * (s - warmup) / (steps - warmup)))``: a linear warmup from 0, then a half
    cosine down to 0. The committed world was trained before the switch to diffusers, on a schedule of the
    project's own, ``lr * min(1, (s + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + cos(pi * s / steps)))`` (for the
    proxy ``lr * min(1, (s + 1) / 50) * 0.5 * (1 + cos(pi * s / steps))``); ``tests/test_shapes_train.py``
    measures how far apart the two are.
    """
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    return optimizer, get_cosine_schedule_with_warmup(optimizer, num_warmup_steps=warmup, num_training_steps=steps)


def make_ema(params: list[torch.nn.Parameter], decay: float) -> EMAModel:
    """diffusers' ``EMAModel`` of ``params``: after the ``k``-th optimiser step (``k = 1, 2, ...``) it sets
    ``ema <- d_k * ema + (1 - d_k) * param`` with ``d_k = min(decay, k / (9 + k))`` for ``k >= 2``; ``d_1 = 0``
    (the first step copies the weights). The warmup of :func:`adamw_with_cosine_schedule` makes the first
    optimiser step a no-op (learning rate 0), so ``ema`` starts from the initial weights."""
    return EMAModel(params, decay=decay, min_decay=0.0, update_after_step=0, use_ema_warmup=False, foreach=True)


def build_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=32,
    )


def build_text_encoder():
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=3,
        num_attention_heads=4,
        max_position_embeddings=MODEL_MAX_LENGTH,
        projection_dim=64,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )
    return CLIPTextModel(config)


def build_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(64, 128),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=64,
        attention_head_dim=4,  # diffusers' legacy name: the number of heads
        norm_num_groups=32,
    )


def _schedule_kwargs(config: TrainConfig) -> dict:
    """The noise schedule shared by training (DDPM) and sampling (DDIM)."""
    if config.prediction_type not in ("epsilon", "v_prediction"):  # the two targets train_unet computes
        raise ValueError(f"prediction_type must be 'epsilon' or 'v_prediction', got {config.prediction_type!r}")
    return dict(
        num_train_timesteps=NUM_TRAIN_TIMESTEPS,
        beta_start=BETA_START,
        beta_end=BETA_END,
        beta_schedule="scaled_linear",
        prediction_type=config.prediction_type,
        rescale_betas_zero_snr=config.zero_terminal_snr,
    )


def build_scheduler(config: TrainConfig):
    """The sampling scheduler saved with the pipeline, checked by :func:`check_scheduler_config` (which refuses
    epsilon-prediction on a zero-terminal-SNR schedule).

    With a zero-terminal-SNR schedule, sampling starts at ``t = T - 1`` ("trailing" spacing, Lin et al., 2024,
    3.3), the one step where the model has learnt that the input holds no information about the image.
    """
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler(
        **_schedule_kwargs(config),
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=0 if config.zero_terminal_snr else 1,
        timestep_spacing="trailing" if config.zero_terminal_snr else "leading",
    )
    check_scheduler_config(scheduler)
    return scheduler


def sample_training_timesteps(batch_size: int, late_fraction: float, late_min: int, generator=None) -> torch.Tensor:
    """``(B,)`` training timesteps: the first ``round(late_fraction * B)`` uniform in ``[late_min, T)``, the rest
    uniform in ``[0, T)``.

    Why: in a scene the layout (which object sits in which cell) is fixed by the noisiest steps. At uniform
    ``t`` the model sees few of them and learns to read the layout off the faint image left in ``x_t``; it
    then ignores position words altogether (the README's world section measures this). Oversampling the
    steps where only the caption can say where to draw teaches it to follow them.
    """
    if not 0.0 <= late_fraction <= 1.0 or not 0 <= late_min < NUM_TRAIN_TIMESTEPS:
        raise ValueError(f"need 0 <= late_fraction <= 1 and 0 <= late_min < {NUM_TRAIN_TIMESTEPS}")
    timesteps = torch.randint(0, NUM_TRAIN_TIMESTEPS, (batch_size,), generator=generator)
    num_late = round(late_fraction * batch_size)
    timesteps[:num_late] = torch.randint(late_min, NUM_TRAIN_TIMESTEPS, (num_late,), generator=generator)
    return timesteps


def _pixel_weights(images: np.ndarray) -> torch.Tensor:
    """``(N, 1, 32, 32)`` L1 loss weights: ``FOREGROUND_WEIGHT`` on each object and the 1-px ring of background
    around it (4-neighbour dilation), 1 on the rest of the plain background.

    Objects cover a few percent of the pixels, hence the up-weighting. The ring matters: a weighted L1 loss
    is minimised by a weighted median, so with the object pixels alone weighted ``w`` times, a boundary pixel
    the decoder is unsure about is drawn in the object's colour as soon as P(object) > 1 / (1 + w). Objects
    then grow by about a pixel on every side, which turns small objects "large" for the gold scorer and
    rounds squares and triangles. Weighting both sides of every edge equally removes that bias.
    """
    background = np.median(images.reshape(len(images), -1, 3), axis=1)  # (N, 3)
    foreground = (images != background[:, None, None, :]).any(-1)  # (N, 32, 32)
    edge_balanced = ndimage.binary_dilation(foreground, structure=_FOUR_NEIGHBOURS[None])  # (N, 32, 32), per image
    return torch.from_numpy(1.0 + (FOREGROUND_WEIGHT - 1.0) * edge_balanced).float()[:, None]


def refine_decoder(vae, data: Dataset, means: torch.Tensor, config: TrainConfig) -> None:
    """Fine-tune the decoder alone on the fixed posterior means.

    The encoder, hence the latent space the UNet learns, is frozen, so this stage is independent of the UNet
    stage; it draws its batches from its own generator (``seed + 1``) and uses no torch randomness.
    """
    rng = np.random.default_rng(config.seed + 1)
    pixels, weights = _to_model_space(data.images), _pixel_weights(data.images)
    params = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    for param in params:
        param.requires_grad_(True)
    vae.train()
    optimizer, schedule = adamw_with_cosine_schedule(params, config.decoder_lr, config.decoder_steps)
    bar = tqdm(range(config.decoder_steps), desc="VAE decoder refinement")
    running = None
    for _ in bar:
        index = torch.from_numpy(rng.choice(len(pixels), config.decoder_batch, replace=False))
        reconstruction = vae.decode(means[index]).sample
        loss = (weights[index] * (reconstruction - pixels[index]).abs()).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        bar.set_postfix(weighted_l1=f"{running:.4f}")
    vae.eval().requires_grad_(False)


def train_vae(data: Dataset, config: TrainConfig, rng: np.random.Generator):
    """A deterministic-decoding KL autoencoder: decode the posterior mean, L1 loss with object pixels
    weighted ``FOREGROUND_WEIGHT`` times together with their edges (:func:`_pixel_weights`), a tiny KL term."""
    vae = build_vae().train()
    pixels = _to_model_space(data.images)  # (N, 3, 32, 32)
    weights = _pixel_weights(data.images)
    optimizer, schedule = adamw_with_cosine_schedule(list(vae.parameters()), config.vae_lr, config.vae_steps)
    bar = tqdm(range(config.vae_steps), desc="VAE")
    running = None
    for _ in bar:
        index = torch.from_numpy(rng.choice(len(pixels), config.vae_batch, replace=False))
        batch = pixels[index]
        posterior = vae.encode(batch).latent_dist
        reconstruction = vae.decode(posterior.mean).sample
        l1 = (weights[index] * (reconstruction - batch).abs()).mean()
        loss = l1 + config.kl_weight * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        running = l1.item() if running is None else 0.98 * running + 0.02 * l1.item()
        bar.set_postfix(weighted_l1=f"{running:.4f}")
    return vae.eval().requires_grad_(False)


@torch.no_grad()
def encode_dataset(vae, data: Dataset, batch_size: int = 500) -> torch.Tensor:
    """Posterior means of every image, ``(N, 4, 8, 8)`` (the decoder was trained on means)."""
    means = []
    pixels = _to_model_space(data.images)
    for start in tqdm(range(0, len(pixels), batch_size), desc="encode"):
        posterior = vae.encode(pixels[start : start + batch_size]).latent_dist
        means.append(posterior.mean)
    return torch.cat(means)


@torch.no_grad()
def reconstruction_gold(vae, data: Dataset, count: int = 256) -> float:
    pixels = _to_model_space(data.images[:count])
    reconstruction = vae.decode(vae.encode(pixels).latent_dist.mean).sample
    prompts = [pair[0] for pair in data.captions[:count]]
    return float(gold_score((reconstruction + 1) / 2, prompts).mean())


def train_unet(data: Dataset, means: torch.Tensor, scaling: float, config: TrainConfig, rng):
    from diffusers import DDPMScheduler
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(Path(config.output) / "pipeline" / "tokenizer")
    flat = [c for pair in data.captions for c in pair]
    tokens = tokenizer(flat, padding="max_length", max_length=MODEL_MAX_LENGTH, truncation=True, return_tensors="pt")
    ids = tokens.input_ids.view(len(data.captions), 2, MODEL_MAX_LENGTH)  # (N, 2, L)
    empty = tokenizer([""], padding="max_length", max_length=MODEL_MAX_LENGTH, return_tensors="pt").input_ids[0]

    text_encoder, unet = build_text_encoder().train(), build_unet().train()
    params = list(text_encoder.parameters()) + list(unet.parameters())
    ema = make_ema(params, config.ema_decay)
    optimizer, schedule = adamw_with_cosine_schedule(params, config.unet_lr, config.unet_steps)
    noise_scheduler = DDPMScheduler(**_schedule_kwargs(config))
    bar = tqdm(range(config.unet_steps), desc="UNet + text encoder")
    running = None
    for _ in bar:
        index = torch.from_numpy(rng.choice(len(ids), config.unet_batch, replace=False))
        variant = torch.from_numpy(rng.integers(2, size=config.unet_batch))
        batch_ids = ids[index, variant]  # (B, L)
        drop = torch.from_numpy(rng.random(config.unet_batch) < config.cfg_dropout)
        batch_ids[drop] = empty
        latents = means[index] * scaling  # (B, 4, 8, 8)
        noise = torch.randn_like(latents)
        timesteps = sample_training_timesteps(config.unet_batch, config.late_fraction, config.late_min)
        noisy = noise_scheduler.add_noise(latents, noise, timesteps)
        if config.prediction_type == "v_prediction":
            # v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x_0 (Salimans & Ho, 2022)
            target = noise_scheduler.get_velocity(latents, noise, timesteps)
        else:
            target = noise
        hidden = text_encoder(batch_ids).last_hidden_state  # (B, L, 64)
        loss = torch.nn.functional.mse_loss(unet(noisy, timesteps, hidden).sample, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        ema.step(params)
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        bar.set_postfix(loss=f"{running:.4f}")
    ema.copy_to(params)  # the saved weights are the moving average
    return tokenizer, text_encoder.eval().requires_grad_(False), unet.eval().requires_grad_(False)


def train_proxy(
    images: np.ndarray,
    captions: Sequence[Sequence[str]],
    *,
    steps: int,
    batch_size: int = 256,
    lr: float = 2e-3,
    seed: int = 0,
    config: ProxyConfig | None = None,
    progress: bool = True,
) -> tuple[torch.nn.Module, ProxyConfig]:
    """Train the tiny CLIP contrastively (``open_clip.ClipLoss``) on ``(N, 32, 32, 3)`` uint8 images.

    ``captions[i]`` holds one or more true captions of image ``i``; one is drawn per step.
    """
    import open_clip

    config = config or ProxyConfig()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = build_model(config).train()
    loss_fn = open_clip.ClipLoss()
    params = list(model.parameters())
    optimizer, schedule = adamw_with_cosine_schedule(params, lr, steps, PROXY_WARMUP_STEPS, weight_decay=0.05)
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2)  # (N, 3, 32, 32) uint8
    variants = len(captions[0])
    flat = [c for group in captions for c in group]
    tokens = tokenize(flat, config.context_length).view(len(captions), variants, -1)  # (N, V, L)
    for _ in tqdm(range(steps), desc="proxy CLIP", disable=not progress):
        index = torch.from_numpy(rng.choice(len(pixels), size=batch_size, replace=False))
        choice = torch.from_numpy(rng.integers(variants, size=batch_size))
        batch = pixels[index].float() / 127.5 - 1
        batch = batch + 0.03 * torch.randn_like(batch)  # mild noise, as in imperfect samples
        image_features = torch.nn.functional.normalize(model.encode_image(batch), dim=-1)
        text_features = torch.nn.functional.normalize(model.encode_text(tokens[index, choice]), dim=-1)
        loss = loss_fn(image_features, text_features, model.logit_scale.exp())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
    return model.eval(), config


def save_pipeline(folder: Path, vae, text_encoder, tokenizer, unet, scheduler, config: TrainConfig) -> None:
    """Save an fp16 ``StableDiffusionPipeline`` folder whose configs ask for fp32 on load, plus metadata."""
    from diffusers import StableDiffusionPipeline

    pipeline = StableDiffusionPipeline(
        vae=vae.half(),
        text_encoder=text_encoder.half(),
        tokenizer=tokenizer,
        unet=unet.half(),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.save_pretrained(folder, safe_serialization=True)
    # The fast-tokenizer file (3.6 MB) is redundant: CLIPTokenizer loads vocab.json + merges.txt.
    (folder / "tokenizer" / "tokenizer.json").unlink(missing_ok=True)
    text_config = folder / "text_encoder" / "config.json"
    data = json.loads(text_config.read_text())
    for key in ("dtype", "torch_dtype"):
        if key in data:
            data[key] = "float32"
    text_config.write_text(json.dumps(data, indent=2) + "\n")
    for module in (vae, text_encoder, unet):
        module.float()
    write_metadata(folder, config.guidance_scale, config.num_inference_steps)


def write_metadata(folder: Path, guidance_scale: float, num_inference_steps: int) -> None:
    metadata = {
        "world": "shapes",
        "default_reward": "shapes-gold",
        "gold_reward": "shapes-gold",
        "proxy_reward": "shapes-clip",
        "default_prompts": "shapes-train",
        "eval_prompts": "shapes-heldout",
        "guidance_scale": float(guidance_scale),
        "num_inference_steps": int(num_inference_steps),
        "eta": 1.0,
    }
    (Path(folder) / "diffusion_gym.json").write_text(json.dumps(metadata, indent=2) + "\n")


@torch.no_grad()
def reconstruct(vae, images: np.ndarray, batch_size: int = 500) -> np.ndarray:
    """VAE reconstructions (posterior mean) of ``(N, 32, 32, 3)`` uint8 images, as uint8."""
    out = []
    for start in range(0, len(images), batch_size):
        decoded = vae.decode(vae.encode(_to_model_space(images[start : start + batch_size])).latent_dist.mean).sample
        out.append(((decoded.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy())
    return np.concatenate(out)


def parse_args(argv: list[str] | None = None) -> tuple[TrainConfig, bool]:
    """``(config, refine_only)`` from the command line: one flag per :class:`TrainConfig` field."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for field, value in asdict(TrainConfig()).items():
        flag = "--" + field.replace("_", "-")
        help_text = FIELD_HELP[field] + " (default: %(default)s)"
        if isinstance(value, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=value, help=help_text)
        else:
            parser.add_argument(flag, type=type(value), default=value, help=help_text)
    parser.add_argument(
        "--refine-only",
        action="store_true",
        help="resume: load <output>/pipeline, run only the decoder refinement and the proxy stages",
    )
    args = vars(parser.parse_args(argv))
    refine_only = args.pop("refine_only")
    return TrainConfig(**args), refine_only


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(format="%(message)s")
    logging.getLogger("diffusion_gym").setLevel(logging.INFO)
    config, refine_only = parse_args(argv)
    scheduler = build_scheduler(config)  # checked here, before the training that uses its schedule
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    output = Path(config.output)
    pipeline_dir, proxy_dir = output / "pipeline", output / "proxy_clip"
    started = time.perf_counter()
    timings: dict[str, float] = {}

    from diffusion_gym.tokenizer import save_clip_tokenizer

    if not refine_only:
        save_clip_tokenizer(pipeline_dir / "tokenizer", model_max_length=MODEL_MAX_LENGTH)
    data = make_dataset(config.num_scenes, config.seed)
    timings["data"] = time.perf_counter() - started

    if refine_only:
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(pipeline_dir / "vae").eval().requires_grad_(False)
        means = encode_dataset(vae, data)
        scaling = float(vae.config.scaling_factor)
    else:
        vae = train_vae(data, config, rng)
        means = encode_dataset(vae, data)
        scaling = float(1.0 / means.std())
        vae.register_to_config(scaling_factor=scaling)
    recon_gold_before = reconstruction_gold(vae, data)
    refine_decoder(vae, data, means, config)
    recon_gold = reconstruction_gold(vae, data)
    timings["vae"] = time.perf_counter() - started - sum(timings.values())
    logger.info(
        "VAE: scaling_factor=%.4f, reconstruction gold=%.3f -> %.3f after decoder refinement",
        scaling,
        recon_gold_before,
        recon_gold,
    )

    if refine_only:
        vae.half().save_pretrained(pipeline_dir / "vae", safe_serialization=True)
        vae.float()
    else:
        tokenizer, text_encoder, unet = train_unet(data, means, scaling, config, rng)
        timings["unet"] = time.perf_counter() - started - sum(timings.values())
        save_pipeline(pipeline_dir, vae, text_encoder, tokenizer, unet, scheduler, config)

    reconstructions = reconstruct(vae, data.images)
    proxy, proxy_config = train_proxy(
        reconstructions, data.captions, steps=config.proxy_steps, batch_size=config.proxy_batch, seed=config.seed
    )
    save_proxy(proxy, proxy_config, proxy_dir)
    timings["proxy"] = time.perf_counter() - started - sum(timings.values())
    summary = {
        "config": asdict(config),
        "refine_only": refine_only,
        "vae_scaling_factor": scaling,
        "vae_reconstruction_gold_train_before_refinement": recon_gold_before,
        "vae_reconstruction_gold_train": recon_gold,
        "seconds": {k: round(v, 1) for k, v in timings.items()},
        "total_seconds": round(time.perf_counter() - started, 1),
    }
    name = "training_summary_refine.json" if refine_only else "training_summary.json"
    (output / name).write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
