r"""What every agent shares: the config, the rollout through the env, the batches, and the update loop.

An agent (:class:`Agent`) runs, each epoch (``train_epoch``):

1. **rollout** -- ``batches_per_epoch`` batches of ``batch_size`` episodes, driven through the env's
   ``reset``/``step`` with actions sampled from its policy (:class:`Rollout`); with ``async_reward``, each batch's
   reward is scored on a worker thread while the next batch is sampled (:meth:`Agent.collect`);
2. **advantages** -- one scalar per trajectory (each algorithm's own :meth:`Agent.advantages`);
3. **update** -- ``inner_epochs`` passes over the trajectories in minibatches of ``train_batch_size``; for each
   minibatch, a random ``train_timestep_fraction`` of its stochastic steps, one forward/backward per step,
   gradients accumulated over the steps, then one clipped optimiser step (DDPO's scheme). The per-step loss
   is each algorithm's own :meth:`Agent.step_loss`.

HERD (``agents/herd.py``) wraps any agent by feeding relabeled trajectories into steps 2 and 3.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch

from agents.distributed import Distributed, current
from agents.math import PerPromptStatTracker, clip_advantages, normalize_advantages, sample_train_timesteps
from agents.policy import DiffusionPolicy
from diffusion_gym.sampling import PolicyStep


# ============================================================================================== config
@dataclass
class AgentConfig:
    """One flat config for every agent (fields an agent doesn't use are ignored), so CLI flags map 1:1.

    Log-probs are **sums** over latent dims (see :mod:`agents.math`), so ``clip_range`` is in those units: the
    per-step log-ratio of a 4x8x8 latent is 256x DDPO's per-dim-mean log-ratio, and 0.2 here is about DDPO's
    1e-3 (DDPO's 1e-4 would be ~0.026 here; with sums, Adam makes the learning rate scale-free anyway).

    Defaults, chosen for a CPU budget of ~10 epochs (short probes only, see the agents' report):

    * ``learning_rate`` ``None``: the agent's own default (:meth:`with_agent_defaults`): 1e-3 for the
      policy-gradient agents, 1e-4 for RWR, which diverges at 1e-3 (``agents/rwr.py``); HERD takes its base's.
    * LoRA rank 8 at ``learning_rate`` 1e-3 with ``inner_epochs`` 2: LoRA tolerates far higher rates than a full
      fine-tune (TRL: 3e-4 LoRA vs 1e-5 full). Probes on the Shapes world (standard prompt, 10 DDIM steps,
      2 x 16 samples per epoch): lr 5e-4 with 1 inner epoch left the training reward flat over 8 epochs
      (approx_kl ~0.01); lr 2e-3 with 2 inner epochs raised it 0.615 -> 0.672 in 6 epochs without collapse,
      but with approx_kl 1-13 and 40-60% of the ratios clipped. 1e-3 x 2 sits between the two.
    * ``train_batch_size`` 8: 4 optimiser steps per epoch of 2 x 16 samples, at no extra compute.
    * ``train_timestep_fraction`` 0.5: training costs ~3 UNet passes per (sample, step) against 1 for
      sampling; training on half of the (strongly correlated) steps gives ~1.6x the epochs per CPU-minute.
    """

    seed: int = 0
    batch_size: int = 16  # episodes per sampling batch (= env.num_envs; checked)
    batches_per_epoch: int = 2
    guidance_scale: float | None = None  # None -> the world's (env.unwrapped.diffusion.world.guidance_scale)
    eta: float = 1.0  # DDIM eta; > 0 makes every step a Gaussian policy
    lora_rank: int = 8  # 0 -> full fine-tune
    learning_rate: float | None = None  # None: the agent's default (AGENT_LEARNING_RATES, else 1e-3)
    weight_decay: float = 1e-4
    max_grad_norm: float = 1.0
    train_batch_size: int | None = 8  # trajectories per optimiser step; None -> batch_size
    train_timestep_fraction: float = 0.5  # fraction of the stochastic steps trained per trajectory
    train_timestep_min: int = 0  # train only the steps with scheduler timestep t >= this (0: every step)
    inner_epochs: int = 2
    clip_range: float = 0.2  # PPO clip on the ratio of SUMMED per-step log-probs
    dual_clip: float | None = 3.0  # dual-clip PPO bound for negative advantages (None: off)
    adv_clip_max: float = 5.0
    per_prompt_stats: bool = True
    stat_buffer_size: int = 32
    stat_min_count: int = 16
    reinforce_baseline: bool = True  # REINFORCE: subtract the (per-prompt) mean reward
    kl_beta: float = 0.01  # DPOK: weight of the per-step KL to the pretrained policy
    reward_alpha: float = 1.0  # DPOK: weight of the reward term
    value_learning_rate: float = 1e-3  # DPOK: value function V(x_t, c, t)
    loop_k: int = 4  # LOOP: trajectories per prompt
    rwr_temperature: float = 1.0  # RWR: weights exp(A / temperature), A the normalised reward
    rwr_baseline: bool = False  # RWR: subtract the mean weight (equal rewards then train nothing)
    herd_base: str = "ddpo"
    herd_buffer_batches: int = 1  # H, in batches (HERD: 1, HERD-b2: 2)
    herd_keep_history: bool = False
    herd_history_batches: int = 16  # cap of the extended history (herd_keep_history)
    herd_off_policy_correction: bool = True
    gradient_checkpointing: bool = False  # recompute the UNet's activations in backward: less memory, more compute
    async_reward: bool = False  # score batch i's reward on a worker thread while batch i + 1 is sampled

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field."""
        checks: list[tuple[bool, str]] = [
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.batches_per_epoch >= 1, f"batches_per_epoch must be >= 1, got {self.batches_per_epoch}"),
            (self.guidance_scale is None or self.guidance_scale >= 0, "guidance_scale must be >= 0 or None"),
            (math.isfinite(self.eta) and self.eta > 0, f"eta must be > 0 (eta = 0 is deterministic), got {self.eta}"),
            (self.lora_rank >= 0, f"lora_rank must be >= 0 (0 = full fine-tune), got {self.lora_rank}"),
            (
                self.learning_rate is None or self.learning_rate > 0,
                f"learning_rate must be > 0 or None, got {self.learning_rate}",
            ),
            (self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}"),
            (self.max_grad_norm > 0, f"max_grad_norm must be > 0, got {self.max_grad_norm}"),
            (
                self.train_batch_size is None or self.train_batch_size >= 1,
                f"train_batch_size must be >= 1 or None, got {self.train_batch_size}",
            ),
            (
                0 < self.train_timestep_fraction <= 1,
                f"train_timestep_fraction must be in (0, 1], got {self.train_timestep_fraction}",
            ),
            (self.train_timestep_min >= 0, f"train_timestep_min must be >= 0, got {self.train_timestep_min}"),
            (self.inner_epochs >= 1, f"inner_epochs must be >= 1, got {self.inner_epochs}"),
            (self.clip_range > 0, f"clip_range must be > 0, got {self.clip_range}"),
            (self.dual_clip is None or self.dual_clip > 1, f"dual_clip must be > 1 or None, got {self.dual_clip}"),
            (self.adv_clip_max > 0, f"adv_clip_max must be > 0, got {self.adv_clip_max}"),
            (self.stat_buffer_size >= 1, f"stat_buffer_size must be >= 1, got {self.stat_buffer_size}"),
            (self.stat_min_count >= 1, f"stat_min_count must be >= 1, got {self.stat_min_count}"),
            (self.kl_beta >= 0, f"kl_beta must be >= 0, got {self.kl_beta}"),
            (self.reward_alpha >= 0, f"reward_alpha must be >= 0, got {self.reward_alpha}"),
            (self.value_learning_rate > 0, f"value_learning_rate must be > 0, got {self.value_learning_rate}"),
            (self.rwr_temperature > 0, f"rwr_temperature must be > 0, got {self.rwr_temperature}"),
            (self.loop_k >= 2, f"loop_k must be >= 2 (the leave-one-out baseline needs others), got {self.loop_k}"),
            (self.herd_buffer_batches >= 1, f"herd_buffer_batches must be >= 1, got {self.herd_buffer_batches}"),
            (self.herd_history_batches >= 1, f"herd_history_batches must be >= 1, got {self.herd_history_batches}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def with_agent_defaults(self, agent: str) -> AgentConfig:
        """This config with agent ``agent``'s defaults in place of ``None``: today only ``learning_rate``
        (:data:`AGENT_LEARNING_RATES`, else :data:`DEFAULT_LEARNING_RATE`; HERD takes its ``herd_base``'s)."""
        if self.learning_rate is not None:
            return self
        learner = self.herd_base if agent == "herd" else agent
        return dataclasses.replace(self, learning_rate=AGENT_LEARNING_RATES.get(learner, DEFAULT_LEARNING_RATE))


# The policy's learning rate when the config leaves it None: LoRA at 1e-3 for the policy-gradient agents (see
# AgentConfig); RWR regresses on its own samples and diverged at 1e-3 on the Shapes world (agents/rwr.py).
DEFAULT_LEARNING_RATE = 1e-3
AGENT_LEARNING_RATES: dict[str, float] = {"rwr": 1e-4}


# ============================================================================================== data
@dataclass
class Trajectories:
    """A batch of ``B`` episodes, recorded through the env (tensors on the env's device, rewards on the CPU)."""

    latents: torch.Tensor  # (B, T, C, H, W): x_t, the state at each step
    next_latents: torch.Tensor  # (B, T, C, H, W): x_{t-1}, the action taken at each step
    timesteps: torch.Tensor  # (T,) int64: the scheduler timestep t of each step (descending)
    log_probs: torch.Tensor  # (B, T): behaviour log pi(x_{t-1} | x_t, c), summed over dims; 0 where deterministic
    stochastic: torch.Tensor  # (T,) bool: steps with a density (sigma_t >= MIN_STD)
    prompt_embeddings: torch.Tensor  # (B, S, D): the text encoder's embedding of each goal prompt
    prompts: list[str]  # B goal prompts
    rewards: torch.Tensor  # (B,) terminal rewards
    achieved_goals: torch.Tensor  # (B, G) at termination: [prompt | 1 | x_0]
    desired_goals: torch.Tensor  # (B, G): [prompt | 0 | 0]
    gold_scores: torch.Tensor | None = None  # (B,) where the world has a gold scorer
    proxy_scores: torch.Tensor | None = None  # (B,)
    final_images: torch.Tensor | None = None  # (B, 3, H, W) in [0, 1]
    relabeled: torch.Tensor | None = None  # (B,) bool: HERD's replayed, relabeled trajectories

    def __len__(self) -> int:
        return self.latents.shape[0]

    @property
    def is_relabeled(self) -> torch.Tensor:
        """``(B,)`` bool, False unless HERD marked the trajectory."""
        return self.relabeled if self.relabeled is not None else torch.zeros(len(self), dtype=torch.bool)

    def select(self, rows: torch.Tensor | list[int]) -> Trajectories:
        """The trajectories at ``rows`` (a new object; tensors are indexed copies)."""
        rows = torch.as_tensor(rows, dtype=torch.long)
        fields: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in ("timesteps", "stochastic") or value is None:
                fields[f.name] = value
            elif f.name == "prompts":
                fields[f.name] = [value[i] for i in rows.tolist()]
            else:
                fields[f.name] = value[rows.to(value.device)]
        return Trajectories(**fields)

    @staticmethod
    def cat(parts: list[Trajectories]) -> Trajectories:
        """Concatenate batches that share a schedule (optional fields are kept only if every part has them)."""
        if not parts:
            raise ValueError("nothing to concatenate")
        first = parts[0]
        for part in parts[1:]:
            if not torch.equal(part.timesteps, first.timesteps):
                raise ValueError("cannot concatenate trajectories with different schedules")
        fields: dict[str, Any] = {"timesteps": first.timesteps, "stochastic": first.stochastic}
        fields["prompts"] = [p for part in parts for p in part.prompts]
        fields["relabeled"] = torch.cat([part.is_relabeled for part in parts])
        for f in dataclasses.fields(Trajectories):
            if f.name in fields:
                continue
            values = [getattr(part, f.name) for part in parts]
            fields[f.name] = None if any(v is None for v in values) else torch.cat(values)
        return Trajectories(**fields)


class StepBatch(NamedTuple):
    """One training step for a minibatch of ``M`` trajectories: each row is at its own step ``t``."""

    latents: torch.Tensor  # (M, C, H, W): x_t
    next_latents: torch.Tensor  # (M, C, H, W): x_{t-1}, the recorded action
    timesteps: torch.Tensor  # (M,) int64
    prompt_embeddings: torch.Tensor  # (M, S, D)
    old_log_probs: torch.Tensor  # (M,): log-probs the ratio is taken against
    advantages: torch.Tensor  # (M,)
    relabeled: torch.Tensor  # (M,) bool


class StepLoss(NamedTuple):
    """An algorithm's loss on one :class:`StepBatch` and the extra metrics it wants logged (0-d tensors)."""

    loss: torch.Tensor
    metrics: dict[str, torch.Tensor]


@dataclass
class EpochResult:
    metrics: dict[str, float]
    final_images: torch.Tensor  # (B, 3, H, W) of the epoch's first batch
    prompts: list[str]  # the first batch's prompts


@dataclass
class Generation:
    images: torch.Tensor  # (N, 3, H, W) in [0, 1]
    rewards: torch.Tensor  # (N,)
    gold_scores: torch.Tensor | None
    proxy_scores: torch.Tensor | None


# ============================================================================================== rollout
@dataclass
class Rollout:
    """One batch of episodes being collected: :meth:`start` runs it through the env, :meth:`finish` records it.

    Two phases so that the terminal reward can be scored while the caller does something else: with
    ``asynchronous=True`` the last step is ``env.step_async`` (the env scores the reward on its worker thread) and
    :meth:`finish` waits for it (``env.step_wait``); otherwise it is ``env.step`` and :meth:`finish` only records.
    Either way the env's observations, rewards and the ``generator``'s draws are the same.
    """

    env: Any  # a DiffusionT2IVectorEnv
    prompts: list[str]  # B goal prompts
    asynchronous: bool
    prompt_embeddings: torch.Tensor  # (B, S, D)
    desired_goals: torch.Tensor  # (B, G)
    latents: list[torch.Tensor] = dataclasses.field(default_factory=list)  # T x (B, C, H, W): x_t
    next_latents: list[torch.Tensor] = dataclasses.field(default_factory=list)  # T x (B, C, H, W): the actions
    log_probs: list[torch.Tensor] = dataclasses.field(default_factory=list)  # T x (B,)
    timesteps: list[torch.Tensor] = dataclasses.field(default_factory=list)  # T x 0-d int64
    stochastic: list[bool] = dataclasses.field(default_factory=list)  # T
    last_step: tuple | None = None  # the terminal step's (obs, reward, terminated, truncated, info), synchronous

    @classmethod
    def start(
        cls,
        env,
        policy: DiffusionPolicy,
        prompts: list[str],
        seed: int | list[int],
        generator: torch.Generator,
        asynchronous: bool = False,
    ) -> Rollout:
        """Reset ``env`` and take the ``T`` steps of the schedule with actions from ``policy``.

        ``reset(seed=seed)`` draws the initial noise (sub-env ``i`` from ``seed + i``, or from ``seed[i]`` for a
        list); ``generator`` draws the policy's action noise. ``policy`` is anything with
        :meth:`DiffusionPolicy.sample`. With ``asynchronous``, the last step is left pending on ``env``
        (``step_async``): ``env`` must not be reset before :meth:`finish`.
        """
        observation, _ = env.reset(seed=seed, options={"prompts": list(prompts)})
        rollout = cls(
            env,
            list(prompts),
            asynchronous,
            prompt_embeddings=observation["prompt_embedding"].clone(),  # (B, S, D)
            desired_goals=observation["desired_goal"].clone(),  # (B, G)
        )
        num_steps = env.unwrapped.diffusion.num_inference_steps
        for index in range(num_steps):
            step: PolicyStep = policy.sample(observation, generator)
            rollout.latents.append(observation["latent"].clone())  # (B, C, H, W)
            rollout.timesteps.append(observation["timestep"][0, 0].clone())  # all envs share the schedule
            rollout.next_latents.append(step.action)  # (B, C, H, W)
            rollout.log_probs.append(step.log_prob)  # (B,)
            rollout.stochastic.append(bool(step.stochastic[0]))
            if index < num_steps - 1:
                observation, *_ = env.step(step.action)
            elif asynchronous:
                env.step_async(step.action)  # the reward is scored on the env's worker thread
            else:
                rollout.last_step = env.step(step.action)
        return rollout

    def discard(self) -> None:
        """Give the batch up; a pending terminal step is waited for (its errors ignored), so the env can be reset."""
        if self.asynchronous:
            with contextlib.suppress(Exception):
                self.env.step_wait()

    def finish(self) -> Trajectories:
        """The recorded :class:`Trajectories` (asynchronous: after waiting for the terminal reward)."""
        last_step = self.env.step_wait() if self.asynchronous else self.last_step
        observation, reward, terminated, _, info = last_step
        if not bool(terminated.all()):
            raise RuntimeError("the episodes did not terminate at the end of the schedule")
        return Trajectories(
            latents=torch.stack(self.latents, dim=1),  # T x (B, C, H, W) -> (B, T, C, H, W)
            next_latents=torch.stack(self.next_latents, dim=1),  # (B, T, C, H, W)
            timesteps=torch.stack(self.timesteps).cpu(),  # (T,)
            log_probs=torch.stack(self.log_probs, dim=1),  # T x (B,) -> (B, T)
            stochastic=torch.tensor(self.stochastic),  # (T,)
            prompt_embeddings=self.prompt_embeddings,
            prompts=self.prompts,
            rewards=reward.float().cpu(),  # (B,)
            achieved_goals=observation["achieved_goal"].clone(),  # (B, G)
            desired_goals=self.desired_goals,
            gold_scores=_cpu(info.get("gold_score")),
            proxy_scores=_cpu(info.get("proxy_score")),
            final_images=info["final_images"],  # (B, 3, H, W)
        )


def collect_trajectories(
    env, policy: DiffusionPolicy, prompts: list[str], seed: int | list[int], generator: torch.Generator
) -> Trajectories:
    """Run one batch of episodes through ``env`` (a ``DiffusionT2IVectorEnv``) with actions from ``policy``.

    ``reset(seed=seed)`` draws the initial noise (sub-env ``i`` from ``seed + i``, or ``seed[i]`` for a list);
    ``generator`` draws the policy's action noise. Returns the recorded :class:`Trajectories` (:class:`Rollout` in
    one go).
    """
    return Rollout.start(env, policy, prompts, seed, generator).finish()


def _cpu(value) -> torch.Tensor | None:
    return None if value is None else torch.as_tensor(value).float().cpu()


def prompt_pool(env) -> list[str]:
    """The env's training prompt set (the prompts ``reset`` draws from)."""
    return list(env.unwrapped.diffusion.prompt_pool)


# ============================================================================================== the agent
class Agent:
    """Base class: rollout, generation, the update loop and checkpointing; subclasses define the algorithm.

    A subclass overrides :meth:`advantages` (one scalar per trajectory) and :meth:`step_loss` (the loss of one
    step of a minibatch), and may override :meth:`sample_prompts`.

    Data-parallel (``distributed``, default :func:`agents.distributed.current`): each process samples its own
    batches, advantages are computed on the global batch (:meth:`global_advantages`) and gradients are averaged
    over the processes before each optimiser step.
    """

    name = "agent"

    def __init__(self, env, config: AgentConfig, distributed: Distributed | None = None):
        config.validate()
        self.distributed = distributed or current()
        env = env.unwrapped
        diffusion = env.diffusion  # the env's public interface for policies and agents
        if config.batch_size != env.num_envs:
            raise ValueError(
                f"config.batch_size={config.batch_size} must equal the env's num_envs={env.num_envs} "
                "(one sampling batch is one step of the vector env)"
            )
        timesteps = [int(t) for t in diffusion.timesteps]
        if max(timesteps) < config.train_timestep_min:
            raise ValueError(
                f"train_timestep_min={config.train_timestep_min} leaves no step to train on "
                f"(the env's schedule: {timesteps})"
            )
        config = config.with_agent_defaults(self.name)
        self.env = env
        self.diffusion = diffusion
        self.config = config
        with torch.random.fork_rng():  # LoRA's A is initialised from the global RNG: make it seeded
            torch.manual_seed(config.seed)
            self.policy = DiffusionPolicy(
                env, config.lora_rank, config.guidance_scale, config.eta, config.gradient_checkpointing
            )
        self.parameters = self.policy.trainable_parameters()  # float32, whatever the model's dtype
        self.distributed.broadcast_parameters(self.parameters)  # every process starts from the main's weights
        self.optimizer = torch.optim.AdamW(self.parameters, lr=config.learning_rate, weight_decay=config.weight_decay)
        # float16 models: a dynamic loss scaler skips the optimiser steps whose gradients overflowed float16 (and
        # halves the scale), instead of writing inf/NaN into the weights. It starts at 1, not torch's 2**16: the
        # log-probs are sums over latent dims, so the gradients are large, not small. On the tiny test pipeline,
        # float16 gradients at scale 1 (and 1/16) are within ~0.5% of float32's, and overflow from 2**8-2**10 on.
        # bfloat16 has float32's range and needs no scaler; disabled, the scaler is a no-op.
        self.scaler = torch.amp.GradScaler(
            diffusion.device.type, init_scale=1.0, enabled=self.policy.model_dtype == torch.float16
        )
        sampling_seed = self.distributed.process_seed(config.seed)  # config.seed on the main process
        self.rng = np.random.default_rng(sampling_seed)  # prompts, env seeds
        self.generator = torch.Generator().manual_seed(sampling_seed)  # action noise, shuffles, timestep choice
        self.stat_tracker = PerPromptStatTracker(config.stat_buffer_size, config.stat_min_count)
        self.prompts = prompt_pool(env)
        self.epoch = 0
        self._sibling_env = None  # async_reward's second env (sibling_env)

    # ------------------------------------------------------------------------------ rollout
    def sample_prompts(self) -> list[str]:
        """``batch_size`` training prompts, uniformly with replacement."""
        rows = self.rng.integers(len(self.prompts), size=self.config.batch_size)
        return [self.prompts[i] for i in rows]

    def collect(self) -> list[Trajectories]:
        """``batches_per_epoch`` batches from the current policy.

        With ``async_reward`` and two batches or more, the batches alternate between the env and a sibling env
        (``env.diffusion.new_vector_env``): batch ``i``'s terminal step is
        ``step_async``, batch ``i + 1`` is sampled on the other env while batch ``i``'s reward is scored on a worker
        thread, then batch ``i`` is collected (``step_wait``). Prompts, env seeds and action noise are drawn in the
        same order as in the synchronous loop, so the batches are identical. (One batch has nothing to overlap
        with: the next epoch's sampling needs the update, which needs the rewards.)
        """
        config = self.config
        overlap = config.async_reward and config.batches_per_epoch >= 2
        envs = [self.env, self.sibling_env()] if overlap else [self.env]
        batches: list[Trajectories] = []
        unfinished: list[Rollout] = []  # started, oldest first; overlapping, the last one's reward may be pending
        try:
            for index in range(config.batches_per_epoch):
                prompts = self.sample_prompts()
                seed = int(self.rng.integers(2**31 - config.batch_size))
                env = envs[index % len(envs)]  # its previous batch is finished already (see below)
                unfinished.append(Rollout.start(env, self.policy, prompts, seed, self.generator, asynchronous=overlap))
                if len(unfinished) == len(envs):  # synchronous: at once; overlapping: once the next batch is sampled
                    batches.append(unfinished.pop(0).finish())
            while unfinished:
                batches.append(unfinished.pop(0).finish())
        finally:  # an error or Ctrl-C: leave no step pending, so that the envs can be reset (e.g. to evaluate)
            for rollout in unfinished:
                rollout.discard()
        return batches

    def sibling_env(self):
        """A second env like :attr:`env` (same arguments, shared models), made on first use, closed by :meth:`close`."""
        if self._sibling_env is None:
            if not hasattr(self.env, "step_async"):
                raise TypeError(f"async_reward needs a DiffusionT2IVectorEnv, got {type(self.env).__name__}")
            self._sibling_env = self.diffusion.new_vector_env(self.env.num_envs)
        return self._sibling_env

    # ------------------------------------------------------------------------------ advantages
    def normalized_rewards(self, samples: Trajectories) -> torch.Tensor:
        """Rewards normalised per prompt (stat tracker) or batch-wide: ``(N,)``."""
        if self.config.per_prompt_stats:
            return self.stat_tracker.update(samples.prompts, samples.rewards)
        return normalize_advantages(samples.rewards)

    def advantages(self, samples: Trajectories) -> torch.Tensor:
        """One advantage per trajectory, ``(N,)``: normalised rewards, clipped (DDPO)."""
        return clip_advantages(self.normalized_rewards(samples), self.config.adv_clip_max)

    def global_advantages(self, samples: Trajectories) -> torch.Tensor:
        """:meth:`advantages` of the global batch (every process's ``samples``, in rank order), this process's rows.

        Every process normalises the same concatenation, so their stat trackers stay identical.
        """
        if not self.distributed.enabled:
            return self.advantages(samples)
        parts = self.distributed.gather_object(reward_view(samples))
        start = sum(len(part) for part in parts[: self.distributed.process_index])
        return self.advantages(Trajectories.cat(parts))[start : start + len(samples)]

    # ------------------------------------------------------------------------------ update
    def step_loss(self, batch: StepBatch, step: PolicyStep) -> StepLoss:
        """The loss of one step; ``step`` is the current policy scoring ``batch.next_latents``."""
        raise NotImplementedError

    def optimizer_step(self) -> None:
        """Average, unscale (float16), clip and apply the gradients; with float16, a step whose gradients
        overflowed is skipped and the loss scale lowered (``torch.amp.GradScaler``)."""
        self.distributed.sync_gradients(self.parameters)  # mean over the processes (no-op for one)
        if self.scaler.is_enabled():
            for optimizer in self._optimizers():  # e.g. DPOK's value net: its gradients came from the scaled loss too
                self.scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(self.parameters, self.config.max_grad_norm)
        self.scaler.step(self.optimizer)  # optimizer.step() unless a float16 gradient overflowed
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)

    def _optimizers(self) -> list[torch.optim.Optimizer]:
        """Every optimiser of the agent, the policy's first (they all step on gradients of the scaled loss)."""
        others = [v for v in vars(self).values() if isinstance(v, torch.optim.Optimizer) and v is not self.optimizer]
        return [self.optimizer, *others]

    def update(self, samples: Trajectories, advantages: torch.Tensor) -> dict[str, float]:
        """``inner_epochs`` passes of minibatch updates over ``samples``; returns the mean metrics."""
        config = self.config
        device = samples.latents.device
        advantages = advantages.to(device)
        relabeled = samples.is_relabeled.to(device)
        minibatch = config.train_batch_size or config.batch_size
        trainable = samples.stochastic & (samples.timesteps >= config.train_timestep_min)  # (T,) bool
        totals: dict[str, list[torch.Tensor]] = {}
        for _ in range(config.inner_epochs):
            order = torch.randperm(len(samples), generator=self.generator).to(device)  # (N,)
            for start in range(0, len(samples), minibatch):
                rows = order[start : start + minibatch]  # (M,)
                steps = sample_train_timesteps(trainable, len(rows), config.train_timestep_fraction, self.generator)
                steps = steps.to(device)  # (M, k)
                for j in range(steps.shape[1]):
                    index = steps[:, j]  # (M,): each trajectory's step for this pass
                    batch = StepBatch(
                        latents=samples.latents[rows, index],  # (M, C, H, W)
                        next_latents=samples.next_latents[rows, index],  # (M, C, H, W)
                        timesteps=samples.timesteps.to(device)[index],  # (M,)
                        prompt_embeddings=samples.prompt_embeddings[rows],  # (M, S, D)
                        old_log_probs=samples.log_probs[rows, index],  # (M,)
                        advantages=advantages[rows],  # (M,)
                        relabeled=relabeled[rows],  # (M,)
                    )
                    step = self.policy(batch.latents, batch.timesteps, batch.prompt_embeddings, batch.next_latents)
                    out = self.step_loss(batch, step)
                    self.scaler.scale(out.loss / steps.shape[1]).backward()  # average the gradient over the steps
                    for key, value in {"loss": out.loss, **out.metrics, **self._ratio_metrics(batch, step)}.items():
                        totals.setdefault(key, []).append(value.detach().float())
                self.optimizer_step()
        return {key: float(torch.stack(values).nanmean()) for key, values in totals.items()}

    def _ratio_metrics(self, batch: StepBatch, step: PolicyStep) -> dict[str, torch.Tensor]:
        """approx_kl / clipfrac of the on-policy rows (HERD's relabeled rows are reported apart)."""
        with torch.no_grad():
            log_ratio = step.log_prob - batch.old_log_probs  # (M,)
            clipped = ((log_ratio.exp() - 1).abs() > self.config.clip_range).float()
            on, off = ~batch.relabeled, batch.relabeled
            nan = torch.tensor(float("nan"))
            metrics = {
                "approx_kl": (0.5 * log_ratio[on] ** 2).mean() if bool(on.any()) else nan,
                "clipfrac": clipped[on].mean() if bool(on.any()) else nan,
            }
            if bool(off.any()):  # how far the relabeled prompt moved the policy from the behaviour one
                metrics["herd_clipfrac"] = clipped[off].mean()
                metrics["herd_abs_log_ratio"] = log_ratio[off].abs().mean()
            return metrics

    # ------------------------------------------------------------------------------ the epoch
    def train_epoch(self) -> EpochResult:
        """Sample ``batches_per_epoch`` batches through the env, compute advantages, update the policy."""
        start = time.perf_counter()
        batches = self.collect()
        samples = Trajectories.cat(batches)
        stats = self.update(samples, self.global_advantages(samples))
        self.epoch += 1
        return self.epoch_result(batches, samples, stats, time.perf_counter() - start)

    def epoch_result(
        self, batches: list[Trajectories], train: Trajectories, stats: dict[str, float], seconds: float
    ) -> EpochResult:
        new = Trajectories.cat(batches)
        if self.distributed.enabled:  # the global batch's rewards and scores (identical on every process)
            new = Trajectories.cat(self.distributed.gather_object(reward_view(new)))
            train = Trajectories.cat(self.distributed.gather_object(reward_view(train)))
        metrics = {
            "reward_mean": float(new.rewards.mean()),
            "reward_std": float(new.rewards.std(unbiased=False)),
            **stats,
            "epoch_seconds": seconds,
            "samples_per_second": len(new) / seconds,
            "num_train_samples": float(len(train)),
        }
        if new.gold_scores is not None:
            metrics["gold_score"] = float(new.gold_scores.mean())
        if new.proxy_scores is not None:
            metrics["proxy_score"] = float(new.proxy_scores.mean())
        return EpochResult(metrics, batches[0].final_images, list(batches[0].prompts))

    # ------------------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate(self, prompts: list[str], seed: int) -> Generation:
        """Images of the current policy for ``prompts``, through the env, in chunks of ``num_envs``.

        Sample ``i`` uses env seed ``seed + i`` (its initial noise) whatever the chunking, so the same
        ``seed`` gives comparable images before and after training. The training RNGs are not touched.
        """
        if not prompts:
            raise ValueError("generate() needs at least one prompt")
        size = self.env.num_envs
        parts = []
        for start in range(0, len(prompts), size):
            chunk = list(prompts[start : start + size])
            real = len(chunk)
            chunk += [chunk[-1]] * (size - real)  # pad the last chunk; the padding is dropped below
            generator = torch.Generator().manual_seed(seed + start)
            samples = collect_trajectories(self.env, self.policy, chunk, seed + start, generator)
            parts.append(samples.select(range(real)))
        samples = Trajectories.cat(parts)
        return Generation(samples.final_images, samples.rewards, samples.gold_scores, samples.proxy_scores)

    # ------------------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        """Everything to resume exactly: trainable params, optimiser, loss scaler, stat tracker, RNGs, epoch.

        Only tensors and plain Python values (nested dicts/lists of str, int, float, bool, None).
        """
        return clone_state(
            {
                "agent": self.name,
                "epoch": self.epoch,
                "policy": self.policy.named_trainable_parameters(),
                "optimizer": self.optimizer.state_dict(),  # holds live tensors: cloned below
                "scaler": self.scaler.state_dict(),  # float16's loss scale; {} when disabled
                "stat_tracker": self.stat_tracker.state_dict(),
                "rng": {"numpy": self.rng.bit_generator.state, "torch": self.generator.get_state()},
            }
        )

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("agent") != self.name:
            raise ValueError(f"state was saved by agent {state.get('agent')!r}, not {self.name!r}")
        parameters = self.policy.named_trainable_parameters()
        missing = set(parameters) ^ set(state["policy"])
        if missing:
            raise ValueError(f"policy parameters do not match the checkpoint: {sorted(missing)[:5]}")
        with torch.no_grad():
            for name, parameter in parameters.items():
                parameter.copy_(state["policy"][name])
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):  # absent from older checkpoints, {} when saved without float16
            self.scaler.load_state_dict(state["scaler"])
        self.stat_tracker.load_state_dict(state["stat_tracker"])
        self.rng.bit_generator.state = state["rng"]["numpy"]
        self.generator.set_state(state["rng"]["torch"])
        self.epoch = int(state["epoch"])

    def close(self) -> None:
        """Release the policy's adapter from the shared UNet; close the sibling env (``async_reward``)."""
        self.policy.close()
        if self._sibling_env is not None:
            self._sibling_env.close()
            self._sibling_env = None


def reward_view(samples: Trajectories) -> Trajectories:
    """``samples`` without their latents, embeddings and images (zero-size, on the CPU): what advantages and
    reward metrics read (rewards, prompts, scores, relabeled flags), small enough to gather across processes."""
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(samples):
        value = getattr(samples, f.name)
        if isinstance(value, torch.Tensor):
            keep = f.name in ("timesteps", "stochastic", "rewards", "gold_scores", "proxy_scores", "relabeled")
            value = value.detach().cpu() if keep or value.ndim < 2 else value[:, :0].detach().cpu()
        fields[f.name] = value
    return Trajectories(**fields)


def clone_state(value: Any) -> Any:
    """A deep copy of a nested state (dicts, lists, tuples) with every tensor detached and cloned."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {k: clone_state(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(clone_state(v) for v in value)
    return value


def trajectories_to_state(samples: Trajectories) -> dict[str, Any]:
    """A :class:`Trajectories` as tensors and plain values (for checkpoints)."""
    return {f.name: getattr(samples, f.name) for f in dataclasses.fields(samples)}


def trajectories_from_state(state: dict[str, Any]) -> Trajectories:
    return Trajectories(**state)


__all__ = [
    "Agent",
    "AgentConfig",
    "EpochResult",
    "Generation",
    "Rollout",
    "StepBatch",
    "StepLoss",
    "Trajectories",
    "clone_state",
    "collect_trajectories",
    "prompt_pool",
    "reward_view",
    "trajectories_from_state",
    "trajectories_to_state",
]
