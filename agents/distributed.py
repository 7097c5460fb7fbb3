"""Data-parallel training across processes (``accelerate launch``), on ``accelerate``.

:class:`Distributed` is a no-op for a single process (the default: no ``Accelerator`` is built, so a single
process runs exactly as without accelerate). Under ``accelerate launch`` with several processes
(``WORLD_SIZE > 1``), :func:`current` builds one around an ``accelerate.Accelerator``, whose process group (NCCL
on GPUs, gloo on CPUs) carries accelerate's collectives (``accelerate.utils.gather_object``, ``broadcast``,
``broadcast_object_list`` and ``Accelerator.reduce``). Each process then:

* samples its own share of the batch (its own env; RNGs seeded by :meth:`Distributed.process_seed`);
* computes advantages on the **global** batch: every process's rewards and prompts are gathered
  (:meth:`gather_object`) and every process normalises the same concatenation (rank order), then keeps its own
  slice (``Agent.global_advantages``), so per-prompt statistics match a single process's exactly;
* back-propagates through ``Accelerator.backward`` (:meth:`backward`) and averages the gradients of its trainable
  parameters over the processes before each optimiser step (:meth:`sync_gradients`, ``Accelerator.reduce`` with
  ``reduction="mean"``: a sum all-reduce, then a division by the process count, the same bits on every
  process), so identical optimiser steps keep the parameters bit-identical.

The policy's LoRA adapter lives inside the env's shared UNet, which also serves as the frozen reference, so the
model is not wrapped in ``DistributedDataParallel`` (``accelerator.prepare``): the gradients are reduced
explicitly instead, once per optimiser step. Only the main process evaluates, logs and saves
(:class:`agents.training.trainer.Trainer`).
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
        self.accelerator = accelerator  # an accelerate.Accelerator, or None for a single process
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
        from accelerate.utils import gather_object

        return gather_object([value])  # accelerate concatenates the per-process lists: one item each

    def broadcast_object(self, value: Any) -> Any:
        """The main process's ``value``, on every process."""
        if not self.enabled:
            return value
        from accelerate.utils import broadcast_object_list

        return broadcast_object_list([value], from_process=0)[0]

    @torch.no_grad()
    def broadcast_parameters(self, parameters: Iterable[torch.Tensor]) -> None:
        """Copy the main process's values of ``parameters`` into every process's (in place)."""
        if not self.enabled:
            return
        from accelerate.utils import broadcast

        for parameter in parameters:
            buffer = broadcast(parameter.data.to(self.accelerator.device))  # in place on a communicable copy
            parameter.data.copy_(buffer)

    def backward(self, loss: torch.Tensor) -> None:
        """``loss.backward()``; data-parallel, through ``Accelerator.backward`` (no gradient accumulation steps are
        configured there: the agents accumulate over their own steps and reduce in :meth:`sync_gradients`)."""
        if self.enabled:
            self.accelerator.backward(loss)
        else:
            loss.backward()

    @torch.no_grad()
    def sync_gradients(self, parameters: Iterable[torch.Tensor]) -> None:
        """Replace every parameter's ``.grad`` by its mean over the processes (a missing grad counts as zero).

        One flat reduction (``Accelerator.reduce``, mean): every process ends with the same bits, so identical
        optimiser steps keep the parameters identical.
        """
        if not self.enabled:
            return
        parameters = [p for p in parameters if p.requires_grad]
        if not parameters:
            return
        for parameter in parameters:
            if parameter.grad is None:
                parameter.grad = torch.zeros_like(parameter)
        flat = torch.cat([p.grad.reshape(-1) for p in parameters])  # (P,)
        mean = self.accelerator.reduce(flat.to(self.accelerator.device), reduction="mean").to(flat.device)  # (P,)
        offset = 0
        for parameter in parameters:
            count = parameter.grad.numel()
            parameter.grad.copy_(mean[offset : offset + count].view_as(parameter.grad))
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
            self.accelerator.wait_for_everyone()


def current() -> Distributed:
    """The process-wide :class:`Distributed`: built from the environment on first use (single process unless
    ``accelerate launch`` started several)."""
    return _CURRENT if _CURRENT is not None else Distributed.from_environment()


__all__ = ["Distributed", "current"]
