"""Named prompt sets, so that a prompt set can be passed to ``gym.make`` by name.

``resolve_prompts("shapes-train")`` returns a registered set; a list or tuple of strings is a prompt set of its own;
any other string is a single prompt, unless it looks like a set name (:func:`looks_like_set_name`: one word of
lowercase letters and digits joined by ``-`` or ``_``, such as ``"shapes-trian"``), which is an error naming the
registered sets: a typo must not become a literal prompt. A one-word prompt of that form goes in a list:
``["self-portrait"]``.

Every prompt is a ``str`` of Unicode text (:func:`check_prompt_text`): a lone surrogate code point such as
``"\ud800"`` (what ``errors="surrogateescape"`` decoding or half of an escaped emoji leaves) has no UTF-8 encoding,
so it can be neither tokenized nor stored in a goal, and is refused with a ``ValueError`` naming the prompt. Where
a list of prompts is expected (:func:`check_prompt_list`), a bare ``str`` is refused, never iterated.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Sequence

import numpy as np

_PROMPT_SETS: dict[str, Callable[[], list[str]]] = {}


def register_prompt_set(name: str, loader: Callable[[], list[str]]) -> None:
    """Register ``loader() -> prompts`` under ``name``."""
    if name in _PROMPT_SETS:
        raise ValueError(f"prompt set {name!r} is already registered")
    _PROMPT_SETS[name] = loader


def registered_prompt_sets() -> list[str]:
    _ensure_builtin_sets()
    return sorted(_PROMPT_SETS)


_SET_NAME = re.compile(r"[a-z0-9]+(?:[-_][a-z0-9]+)+")


def looks_like_set_name(text: str) -> bool:
    """True for one word of lowercase letters and digits joined by ``-`` or ``_`` (``"shapes-train"``)."""
    return _SET_NAME.fullmatch(text) is not None


def check_prompt_text(prompt: object, where: str = "prompt") -> str:
    """``prompt`` if it is a ``str`` of Unicode text (one that UTF-8 can encode); else an error naming ``where``.

    ``TypeError`` for a non-``str``; ``ValueError`` for a lone surrogate code point (U+D800 to U+DFFF), the only
    ``str`` content UTF-8 cannot encode. Emptiness, length and the like are the goal's checks, not this one's.
    """
    if not isinstance(prompt, str):
        raise TypeError(f"{where} must be a str, got {type(prompt).__name__}: {prompt!r}")
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError as error:
        char = prompt[error.start]
        raise ValueError(
            f"{where} is not Unicode text: it has a lone surrogate code point U+{ord(char):04X} at index "
            f"{error.start}, which no UTF-8 text holds (a string decoded with errors='surrogateescape', or half of "
            f"an escaped emoji?): {prompt!r}"
        ) from None
    return prompt


def check_prompt_list(prompts: object, where: str = "prompts") -> list[str]:
    """``prompts`` as a list of ``str`` if it is a list, tuple or 1-D numpy array (e.g. a vector step's
    ``info["prompt"]``) of prompts of Unicode text (:func:`check_prompt_text`); else an error naming ``where``.

    A bare ``str`` is a ``TypeError`` (iterating it would make one prompt per character): one prompt goes in a list.
    """
    is_array = isinstance(prompts, np.ndarray) and prompts.ndim == 1
    if not (isinstance(prompts, (list, tuple)) or is_array):
        hint = f"; one prompt goes in a list: [{prompts!r}]" if isinstance(prompts, str) else ""
        raise TypeError(f"{where} must be a list or tuple of prompts, got {type(prompts).__name__}: {prompts!r}{hint}")
    return [str(check_prompt_text(prompt, f"{where}[{index}]")) for index, prompt in enumerate(prompts)]


def resolve_prompts(prompts: str | Sequence[str]) -> list[str]:
    """A registered set's name, one prompt, or a list or tuple of prompts -> a non-empty list of prompts.

    Raises ``ValueError`` for an unregistered name that looks like a set name (see the module docstring), for an
    empty set and for a prompt that is not Unicode text, ``TypeError`` for anything but a string or a list or tuple
    of strings.
    """
    _ensure_builtin_sets()
    if isinstance(prompts, str):
        check_prompt_text(prompts, "prompts")
        if prompts in _PROMPT_SETS:
            resolved = _PROMPT_SETS[prompts]()
        elif looks_like_set_name(prompts):
            close = difflib.get_close_matches(prompts, _PROMPT_SETS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(
                f"prompts: unknown prompt set {prompts!r}{hint}; registered prompt sets: "
                f"{', '.join(sorted(_PROMPT_SETS))}. A one-word prompt of this form goes in a list: [{prompts!r}]"
            )
        else:
            resolved = [prompts]
    elif isinstance(prompts, (list, tuple)):
        resolved = list(prompts)
    else:
        raise TypeError(
            f"prompts must be a prompt set name, a prompt, or a list or tuple of prompts, got "
            f"{type(prompts).__name__}: {prompts!r}"
        )
    if not resolved:
        raise ValueError("prompts: the prompt set is empty")
    return check_prompt_list(resolved, "prompts")


def _ensure_builtin_sets() -> None:
    from diffusion_gym.registrations import load_builtin_registrations  # the built-in worlds register on import

    load_builtin_registrations()


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def split_sentences(prompt: str) -> list[str]:
    """The sentences of ``prompt``, split after ``.``, ``!`` or ``?`` and stripped (each keeps its final mark).

    HERD's relabeling unit and the Shapes gold scorer's parsing unit. A prompt without such a mark is one sentence.
    """
    sentences = [s.strip() for s in _SENTENCE_END.split(prompt.strip())]
    return [s for s in sentences if s] or [prompt]
