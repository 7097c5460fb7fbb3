r"""The base agent: the epoch loop every algorithm shares (rollout, advantages, update), generation and state.

An agent (:class:`Agent`) runs, each epoch (:meth:`Agent.train_epoch`):

1. **rollout** -- ``batches_per_epoch`` batches of ``batch_size`` episodes, driven through the env's
   ``reset``/``step`` with actions sampled from its policy (:class:`~agents.algorithms.rollout.Rollout`); with
   ``async_reward``, each batch's reward is scored on a worker thread while the next batch is sampled
   (:meth:`Agent.collect`);
2. **replay** -- with a relabeler (HERD, :class:`~agents.algorithms.herd.HindsightRelabeler`), last epoch's relabeled
   trajectories join the new ones;
3. **advantages** -- one scalar per trajectory, new and replayed normalised together (each algorithm's own
   :meth:`Agent.advantages`);
4. **update** -- ``inner_epochs`` passes over the trajectories in minibatches of ``train_batch_size``; for each
   minibatch, a random ``train_timestep_fraction`` of its stochastic steps, one forward/backward per step,
   gradients accumulated over the steps, then one clipped optimiser step (DDPO's scheme). The per-step loss
   is each algorithm's own :meth:`Agent.step_loss`;
5. **refill** -- the relabeler keeps some of this epoch's trajectories, relabeled, for the next epoch.

The env may be wrapped: the agent drives the ``reset``/``step`` of the env it is given and reads everything else
from ``env.unwrapped.diffusion``, the env's public interface for policies.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch

from agents.algorithms.buffers import StepBatch, Trajectories, reward_view
from agents.algorithms.herd import HindsightRelabeler
from agents.algorithms.math import (
    PerPromptStatTracker,
    clip_advantages,
    cosine_decay_factor,
    normalize_advantages,
    sample_train_timesteps,
)
from agents.algorithms.policy import DiffusionPolicy
from agents.algorithms.rollout import Rollout, collect_trajectories
from agents.checkpoint import clone_state
from agents.config import AgentConfig
from agents.distributed import Distributed, current
from diffusion_gym.sampling import PolicyStep


class StepLoss(NamedTuple):
    """An algorithm's loss on one :class:`~agents.algorithms.buffers.StepBatch` and the extra metrics it wants logged
    (0-d tensors)."""

    loss: torch.Tensor
    metrics: dict[str, torch.Tensor]


@dataclass
class EpochResult:
    """What :meth:`Agent.train_epoch` returns."""

    metrics: dict[str, float]
    final_images: torch.Tensor  # (B, 3, H, W) of the epoch's first batch
    prompts: list[str]  # the first batch's prompts


@dataclass
class Generation:
    """What :meth:`Agent.generate` returns: the policy's images for some prompts and their scores."""

    images: torch.Tensor  # (N, 3, H, W) in [0, 1]
    rewards: torch.Tensor  # (N,)
    gold_scores: torch.Tensor | None
    proxy_scores: torch.Tensor | None
    kl_to_base: torch.Tensor | None = None  # (N,) nats per trajectory, only when asked (kl_to_base=True)


