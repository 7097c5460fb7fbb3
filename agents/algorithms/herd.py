r"""HERD: Hindsight Experience Replay for Diffusion models (Tan & Mongstad, Algorithm 1), composed with any agent.

As Stable-Baselines3's HER is a replay buffer any off-policy algorithm can use, HERD here is a relabeling
component, :class:`HindsightRelabeler`, that an agent consults in its epoch
(:meth:`agents.algorithms.base.Agent.train_epoch`); ``make_agent("herd", env, config)`` builds the agent ``herd_base``
with one. Each epoch:

1. the agent samples its batches through the env (:math:`s_t, r_t`);
2. the relabeler's replay is appended (:math:`s_t \leftarrow b_s`, :math:`r_t \leftarrow b_r`,
   :meth:`HindsightRelabeler.replay`);
3. advantages are computed by the agent on new and replayed trajectories **together** (one normalisation), and
   the agent trains on both;
4. the buffer is refilled (:meth:`HindsightRelabeler.refill`): ``H = herd_buffer_batches`` batches' worth of this
   epoch's new trajectories, chosen at random; each one's goal is relabeled with **one random sentence of its
   prompt**; its reward is recomputed through the env's ``compute_reward`` on the relabeled goal, and its prompt
   embedding through ``encode_prompts`` (both of ``env.unwrapped.diffusion``, the env's public interface).
   Latents, actions and behaviour log-probs are kept.

Every random choice is drawn from the agent's own generator (passed in), in that order, so a seeded run is
reproducible and resumes exactly.

By default the buffer is cleared each epoch (Algorithm 1); ``herd_keep_history`` keeps the relabeled
trajectories of the last ``herd_history_batches`` batches and replays ``H`` batches drawn from them at random.

**Off-policy correction.** A relabeled trajectory was sampled by :math:`\pi_{old}(\cdot \mid x_t, c)` under its
*original* prompt :math:`c`, and is trained as if for the sentence :math:`c'`. With
``herd_off_policy_correction`` (default) the ratio is the proper importance weight
:math:`\pi_\theta(x_{t-1} \mid x_t, c') / \pi_{old}(x_{t-1} \mid x_t, c)`, bounded by the agent's PPO
clipping (and dual clip for negative advantages). Without it (the paper's variant, as in TRL with swapped
prompt embeddings) the old log-probs are recomputed under :math:`c'` with the current parameters at the start
of the epoch, i.e. the replay is treated as on-policy.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from agents.algorithms.buffers import Trajectories, trajectories_from_state, trajectories_to_state
from agents.algorithms.policy import DiffusionPolicy
from agents.checkpoint import clone_state
from agents.config import AgentConfig
from diffusion_gym.prompts import split_sentences


def relabel(diffusion, samples: Trajectories, prompts: list[str]) -> Trajectories:
    """``samples`` with their goals relabeled to ``prompts``: new desired goals, prompt embeddings, rewards.

    ``diffusion`` is the env's public interface (``env.unwrapped.diffusion``). Latents, actions, log-probs,
    timesteps and achieved goals are kept (the same images, scored for a new goal).
    """
    if len(prompts) != len(samples):
        raise ValueError(f"got {len(prompts)} prompts for {len(samples)} trajectories")
    desired_goals = diffusion.codec.relabel(samples.desired_goals, prompts)  # (B, G): only the prompt bytes change
    rewards = diffusion.compute_reward(samples.achieved_goals, desired_goals).float().cpu()  # (B,)
    prompt_embeddings = diffusion.encode_prompts(prompts).to(samples.prompt_embeddings.device)  # (B, S, D)
    return dataclasses.replace(
        samples,
        prompts=list(prompts),
        desired_goals=desired_goals,
        rewards=rewards,
        prompt_embeddings=prompt_embeddings,
        relabeled=torch.ones(len(samples), dtype=torch.bool),
    )


class HindsightRelabeler:
    """HERD's relabel buffer: replays last epoch's trajectories relabeled with one random sentence of their prompt.

    Its settings are the config's ``herd_*`` fields (``herd_base`` is the agent it is composed with).
    """

    def __init__(self, config: AgentConfig):
        config.validate()
        self.config = config
        self.history: list[Trajectories] = []  # relabeled trajectories, oldest first

    @property
    def replay_size(self) -> int:
        """Trajectories replayed per epoch once the buffer is full: ``H`` batches."""
        return self.config.herd_buffer_batches * self.config.batch_size

    # ------------------------------------------------------------------------------ replay
    def replay(self, rng: np.random.Generator, policy: DiffusionPolicy) -> Trajectories | None:
        """This epoch's replay (None while the buffer is empty): the whole buffer, or ``H`` batches drawn from the
        extended history. Without the off-policy correction, its log-probs are rescored under ``policy``."""
        if not self.history:
            return None
        buffer = Trajectories.cat(self.history)
        if self.config.herd_keep_history and len(buffer) > self.replay_size:
            buffer = buffer.select(torch.from_numpy(rng.choice(len(buffer), size=self.replay_size, replace=False)))
        if not self.config.herd_off_policy_correction:
            buffer = dataclasses.replace(buffer, log_probs=current_log_probs(policy, buffer))
        return buffer

    @staticmethod
    def replay_metrics(replay: Trajectories) -> dict[str, float]:
        """What an epoch with a replay logs about it."""
        return {"herd_relabeled_reward_mean": float(replay.rewards.mean()), "herd_num_replayed": float(len(replay))}

    # ------------------------------------------------------------------------------ refill
    def refill(self, new: Trajectories, rng: np.random.Generator, diffusion) -> None:
        """Keep ``H`` batches' worth of ``new`` trajectories, chosen at random, relabeled (through ``diffusion``, the
        env's public interface)."""
        count = min(self.replay_size, len(new))
        rows = torch.from_numpy(rng.choice(len(new), size=count, replace=False))
        chosen = new.select(rows)
        relabeled = relabel(diffusion, chosen, choose_sentences(chosen.prompts, rng))
        if not self.config.herd_keep_history:
            self.history = []
        self.history.append(relabeled)
        # keep at most herd_history_batches batches of the most recent relabeled trajectories
        kept = Trajectories.cat(self.history)
        cap = self.config.herd_history_batches * self.config.batch_size
        self.history = [kept.select(range(max(0, len(kept) - cap), len(kept)))]

    # ------------------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        """The buffer, as tensors and plain values (``history`` None when empty)."""
        history = clone_state(trajectories_to_state(Trajectories.cat(self.history))) if self.history else None
        return {"history": history}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        history = state["history"]
        self.history = [] if history is None else [trajectories_from_state(history)]


def choose_sentences(prompts: list[str], rng: np.random.Generator) -> list[str]:
    """One random sentence of each prompt (one draw of ``rng`` per prompt)."""
    chosen = []
    for prompt in prompts:
        sentences = split_sentences(prompt)
        chosen.append(sentences[int(rng.integers(len(sentences)))])
    return chosen


@torch.no_grad()
def current_log_probs(policy: DiffusionPolicy, samples: Trajectories) -> torch.Tensor:
    """``(B, T)`` log-probs of the recorded actions under ``policy`` and the samples' (relabeled) prompts."""
    log_probs = torch.zeros_like(samples.log_probs)  # (B, T)
    for j in torch.nonzero(samples.stochastic).flatten().tolist():
        timesteps = samples.timesteps[j].repeat(len(samples)).to(samples.latents.device)  # (B,)
        step = policy(samples.latents[:, j], timesteps, samples.prompt_embeddings, samples.next_latents[:, j])
        log_probs[:, j] = step.log_prob
    return log_probs


__all__ = ["HindsightRelabeler", "choose_sentences", "current_log_probs", "relabel"]
