"""What agents record and train on: a batch of episodes (:class:`Trajectories`) and one training step of a
minibatch (:class:`StepBatch`), with the helpers that move them through checkpoints and across processes.

HERD's relabel buffer (:class:`agents.algorithms.herd.HindsightRelabeler`) holds :class:`Trajectories` too.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch


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


def trajectories_to_state(samples: Trajectories) -> dict[str, Any]:
    """A :class:`Trajectories` as tensors and plain values (for checkpoints)."""
    return {f.name: getattr(samples, f.name) for f in dataclasses.fields(samples)}


def trajectories_from_state(state: dict[str, Any]) -> Trajectories:
    return Trajectories(**state)


__all__ = ["StepBatch", "Trajectories", "reward_view", "trajectories_from_state", "trajectories_to_state"]
