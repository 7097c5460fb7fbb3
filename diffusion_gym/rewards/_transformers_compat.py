"""A small compatibility layer that lets ``image-reward`` 1.5 run on transformers 5.

``image-reward`` 1.5 (the ImageReward-v1.0 reward model) vendors BLIP's ``med.py``, a copy of the
transformers-4.15 BERT with cross-attention. transformers 5 removed or moved a few helpers that file uses.
:func:`apply` puts back exactly those helpers, and only where they are missing: it never replaces
anything that exists, so on transformers 4.x it is a no-op. Each shim says why it exists.

Patched names (all restore transformers-4.x behaviour):

- ``transformers.modeling_utils.apply_chunking_to_forward``, ``find_pruneable_heads_and_indices``,
  ``prune_linear_layer``: ``med.py`` imports them from ``modeling_utils``; transformers moved them to
  ``pytorch_utils`` and then dropped ``find_pruneable_heads_and_indices`` (head pruning) altogether.
- ``PreTrainedTokenizerBase.additional_special_tokens_ids``: BLIP's ``init_tokenizer`` reads it to find the
  ``[ENC]`` token id; transformers 5 renamed additional special tokens to "extra special tokens".
- ``med.BertPreTrainedModel.init_weights``: ``med.py`` calls ``self.init_weights()`` at the end of
  ``__init__``; in transformers 5 that call must be ``self.post_init()``, which also sets the attributes
  (``all_tied_weights_keys``, ...) that ``init_weights`` and ``from_pretrained``/``save`` need.
- ``med.BertModel.invert_attention_mask`` and ``get_head_mask``: ``ModuleUtilsMixin`` methods that
  transformers 5 removed; ``med.BertModel.forward`` calls both.

The shims are applied once, before ``ImageReward`` is imported (:func:`import_image_reward`).
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable
from types import ModuleType
from typing import Any

import torch
from torch import nn

_LOCK = threading.Lock()
_PATCHED: list[str] = []  # what apply() added, for the curious (and the tests)


def _set_if_missing(owner: Any, name: str, value: Any, label: str) -> None:
    """``setattr(owner, name, value)`` unless ``owner`` already has ``name``."""
    if not hasattr(owner, name):
        setattr(owner, name, value)
        _PATCHED.append(label)


# --- helpers removed from transformers.modeling_utils --------------------------------------------------


def find_pruneable_heads_and_indices(
    heads: list[int] | set[int], n_heads: int, head_size: int, already_pruned_heads: set[int]
) -> tuple[set[int], torch.LongTensor]:
    """The transformers-4.x helper (removed in 5): heads left to prune, and the indices to keep.

    Only reached if a caller prunes attention heads; ImageReward never does, but ``med.py`` imports it.
    """
    mask = torch.ones(n_heads, head_size)
    heads = set(heads) - already_pruned_heads
    for head in heads:
        head = head - sum(1 if h < head else 0 for h in already_pruned_heads)
        mask[head] = 0
    mask = mask.view(-1).contiguous().eq(1)
    index = torch.arange(len(mask))[mask].long()
    return heads, index


def _prune_linear_layer(layer: nn.Linear, index: torch.LongTensor, dim: int = 0) -> nn.Linear:
    """The transformers-4.x helper: keep only the rows (``dim=0``) or columns (``dim=1``) in ``index``."""
    index = index.to(layer.weight.device)
    weight = layer.weight.index_select(dim, index).detach().clone()
    bias = None
    if layer.bias is not None:
        bias = layer.bias.detach().clone() if dim == 1 else layer.bias[index].detach().clone()
    size = list(layer.weight.size())
    size[dim] = len(index)
    new = nn.Linear(size[1], size[0], bias=bias is not None).to(layer.weight.device)
    with torch.no_grad():
        new.weight.copy_(weight.contiguous())
        if bias is not None:
            new.bias.copy_(bias.contiguous())
    return new


def _apply_chunking_to_forward(
    forward_fn: Callable[..., torch.Tensor], chunk_size: int, chunk_dim: int, *input_tensors: torch.Tensor
) -> torch.Tensor:
    """The transformers-4.x helper: run ``forward_fn`` on chunks of the inputs along ``chunk_dim``."""
    if chunk_size > 0:
        n_chunks = input_tensors[0].shape[chunk_dim] // chunk_size
        chunks = zip(*(t.chunk(n_chunks, dim=chunk_dim) for t in input_tensors), strict=True)
        return torch.cat([forward_fn(*c) for c in chunks], dim=chunk_dim)
    return forward_fn(*input_tensors)


# --- tokenizer ------------------------------------------------------------------------------------------


def _additional_special_tokens_ids(self: Any) -> list[int]:
    """transformers-4.x name of the ids of the extra special tokens (``[ENC]`` for BLIP)."""
    tokens = getattr(self, "extra_special_tokens", None) or getattr(self, "additional_special_tokens", [])
    if isinstance(tokens, dict):  # named extra special tokens
        tokens = list(tokens.values())
    return self.convert_tokens_to_ids([str(t) for t in tokens])


# --- ModuleUtilsMixin methods removed in transformers 5 ----------------------------------------------------


def _invert_attention_mask(self: nn.Module, encoder_attention_mask: torch.Tensor) -> torch.Tensor:
    """transformers-4.x: turn a ``(B, S)`` or ``(B, S, S)`` 1/0 mask into an additive mask (0 / dtype min)."""
    if encoder_attention_mask.dim() == 3:
        extended = encoder_attention_mask[:, None, :, :]
    elif encoder_attention_mask.dim() == 2:
        extended = encoder_attention_mask[:, None, None, :]
    else:
        raise ValueError(f"attention mask must be 2-D or 3-D, got shape {tuple(encoder_attention_mask.shape)}")
    dtype = next(self.parameters()).dtype
    extended = extended.to(dtype=dtype)
    return (1.0 - extended) * torch.finfo(dtype).min


def _get_head_mask(
    self: nn.Module,
    head_mask: torch.Tensor | None,
    num_hidden_layers: int,
    is_attention_chunked: bool = False,
) -> torch.Tensor | list[None]:
    """transformers-4.x: ``[None] * layers`` without a head mask, else a 5-D mask per layer."""
    if head_mask is None:
        return [None] * num_hidden_layers
    if head_mask.dim() == 1:  # (heads,) -> (layers, 1, heads, 1, 1)
        head_mask = head_mask[None, None, :, None, None].expand(num_hidden_layers, -1, -1, -1, -1)
    elif head_mask.dim() == 2:  # (layers, heads) -> (layers, 1, heads, 1, 1)
        head_mask = head_mask[:, None, :, None, None]
    head_mask = head_mask.to(dtype=next(self.parameters()).dtype)
    if is_attention_chunked:
        head_mask = head_mask.unsqueeze(-1)
    return head_mask


def _init_weights_via_post_init(self: Any) -> None:
    """``med.py`` calls the transformers-4.x ``init_weights()`` at the end of ``__init__``.

    transformers 5's ``init_weights`` reads attributes that only ``post_init()`` sets, and ``post_init()``
    itself ends by calling ``init_weights()``: so run ``post_init()`` on the first call, and the base
    ``init_weights`` on the nested one.
    """
    from transformers.modeling_utils import PreTrainedModel

    if "all_tied_weights_keys" not in vars(self):
        self.post_init()
    else:
        PreTrainedModel.init_weights(self)


# --- entry points ---------------------------------------------------------------------------------------


def apply() -> list[str]:
    """Add the helpers ``image-reward`` needs to transformers (only missing ones). Idempotent."""
    with _LOCK:
        import transformers.modeling_utils as modeling_utils
        from transformers.tokenization_utils_base import PreTrainedTokenizerBase

        try:
            from transformers import pytorch_utils
        except ImportError:  # pragma: no cover - very old transformers
            pytorch_utils = None
        chunking = getattr(pytorch_utils, "apply_chunking_to_forward", _apply_chunking_to_forward)
        prune = getattr(pytorch_utils, "prune_linear_layer", _prune_linear_layer)
        pruneable = getattr(pytorch_utils, "find_pruneable_heads_and_indices", find_pruneable_heads_and_indices)
        _set_if_missing(modeling_utils, "apply_chunking_to_forward", chunking, "modeling_utils.apply_chunking")
        _set_if_missing(modeling_utils, "prune_linear_layer", prune, "modeling_utils.prune_linear_layer")
        _set_if_missing(
            modeling_utils,
            "find_pruneable_heads_and_indices",
            pruneable,
            "modeling_utils.find_pruneable_heads",
        )
        _set_if_missing(
            PreTrainedTokenizerBase,
            "additional_special_tokens_ids",
            property(_additional_special_tokens_ids),
            "PreTrainedTokenizerBase.additional_special_tokens_ids",
        )
        return list(_PATCHED)


def _patch_med(med: ModuleType) -> None:
    """Patch the classes of ImageReward's vendored ``med.py`` (after it is imported)."""
    with _LOCK:
        from transformers.modeling_utils import PreTrainedModel

        bert_pre = med.BertPreTrainedModel
        # Only transformers 5 has tied-weight bookkeeping that post_init() must set up first.
        if "init_weights" not in vars(bert_pre) and hasattr(PreTrainedModel, "get_expanded_tied_weights_keys"):
            bert_pre.init_weights = _init_weights_via_post_init
            _PATCHED.append("med.BertPreTrainedModel.init_weights")
        _set_if_missing(med.BertModel, "invert_attention_mask", _invert_attention_mask, "invert_attention_mask")
        _set_if_missing(med.BertModel, "get_head_mask", _get_head_mask, "get_head_mask")


def import_image_reward() -> ModuleType:
    """Import and return the ``ImageReward`` package with the shims applied.

    Raises:
        ImportError: with the install command if ``image-reward`` (or what it imports) is missing.
    """
    apply()
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    try:
        # ImageReward's BLIP code calls warnings.filterwarnings("ignore") and sets transformers' logging to
        # errors only, for the whole process, on import: catch_warnings() and the verbosity reset undo that.
        with warnings.catch_warnings():
            # clip-anytorch (imported by image-reward) imports the deprecated pkg_resources: not our concern.
            warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
            import ImageReward
            from ImageReward.models.BLIP import med
    except ImportError as err:
        raise ImportError(
            "the imagereward reward needs the image-reward package: pip install --no-deps image-reward==1.5 "
            "&& pip install clip-anytorch fairscale datasets 'setuptools<81' "
            f"(import failed: {err})"
        ) from err
    finally:
        hf_logging.set_verbosity(verbosity)
    _patch_med(med)
    return ImageReward
