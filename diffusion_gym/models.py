"""Loading text-to-image latent diffusion models by name, once per process.

A model is named, never passed as an object (``gym.make`` deep-copies its kwargs into the env spec):

* ``"shapes"`` : the embedded default world, a miniature Stable Diffusion shipped in this package;
* a local folder written by ``StableDiffusionPipeline.save_pretrained``;
* a diffusers hub id such as ``"stable-diffusion-v1-5/stable-diffusion-v1-5"`` (needs the weights in the
  local Hugging Face cache, or a network connection).

All three go through one path, ``diffusers.StableDiffusionPipeline.from_pretrained``. A folder may carry a
``diffusion_gym.json`` with the world's metadata (default reward, gold reward, prompt sets, guidance),
read into :class:`WorldInfo`.
"""

from __future__ import annotations

import json
import math
import os
import re
import threading
import warnings
from dataclasses import dataclass, fields
from pathlib import Path

import torch

from diffusion_gym.ddim import check_eta, check_scheduler_config
from diffusion_gym.prompts import check_prompt_list

ASSETS = Path(__file__).parent / "assets"
NAMED_MODELS: dict[str, Path] = {"shapes": ASSETS / "shapes" / "pipeline"}
WORLD_FILE = "diffusion_gym.json"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class UnknownModelError(ValueError):
    """A model name that is neither a named world, an existing folder, nor a hub id."""


@dataclass(frozen=True)
class WorldInfo:
    """Metadata a model folder can ship in ``diffusion_gym.json``; every field is optional."""

    world: str | None = None
    default_reward: str | None = None
    gold_reward: str | None = None
    proxy_reward: str | None = None
    default_prompts: str | None = None
    eval_prompts: str | None = None
    guidance_scale: float = 7.5
    num_inference_steps: int = 50
    eta: float = 1.0

    @classmethod
    def from_file(cls, path: Path) -> WorldInfo:
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"corrupt world metadata file {path}: {error}") from error
        known = {field.name for field in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"{path} has unknown keys {sorted(unknown)}; known keys: {sorted(known)}")
        if "eta" in data:
            try:
                check_eta(data["eta"])
            except (TypeError, ValueError) as error:
                raise ValueError(f"{path}: {error}") from None
        return cls(**data)


@dataclass
class DiffusionModel:
    """The frozen parts of a latent diffusion pipeline, on one device.

    The UNet is shared with policies that wrap it (e.g. with a LoRA adapter); everything else is frozen.
    """

    name: str
    unet: torch.nn.Module
    vae: torch.nn.Module
    text_encoder: torch.nn.Module
    tokenizer: object
    scheduler: object
    world: WorldInfo
    device: torch.device
    dtype: torch.dtype

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of a latent: UNet input channels and sample size."""
        sample_size = self.unet.config.sample_size
        height, width = (sample_size, sample_size) if isinstance(sample_size, int) else tuple(sample_size)
        return (self.unet.config.in_channels, height, width)

    @property
    def max_prompt_tokens(self) -> int:
        return int(self.tokenizer.model_max_length)

    def count_prompt_chunks(self, prompt: str) -> int:
        """How many ``model_max_length``-token windows the prompt needs (BOS and EOS in each window)."""
        num_ids = len(self.tokenizer(prompt, add_special_tokens=False, truncation=False).input_ids)
        return max(1, math.ceil(num_ids / (self.max_prompt_tokens - 2)))

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str] | tuple[str, ...], num_chunks: int = 1) -> torch.Tensor:
        """The frozen text encoder's last hidden states, ``(B, num_chunks * S, D)``, for a list or tuple of ``B``
        prompts (a bare ``str`` is a ``TypeError``; ``""`` is allowed: the unconditional embedding).

        With ``num_chunks == 1`` this is Stable Diffusion's own encoding (``S = model_max_length`` tokens) and a
        prompt that needs more tokens is refused: truncating it would break the lossless goal. With
        ``num_chunks > 1``, the token ids are cut into windows of ``S - 2``, each wrapped in BOS/EOS and padded,
        encoded separately and concatenated along the sequence (the long-prompt scheme of compel and the
        A1111 web UI); windows past the end of a prompt are empty (BOS, EOS, padding). The UNet's cross-attention
        takes any sequence length.
        """
        prompts = check_prompt_list(prompts, "prompts")  # a bare str is refused, not iterated
        window = self.max_prompt_tokens - 2
        bos, eos = self.tokenizer.bos_token_id, self.tokenizer.eos_token_id
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else eos
        rows = []
        for prompt in prompts:
            ids = self.tokenizer(prompt, add_special_tokens=False, truncation=False).input_ids
            if len(ids) > num_chunks * window:
                raise ValueError(
                    f"prompt is {len(ids) + 2} tokens, but the text encoder of {self.name!r} takes at most "
                    f"{self.max_prompt_tokens} per window and the env uses max_prompt_chunks={num_chunks}; "
                    f"truncating it would break the lossless goal (raise max_prompt_chunks): {prompt!r}"
                )
            for chunk in range(num_chunks):
                piece = [bos, *ids[chunk * window : (chunk + 1) * window], eos]
                rows.append(piece + [pad] * (self.max_prompt_tokens - len(piece)))
        input_ids = torch.tensor(rows, device=self.device)  # (B * num_chunks, S)
        hidden = self.text_encoder(input_ids)[0].to(self.dtype)  # (B * num_chunks, S, D)
        return hidden.reshape(len(prompts), num_chunks * self.max_prompt_tokens, -1)  # (B, num_chunks * S, D)

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents ``(B, C, h, w)`` -> images ``(B, 3, H, W)`` quantised to 8 bits, as floats in ``[0, 1]``.

        Quantising makes the image the reward sees the image a user would save.
        """
        scaled = latents.to(self.vae.dtype) / self.vae.config.scaling_factor
        images = self.vae.decode(scaled).sample  # (B, 3, H, W) in about [-1, 1]
        pixels = ((images.float() / 2 + 0.5).clamp(0, 1) * 255).round()
        return pixels / 255


