"""The agents' one flat configuration (:class:`AgentConfig`) and the per-agent defaults resolved into it; and the
field checks every configuration dataclass runs on construction (:class:`Bound`, :func:`check_fields`), which the
command line's flags reuse (:mod:`agents.cli`), so that Python and the CLI refuse the same values with the same
words."""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import os
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from diffusion_gym.env_config import Bound  # the env's and the agents' fields declare their ranges alike

# the UNet's attention processors (agents.algorithms.policy): diffusers' AttnProcessor2_0 (torch's fused SDPA),
# AttnProcessor
ATTENTION_PROCESSORS = ("sdpa", "classic")
# the agents that HERD can wrap (agents.registry.AGENT_NAMES is these and "herd")
# the largest seed: torch.manual_seed takes up to 2**64 - 1 and numpy any int >= 0; 2**63 - 1 also fits every int64
# reader of run.json and results.json
MAX_SEED = 2**63 - 1


# ============================================================================================== field checks
@functools.cache
def field_types(cls: type) -> dict[str, tuple[tuple[Any, ...], bool]]:
    """Per field of the dataclass ``cls``: the types its annotation allows (besides None) and whether None is one."""
    described = {}
    for name, hint in typing.get_type_hints(cls).items():
        arguments = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
        described[name] = (tuple(a for a in arguments if a is not type(None)), type(None) in arguments)
    return described


def type_text(kinds: tuple[Any, ...], optional: bool) -> str:
    """``an int``, ``a number``, ``a str or a list of str``, ... (``or None`` if optional)."""
    names = {int: "an int", float: "a number (int or float)", bool: "a bool", str: "a str", Path: "a path"}
    names.update({list[str]: "a list of str", tuple[str, ...]: "a list of str", list[int]: "a list of int"})
    words = [names.get(kind) or _article(kind.__name__) for kind in kinds]
    return " or ".join(words + (["None"] if optional else []))


def _article(noun: str) -> str:
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"


def check_value(
    name: str,
    value: Any,
    kinds: tuple[Any, ...],
    optional: bool = False,
    bound: Bound | None = None,
    choices: Sequence[str] | None = None,
) -> Any:
    """``value`` of field ``name`` checked against its annotation's types, ``bound`` and ``choices``; returned in
    its plain form (a numpy integer as ``int``, a numpy float as ``float``, a path as :class:`~pathlib.Path`, a
    tuple of str as a list). ``TypeError`` for a wrong type (a bool is not an int; an int is a number), ``ValueError``
    for a value out of range (NaN and inf included) or not among ``choices``; both name the field."""
    if value is None and optional:
        return None
    plain = _plain(value, kinds)
    if plain is _WRONG:
        raise TypeError(f"{name} must be {type_text(kinds, optional)}, got {type(value).__name__} {value!r}")
    if isinstance(plain, float) and not math.isfinite(plain):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if bound is not None and isinstance(plain, (int, float)) and not bound.contains(plain):
        note = f" ({bound.note})" if bound.note else ""
        raise ValueError(f"{name} must be {bound.text()}{' or None' if optional else ''}{note}, got {value!r}")
    if choices is not None and plain not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return plain


_WRONG = object()


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _plain(value: Any, kinds: tuple[Any, ...]) -> Any:
    """``value`` as the first of ``kinds`` it is (see :func:`check_value`), else ``_WRONG``."""
    for kind in kinds:
        if kind is bool and isinstance(value, bool):
            return value
        if kind is int and _is_int(value):
            return int(value)
        if kind is float and isinstance(value, numbers.Real) and not isinstance(value, bool):
            return value if type(value) in (int, float) else float(value)
        if kind is str and isinstance(value, str):
            return value
        if kind is Path and isinstance(value, (str, os.PathLike)):
            return Path(value)
        if kind == list[str] and isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return list(value)
        if kind == tuple[str, ...] and isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return tuple(value)
        if kind == list[int] and isinstance(value, (list, tuple)) and all(_is_int(v) for v in value):
            return [int(v) for v in value]
        if isinstance(kind, type) and kind not in (bool, int, float, str, Path) and isinstance(value, kind):
            return value
    return _WRONG


