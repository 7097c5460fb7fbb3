"""Held-out evaluation on fixed seeds: one sample per held-out prompt, the same noise in every run.

Held-out sample ``i`` of a run draws its initial noise from env seed ``RUN_EVAL_SEED + i``, whatever the training
seed, so that base and fine-tuned models, agents and seeds are compared on identical samples. A finished run's
re-evaluation (:mod:`agents.reevaluation`) draws from ``REEVAL_SEED + i`` instead: samples no run evaluated on.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from agents.algorithms.base import Agent
from diffusion_gym.env_config import EnvConfig

RUN_EVAL_SEED = 1_000_000  # a run's held-out sample i uses noise seed RUN_EVAL_SEED + i, in every run
REEVAL_SEED = 2_000_000  # a re-evaluation's sample i: REEVAL_SEED + i, new to every run
GRID_SIZE = 8  # images in before_after.png and in each TensorBoard grid, spread over the held-out samples


@dataclass
class Scores:
    """Mean scores of one set of generated images; gold and proxy only where the world defines them."""

    reward: float
    gold: float | None
    proxy: float | None
    distance_from_base: float | None = None  # RMS pixel difference to the base model's images (same seeds)
    # KL(p_theta || p_pre) of the trajectories, nats per trajectory (DiffusionPolicy.kl_to_reference), mean over the
    # samples: a Monte Carlo estimate; only when the run asks for it (RunSettings.eval_kl); 0 for the base model
    kl_to_base: float | None = None

    def fields(self) -> dict[str, float]:
        """The scores that were computed (no None), by name: ``reward``, ``gold``, ``proxy``, ``distance_from_base``,
        ``kl_to_base``."""
        return {key: value for key, value in asdict(self).items() if value is not None}

    def __str__(self) -> str:
        return ", ".join(f"{key} {value:.4f}" for key, value in self.fields().items())


@dataclass
class Evaluation:
    """Held-out samples on fixed seeds: their mean scores, images ``(N, 3, H, W)`` and prompts."""

    scores: Scores
    images: torch.Tensor
    prompts: list[str]


def spread(prompts: list, count: int) -> list:
    """``count`` items spread evenly over the list (cycling through it when ``count`` exceeds its length)."""
    if count >= len(prompts):
        return [prompts[i % len(prompts)] for i in range(count)]
    return [prompts[(i * len(prompts)) // count] for i in range(count)]


def grid_rows(count: int) -> list[int]:
    """The held-out samples shown in image grids: up to ``GRID_SIZE``, spread over the set (1, 2, 3 objects...)."""
    return spread(list(range(count)), min(GRID_SIZE, count))


def eval_prompt_set(eval_prompts: str | None, prompts: str | list[str] | None, world) -> str | list[str]:
    """The prompts a run evaluates on: ``eval_prompts``, else the world's eval set, else the training prompts."""
    return eval_prompts or world.eval_prompts or prompts or world.default_prompts


def mean_of(scores: torch.Tensor | None) -> float | None:
    """The mean of per-sample scores, or None when the world has no such score."""
    return None if scores is None else float(torch.as_tensor(scores, dtype=torch.float32).mean())


@torch.no_grad()
def evaluate(agent: Agent, prompts: list[str], base: Evaluation | None = None, kl_to_base: bool = False) -> Evaluation:
    r"""One sample per prompt; sample ``i`` draws its initial noise from env seed ``RUN_EVAL_SEED + i`` in every run.

    With ``base`` (the base model's evaluation), also how far the images moved from the base model's. With
    ``kl_to_base``, also the KL of the policy from the pretrained one, in nats per trajectory: the mean over the
    samples of each one's :math:`\sum_t \lVert\mu_\theta - \mu_{pre}\rVert^2 / 2\sigma_t^2` along its own
    trajectory (:meth:`~agents.algorithms.policy.DiffusionPolicy.kl_to_reference`; two more UNet passes per step).
    """
    generation = agent.generate(prompts, seed=RUN_EVAL_SEED, kl_to_base=kl_to_base)
    images = generation.images.detach().float().cpu()  # (N, 3, H, W)
    scores = Scores(
        reward=mean_of(generation.rewards),
        gold=mean_of(generation.gold_scores),
        proxy=mean_of(generation.proxy_scores),
        distance_from_base=None if base is None else float((images - base.images).pow(2).mean().sqrt()),
        kl_to_base=mean_of(generation.kl_to_base),
    )
    return Evaluation(scores, images, list(prompts))


