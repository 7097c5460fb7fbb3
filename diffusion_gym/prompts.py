"""Named prompt sets, so that a prompt set can be passed to ``gym.make`` by name.

``resolve_prompts("shapes-train")`` returns a registered set; any other string is taken as a single prompt,
and a list or tuple of strings as a prompt set of its own.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

_PROMPT_SETS: dict[str, Callable[[], list[str]]] = {}


def register_prompt_set(name: str, loader: Callable[[], list[str]]) -> None:
    """Register ``loader() -> prompts`` under ``name``."""
    if name in _PROMPT_SETS:
        raise ValueError(f"prompt set {name!r} is already registered")
    _PROMPT_SETS[name] = loader


def registered_prompt_sets() -> list[str]:
    _ensure_builtin_sets()
    return sorted(_PROMPT_SETS)


def resolve_prompts(prompts: str | Sequence[str]) -> list[str]:
    """A registered set's name, one prompt, or a sequence of prompts -> a non-empty list of prompts."""
    _ensure_builtin_sets()
    if isinstance(prompts, str):
        resolved = _PROMPT_SETS[prompts]() if prompts in _PROMPT_SETS else [prompts]
    else:
        resolved = list(prompts)
    if not resolved:
        raise ValueError("the prompt set is empty")
    for prompt in resolved:
        if not isinstance(prompt, str):
            raise TypeError(f"prompts must be strings, got {type(prompt).__name__}: {prompt!r}")
    return resolved


def _ensure_builtin_sets() -> None:
    import diffusion_gym.rewards  # noqa: F401  (importing it imports the Shapes world, which registers sets)


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def split_sentences(prompt: str) -> list[str]:
    """The sentences of ``prompt``, split after ``.``, ``!`` or ``?`` and stripped (each keeps its final mark).

    HERD's relabeling unit and the Shapes gold scorer's parsing unit. A prompt without such a mark is one sentence.
    """
    sentences = [s.strip() for s in _SENTENCE_END.split(prompt.strip())]
    return [s for s in sentences if s] or [prompt]
