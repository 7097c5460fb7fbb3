r"""HERD: Hindsight Experience Replay for Diffusion models (Tan & Mongstad, Algorithm 1), around any agent.

Each epoch:

1. the base agent samples its batches through the env (:math:`s_t, r_t`);
2. the replay buffer's relabeled trajectories are appended (:math:`s_t \leftarrow b_s`, :math:`r_t \leftarrow b_r`);
3. advantages are computed by the base agent on new and replayed trajectories **together** (one
   normalisation), and the base agent trains on both;
4. the buffer is refilled: ``H = herd_buffer_batches`` batches' worth of this epoch's new trajectories, chosen
   at random; each one's goal is relabeled with **one random sentence of its prompt**; its reward is recomputed
   through the env's ``compute_reward`` on the relabeled goal, and its prompt embedding through
   ``encode_prompts`` (both of ``env.unwrapped.diffusion``, the env's public interface). Latents, actions and
   behaviour log-probs are kept.

By default the buffer is cleared each epoch (Algorithm 1); ``herd_keep_history`` keeps the relabeled
trajectories of the last ``herd_history_batches`` batches and replays ``H`` batches drawn from them at random.

**Off-policy correction.** A relabeled trajectory was sampled by :math:`\pi_{old}(\cdot \mid x_t, c)` under its
*original* prompt :math:`c`, and is trained as if for the sentence :math:`c'`. With
``herd_off_policy_correction`` (default) the ratio is the proper importance weight
:math:`\pi_\theta(x_{t-1} \mid x_t, c') / \pi_{old}(x_{t-1} \mid x_t, c)`, bounded by the base agent's PPO
clipping (and dual clip for negative advantages). Without it (the paper's variant, as in TRL with swapped
prompt embeddings) the old log-probs are recomputed under :math:`c'` with the current parameters at the start
of the epoch, i.e. the replay is treated as on-policy.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import torch

from agents.common import (
    Agent,
    AgentConfig,
    EpochResult,
    Trajectories,
    clone_state,
    trajectories_from_state,
    trajectories_to_state,
)
from diffusion_gym.prompts import split_sentences


def relabel(diffusion, samples: Trajectories, prompts: list[str]) -> Trajectories:
    """``samples`` with their goals relabeled to ``prompts``: new desired goals, prompt embeddings, rewards.

    Latents, actions, log-probs, timesteps and achieved goals are kept (the same images, scored for a new goal).
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


class HERDAgent(Agent):
    """Hindsight relabeling with one random sentence of the prompt, around a base agent (``herd_base``)."""

    name = "herd"

    def __init__(self, env, config: AgentConfig):  # noqa: D107 -- no Agent.__init__: the base owns the policy
        from agents import make_agent

        if config.herd_base == "herd":
            raise ValueError("herd_base cannot be 'herd'")
        self.base: Agent = make_agent(config.herd_base, env, config)
        self.env = self.base.env
        self.config = self.base.config
        self.policy = self.base.policy
        self.history: list[Trajectories] = []  # relabeled trajectories, oldest first
        self.epoch = 0

    # ------------------------------------------------------------------------------ the buffer
    def choose_sentences(self, prompts: list[str]) -> list[str]:
        """One random sentence of each prompt."""
        chosen = []
        for prompt in prompts:
            sentences = split_sentences(prompt)
            chosen.append(sentences[int(self.base.rng.integers(len(sentences)))])
        return chosen

    def fill_buffer(self, new: Trajectories) -> None:
        """Keep ``H`` batches' worth of ``new`` trajectories, chosen at random, relabeled."""
        count = min(self.config.herd_buffer_batches * self.config.batch_size, len(new))
        rows = torch.from_numpy(self.base.rng.choice(len(new), size=count, replace=False))
        chosen = new.select(rows)
        relabeled = relabel(self.base.diffusion, chosen, self.choose_sentences(chosen.prompts))
        if not self.config.herd_keep_history:
            self.history = []
        self.history.append(relabeled)
        # keep at most herd_history_batches batches of the most recent relabeled trajectories
        kept = Trajectories.cat(self.history)
        cap = self.config.herd_history_batches * self.config.batch_size
        self.history = [kept.select(range(max(0, len(kept) - cap), len(kept)))]

    def replay(self) -> Trajectories | None:
        """This epoch's replay: the whole buffer, or ``H`` batches drawn from the extended history."""
        if not self.history:
            return None
        buffer = Trajectories.cat(self.history)
        count = self.config.herd_buffer_batches * self.config.batch_size
        if self.config.herd_keep_history and len(buffer) > count:
            buffer = buffer.select(torch.from_numpy(self.base.rng.choice(len(buffer), size=count, replace=False)))
        if not self.config.herd_off_policy_correction:
            buffer = dataclasses.replace(buffer, log_probs=self.current_log_probs(buffer))
        return buffer

    @torch.no_grad()
    def current_log_probs(self, samples: Trajectories) -> torch.Tensor:
        """``(B, T)`` log-probs of the recorded actions under the current policy and the (relabeled) prompts."""
        log_probs = torch.zeros_like(samples.log_probs)  # (B, T)
        for j in torch.nonzero(samples.stochastic).flatten().tolist():
            timesteps = samples.timesteps[j].repeat(len(samples)).to(samples.latents.device)  # (B,)
            step = self.policy(samples.latents[:, j], timesteps, samples.prompt_embeddings, samples.next_latents[:, j])
            log_probs[:, j] = step.log_prob
        return log_probs

    # ------------------------------------------------------------------------------ the epoch
    def train_epoch(self) -> EpochResult:
        start = time.perf_counter()
        batches = self.base.collect()  # s_t, r_t
        new = Trajectories.cat(batches)
        replay = self.replay()  # s_t <- b_s, r_t <- b_r
        train = new if replay is None else Trajectories.cat([new, replay])
        stats = self.base.update(train, self.base.global_advantages(train))  # normalise together (all processes)
        self.fill_buffer(new)  # b_s, b_r <- relabeled random trajectories
        self.epoch += 1
        self.base.epoch = self.epoch
        result = self.base.epoch_result(batches, train, stats, time.perf_counter() - start)
        if replay is not None:
            result.metrics["herd_relabeled_reward_mean"] = float(replay.rewards.mean())
            result.metrics["herd_num_replayed"] = float(len(replay))
        return result

    # ------------------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        history = clone_state(trajectories_to_state(Trajectories.cat(self.history))) if self.history else None
        return {"agent": self.name, "epoch": self.epoch, "base": self.base.state_dict(), "herd_history": history}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("agent") != self.name:
            raise ValueError(f"state was saved by agent {state.get('agent')!r}, not {self.name!r}")
        self.base.load_state_dict(state["base"])
        history = state["herd_history"]
        self.history = [] if history is None else [trajectories_from_state(history)]
        self.epoch = int(state["epoch"])

    def close(self) -> None:
        self.base.close()
