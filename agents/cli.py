"""Command-line building blocks shared by ``benchmarks/run.py``, ``benchmarks/evaluate_run.py`` and the probes:
argparse value types that name the problem, and one flag per :class:`~agents.config.AgentConfig` field
(generated from the dataclass, so the CLI never drifts from it).
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from pathlib import Path

import torch

from agents.config import (
    AgentConfig,
    Bound,
    agent_config_choices,
    annotated_bounds,
    check_value,
    field_docstrings,
    field_types,
)
from agents.experiments.comparison import resolve_variants
from agents.training.run_folder import DTYPE_NAMES, RUN_SETTINGS_FILE, RunSettings, check_output_dir, task_run_fields
from diffusion_gym.env_config import EnvConfig
from diffusion_gym.models import UnknownModelError, resolve_model
from diffusion_gym.prompts import registered_prompt_sets
from diffusion_gym.rewards import UnknownRewardError, registered_rewards, validate_reward


# ----------------------------------------------------------------------------------------------- parsing values
def number_type(kind: type, bound: Bound | None = None, name: str = "value") -> Callable[[str], int | float]:
    """An argparse type: text -> ``kind`` (int or float) checked as the library checks field ``name``
    (:func:`agents.config.check_value` with ``bound``); ``ArgumentTypeError`` saying what is expected."""
    expected = expected_number(kind, bound)

    def parse(text: str) -> int | float:
        try:
            return check_value(name, kind(text), (kind,), bound=bound)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None

    parse.__name__ = kind.__name__
    return parse


def expected_number(kind: type, bound: Bound | None) -> str:
    """``a positive integer``, ``an integer >= 0``, ``a finite number in (0, 1]``, ..."""
    if kind is int and bound == Bound(1):
        return "a positive integer"
    noun = "an integer" if kind is int else "a finite number"
    if bound is None:
        return noun
    return f"{noun} {bound.text()}" + (f" ({bound.note})" if bound.note else "")


def setting_type(cls: type, name: str) -> Callable[[str], object]:
    """The argparse type of the numeric field ``name`` of a configuration dataclass (:class:`AgentConfig`,
    ``RunSettings``, ``EnvConfig``), from its declaration (type and :class:`~agents.config.Bound`), wrapped in
    :func:`optional` if it may be None."""
    (kind, *_), is_optional = field_types(cls)[name]
    parse = number_type(kind, annotated_bounds(cls).get(name), name)
    return optional(parse) if is_optional else parse


positive_int = number_type(int, Bound(1))
non_negative_int = number_type(int, Bound(0))
positive_float = number_type(float, Bound(0, low_open=True))
non_negative_float = number_type(float, Bound(0))


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


def task_name(text: str) -> str:
    """A registered task (:mod:`diffusion_gym.tasks`)."""
    from diffusion_gym.tasks import get_task

    try:
        return get_task(text).name
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


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
    """A folder to write into (:func:`agents.training.run_folder.check_output_dir`): not empty, not a file nor inside
    one."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path (it would write into the current directory): give a folder")
    try:
        check_output_dir(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return Path(text)


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
        resolve_variants(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def agent_config_fields() -> list[tuple[dataclasses.Field, type, bool]]:
    """``(field, value type, optional)`` for each AgentConfig field."""
    described = field_types(AgentConfig)
    return [(field, *_first(described[field.name])) for field in dataclasses.fields(AgentConfig)]


def _first(kinds_optional: tuple[tuple[type, ...], bool]) -> tuple[type, bool]:
    return kinds_optional[0][0], kinds_optional[1]


def add_field_flag(
    group: argparse._ActionsContainer,
    cls: type,
    name: str,
    default: object,
    *,
    parse: Callable[[str], object] | None = None,
    choices: list | tuple | None = None,
    negatable: bool = False,
    shown: str | None = None,
    note: str = "",
    metavar: str | None = None,
) -> None:
    """One flag ``--<name>`` for the field ``name`` of the configuration dataclass ``cls``: its docstring is the help,
    then the default (``shown``: how to spell it, else :func:`spelled` of ``default``) and ``note``. A bool field is
    a switch (``negatable``: ``--x`` and ``--no-x``); any other field reads its text with ``parse``, else with its
    declared number type and range (:func:`setting_type`) unless ``choices`` alone say what it takes."""
    option = "--" + name.replace("_", "-")
    help_text = field_docstrings(cls)[name].replace("%", "%%")
    if isinstance(default, bool):
        action = argparse.BooleanOptionalAction if negatable else "store_true"
        state = "on" if default else "off"
        group.add_argument(option, dest=name, action=action, default=default, help=f"{help_text} (default: {state})")
        return
    if parse is None and choices is None:
        parse = setting_type(cls, name)
    help_text += f" (default: {spelled(default) if shown is None else shown})" + (f"; {note}" if note else "")
    group.add_argument(option, dest=name, type=parse, choices=choices, default=default, metavar=metavar, help=help_text)


def add_agent_config_flags(group: argparse._ArgumentGroup) -> None:
    """One flag per AgentConfig field: --batch-size, --lora-rank, --herd-keep-history/--no-herd-keep-history, ...;
    values are checked as :meth:`AgentConfig.validate` checks them (the same bounds and choices)."""
    for field, kind, is_optional in agent_config_fields():
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        choices = agent_config_choices().get(field.name)
        parse = None if kind in (int, float, bool) else optional(prompt_text) if is_optional else prompt_text
        add_field_flag(
            group,
            AgentConfig,
            field.name,
            default,
            parse=parse,
            choices=list(choices) if choices is not None else None,
            negatable=True,
        )


# ----------------------------------------------------------------------------------------------- run settings
@dataclasses.dataclass(frozen=True)
class SettingFlag:
    """How the command line reads one field of :class:`~agents.training.run_folder.RunSettings` or
    :class:`~diffusion_gym.EnvConfig`. The field itself declares the type, range, default and meaning (its
    docstring is the flag's help); only what is the command line's own is here."""

    owner: type  # RunSettings or EnvConfig
    group: str  # the --help section: "run" or "evaluation"
    parse: Callable[[str], object] | None = None  # text -> value, when not the field's declared number type
    choices: tuple[str, ...] | None = None
    note: str = ""  # added to the help (e.g. the registered names)


def setting_flags() -> dict[str, SettingFlag]:
    """One flag per field of ``RunSettings`` (but the agent, its config, the folder and the resume state, which the
    command line sets its own way) and of ``EnvConfig``, by field name, in ``--help`` order."""
    rewards, prompt_sets = ", ".join(sorted(registered_rewards())), ", ".join(registered_prompt_sets())
    return {
        "model": SettingFlag(EnvConfig, "run", model_name),
        "reward": SettingFlag(EnvConfig, "run", reward_name, note=f"registered: {rewards}"),
        "prompts": SettingFlag(EnvConfig, "run", prompt_text, note=f"registered sets: {prompt_sets}"),
        "epochs": SettingFlag(RunSettings, "run"),
        "num_inference_steps": SettingFlag(EnvConfig, "run"),
        "device": SettingFlag(EnvConfig, "run", device_name),
        "dtype": SettingFlag(EnvConfig, "run", choices=DTYPE_NAMES),
        "max_prompt_chunks": SettingFlag(EnvConfig, "run"),
        "max_prompt_bytes": SettingFlag(EnvConfig, "run"),
        "image_cache_size": SettingFlag(EnvConfig, "run"),
        "latent_bound": SettingFlag(EnvConfig, "run"),
        "threads": SettingFlag(RunSettings, "run"),
        "eval_prompts": SettingFlag(RunSettings, "evaluation", prompt_text),
        "generalisation_prompts": SettingFlag(RunSettings, "evaluation", optional(prompt_text), note="'none': off"),
        "eval_samples": SettingFlag(RunSettings, "evaluation"),
        "eval_every": SettingFlag(RunSettings, "evaluation"),
        "eval_kl": SettingFlag(RunSettings, "evaluation"),
        "checkpoint_every": SettingFlag(RunSettings, "evaluation"),
        "keep_checkpoints": SettingFlag(RunSettings, "evaluation"),
    }  # fmt: skip


# RunSettings fields the command line sets otherwise: --agent/--compare, --output-dir, --resume/--resume-from
NOT_SETTING_FLAGS = ("agent", "config", "output_dir", "label", "env", "resume", "resume_from", "command")


def setting_default(name: str) -> object:
    """The declared default of the RunSettings or EnvConfig field ``name`` (the two share no field name)."""
    declared = {field.name: field.default for owner in (EnvConfig, RunSettings) for field in dataclasses.fields(owner)}
    return declared[name]


def spelled(value: object) -> str:
    """A default as the command line spells it (None: ``none``)."""
    return "none" if value is None else str(value)


def add_setting_flags(groups: dict[str, argparse._ArgumentGroup], task: object) -> None:
    """One flag per :func:`setting_flags` field into ``groups[flag.group]``: ``--epochs``, ``--num-inference-steps``,
    ``--eval-kl``, .... Help: the field's docstring and its default; a field ``task`` (the default task) sets has
    no parser default (the task's value applies where the flag is not given, else the field's)."""
    from_task = task_run_fields(task)
    for name, flag in setting_flags().items():
        default, shown = setting_default(name), None
        if name in from_task and not isinstance(default, bool):
            shown = f"{spelled(from_task[name])} in the task {task.name}; {spelled(default)} without"
            default = None
        add_field_flag(
            groups[flag.group],
            flag.owner,
            name,
            default,
            parse=flag.parse,
            choices=flag.choices,
            shown=shown,
            note=flag.note,
        )


def settings_from_args(args: argparse.Namespace, **fields) -> RunSettings:
    """The :class:`RunSettings` of the parsed :func:`add_setting_flags` flags (validated on construction), with
    ``fields`` (the agent, its config, the folder); a flag left at None keeps its field's default."""
    flags = setting_flags()
    given = {name: getattr(args, name) for name in flags if getattr(args, name) is not None}
    env = EnvConfig(**{name: value for name, value in given.items() if flags[name].owner is EnvConfig})
    run = {name: value for name, value in given.items() if flags[name].owner is RunSettings}
    return RunSettings(env=env, **run, **fields)


def setting_flags_of(settings: RunSettings) -> list[str]:
    """The flags that give ``settings``: every :func:`setting_flags` field whose value differs from its default."""
    parts: list[str] = []
    for name, flag in setting_flags().items():
        value = getattr(settings.env if flag.owner is EnvConfig else settings, name)
        if value == setting_default(name):
            continue
        option = "--" + name.replace("_", "-")
        parts += [option] if isinstance(value, bool) else [option, str(value)]
    return parts


def config_from_args(args: argparse.Namespace) -> AgentConfig:
    """The :class:`AgentConfig` of parsed :func:`add_agent_config_flags` flags (validated on construction)."""
    return AgentConfig(**{field.name: getattr(args, field.name) for field, _, _ in agent_config_fields()})


__all__ = [
    "NOT_SETTING_FLAGS",
    "SettingFlag",
    "add_agent_config_flags",
    "add_setting_flags",
    "agent_config_fields",
    "config_from_args",
    "device_name",
    "expected_number",
    "folder_path",
    "model_name",
    "non_negative_float",
    "non_negative_int",
    "number_type",
    "optional",
    "positive_float",
    "positive_int",
    "prompt_text",
    "reward_name",
    "run_folder",
    "seed_list",
    "setting_default",
    "setting_flags",
    "setting_flags_of",
    "setting_type",
    "settings_from_args",
    "task_name",
    "variant_list",
]