_BASE_EVALUATIONS: dict[Hashable, Evaluation] = {}

# AgentConfig fields that cannot change an untrained agent's samples on the evaluation seeds: they steer training only
# (the LoRA rank too: the adapter starts at zero, so the untrained policy computes exactly the pretrained model's
# steps; the seed draws the training batches and LoRA's A, never the evaluation's noise). Every other field (the
# sampler's guidance and eta, the UNet's attention, autocast, channels_last, compile...) is part of the base key.
TRAINING_ONLY_FIELDS = frozenset(
    {
        "seed",
        "batches_per_epoch",
        "lora_rank",
        "learning_rate",
        "lr_decay_epochs",
        "lr_final_fraction",
        "weight_decay",
        "max_grad_norm",
        "train_batch_size",
        "train_timestep_fraction",
        "train_timestep_min",
        "inner_epochs",
        "clip_range",
        "dual_clip",
        "adv_clip_max",
        "per_prompt_stats",
        "stat_buffer_size",
        "stat_min_count",
        "reinforce_baseline",
        "kl_beta",
        "reward_alpha",
        "value_learning_rate",
        "loop_k",
        "rwr_temperature",
        "rwr_baseline",
        "herd_base",
        "herd_buffer_batches",
        "herd_keep_history",
        "herd_history_batches",
        "herd_off_policy_correction",
        "gradient_checkpointing",
        "async_reward",
    }
)


def base_evaluation_key(agent: Agent, env: EnvConfig, prompts: list[str], kl_to_base: bool) -> tuple:
    """What the base model's evaluation depends on: every env argument (a model folder by its resolved path), every
    field of the agent's config but :data:`TRAINING_ONLY_FIELDS`, the number of envs (a chunk of ``num_envs``
    samples draws its action noise together), the prompts and whether the KL to the base was asked for."""
    env_values = dataclasses.asdict(env)
    model = env_values["model"]
    env_values["model"] = str(Path(model).resolve()) if Path(model).exists() else model
    config = {k: v for k, v in asdict(agent.config).items() if k not in TRAINING_ONLY_FIELDS}
    return (
        tuple(sorted(env_values.items())),
        tuple(sorted(config.items())),
        agent.env.num_envs,
        tuple(prompts),
        kl_to_base,
    )


def evaluate_base_model(agent: Agent, prompts: list[str], env: EnvConfig, kl_to_base: bool = False) -> Evaluation:
    """:func:`evaluate` of an untrained agent, cached per process: the runs of a comparison share one base model.

    Every agent starts exactly at the pretrained model (a zero-initialised adapter), so its samples on the fixed
    evaluation seeds depend only on the settings :func:`base_evaluation_key` collects (``env``: the arguments the
    agent's env was made with), the cache's key; with ``kl_to_base``, its KL to the pretrained model is 0 by
    definition (not computed). An agent that trained already (``agent.epoch > 0``) is evaluated as it is (its KL
    computed), and not cached.
    """
    if agent.epoch > 0:
        return evaluate(agent, prompts, kl_to_base=kl_to_base)
    key = base_evaluation_key(agent, env, prompts, kl_to_base)
    if key not in _BASE_EVALUATIONS:
        _BASE_EVALUATIONS[key] = evaluate(agent, prompts)
    evaluation = _BASE_EVALUATIONS[key]
    if not kl_to_base:
        return evaluation
    return dataclasses.replace(evaluation, scores=dataclasses.replace(evaluation.scores, kl_to_base=0.0))


__all__ = [
    "GRID_SIZE",
    "REEVAL_SEED",
    "RUN_EVAL_SEED",
    "TRAINING_ONLY_FIELDS",
    "Evaluation",
    "Scores",
    "base_evaluation_key",
    "eval_prompt_set",
    "evaluate",
    "evaluate_base_model",
    "grid_rows",
    "mean_of",
    "spread",
]