def annotated_bounds(cls: type) -> dict[str, Bound]:
    """Per field of the dataclass ``cls`` annotated ``Annotated[T, Bound(...)]``: its :class:`Bound`."""
    bounds = {}
    for name, hint in typing.get_type_hints(cls, include_extras=True).items():
        for extra in getattr(hint, "__metadata__", ()):
            if isinstance(extra, Bound):
                bounds[name] = extra
    return bounds


@functools.cache
def field_docstrings(cls: type) -> dict[str, str]:
    """Per field of the dataclass ``cls``: its docstring (the string under its declaration; else its comment), one
    line, read by simple-parsing as for its own parsers."""
    from simple_parsing.docstring import get_attribute_docstring

    docs = {}
    for field in dataclasses.fields(cls):
        found = get_attribute_docstring(cls, field.name)
        text = found.docstring_below or found.comment_inline or found.comment_above or ""
        docs[field.name] = " ".join(text.split())
    return docs


def check_fields(instance: Any, bounds: Mapping[str, Bound], choices: Mapping[str, Sequence[str]]) -> None:
    """Check every field of the dataclass ``instance`` (:func:`check_value`), in declaration order, and store the
    plain forms; ``TypeError`` or ``ValueError`` naming the first bad field."""
    described = field_types(type(instance))
    for field in dataclasses.fields(instance):
        kinds, optional = described[field.name]
        value = getattr(instance, field.name)
        plain = check_value(field.name, value, kinds, optional, bounds.get(field.name), choices.get(field.name))
        if plain is not value:
            object.__setattr__(instance, field.name, plain)


# the ranges most fields share (a field's range is its annotation's Bound; check_fields reads it)
POSITIVE = Bound(0, low_open=True)
AT_LEAST_ONE = Bound(1)
NON_NEGATIVE = Bound(0)