class Agent:
    """Base class: rollout, generation, the update loop and checkpointing; subclasses define the algorithm.

    A subclass overrides :meth:`advantages` (one scalar per trajectory) and :meth:`step_loss` (the loss of one
    step of a minibatch), and may override :meth:`sample_prompts`, :meth:`configure` (check or adjust the config
    it runs with) and :meth:`setup` (build what it trains besides the policy).

    ``env``: the vector env (``gym.make_vec("DiffusionT2I-v1", ...)``), possibly wrapped. ``relabeler``: HERD's
    :class:`~agents.algorithms.herd.HindsightRelabeler`, composed with this agent (``make_agent("herd", ...)`` passes
    one). Data-parallel (``distributed``, default :func:`agents.distributed.current`): each process samples its own
    batches, advantages are computed on the global batch (:meth:`global_advantages`) and gradients are averaged
    over the processes before each optimiser step.
    """

    name = "agent"

    def __init__(
        self,
        env,
        config: AgentConfig,
        *,
        relabeler: HindsightRelabeler | None = None,
        distributed: Distributed | None = None,
    ):
        config.validate()
        config = self.configure(config)
        self.distributed = distributed or current()
        diffusion = env.unwrapped.diffusion  # the env's public interface for policies and agents
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
        if config.async_reward and config.batches_per_epoch >= 2 and env is not env.unwrapped:
            raise ValueError(
                "async_reward drives env.unwrapped through step_async/step_wait, which Gymnasium's vector wrappers "
                f"do not forward ({type(env).__name__} would not see the episodes): pass env.unwrapped, or turn "
                "async_reward off"
            )
        config = config.with_agent_defaults(self.name)
        self.env = env  # reset/step go through the env as given (wrappers included)
        self.diffusion = diffusion
        self.relabeler = relabeler
        self.config = config
        with torch.random.fork_rng():  # LoRA's A is initialised from the global RNG: make it seeded
            torch.manual_seed(config.seed)
            self.policy = DiffusionPolicy(
                env,
                config.lora_rank,
                config.guidance_scale,
                config.eta,
                config.gradient_checkpointing,
                channels_last=config.channels_last,
                attention=config.attention,
                autocast_bf16=config.autocast_bf16,
                compile_unet=config.compile_unet,
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
        self.prompts = list(diffusion.prompt_pool)
        self.epoch = 0
        self._sibling_env = None  # async_reward's second env (sibling_env)
        self.setup()

    @classmethod
    def configure(cls, config: AgentConfig) -> AgentConfig:
        """The config this algorithm runs with, from a validated one: ``ValueError`` for a combination it cannot
        run; an algorithm may fix fields it has no use for (REINFORCE's one pass). The base agent takes it as is."""
        return config

    def setup(self) -> None:
        """Build what the algorithm trains besides the policy (called at the end of ``__init__``; DPOK's value
        network). The base agent has nothing more."""

    # ------------------------------------------------------------------------------ rollout
    def sample_prompts(self) -> list[str]:
        """``batch_size`` training prompts, uniformly with replacement."""
        rows = self.rng.integers(len(self.prompts), size=self.config.batch_size)
        return [self.prompts[i] for i in rows]

    def sample_prompt_groups(self, group_size: int) -> list[str]:
        """``batch_size / group_size`` training prompts (uniformly, with replacement), each repeated ``group_size``
        times consecutively: the K samples per prompt of LOOP and of NFT's groups (``batch_size`` must be a
        multiple, checked by the agent's :meth:`configure`)."""
        rows = self.rng.integers(len(self.prompts), size=self.config.batch_size // group_size)
        return [self.prompts[i] for i in rows for _ in range(group_size)]

    def collect(self) -> list[Trajectories]:
        """``batches_per_epoch`` batches from the current policy.

        With ``async_reward`` and two batches or more, the batches alternate between ``env.unwrapped`` and a
        sibling env (``env.unwrapped.diffusion.new_vector_env``): batch ``i``'s terminal step is ``step_async``,
        batch ``i + 1`` is sampled on the other env while batch ``i``'s reward is scored on a worker thread, then
        batch ``i`` is collected (``step_wait``). Prompts, env seeds and action noise are drawn in the same order as
        in the synchronous loop, so the batches are identical. (One batch has nothing to overlap with: the next
        epoch's sampling needs the update, which needs the rewards.) Gymnasium's vector wrappers do not forward
        ``step_async``/``step_wait``, so this mode drives the unwrapped env (a wrapped env is refused in
        ``__init__``).
        """
        config = self.config
        overlap = config.async_reward and config.batches_per_epoch >= 2
        envs = [self.env.unwrapped, self.sibling_env()] if overlap else [self.env]  # unwrapped: see __init__
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
        """A second env like ``env.unwrapped`` (same arguments, shared models), made on first use, closed by
        :meth:`close`."""
        if self._sibling_env is None:
            if not hasattr(self.env.unwrapped, "step_async"):
                raise TypeError(f"async_reward needs a DiffusionT2IVectorEnv, got {type(self.env.unwrapped).__name__}")
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
                    self.distributed.backward(self.scaler.scale(out.loss / steps.shape[1]))  # mean over the steps
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
        """Sample ``batches_per_epoch`` batches through the env, add the relabeler's replay (HERD), compute
        advantages on both together, update the policy, refill the relabeler."""
        start = time.perf_counter()
        self.schedule_learning_rate()
        batches = self.collect()  # s_t, r_t
        new = Trajectories.cat(batches)
        replay = None if self.relabeler is None else self.relabeler.replay(self.rng, self.policy)  # b_s, b_r
        train = new if replay is None else Trajectories.cat([new, replay])
        stats = self.update(train, self.global_advantages(train))  # one normalisation (over every process)
        if self.relabeler is not None:
            self.relabeler.refill(new, self.rng, self.diffusion)  # b_s, b_r <- relabeled random trajectories
        self.epoch += 1
        result = self.epoch_result(batches, train, stats, time.perf_counter() - start)
        if replay is not None:
            result.metrics.update(self.relabeler.replay_metrics(replay))
        return result

    def schedule_learning_rate(self) -> None:
        """Set the policy optimiser's learning rate for the coming epoch: the config's, times the cosine decay's
        factor when ``lr_decay_epochs`` is set. It is a function of the epochs done, so a resumed run continues the
        schedule (the optimiser's state is not its source)."""
        config = self.config
        factor = 1.0
        if config.lr_decay_epochs is not None:
            factor = cosine_decay_factor(self.epoch, config.lr_decay_epochs, config.lr_final_fraction)
        for group in self.optimizer.param_groups:
            group["lr"] = config.learning_rate * factor

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
            "learning_rate": float(self.optimizer.param_groups[0]["lr"]),
        }
        if new.gold_scores is not None:
            metrics["gold_score"] = float(new.gold_scores.mean())
        if new.proxy_scores is not None:
            metrics["proxy_score"] = float(new.proxy_scores.mean())
        return EpochResult(metrics, batches[0].final_images, list(batches[0].prompts))

    # ------------------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate(self, prompts: list[str], seed: int, kl_to_base: bool = False) -> Generation:
        """Images of the current policy for ``prompts``, through the env, in chunks of ``num_envs``.

        Sample ``i`` uses env seed ``seed + i`` (its initial noise) whatever the chunking, so the same
        ``seed`` gives comparable images before and after training. The training RNGs are not touched.
        ``kl_to_base``: also each sample's KL to the pretrained policy along its trajectory
        (:meth:`~agents.algorithms.policy.DiffusionPolicy.kl_to_reference`; two more UNet passes per stochastic step).
        """
        if not prompts:
            raise ValueError("generate() needs at least one prompt")
        size = self.env.num_envs
        parts, kls = [], []
        for start in range(0, len(prompts), size):
            chunk = list(prompts[start : start + size])
            real = len(chunk)
            chunk += [chunk[-1]] * (size - real)  # pad the last chunk; the padding is dropped below
            generator = torch.Generator().manual_seed(seed + start)
            samples = collect_trajectories(self.env, self.policy, chunk, seed + start, generator).select(range(real))
            if kl_to_base:
                kls.append(self.policy.kl_to_reference(samples).cpu())  # (real,)
            parts.append(samples)
        samples = Trajectories.cat(parts)
        kl = torch.cat(kls) if kl_to_base else None  # (N,)
        return Generation(samples.final_images, samples.rewards, samples.gold_scores, samples.proxy_scores, kl)

    # ------------------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        """Everything to resume exactly: trainable params, optimiser, loss scaler, stat tracker, RNGs, epoch, and
        the relabeler's buffer (None without one).

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
                "relabeler": None if self.relabeler is None else self.relabeler.state_dict(),
            }
        )

    def load_state_dict(self, state: dict[str, Any]) -> None:
        state = upgrade_herd_state(state)
        if state.get("agent") != self.name:
            raise ValueError(f"state was saved by agent {state.get('agent')!r}, not {self.name!r}")
        relabeled = state.get("relabeler") is not None
        if relabeled != (self.relabeler is not None):
            saved, this = ("with", "without") if relabeled else ("without", "with")
            raise ValueError(f"state was saved {saved} HERD relabeling, and this agent runs {this} it")
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
        if self.relabeler is not None:
            self.relabeler.load_state_dict(state["relabeler"])
        self.epoch = int(state["epoch"])

    def close(self) -> None:
        """Release the policy's adapter from the shared UNet; close the sibling env (``async_reward``)."""
        self.policy.close()
        if self._sibling_env is not None:
            self._sibling_env.close()
            self._sibling_env = None


def upgrade_herd_state(state: dict[str, Any]) -> dict[str, Any]:
    """An agent state of the layout before HERD was composed (a wrapper agent: ``{"agent": "herd", "base": ...,
    "herd_history": ...}``) in today's layout (the base agent's state with a ``relabeler``); others unchanged."""
    if state.get("agent") != "herd" or "base" not in state:
        return state
    return {**state["base"], "epoch": state["epoch"], "relabeler": {"history": state["herd_history"]}}


__all__ = ["Agent", "EpochResult", "Generation", "StepLoss", "upgrade_herd_state"]
