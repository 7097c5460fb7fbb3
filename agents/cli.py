"""Command-line building blocks shared by ``benchmarks/run.py``, ``benchmarks/evaluate_run.py`` and the probes:
argparse value types that name the problem, and one flag per :class:`~agents.config.AgentConfig` field
(generated from the dataclass, so the CLI never drifts from it).
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path

import torch

from agents.comparison import resolve_variants
from agents.config import AGENT_CONFIG_HELP, ATTENTION_PROCESSORS, AgentConfig
from agents.registry import AGENT_NAMES
from agents.run_folder import RUN_SETTINGS_FILE
from diffusion_gym.models import UnknownModelError, resolve_model
from diffusion_gym.rewards import UnknownRewardError, validate_reward

POSITIVE_FIELDS = {
    "batch_size",
    "batches_per_epoch",
    "inner_epochs",
    "loop_k",
    "herd_buffer_batches",
    "learning_rate",
    "value_learning_rate",
    "rwr_temperature",
    "max_grad_norm",
    "clip_range",
    "adv_clip_max",
    "train_timestep_fraction",
    "train_batch_size",
    "dual_clip",
    "stat_buffer_size",
    "stat_min_count",
    "herd_history_batches",
    "lr_decay_epochs",
    "nft_beta",
    "nft_timesteps",
    "nft_sampling_steps",
}
FIELD_CHOICES: dict[str, list[str]] = {
    "herd_base": [name for name in AGENT_NAMES if name != "herd"],
    "attention": list(ATTENTION_PROCESSORS),
}


# ----------------------------------------------------------------------------------------------- parsing values
def positive_int(text: str) -> int:
    return _checked(int, text, lambda value: value >= 1, "a positive integer")


def non_negative_int(text: str) -> int:
    return _checked(int, text, lambda value: value >= 0, "an integer >= 0")


def positive_float(text: str) -> float:
    return _checked(float, text, lambda value: value > 0 and value < float("inf"), "a finite number > 0")


def non_negative_float(text: str) -> float:
    return _checked(float, text, lambda value: 0 <= value < float("inf"), "a finite number >= 0")


def _checked(kind: type, text: str, ok, expected: str):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if not ok(value):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def optional(parse):
    """Accept 'none' (use the world's default) besides what ``parse`` accepts."""

    def parse_optional(text: str):
        return None if text.lower() in ("none", "default") else parse(text)

    parse_optional.__name__ = parse.__name__
    return parse_optional


def reward_name(text: str) -> str:
    """A registered reward or weighted sum, checked without loading any model."""
    try:
        return validate_reward(text)
    except (UnknownRewardError, ValueError) as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def model_name(text: str) -> str:
    """A named world, a pipeline folder or a hub id, checked without loading it."""
    try:
        resolve_model(text)
    except (UnknownModelError, FileNotFoundError) as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def prompt_text(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("the prompt (set name) is empty")
    return text


def device_name(text: str) -> str:
    """A torch device this machine has: ``cuda`` needs ``torch.cuda.is_available()`` (and the index a GPU)."""
    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"not a torch device: {text!r} (e.g. cpu, cuda, cuda:1)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(
            f"{text!r}: CUDA is not available here (torch.cuda.is_available() is False); use cpu"
        )
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise argparse.ArgumentTypeError(f"{text!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise argparse.ArgumentTypeError(f"{text!r}: MPS is not available here; use cpu")
    return text


def folder_path(text: str) -> Path:
    """A folder to write into: it, or its nearest existing parent, must be a folder (not a file)."""
    path = Path(text)
    for existing in (path, *path.parents):
        if existing.exists():
            if not existing.is_dir():
                what = "is" if existing == path else f"is inside {existing}, which is"
                raise argparse.ArgumentTypeError(f"{text} {what} a file, not a folder")
            break
    return path


def run_folder(text: str) -> Path:
    """An existing run folder (one with a ``run.json``)."""
    path = Path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{text} does not exist")
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file, not a run folder")
    if not (path / RUN_SETTINGS_FILE).is_file():
        raise argparse.ArgumentTypeError(f"{text} is not a run folder (no {RUN_SETTINGS_FILE})")
    return path


def seed_list(text: str) -> list[int]:
    seeds = [non_negative_int(part.strip()) for part in text.split(",") if part.strip()]
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"expected distinct comma-separated seeds such as 0,1,2, got {text!r}")
    return seeds


def variant_list(text: str) -> str:
    try:
        resolve_variants(text, AGENT_NAMES)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def agent_config_fields() -> list[tuple[dataclasses.Field, type, bool]]:
    """``(field, value type, optional)`` for each AgentConfig field."""
    hints = typing.get_type_hints(AgentConfig)
    described = []
    for field in dataclasses.fields(AgentConfig):
        kind = hints[field.name]
        arguments = typing.get_args(kind)
        is_optional = typing.get_origin(kind) in (typing.Union, types.UnionType) and type(None) in arguments
        if is_optional:
            kind = next(argument for argument in arguments if argument is not type(None))
        described.append((field, kind, is_optional))
    return described


def add_agent_config_flags(group: argparse._ArgumentGroup) -> None:
    """One flag per AgentConfig field: --batch-size, --lora-rank, --herd-keep-history/--no-herd-keep-history, ..."""
    for field, kind, is_optional in agent_config_fields():
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        description = AGENT_CONFIG_HELP.get(field.name, f"AgentConfig.{field.name}")
        flag = "--" + field.name.replace("_", "-")
        if kind is bool:
            state = "on" if default else "off"
            group.add_argument(
                flag,
                dest=field.name,
                action=argparse.BooleanOptionalAction,
                default=default,
                help=f"{description} (default: {state})",
            )
            continue
        if kind is int:
            parse = positive_int if field.name in POSITIVE_FIELDS else non_negative_int
        elif kind is float:
            parse = positive_float if field.name in POSITIVE_FIELDS else non_negative_float
        else:
            parse = prompt_text if kind is str else kind
        group.add_argument(
            flag,
            dest=field.name,
            type=optional(parse) if is_optional else parse,
            choices=FIELD_CHOICES.get(field.name),
            default=default,
            help=description + " (default: %(default)s)",
        )


def config_from_args(args: argparse.Namespace) -> AgentConfig:
    """The :class:`AgentConfig` of parsed :func:`add_agent_config_flags` flags (not validated)."""
    return AgentConfig(**{field.name: getattr(args, field.name) for field, _, _ in agent_config_fields()})


__all__ = [
    "add_agent_config_flags",
    "agent_config_fields",
    "config_from_args",
    "device_name",
    "folder_path",
    "model_name",
    "non_negative_float",
    "non_negative_int",
    "optional",
    "positive_float",
    "positive_int",
    "prompt_text",
    "reward_name",
    "run_folder",
    "seed_list",
    "variant_list",
]
