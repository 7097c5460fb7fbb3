"""A real CLIP BPE tokenizer, built offline from the vocabulary that open_clip ships in its wheel.

OpenAI's CLIP vocabulary is: the 256 byte-level unicode characters, the same with ``</w>`` appended, the
first 48,894 BPE merges joined, and the two special tokens: 49,408 tokens in all. Writing it out as
``vocab.json`` + ``merges.txt`` gives a folder that ``transformers.CLIPTokenizer.from_pretrained`` loads,
exactly as it loads Stable Diffusion's ``tokenizer/`` folder, with no hub access.
"""

from __future__ import annotations

import gzip
import json
from functools import lru_cache
from importlib import resources
from pathlib import Path

NUM_MERGES = 49152 - 256 - 2  # as in OpenAI CLIP / open_clip's SimpleTokenizer


@lru_cache(maxsize=1)
def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible byte -> printable unicode character table."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, codes), strict=True))


def clip_vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    """The CLIP vocabulary (token -> id) and BPE merges, from open_clip's bundled BPE file."""
    bpe_path = resources.files("open_clip") / "bpe_simple_vocab_16e6.txt.gz"
    with resources.as_file(bpe_path) as path, gzip.open(path, "rt", encoding="utf-8") as handle:
        merges = handle.read().split("\n")[1 : NUM_MERGES + 1]
    byte_chars = list(_bytes_to_unicode().values())
    tokens = byte_chars + [char + "</w>" for char in byte_chars]
    tokens += ["".join(merge.split()) for merge in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {token: index for index, token in enumerate(tokens)}, merges


def save_clip_tokenizer(folder: str | Path, model_max_length: int = 77) -> Path:
    """Write a CLIP tokenizer folder (``vocab.json``, ``merges.txt``, configs) loadable by ``CLIPTokenizer``."""
    from transformers import CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = clip_vocab_and_merges()
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    tokenizer = CLIPTokenizer(
        vocab=str(folder / "vocab.json"),
        merges=str(folder / "merges.txt"),
        model_max_length=model_max_length,
        pad_token="<|endoftext|>",
    )
    tokenizer.save_pretrained(folder)
    return folder