_CACHE: dict[tuple[str, str, str], DiffusionModel] = {}
_LOCK = threading.Lock()


DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
DEVICE_TYPES = ("cpu", "cuda", "mps")


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``"float32"``, ``"float16"``, ``"bfloat16"`` or the torch dtype -> the torch dtype; else ``ValueError``."""
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype in DTYPES:
        return DTYPES[dtype]
    raise ValueError(f"dtype must be one of {', '.join(map(repr, DTYPES))} (or that torch dtype), got {dtype!r}")


def resolve_device(device: str | torch.device) -> torch.device:
    """A torch device this process can use (``cpu``, ``cuda[:i]``, ``mps``); else a ``ValueError`` naming it."""
    if not isinstance(device, (str, torch.device)):
        raise TypeError(f"device must be a str or torch.device, got {type(device).__name__}: {device!r}")
    try:
        resolved = torch.device(device)
    except RuntimeError as error:
        raise ValueError(f"device={device!r} is not a torch device ({', '.join(DEVICE_TYPES)}): {error}") from None
    if resolved.type not in DEVICE_TYPES:
        raise ValueError(f"device={device!r}: the env runs on {', '.join(DEVICE_TYPES)}, not {resolved.type!r}")
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device={device!r}, but CUDA is not available to this torch ({torch.__version__}; "
                "torch.cuda.is_available() is False); use device='cpu'"
            )
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(f"device={device!r}, but this machine has {torch.cuda.device_count()} CUDA device(s)")
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device={device!r}, but MPS is not available (torch.backends.mps.is_available() is False)")
    return resolved


def resolve_model(name: str | os.PathLike[str]) -> str:
    """Map a model name to what ``from_pretrained`` takes: a folder path or a hub id.

    ``name`` is a named world, a folder (a ``str`` or a path object) or a hub id. Raises ``FileNotFoundError``
    for a path that does not exist, and :class:`UnknownModelError` for a name that is neither a named world,
    an existing folder nor a hub id.
    """
    if isinstance(name, os.PathLike):
        name = os.fspath(name)
    if not isinstance(name, str) or not name:
        raise UnknownModelError(f"model must be a non-empty string or a path, got {name!r}")
    if name in NAMED_MODELS:
        folder = NAMED_MODELS[name]
        if not (folder / "model_index.json").exists():
            raise FileNotFoundError(
                f"the embedded model {name!r} is missing from {folder}; rebuild it with "
                "`python -m diffusion_gym.shapes.offline.train`"
            )
        return str(folder)
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").exists():
            raise FileNotFoundError(f"model folder {path} has no model_index.json (not a diffusers pipeline)")
        return str(path)
    if path.is_absolute() or name.startswith((".", "~")) or path.exists():
        raise FileNotFoundError(f"model folder {name!r} does not exist")
    if _HUB_ID.match(name):
        return name
    raise UnknownModelError(
        f"unknown model {name!r}: expected one of {sorted(NAMED_MODELS)}, a pipeline folder, "
        "or a diffusers hub id such as 'stable-diffusion-v1-5/stable-diffusion-v1-5'"
    )


def load_model(
    name: str | os.PathLike[str], device: str | torch.device = "cpu", dtype: str | torch.dtype = "float32"
) -> DiffusionModel:
    """Load (once per process, device and dtype) the model named ``name``; see :func:`resolve_model`,
    :func:`resolve_device` and :func:`resolve_dtype` for the errors."""
    source = resolve_model(name)
    name = os.fspath(name)
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype)
    key = (source, str(device), str(torch_dtype))
    with _LOCK:
        if key not in _CACHE:
            _CACHE[key] = _load_uncached(name, source, device, torch_dtype)
        return _CACHE[key]


def _load_uncached(name: str, source: str, device: torch.device, dtype: torch.dtype) -> DiffusionModel:
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    for part in ("tokenizer", "text_encoder", "unet", "vae", "scheduler"):  # diffusers would make do without some
        if Path(source).is_dir() and not (Path(source) / part).is_dir():
            raise FileNotFoundError(f"model folder {source} has no {part}/ folder (a Stable Diffusion pipeline has)")
    try:
        # The folder's own scheduler config, checked before any weights load: the pipeline's constructor rewrites
        # some of its flags (clip_sample=True and steps_offset != 1, with a FutureWarning) before we could see them.
        scheduler = DDIMScheduler.from_config(DDIMScheduler.load_config(source, subfolder="scheduler"))
        check_scheduler_config(scheduler)
        with warnings.catch_warnings():  # newer diffusers renamed torch_dtype to dtype; older ones lack dtype
            warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
            pipeline = StableDiffusionPipeline.from_pretrained(
                source, torch_dtype=dtype, safety_checker=None, requires_safety_checker=False
            )
    except OSError as error:
        where = "folder" if Path(source).exists() else "hub id (is it in the local Hugging Face cache?)"
        raise OSError(f"could not load model {name!r} from {where} {source!r}: {error}") from error
    check_tokenizer(name, pipeline.tokenizer, pipeline.text_encoder)
    world_file = Path(source) / WORLD_FILE
    world = WorldInfo.from_file(world_file) if world_file.exists() else WorldInfo()
    for module in (pipeline.unet, pipeline.vae, pipeline.text_encoder):
        module.to(device).eval().requires_grad_(False)
    return DiffusionModel(
        name=name,
        unet=pipeline.unet,
        vae=pipeline.vae,
        text_encoder=pipeline.text_encoder,
        tokenizer=pipeline.tokenizer,
        scheduler=scheduler,
        world=world,
        device=device,
        dtype=dtype,
    )


def check_tokenizer(name: str, tokenizer, text_encoder) -> None:
    """Refuse a pipeline whose tokenizer cannot make the text encoder's input (missing, or a window that is unset
    or longer than the encoder's position embeddings)."""
    if tokenizer is None:
        raise ValueError(
            f"model {name!r} has no tokenizer (its tokenizer/ folder); the env encodes goal prompts with it"
        )
    length = getattr(tokenizer, "model_max_length", None)
    positions = int(text_encoder.config.max_position_embeddings)
    if not isinstance(length, int) or not 2 < length <= positions:
        unset = " (not set in tokenizer/tokenizer_config.json: transformers' default)" if (length or 0) > 1e12 else ""
        raise ValueError(
            f"the tokenizer of model {name!r} has model_max_length={length}{unset}, but its text encoder takes "
            f"max_position_embeddings={positions} tokens; set model_max_length in tokenizer/tokenizer_config.json "
            "(Stable Diffusion's is 77)"
        )


def build_tiny_pipeline(folder: str | Path, seed: int = 0, sample_size: int = 8, max_prompt_tokens: int = 77) -> Path:
    """Build a tiny random Stable Diffusion pipeline offline and ``save_pretrained`` it into ``folder``.

    UNet, AutoencoderKL (32 px images, ``4 x sample_size x sample_size`` latents for sample_size 8), a 2-layer
    CLIP text encoder and a real CLIP BPE tokenizer, and an SD-style DDIM scheduler. For tests: it goes
    through the same ``from_pretrained`` path as Stable Diffusion v1.5.
    """
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from diffusion_gym.tokenizer import save_clip_tokenizer

    folder = Path(folder)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 32),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=4,
        norm_num_groups=8,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(8, 16, 16),
        latent_channels=4,
        norm_num_groups=8,
        sample_size=sample_size * 4,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=max_prompt_tokens,
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
        )
    )
    tokenizer = CLIPTokenizer.from_pretrained(save_clip_tokenizer(folder / "_tokenizer", max_prompt_tokens))
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    pipeline = StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.save_pretrained(folder, safe_serialization=True)
    for leftover in sorted((folder / "_tokenizer").iterdir()):
        leftover.unlink()
    (folder / "_tokenizer").rmdir()
    return folder
