"""The HERD paper's experiments (Tan & Mongstad) as named presets: ``{agent}-{prompt}-{reward}``.

* agents: ``ddpo``, ``dpok``, ``herd`` (HERD over DDPO, H = 1 batch) and ``herd-b2`` (H = 2 batches);
* prompts: ``standard`` (Sec. 4.1) and ``forest`` (the long prompt of Sec. 4.4: 94 CLIP tokens, so it is
  encoded in two 77-token windows, ``max_prompt_chunks=2``);
* rewards: ``imagereward`` and ``aesthetic`` (LAION aesthetic predictor);
* the paper's setup on Stable Diffusion v1.5: 12 samples per batch, 3 batches per epoch, 100 epochs, LoRA,
  50 DDIM steps with eta = 1 (TRL's DDPO defaults, on which the paper builds), guidance 7.5.

Use::

    settings = apply_preset("herd-forest-imagereward", {"model": "/path/to/tiny-sd", "epochs": 2})
    env = env_settings(settings).make(num_envs=settings["batch_size"])
    agent = make_agent(settings["agent"], env, AgentConfig(**agent_config_kwargs(settings)))
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from diffusion_gym.env_config import EnvConfig

STANDARD_PROMPT = (
    "A black cat and golden retriever dog. A hot ocean-side beach. Dramatic atmosphere, centered, rule of thirds, "
    "professional photo."
)
FOREST_PROMPT = (
    "Deep in an ancient forest, sunlight filters through towering trees to illuminate a tranquil clearing. Within "
    "this serene glade, a crystal-clear stream meanders lazily through beds of colorful wildflowers. Moss-covered "
    "rocks line the stream, where playful woodland creatures sip from the cool waters. Glistening fur and dappled "
    "sunlight surround the creatures as they frolic amongst the flowers. Beyond the clearing, the forest stretches "
    "away, hinting at hidden mysteries within its depths."
)
SD15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"

# Settings that are not AgentConfig fields configure the env (agents.envs.EnvConfig) or the run.
RUN_KEYS = ("preset", "description", "agent", "epochs")


@dataclass(frozen=True)
class Preset:
    """One experiment of the paper; ``overrides`` holds further AgentConfig fields (e.g. ``herd_base``)."""

    name: str
    description: str
    agent: str  # an agents.AGENT_NAMES name: "ddpo", "dpok" or "herd"
    reward: str
    prompts: str  # the prompt text (one training prompt)
    model: str = SD15
    epochs: int = 100
    batch_size: int = 12
    batches_per_epoch: int = 3
    train_batch_size: int = 12  # one optimiser step per sampling batch, as docs/scale.md's estimate assumes
    train_timestep_fraction: float = 1.0  # every denoising step is trained (DDPO, the HERD paper)
    num_inference_steps: int = 50
    guidance_scale: float = 7.5
    eta: float = 1.0
    lora_rank: int = 4
    herd_buffer_batches: int = 1
    max_prompt_chunks: int = 1
    overrides: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "overrides", MappingProxyType(dict(self.overrides)))

    def settings(self) -> dict[str, Any]:
        """The preset as one flat dict of settings (``preset`` = its name; ``overrides`` merged in)."""
        values = {
            f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("name", "overrides")
        }
        return {"preset": self.name, **values, **self.overrides}


_PROMPTS = {"standard": (STANDARD_PROMPT, 1, "the standard prompt (Sec. 4.1)"),
            "forest": (FOREST_PROMPT, 2, "the long forest prompt (Sec. 4.4, 94 CLIP tokens: 2 windows)")}  # fmt: skip
_REWARDS = {"imagereward": "ImageReward", "aesthetic": "the LAION aesthetic predictor"}
_AGENTS: dict[str, tuple[str, int, str]] = {  # preset prefix -> (agent, herd_buffer_batches, description)
    "ddpo": ("ddpo", 1, "DDPO"),
    "dpok": ("dpok", 1, "DPOK (KL-regularised policy gradient with a value baseline)"),
    "herd": ("herd", 1, "HERD over DDPO, replay buffer H = 1 batch"),
    "herd-b2": ("herd", 2, "HERD-b2: HERD over DDPO, replay buffer H = 2 batches"),
}


def _build_presets() -> dict[str, Preset]:
    presets = {}
    for prefix, (agent, buffer, agent_text) in _AGENTS.items():
        for prompt_name, (prompt, chunks, prompt_text) in _PROMPTS.items():
            for reward, reward_text in _REWARDS.items():
                name = f"{prefix}-{prompt_name}-{reward}"
                presets[name] = Preset(
                    name=name,
                    description=f"{agent_text} on SD1.5 with {reward_text}, {prompt_text}",
                    agent=agent,
                    reward=reward,
                    prompts=prompt,
                    herd_buffer_batches=buffer,
                    max_prompt_chunks=chunks,
                    overrides={"herd_base": "ddpo"} if agent == "herd" else {},
                )
    return presets


PRESETS: dict[str, Preset] = _build_presets()


def preset_names() -> list[str]:
    return sorted(PRESETS)


def apply_preset(name: str, overrides: Mapping[str, Any] | None = None, *, skip_none: bool = True) -> dict[str, Any]:
    """Preset ``name``'s settings with ``overrides`` on top (e.g. ``{"model": tiny, "epochs": 2}``).

    ``skip_none``: override values that are ``None`` are ignored (argparse's "flag not given"). ``ValueError``
    listing every preset for an unknown name.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; the presets are: {', '.join(preset_names())}")
    settings = PRESETS[name].settings()
    for key, value in (overrides or {}).items():
        if key == "preset":
            raise ValueError("'preset' cannot be overridden; pick another preset instead")
        if value is None and skip_none:
            continue
        settings[key] = value
    return settings


def env_settings(settings: Mapping[str, Any]) -> EnvConfig:
    """The env's arguments in a settings dict; build the env with ``.make(num_envs=settings["batch_size"])``."""
    values = {key: settings[key] for key in EnvConfig.fields() if key in settings}
    if isinstance(values.get("prompts"), str):
        values["prompts"] = (values["prompts"],)  # one prompt, never a prompt-set name
    return EnvConfig.from_mapping(values)


def agent_config_kwargs(settings: Mapping[str, Any], *, extra_keys: tuple[str, ...] = ()) -> dict[str, Any]:
    """The settings that are :class:`~agents.config.AgentConfig` fields.

    ``ValueError`` for a key that is neither an AgentConfig field, an env or run key, nor in ``extra_keys`` (the
    caller's own settings, e.g. ``("threads", "output_dir")``): a misspelt override never passes silently.
    """
    from agents.config import AgentConfig

    fields = {f.name for f in dataclasses.fields(AgentConfig)}
    known = EnvConfig.fields() + RUN_KEYS
    unknown = sorted(set(settings) - fields - set(known) - set(extra_keys))
    if unknown:
        raise ValueError(f"unknown settings {unknown}: neither AgentConfig fields nor {known}")
    return {key: value for key, value in settings.items() if key in fields}


__all__ = [
    "FOREST_PROMPT",
    "PRESETS",
    "SD15",
    "STANDARD_PROMPT",
    "Preset",
    "agent_config_kwargs",
    "apply_preset",
    "env_settings",
    "preset_names",
]
