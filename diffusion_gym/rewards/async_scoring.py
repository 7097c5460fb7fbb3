"""Score rewards on a background thread, so that sampling the next batch overlaps scoring this one.

::

    with AsyncRewardScorer(make_reward("imagereward", device)) as scorer:
        future = scorer.submit(images, prompts)     # returns at once
        next_images = sample(...)                   # runs while the reward model scores `images`
        rewards = future.result()                   # (B,) float32 CPU; re-raises the worker's exception

The native vector env uses one this way (``DiffusionT2IVectorEnv.step_async`` submits the terminal step's reward
and the world's gold/proxy scores, ``step_wait`` collects them), and so do the agents' ``async_reward`` rollouts.

One worker thread per scorer, so a scorer's batches are scored in submission order; and one process-wide lock
around every reward call of every scorer, so a reward model is never run by two threads at once, even when two
envs (each with its own scorer) share it: rewards need not be thread-safe, and a GPU holds one reward batch's
activations at a time. PyTorch releases the GIL inside its kernels, so the overlap with the caller's work is
real on CPU too. On CUDA the worker runs on its own stream, which first waits for the work that produced the
images (the sampler's stream, recorded at :meth:`~AsyncRewardScorer.submit`).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch

from diffusion_gym.rewards.registry import RewardFn

# Held around every reward call on a worker thread: the reward models are shared within the process.
_SCORING_LOCK = threading.Lock()


class AsyncRewardScorer:
    """Runs ``reward_fn(images, prompts)`` on one background thread and hands back futures.

    Args:
        reward_fn: any reward of the registry's interface.
        clone: copy the images at submission, so the caller may overwrite its buffer straight away.
    """

    def __init__(self, reward_fn: RewardFn, *, clone: bool = True):
        self.reward_fn = reward_fn
        self.clone = clone
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reward-scorer")
        self._streams: dict[torch.device, Any] = {}

    def submit(
        self, images: torch.Tensor, prompts: Sequence[str], reward_fn: RewardFn | None = None
    ) -> Future[torch.Tensor]:
        """Queue ``reward_fn(images, prompts)``; the future's ``result()`` is the ``(B,)`` float32 CPU scores.

        ``reward_fn`` (default: the scorer's own) lets one worker score several rewards of the same images in
        order, e.g. the env's reward and the world's gold score. If the reward raises, ``result()`` raises that
        same exception (with its traceback).
        """
        if self._executor is None:
            raise RuntimeError("this AsyncRewardScorer is closed")
        images = images.detach()
        if self.clone:
            images = images.clone()
        prompts = list(prompts)
        ready = None
        if images.is_cuda:  # the worker's stream must wait for the kernels that wrote `images`
            ready = torch.cuda.Event()
            ready.record(torch.cuda.current_stream(images.device))
        return self._executor.submit(self._score, reward_fn or self.reward_fn, images, prompts, ready)

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """Synchronous scoring through the same worker (keeps the order with queued batches)."""
        return self.submit(images, prompts).result()

    def _score(self, reward_fn: RewardFn, images: torch.Tensor, prompts: list[str], ready: Any) -> torch.Tensor:
        with _SCORING_LOCK:
            if ready is None:
                scores = reward_fn(images, prompts)
            else:
                stream = self._streams.get(images.device)
                if stream is None:
                    stream = self._streams[images.device] = torch.cuda.Stream(images.device)
                stream.wait_event(ready)
                with torch.cuda.stream(stream):
                    scores = reward_fn(images, prompts)
                    scores = scores.detach().float().cpu()  # syncs with the stream's work on `images`
                stream.synchronize()
        scores = torch.as_tensor(scores).detach().float().cpu()
        if scores.shape != (len(prompts),):
            raise ValueError(f"reward returned shape {tuple(scores.shape)}, expected ({len(prompts)},)")
        return scores

    def close(self, wait: bool = True) -> None:
        """Stop the worker (after the queued batches if ``wait``). Idempotent."""
        if self._executor is not None:
            self._executor.shutdown(wait=wait, cancel_futures=not wait)
            self._executor = None

    @property
    def closed(self) -> bool:
        return self._executor is None

    def __enter__(self) -> AsyncRewardScorer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
