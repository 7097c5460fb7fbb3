"""The goal encoding of ``DiffusionT2I-v1``: a prompt, and what was generated for it, in one flat vector.

Gymnasium-robotics' ``GoalEnv`` contract (and SB3's ``HerReplayBuffer``) needs ``achieved_goal`` and
``desired_goal`` in one space, and a vectorised ``compute_reward(achieved_goal, desired_goal, info)``.
Here both are float32 vectors of length ``max_prompt_bytes + 1 + C*H*W``::

    [ prompt as UTF-8 bytes, zero padded | generated flag | final latent x_0, flattened ]
      goal[:L]                             goal[L]          goal[L + 1:]

* The prompt is stored as its UTF-8 bytes, so the goal is **lossless**: any reward model can score any
  goal, including a single relabeled sentence (a tokenizer's ids would be lossy: CLIP lower-cases).
* ``desired_goal`` holds the goal prompt, flag 0 and a zero latent.
* ``achieved_goal`` holds the prompt the image was generated for and, at the terminal step, flag 1 and the
  generated latent :math:`x_0`. Before that the flag is 0, and ``compute_reward`` gives 0: the reward stays
  terminal-only under relabeling too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from diffusion_gym.prompts import check_prompt_list, check_prompt_text


@dataclass(frozen=True)
class GoalCodec:
    """Encodes and decodes goal vectors for one latent shape."""

    max_prompt_bytes: int
    latent_shape: tuple[int, int, int]

    @property
    def flag_index(self) -> int:
        return self.max_prompt_bytes

    @property
    def size(self) -> int:
        return self.max_prompt_bytes + 1 + math.prod(self.latent_shape)

    def prompt_bytes(self, prompt: str) -> bytes:
        """UTF-8 bytes of a goal prompt; refuses non-text (:func:`~diffusion_gym.prompts.check_prompt_text`), empty
        prompts, NUL characters and prompts that don't fit."""
        check_prompt_text(prompt)
        if not prompt.strip():
            raise ValueError(
                "empty prompt: a goal must say something to score the image against (the unconditional "
                "embedding of classifier-free guidance is the policy's business, not a goal)"
            )
        data = prompt.encode("utf-8")
        if b"\x00" in data:
            raise ValueError(f"prompt contains a NUL character, which the goal encoding uses as padding: {prompt!r}")
        if len(data) > self.max_prompt_bytes:
            raise ValueError(
                f"prompt is {len(data)} UTF-8 bytes, more than max_prompt_bytes={self.max_prompt_bytes}: "
                f"{prompt[:80]!r}{' (first 80 characters)' if len(prompt) > 80 else ''}"
            )
        return data

    def encode(self, prompts: list[str] | tuple[str, ...], final_latents: torch.Tensor | None = None) -> torch.Tensor:
        """Goal vectors ``(B, size)`` float32 on the latents' device (CPU if none) for a list or tuple of ``B`` prompts.

        ``final_latents`` ``(B, C, H, W)``, if given, marks the goals as achieved (flag 1) with that :math:`x_0`.
        """
        prompts = check_prompt_list(prompts, "prompts")  # a bare str is refused, not iterated
        device = final_latents.device if final_latents is not None else torch.device("cpu")
        goals = torch.zeros(len(prompts), self.size, dtype=torch.float32)
        for row, prompt in enumerate(prompts):
            data = np.frombuffer(self.prompt_bytes(prompt), dtype=np.uint8)
            goals[row, : len(data)] = torch.from_numpy(data.astype(np.float32))
        goals = goals.to(device)
        if final_latents is not None:
            if tuple(final_latents.shape[1:]) != self.latent_shape:
                raise ValueError(f"latents of shape {tuple(final_latents.shape)} do not match {self.latent_shape}")
            goals[:, self.flag_index] = 1.0
            goals[:, self.flag_index + 1 :] = final_latents.detach().flatten(1).float()  # (B, C*H*W)
        return goals

    def decode_prompts(self, goals: torch.Tensor | np.ndarray) -> list[str]:
        """The prompt of each goal vector; ``goals`` is ``(B, size)``."""
        prompt_part = torch.as_tensor(goals)[:, : self.max_prompt_bytes].detach().cpu()
        codes = prompt_part.round().to(torch.uint8).numpy()
        return [row.tobytes().rstrip(b"\x00").decode("utf-8") for row in codes]

    def check_goals(self, goals: torch.Tensor, name: str) -> list[str]:
        """Raise ``ValueError`` unless every row of ``goals`` ``(B, size)`` is a goal this codec could have written;
        return their prompts.

        A goal is finite; its prompt part holds integers in [0, 255] that are the UTF-8 bytes of a non-empty prompt
        without NUL, zero padded; its generated flag is exactly 0 or 1. ``name`` (``"achieved_goal"``, ...) is in
        the message, with the offending rows.
        """
        goals = torch.as_tensor(goals).detach().cpu()
        finite = torch.isfinite(goals).all(dim=1)  # (B,)
        if not bool(finite.all()):
            raise ValueError(f"{name} contains NaN or inf (rows {_rows(~finite)})")
        prompt_part = goals[:, : self.max_prompt_bytes]  # (B, L)
        not_bytes = ((prompt_part != prompt_part.round()) | (prompt_part < 0) | (prompt_part > 255)).any(dim=1)
        if bool(not_bytes.any()):
            raise ValueError(f"{name}: the prompt bytes must be integers in [0, 255] (rows {_rows(not_bytes)})")
        flags = goals[:, self.flag_index]  # (B,)
        not_flag = (flags != 0) & (flags != 1)
        if bool(not_flag.any()):
            raise ValueError(
                f"{name}: the generated flag must be 0 or 1, got {flags[not_flag].tolist()} (rows {_rows(not_flag)})"
            )
        prompts = []
        for row, codes in enumerate(prompt_part.to(torch.uint8).numpy()):
            data = codes.tobytes().rstrip(b"\x00")
            try:
                prompt = data.decode("utf-8")
            except UnicodeDecodeError as error:
                raise ValueError(f"{name}: the prompt bytes of row {row} are not UTF-8 ({error})") from None
            if not data or b"\x00" in data:
                raise ValueError(f"{name}: row {row} holds no prompt, or a prompt with a NUL byte: {prompt!r}")
            prompts.append(prompt)
        return prompts

    def generated(self, goals: torch.Tensor) -> torch.Tensor:
        """Boolean ``(B,)``: True where the goal carries a generated image."""
        return goals[:, self.flag_index] > 0.5

    def final_latents(self, goals: torch.Tensor) -> torch.Tensor:
        """The :math:`x_0` latents stored in achieved goals, ``(B, C, H, W)``."""
        return goals[:, self.flag_index + 1 :].reshape(-1, *self.latent_shape)  # (B, C, H, W)

    def relabel(self, goals: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """A copy of ``goals`` with the prompt part replaced by ``prompts`` (flag and latent kept)."""
        relabeled = goals.clone()
        relabeled[:, : self.max_prompt_bytes] = self.encode(prompts).to(goals.device)[:, : self.max_prompt_bytes]
        return relabeled

    def bounds(self, latent_bound: float) -> tuple[np.ndarray, np.ndarray]:
        """``(low, high)`` of the goal space."""
        latent_size = math.prod(self.latent_shape)
        low = np.concatenate([np.zeros(self.max_prompt_bytes + 1), np.full(latent_size, -latent_bound)])
        high = np.concatenate([np.full(self.max_prompt_bytes, 255.0), [1.0], np.full(latent_size, latent_bound)])
        return low.astype(np.float32), high.astype(np.float32)


def _rows(mask: torch.Tensor) -> list[int]:
    return torch.nonzero(mask).flatten().tolist()