@dataclass
class AgentConfig:
    """One flat config for every agent (fields an agent doesn't use are ignored), so CLI flags map 1:1.

    Log-probs are **sums** over latent dims (see :mod:`agents.algorithms.math`), so ``clip_range`` is in those units:
    the per-step log-ratio of a 4x8x8 latent is 256x DDPO's per-dim-mean log-ratio, and 0.2 here is about DDPO's
    1e-3 (DDPO's 1e-4 would be ~0.026 here; with sums, Adam makes the learning rate scale-free anyway).

    Defaults, chosen for a CPU budget of ~10 epochs (short probes only, see the agents' report):

    * ``learning_rate`` ``None``: the agent's own default (:meth:`with_agent_defaults`): 1e-3 for the
      policy-gradient agents, 1e-4 for RWR, which diverges at 1e-3 (``agents/algorithms/rwr.py``); HERD takes its
      base's.
    * LoRA rank 8 at ``learning_rate`` 1e-3 with ``inner_epochs`` 2: LoRA tolerates far higher rates than a full
      fine-tune (TRL: 3e-4 LoRA vs 1e-5 full). Probes on the Shapes world (standard prompt, 10 DDIM steps,
      2 x 16 samples per epoch): lr 5e-4 with 1 inner epoch left the training reward flat over 8 epochs
      (approx_kl ~0.01); lr 2e-3 with 2 inner epochs raised it 0.615 -> 0.672 in 6 epochs without collapse,
      but with approx_kl 1-13 and 40-60% of the ratios clipped. 1e-3 x 2 sits between the two.
    * ``train_batch_size`` 8: 4 optimiser steps per epoch of 2 x 16 samples, at no extra compute.
    * ``train_timestep_fraction`` 0.5: training costs ~3 UNet passes per (sample, step) against 1 for
      sampling; training on half of the (strongly correlated) steps gives ~1.6x the epochs per CPU-minute.
    """

    seed: Annotated[int, Bound(0, MAX_SEED, note="what numpy and torch take as a seed")] = 0
    """random seed of the run (initial noise, prompts, adapter initialisation)"""
    batch_size: Annotated[int, AT_LEAST_ONE] = 16
    """trajectories per sampling batch; also the number of parallel envs"""
    batches_per_epoch: Annotated[int, AT_LEAST_ONE] = 2
    """sampling batches per epoch: an epoch samples batch_size x batches_per_epoch trajectories"""
    guidance_scale: Annotated[float | None, NON_NEGATIVE] = None
    """classifier-free guidance scale inside the policy ('none': the world's)"""
    eta: Annotated[float, Bound(0, 1, low_open=True, note="eta = 0 is deterministic; DDIM's eta is at most 1")] = 1.0
    """DDIM eta in (0, 1]; > 0 makes every denoising step a Gaussian action with an exact log-prob"""
    lora_rank: Annotated[int, Bound(0, note="0 = full fine-tune")] = 8
    """rank of the LoRA adapter on the UNet's attention projections (0: fine-tune the full UNet)"""
    learning_rate: Annotated[float | None, POSITIVE] = None
    """learning rate of the policy's optimiser (AdamW); 'none': the agent's default, 1e-3, or 1e-4 for rwr, 3e-4 for nft
    (herd: its base's)
    """
    lr_decay_epochs: Annotated[int | None, AT_LEAST_ONE] = None
    """cosine-decay the policy's learning rate over this many epochs, to lr_final_fraction of it, then hold it ('none':
    constant)
    """
    lr_final_fraction: Annotated[float, Bound(0, 1)] = 0.1
    """the learning rate's final fraction under lr_decay_epochs"""
    weight_decay: Annotated[float, NON_NEGATIVE] = 1e-4
    """AdamW weight decay of the policy's optimiser"""
    max_grad_norm: Annotated[float, POSITIVE] = 1.0
    """gradient-norm clipping of the policy update"""
    train_batch_size: Annotated[int | None, AT_LEAST_ONE] = 8
    """trajectories per optimiser step ('none': batch_size)"""
    train_timestep_fraction: Annotated[float, Bound(0, 1, low_open=True)] = 0.5
    """fraction of each trajectory's denoising steps trained on (a random subset)"""
    train_timestep_min: Annotated[int, NON_NEGATIVE] = 0
    """train only the denoising steps with scheduler timestep t >= this (0: every step); on one prompt the noisiest
    steps carry most of the gradient's signal and little of its noise (benchmarks/probes/gradient_noise.py)
    """
    inner_epochs: Annotated[int, AT_LEAST_ONE] = 2
    """passes over each epoch's samples (PPO-style agents: ddpo, loop, herd)"""
    clip_range: Annotated[float, POSITIVE] = 0.2
    """PPO clip range of the per-step importance ratio (log-probs are summed over latent dims)"""
    dual_clip: Annotated[float | None, Bound(1, low_open=True)] = 3.0
    """dual-clip PPO bound on the ratio for negative advantages ('none': off)"""
    adv_clip_max: Annotated[float, POSITIVE] = 5.0
    """advantages are clipped to [-adv_clip_max, adv_clip_max]"""
    per_prompt_stats: bool = True
    """normalise rewards into advantages per prompt (DDPO/TRL stat tracker) instead of batch-wide"""
    stat_buffer_size: Annotated[int, AT_LEAST_ONE] = 32
    """per-prompt stat tracker: rewards kept per prompt"""
    stat_min_count: Annotated[int, AT_LEAST_ONE] = 16
    """per-prompt stat tracker: rewards a prompt needs before its own statistics are used"""
    reinforce_baseline: bool = True
    """REINFORCE: subtract the (per-prompt) mean reward as a baseline"""
    kl_beta: Annotated[float, NON_NEGATIVE] = 0.01
    """DPOK: weight beta of the per-step KL to the pretrained model"""
    reward_alpha: Annotated[float, NON_NEGATIVE] = 1.0
    """DPOK: weight alpha of the reward term"""
    value_learning_rate: Annotated[float, POSITIVE] = 1e-3
    """DPOK: learning rate of the value function V(x_t, c, t) used as baseline"""
    loop_k: Annotated[int, Bound(2, note="the leave-one-out baseline needs others")] = 4
    """LOOP: trajectories K per prompt; each one's baseline is the mean reward of the other K-1"""
    rwr_temperature: Annotated[float, POSITIVE] = 1.0
    """RWR: temperature tau of the regression weights exp(A / tau) (small: the best samples count)"""
    rwr_baseline: bool = False
    """RWR: subtract the mean weight, so that the weights are signed and equal rewards train nothing"""
    nft_beta: Annotated[float, Bound(0, low_open=True)] = 1.0
    """NFT: beta of the implicit positive and negative policies (1 - beta) v_old + beta v_theta and (1 + beta) v_old -
    beta v_theta
    """
    nft_timesteps: Annotated[int, Bound(1)] = 4
    """NFT: noised training timesteps per clean sample and inner epoch, one in each of as many equal strata of
    [train_timestep_min, T_train)
    """
    nft_sampling_steps: Annotated[int | None, Bound(1)] = None
    """NFT: 'none': sample the training images through the env like every agent; k: with a private deterministic (eta =
    0) DDIM of k steps, guided (the held-out evaluation keeps the env's sampler)
    """
    nft_optimality: str = "max-deviation"
    """NFT: how rewards become optimality probabilities r in [0, 1]: 'max-deviation' (the group's farthest sample
    reaches 0 or 1) or 'two-std' (two standard deviations reach 0 or 1, clipped)
    """
    nft_group_size: Annotated[int | None, Bound(2, note="a group of one has no mean to compare with")] = None
    """NFT: 'none': training prompts drawn uniformly; K: batch_size / K prompts, each sampled K times, so that every
    sample's optimality is normalised within its prompt's K samples (with per_prompt_stats; DiffusionNFT's groups)
    """
    nft_old_ema: Annotated[float, Bound(0, 1, high_open=True, note="1 would never update the sampling policy")] = 0.0
    """NFT: soft update of the old (sampling) policy after each epoch, old <- ema * old + (1 - ema) * theta (0: the old
    policy is the current one at each epoch's start)
    """
    herd_base: str = "loop"
    """HERD: the agent HERD wraps (loop: ahead of DDPO on 2 of 3 seeds, docs/experiments/2026-12-05-race.md)"""
    herd_buffer_batches: Annotated[int, AT_LEAST_ONE] = 1
    """HERD: batches H of past trajectories relabeled and replayed per epoch (HERD-b2: 2)"""
    herd_keep_history: bool = False
    """HERD: keep an extended history instead of clearing the buffer each epoch (Algorithm 1)"""
    herd_history_batches: Annotated[int, AT_LEAST_ONE] = 16
    """HERD: cap, in batches, of the extended history (--herd-keep-history)"""
    herd_off_policy_correction: bool = True
    """HERD: importance-weight relabeled trajectories by their behaviour log-probs under the original prompt, PPO-
    clipped (--no-herd-off-policy-correction: the paper's uncorrected variant)
    """
    gradient_checkpointing: bool = False
    """recompute the UNet's activations in the backward pass instead of storing them: much less memory for the training
    step, about a third more training compute; same gradients
    """
    async_reward: bool = False
    """score each sampling batch's reward on a worker thread while the next batch is sampled (on a second env sharing
    the model), instead of stalling sampling; needs --batches-per-epoch >= 2; same results
    """
    channels_last: bool = False
    """store the UNet's conv weights in channels-last (NHWC) memory format, so that its convolutions run in NHWC
    (benchmarks/probes/epoch_overhead.py --variants measures it); same model, float rounding differs
    """
    attention: str = "sdpa"
    """the UNet's attention processor: 'sdpa' (torch's fused scaled_dot_product_attention, diffusers' AttnProcessor2_0,
    the default) or 'classic' (diffusers' AttnProcessor, softmax(QK^T)V written out)
    """
    autocast_bf16: bool = False
    """run every UNet forward (sampling and training) under torch.autocast in bfloat16; weights, DDIM step and log-probs
    stay float32; needs --dtype float32; less precise (the probe prints by how much)
    """
    compile_unet: bool = False
    """torch.compile the UNet the policy calls (mode default); the first epochs pay the compilation, about a minute or
    more per new shape on a CPU (4 minutes in all for the default task with a cold cache)
    """

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """``TypeError`` (wrong type) or ``ValueError`` (out of range) naming the first bad field; numpy scalars
        become ``int``/``float``. Runs on construction (and ``dataclasses.replace``); call it again after assigning
        a field."""
        check_fields(self, AGENT_CONFIG_BOUNDS, agent_config_choices())

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> AgentConfig:
        """An AgentConfig of a mapping of its fields (missing ones keep their defaults); ``ValueError`` naming
        unknown keys."""
        unknown = sorted(str(key) for key in set(values) - {field.name for field in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown AgentConfig field(s) {unknown} (see agents.AgentConfig for its fields)")
        return cls(**values)

    def with_agent_defaults(self, agent: str) -> AgentConfig:
        """This config with agent ``agent``'s defaults in place of ``None``: today only ``learning_rate``
        (:data:`AGENT_LEARNING_RATES`, else :data:`DEFAULT_LEARNING_RATE`; HERD takes its ``herd_base``'s)."""
        if self.learning_rate is not None:
            return self
        learner = self.herd_base if agent == "herd" else agent
        return dataclasses.replace(self, learning_rate=AGENT_LEARNING_RATES.get(learner, DEFAULT_LEARNING_RATE))


# The range of every numeric AgentConfig field, from its annotation (fields without one: any value of their type);
# checked by AgentConfig.validate, and by the CLI's flags (agents.cli) with the same words.
AGENT_CONFIG_BOUNDS: dict[str, Bound] = annotated_bounds(AgentConfig)
# NFT's normalisations of rewards into optimality probabilities (agents.algorithms.math.optimality_probabilities)
OPTIMALITY_SCALES = ("max-deviation", "two-std")
AGENT_CONFIG_CHOICES: dict[str, tuple[str, ...]] = {
    "attention": ATTENTION_PROCESSORS,
    "nft_optimality": OPTIMALITY_SCALES,
}


def herd_bases() -> tuple[str, ...]:
    """The agents HERD can wrap: every agent of the registry (a registered one of your own included) but HERD."""
    from agents.catalog import HERD, agent_names

    return tuple(name for name in agent_names() if name != HERD)


def agent_config_choices() -> dict[str, tuple[str, ...]]:
    """The fields of :class:`AgentConfig` with a fixed set of values, and those values (``herd_base``: the
    registry's agents, read when asked)."""
    return {**AGENT_CONFIG_CHOICES, "herd_base": herd_bases()}


# The policy's learning rate when the config leaves it None: LoRA at 1e-3 for the policy-gradient agents (see
# AgentConfig); RWR regresses on its own samples and diverged at 1e-3 on the Shapes world (agents/algorithms/rwr.py).
DEFAULT_LEARNING_RATE = 1e-3
# NFT regresses too: issue 31's plain adaptation diverged at 1e-3 and not at 3e-4.
AGENT_LEARNING_RATES: dict[str, float] = {"rwr": 1e-4, "nft": 3e-4}


def agent_config_help() -> dict[str, str]:
    """What each field means (its docstring, read by simple-parsing, as the CLI's ``--help`` reads it through
    :func:`field_docstrings`), for readers of ``run.json``; ``tests/test_run_cli.py`` checks that no field is
    missing."""
    return field_docstrings(AgentConfig)


__all__ = [
    "AGENT_CONFIG_BOUNDS",
    "AGENT_CONFIG_CHOICES",
    "AGENT_LEARNING_RATES",
    "ATTENTION_PROCESSORS",
    "DEFAULT_LEARNING_RATE",
    "MAX_SEED",
    "AgentConfig",
    "Bound",
    "check_fields",
    "agent_config_help",
    "annotated_bounds",
    "check_value",
    "field_docstrings",
]
