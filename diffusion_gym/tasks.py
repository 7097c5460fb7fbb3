"""Named benchmark tasks: what to train on, what to score, with which reward and gold scorer, at which budget.

A :class:`Task` is plain data; worlds register theirs (the Shapes world: :mod:`diffusion_gym.shapes.tasks`, on
import of :mod:`diffusion_gym.shapes`), and the bench (``agents.experiments.bench``) turns a task, an agent and a seed
into a run. This module imports no world: :func:`get_task` and :func:`task_names` load the built-in worlds the way
:mod:`diffusion_gym.prompts` does (through :mod:`diffusion_gym.rewards`).

    from diffusion_gym.tasks import get_task, task_names
    task = get_task("long")
    task.fresh_samples  # the sample budget: epochs x batch_size x batches_per_epoch
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass

_TASKS: dict[str, Task] = {}


@dataclass(frozen=True)
class Task:
    """A benchmark task: training prompts, evaluation prompts, reward, gold scorer and sample budget.

    Prompts are registered prompt-set names (:mod:`diffusion_gym.prompts`). ``reward`` is what the agents optimise
    (``None``: the world's default); ``gold`` names the scorer every comparison is made on (the world's gold score,
    logged as ``gold`` by every evaluation). ``ceiling`` is the best gold the task can reach, the top of the
    normalisation ``(gold - base) / (ceiling - base)`` across tasks. The budget is ``epochs`` x ``batch_size`` x
    ``batches_per_epoch`` fresh samples; ``eval_samples`` held-out samples (spread evenly over ``eval_prompts``) are
    scored every ``eval_every`` epochs on fixed noise, and with ``per_prompt`` also each prompt's mean gold.
    """

    name: str
    description: str
    prompts: str
    eval_prompts: str
    gold: str
    model: str = "shapes"
    reward: str | None = None
    generalisation_prompts: str | None = None
    epochs: int = 40
    batch_size: int = 16
    batches_per_epoch: int = 2
    num_inference_steps: int | None = None
    eval_samples: int = 64
    eval_every: int = 5
    ceiling: float = 1.0
    calibrated: bool = True  # False: its budget and evaluation size are provisional (not yet sized from variance)
    per_prompt: bool = False  # also score gold per evaluation prompt (a few prompts, several samples each)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """``ValueError`` naming the first bad field."""
        for name in ("name", "description", "prompts", "eval_prompts", "gold", "model"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"task {self.name!r}: {name} must be a non-empty string, got {value!r}")
        for name in ("epochs", "batch_size", "batches_per_epoch", "eval_samples", "eval_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"task {self.name!r}: {name} must be an int >= 1, got {value!r}")
        steps = self.num_inference_steps
        if steps is not None and (not isinstance(steps, int) or isinstance(steps, bool) or steps < 1):
            raise ValueError(f"task {self.name!r}: num_inference_steps must be an int >= 1 or None, got {steps!r}")
        if not isinstance(self.ceiling, (int, float)) or not math.isfinite(self.ceiling):
            raise ValueError(f"task {self.name!r}: ceiling must be a finite number, got {self.ceiling!r}")

    @property
    def fresh_samples(self) -> int:
        """The sample budget: fresh trajectories sampled for training over the whole run."""
        return self.epochs * self.batch_size * self.batches_per_epoch

    def replace(self, **changes: object) -> Task:
        """A copy with ``changes`` (validated)."""
        return dataclasses.replace(self, **changes)


def register_task(task: Task) -> Task:
    """Register ``task`` under its name; ``ValueError`` if the name is taken. Returns the task."""
    if not isinstance(task, Task):
        raise TypeError(f"register_task takes a Task, got {type(task).__name__}")
    if task.name in _TASKS:
        raise ValueError(f"task {task.name!r} is already registered")
    _TASKS[task.name] = task
    return task


def get_task(name: str) -> Task:
    """The registered task ``name``; ``ValueError`` naming the registered tasks (and a close match) otherwise."""
    _ensure_builtin_tasks()
    if name not in _TASKS:
        close = difflib.get_close_matches(name, _TASKS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown task {name!r}{hint}; registered tasks: {', '.join(task_names())}")
    return _TASKS[name]


def task_names() -> list[str]:
    """The registered tasks' names, in registration order."""
    _ensure_builtin_tasks()
    return list(_TASKS)


def _ensure_builtin_tasks() -> None:
    from diffusion_gym.registrations import load_builtin_registrations  # the built-in worlds register on import

    load_builtin_registrations()


__all__ = ["Task", "get_task", "register_task", "task_names"]
