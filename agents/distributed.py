"""Data-parallel training across processes (``accelerate launch``): the few collectives the agents need.

:class:`Distributed` is a no-op for a single process (the default). Under ``accelerate launch`` with several
processes (``WORLD_SIZE > 1``), :func:`current` builds one from an ``accelerate.Accelerator``, whose process
group (NCCL on GPUs, gloo on CPUs) carries the collectives below. Each process then:

* samples its own share of the batch (its own env; RNGs seeded by :meth:`Distributed.process_seed`);
* computes advantages on the **global** batch: rewards and prompts are gathered (:meth:`gather`,
  :meth:`gather_prompts`) and every process normalises the same concatenation (rank order), then keeps its
  own slice (``Agent.global_advantages``), so per-prompt statistics match a single process's exactly;
* all-reduces (mean) the gradients of its trainable parameters before each optimiser step
  (:meth:`sync_gradients`), so the parameters stay bit-identical on every process.

Only the main process logs and saves (``benchmarks/training.py``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

_CURRENT: Distributed | None = None


class Distributed:
    """The process group of a data-parallel run; a single process when built without an accelerator."""

    def __init__(self, accelerator: Any | None = None):
        self.accelerator = accelerator
        self.num_processes: int = 1 if accelerator is None else int(accelerator.num_processes)
        self.process_index: int = 0 if accelerator is None else int(accelerator.process_index)
        self.local_process_index: int = 0 if accelerator is None else int(accelerator.local_process_index)

    @property
    def is_main_process(self) -> bool:
        return self.process_index == 0

    @property
    def enabled(self) -> bool:
        """True when there is more than one process (the collectives do something)."""
        return self.num_processes > 1

    @classmethod
    def from_environment(cls, cpu: bool = False) -> Distributed:
        """The process group ``accelerate launch`` set up (``WORLD_SIZE > 1``), else a single process.

        ``cpu=True`` forces the gloo backend even where GPUs exist (a ``--device cpu`` run). The result becomes
        :func:`current`.
        """
        global _CURRENT
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            from accelerate import Accelerator

            distributed = cls(Accelerator(cpu=cpu))
        else:
            distributed = cls()
        _CURRENT = distributed
        return distributed

    # ------------------------------------------------------------------------------ seeds and devices
    def process_seed(self, seed: int) -> int:
        """This process's sampling seed: ``seed`` on the main process, a distinct seed derived from ``(seed, rank)``
        on the others (so a single process samples as before)."""
        if self.process_index == 0:
            return seed
        return int(np.random.SeedSequence([seed, self.process_index]).generate_state(1, dtype=np.uint32)[0] >> 1)

    def device(self, requested: str) -> str:
        """``cuda`` (no index) becomes this process's GPU, ``cuda:<local rank>``; anything else is kept."""
        if self.enabled and torch.device(requested).type == "cuda" and torch.device(requested).index is None:
            return f"cuda:{self.local_process_index}"
        return requested

    # ------------------------------------------------------------------------------ collectives
    def gather_object(self, value: Any) -> list[Any]:
        """Every process's ``value``, in rank order (pickled; keep it small and on the CPU)."""
        if not self.enabled:
            return [value]
        gathered: list[Any] = [None] * self.num_processes
        torch.distributed.all_gather_object(gathered, value)
        return gathered

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """The concatenation along dim 0 of every process's ``tensor`` (sizes may differ), on ``tensor``'s device."""
        if not self.enabled:
            return tensor
        parts = self.gather_object(tensor.detach().cpu())
        return torch.cat(parts).to(tensor.device)

    def gather_prompts(self, prompts: list[str]) -> list[str]:
        """The concatenation of every process's prompts, in rank order."""
        return [p for part in self.gather_object(list(prompts)) for p in part]

    def broadcast_object(self, value: Any) -> Any:
        """The main process's ``value``, on every process."""
        if not self.enabled:
            return value
        box = [value]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    @torch.no_grad()
    def broadcast_parameters(self, parameters: Iterable[torch.Tensor]) -> None:
        """Copy the main process's values of ``parameters`` into every process's (in place)."""
        if not self.enabled:
            return
        for parameter in parameters:
            tensor = parameter.data
            buffer = tensor if self._can_communicate(tensor) else tensor.cpu()
            torch.distributed.broadcast(buffer, src=0)
            if buffer is not tensor:
                tensor.copy_(buffer)

    @torch.no_grad()
    def sync_gradients(self, parameters: Iterable[torch.Tensor]) -> None:
        """Replace every parameter's ``.grad`` by its mean over the processes (a missing grad counts as zero).

        One flat all-reduce: every process ends with the same bits, so identical optimiser steps keep the
        parameters identical.
        """
        if not self.enabled:
            return
        parameters = [p for p in parameters if p.requires_grad]
        if not parameters:
            return
        for parameter in parameters:
            if parameter.grad is None:
                parameter.grad = torch.zeros_like(parameter)
        flat = torch.cat([p.grad.reshape(-1) for p in parameters])
        buffer = flat if self._can_communicate(flat) else flat.cpu()
        torch.distributed.all_reduce(buffer, op=torch.distributed.ReduceOp.SUM)
        buffer /= self.num_processes
        flat = buffer.to(flat.device)
        offset = 0
        for parameter in parameters:
            count = parameter.grad.numel()
            parameter.grad.copy_(flat[offset : offset + count].view_as(parameter.grad))
            offset += count

    def mean_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        """Each metric averaged over the processes that report it (NaN ignored); the main process's key order."""
        if not self.enabled:
            return metrics
        everyone = self.gather_object(dict(metrics))
        averaged: dict[str, float] = {}
        for key in everyone[0]:
            values = [m[key] for m in everyone if key in m and m[key] == m[key]]
            averaged[key] = sum(values) / len(values) if values else float("nan")
        return averaged

    def wait_for_everyone(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    def _can_communicate(self, tensor: torch.Tensor) -> bool:
        """Whether the backend takes ``tensor`` where it is (gloo: CPU tensors; NCCL: CUDA tensors)."""
        backend = torch.distributed.get_backend()
        return tensor.device.type == "cpu" if backend == "gloo" else tensor.device.type != "cpu"


def current() -> Distributed:
    """The process-wide :class:`Distributed`: built from the environment on first use (single process unless
    ``accelerate launch`` started several)."""
    return _CURRENT if _CURRENT is not None else Distributed.from_environment()


def to_cpu(value: Any) -> Any:
    """A nested state (dicts, lists, tuples) with every tensor moved to the CPU (to gather it)."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_cpu(v) for v in value)
    return value


__all__ = ["Distributed", "current", "to_cpu"]
