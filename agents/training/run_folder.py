"""A run folder's files and what they hold: ``run.json`` (:class:`RunSettings`), ``results.json``
(:class:`RunResult`), ``metrics.jsonl`` (the history), and the results table printed at the end of a run.

The whole folder (:class:`agents.training.trainer.Trainer` writes it):

* TensorBoard events: every training metric of the agent under ``train/``, held-out scores under ``eval/``,
  and an image grid of the held-out samples (fixed seeds) at every evaluation (:mod:`agents.training.run_log`);
* ``metrics.jsonl``: one JSON line per epoch (``epoch``, ``global_step`` = fresh samples so far,
  ``train_samples``, ``elapsed_seconds``, the agent's metrics, and the held-out scores ``eval_*`` of the epochs
  that evaluated);
* ``reward_curve.png``: the training reward (and gold/proxy score) per epoch, HERD-paper style;
* ``before_after.png``: the base model and the fine-tuned model on the same seeds and held-out prompts;
* ``results.json``: held-out gold/proxy/reward before and after, the config, wall time, samples seen;
* ``run.json``: the run's settings (what a resume reads);
* ``checkpoints/<seq>-epoch-<n>/``: the last few checkpoints (agent state with optimiser, RNGs and HERD buffer,
  pickle-free, :mod:`agents.checkpoint`), each with the LoRA adapter in the diffusers format under ``lora/``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
import types
import typing
from dataclasses import MISSING, asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

from agents.config import AgentConfig, Bound, annotated_bounds, check_fields
from agents.training.evaluation import Scores
from agents.training.run_lock import LOCK_FILE
from diffusion_gym.env_config import EnvConfig

RUN_SETTINGS_FILE = "run.json"
RESULTS_FILE = "results.json"
METRICS_FILE = "metrics.jsonl"
REWARD_CURVE_FILE = "reward_curve.png"
BEFORE_AFTER_FILE = "before_after.png"
DTYPE_NAMES = ("float32", "float16", "bfloat16")  # of the frozen model (diffusion_gym.models.DTYPES)


@dataclass
class RunSettings:
    """Everything a run needs (``run.json``): the agent, the env's arguments, evaluation and checkpointing.

    The CLI builds it from its flags, comparison mode varies ``agent``, ``label`` and ``config``; a
    :class:`~agents.training.trainer.Trainer` made from an env records the env's arguments here (:attr:`env`, read back
    with :meth:`diffusion_gym.EnvConfig.of`).
    """

    agent: str
    """the agent to train: a registered name (agents.agent_names())"""
    config: AgentConfig
    """the agent's configuration"""
    output_dir: Path
    """the run folder"""
    label: str = ""
    """the run's name in progress bars and tables (e.g. a comparison variant, "herd-b2"); empty: the agent's"""
    env: EnvConfig = field(default_factory=EnvConfig)
    """the env's arguments (model, reward, training prompts, steps, device, dtype, ...; diffusion_gym.EnvConfig)"""
    eval_prompts: str | None = None
    """held-out prompt set or one prompt, scored on fresh noise (None: the world's eval prompts, else the training
    prompts); to score a single training prompt itself, name it here too
    """
    epochs: Annotated[int, Bound(1)] = 24
    """training epochs"""
    eval_every: Annotated[int | None, Bound(1)] = None
    """evaluate (and log an image grid) every K epochs (None: about four evaluations per run)"""
    eval_samples: Annotated[int, Bound(1)] = 64
    """held-out samples per evaluation, spread over the prompt set; fixed seeds: the same noise in every run"""
    eval_kl: bool = False
    """also estimate the held-out KL of the fine-tuned policy's trajectories from the base policy's (nats per
    trajectory, metrics.jsonl's eval_kl_to_base): 2 extra UNet passes per evaluation step, about doubling the
    evaluation time
    """
    generalisation_prompts: str | None = None
    """a second held-out prompt set, evaluated before and after training only (e.g. prompts never trained on, when
    the run evaluates on its training prompts): the generalisation figure (None: none)
    """
    threads: Annotated[int | None, Bound(1)] = None
    """torch CPU threads of the command line's run: 1 is about as fast alone as one per core, and many times faster
    when other jobs share the CPU, see docs/benchmarks.md (None: 1)
    """
    checkpoint_every: Annotated[int | None, Bound(1)] = None
    """save a checkpoint (agent, optimiser, RNGs, HERD buffer; LoRA in the diffusers format) every K epochs and at
    the end (None: at every evaluation)
    """
    keep_checkpoints: Annotated[int, Bound(1)] = 3
    """checkpoints kept"""
    resume: bool = False
    """continue from the newest intact checkpoint in output_dir"""
    resume_from: str | None = None
    """with resume: continue from this checkpoint folder of the run instead"""
    command: str = ""
    """the command line that reproduces the run (recorded in results.json)"""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """``TypeError`` or ``ValueError`` naming the first bad setting (its config's included): types, ranges,
        ``dtype``, and an ``output_dir`` that is empty or is (or is inside) a file. Runs on construction (and
        ``dataclasses.replace``); :meth:`agents.training.trainer.Trainer.train` runs it again before writing
        anything."""
        if isinstance(self.output_dir, str) and not self.output_dir.strip():
            raise ValueError("output_dir is empty: give the run folder (an empty path would write into the cwd)")
        check_fields(self, RUN_SETTINGS_BOUNDS, {})
        self.env = self.env.checked()  # its ranges; a path object as the model's name
        check_fields(self.env, ENV_BOUNDS, {"dtype": DTYPE_NAMES})  # a run's env settings are JSON: plain types
        self.config.validate()
        check_output_dir(self.output_dir)

    @classmethod
    def for_task(
        cls,
        task: object,
        agent: str,
        output_dir: str | os.PathLike,
        config: AgentConfig | None = None,
        **changes: Any,
    ) -> RunSettings:
        """The settings of ``agent`` on a registered task (its name or a :class:`~diffusion_gym.tasks.Task`): the
        task's model, reward, prompts, evaluation and budget (``config``'s batch size and batches per epoch are the
        task's unless ``config`` is given), then ``changes``: any other field, a field of the env's arguments
        (``num_inference_steps=2``: the task's env with that change), or ``env`` (an :class:`EnvConfig` used as
        given, instead of the task's). The default task ``"long"`` is what
        ``diffusion-gym run`` and ``make run`` train; the bench builds each of its runs here too."""
        from diffusion_gym.tasks import Task, get_task

        if isinstance(task, str):
            task = get_task(task)
        if not isinstance(task, Task):
            raise TypeError(f"task must be a task name or a diffusion_gym.tasks.Task, got {type(task).__name__}")
        if config is None:
            config = AgentConfig(batch_size=task.batch_size, batches_per_epoch=task.batches_per_epoch)
        config = config.with_agent_defaults(agent)  # recorded in run.json as numbers, as the CLI records them
        task_values = task_run_fields(task)
        env = changes.pop("env", None)  # given whole: the task's env arguments do not apply
        if env is None:
            env = EnvConfig.from_mapping(task_values)
        env = dataclasses.replace(env, **{name: changes.pop(name) for name in EnvConfig.fields() if name in changes})
        run_values = {name: value for name, value in task_values.items() if name not in EnvConfig.fields()}
        return cls(agent=agent, config=config, output_dir=Path(output_dir), env=env, **{**run_values, **changes})

    @property
    def name(self) -> str:
        return self.label or self.agent

    def eval_every_epochs(self) -> int:
        """Epochs between held-out evaluations: ``eval_every``, else about four per run."""
        return self.eval_every if self.eval_every is not None else max(1, self.epochs // 4)

    def checkpoint_due(self, epoch: int) -> bool:
        """Whether a checkpoint is saved after ``epoch``: every ``checkpoint_every`` (default: eval) epochs, and
        after the last."""
        every = self.checkpoint_every if self.checkpoint_every is not None else self.eval_every_epochs()
        return epoch % every == 0 or epoch == self.epochs


def task_run_fields(task: object) -> dict[str, Any]:
    """What a task sets, by field name: its env's arguments (model, reward, prompts, steps) and the
    :class:`RunSettings` fields of its evaluation and budget in epochs."""
    names = ("model", "reward", "prompts", "eval_prompts", "generalisation_prompts", "epochs",
             "num_inference_steps", "eval_every", "eval_samples")  # fmt: skip
    return {name: getattr(task, name) for name in names}


# The range of every numeric RunSettings and EnvConfig field (RunSettings.validate; the CLI's flags).
RUN_SETTINGS_BOUNDS: dict[str, Bound] = annotated_bounds(RunSettings)
ENV_BOUNDS: dict[str, Bound] = annotated_bounds(EnvConfig)


def check_output_dir(path: str | os.PathLike) -> None:
    """``ValueError`` unless ``path`` can be a run folder: it, or its nearest existing parent, is a folder."""
    path = Path(path)
    for existing in (path, *path.parents):
        if existing.exists():
            if not existing.is_dir():
                where = "is" if existing == path else f"is inside {existing}, which is"
                raise ValueError(f"output_dir {path} {where} a file, not a folder")
            return


def default_output_dir(name: str) -> Path:
    """A new run folder's default: ``runs/<name>-<timestamp>``."""
    return Path("runs") / f"{name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


class RunFolderWarning(UserWarning):
    """A run folder's file was rebuilt on resume (``metrics.jsonl`` missing or damaged: from the checkpoint)."""


def new_run_folder_problem(output_dir: str | Path) -> str | None:
    """Why a new run may not start in ``output_dir``, or None if it may (the folder does not exist, or holds nothing
    but a lock file). The command line's ``--output-dir`` and :meth:`agents.training.trainer.Trainer.train` share this
    rule: a run folder is only ever continued (a resume), never overwritten or mixed with another run."""
    path = Path(output_dir)
    if not path.exists():
        return None
    if not path.is_dir():
        return f"{path} is a file, not a folder"
    if all(child.name == LOCK_FILE for child in path.iterdir()):
        return None
    if (path / RUN_SETTINGS_FILE).is_file():
        return (
            f"{path} is not empty: it holds a run ({RUN_SETTINGS_FILE}), which a new run would overwrite; continue it "
            f"with Trainer.resume({str(path)!r}) (command line: --resume {path}), or pick a new folder"
        )
    return f"{path} is not empty; pick a new folder (or continue a run there with --resume)"


def write_settings(settings: RunSettings, output_dir: Path) -> None:
    """``run.json``, validated first and replaced atomically (a crash leaves the old file or the new one)."""
    settings.validate()
    data = asdict(settings)
    data["output_dir"] = str(settings.output_dir)
    write_atomically(Path(output_dir) / RUN_SETTINGS_FILE, json.dumps(data, indent=2) + "\n")


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, flush it to disk, then rename it over ``path``."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def read_settings(output_dir: str | Path) -> RunSettings:
    """A run folder's ``run.json`` back as :class:`RunSettings` (the folder may have moved: it is ``output_dir``).

    ``FileNotFoundError`` if there is no ``run.json``; ``ValueError`` naming the file and the problem if it is not
    JSON, lacks a required key, has an unknown key or a value of the wrong type (its own or its ``config``'s).
    """
    path = Path(output_dir) / RUN_SETTINGS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{output_dir} is not a run folder (no {RUN_SETTINGS_FILE})")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"corrupt {path}: not valid JSON ({error})") from error
    if not isinstance(data, dict):
        raise ValueError(f"corrupt {path}: expected a JSON object, got {type(data).__name__}")
    data["output_dir"] = str(output_dir)  # the folder it is in now; checked as recorded otherwise
    if "env" not in data:  # run.json before 2026-12-08 recorded the env's arguments as top-level keys
        data["env"] = {name: data.pop(name) for name in EnvConfig.fields() if name in data}
    _check_fields(RunSettings, data, path, "")
    for name, cls in (("config", AgentConfig), ("env", EnvConfig)):
        _check_fields(cls, data[name], path, f"{name}.")
        try:
            data[name] = cls(**data[name])
        except (TypeError, ValueError) as error:  # a value out of range (its type is checked above)
            raise ValueError(f"corrupt {path}: {name}.{error}") from error
    data["output_dir"] = Path(output_dir)
    try:
        return RunSettings(**data)
    except (TypeError, ValueError) as error:
        raise ValueError(f"corrupt {path}: {error}") from error


def _check_fields(cls: type, data: Any, path: Path, prefix: str) -> None:
    """``ValueError`` naming ``path`` unless ``data`` is a dict with every required field of the dataclass ``cls``,
    no other key, and values of the annotated types (JSON's: a path is a str, a nested dataclass a dict)."""
    if not isinstance(data, dict):
        raise ValueError(f"corrupt {path}: {prefix.rstrip('.') or 'the file'} must be an object, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    required = [name for name, f in fields.items() if f.default is MISSING and f.default_factory is MISSING]
    missing, unknown = [n for n in required if n not in data], sorted(set(data) - set(fields))
    if missing or unknown:
        problems = ([f"missing {[prefix + n for n in missing]}"] if missing else []) + (
            [f"unknown {[prefix + n for n in unknown]}"] if unknown else []
        )
        raise ValueError(f"corrupt {path}: keys " + ", ".join(problems))
    hints = typing.get_type_hints(cls)
    for name, value in data.items():
        if not _has_type(value, hints[name]):
            raise ValueError(f"corrupt {path}: {prefix}{name} = {value!r} is not of type {_type_name(hints[name])}")


def _has_type(value: Any, hint: Any) -> bool:
    """Whether a JSON value fits a field annotation (bool is not an int; an int is a float; dataclass: a dict)."""
    origin, arguments = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_has_type(value, argument) for argument in arguments)
    if origin is list:
        return isinstance(value, list) and all(_has_type(item, arguments[0]) for item in value)
    if origin is tuple:  # tuple[str, ...]: a JSON list
        return isinstance(value, list) and all(_has_type(item, arguments[0]) for item in value)
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is Path:
        return isinstance(value, str)
    if dataclasses.is_dataclass(hint):
        return isinstance(value, dict)  # its fields are checked on their own
    return isinstance(value, hint)


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint)


@dataclass
class Generalisation:
    """The run's second held-out set (``RunSettings.generalisation_prompts``), before and after training."""

    prompts: str
    num_samples: int
    base: Scores
    final: Scores


@dataclass
class RunResult:
    """What ``results.json`` holds."""

    label: str
    agent: str
    model: str
    reward: str
    prompts: str
    eval_prompts: str
    num_eval_samples: int
    seed: int
    epochs: int
    epochs_completed: int
    interrupted: bool
    samples_seen: int  # fresh trajectories sampled for training (the sample budget)
    train_samples_seen: int  # trajectories trained on (more than samples_seen when an agent replays, e.g. HERD)
    wall_seconds: float
    base: Scores
    final: Scores
    config: dict[str, object]
    command: str
    num_inference_steps: int
    device: str
    history: list[dict[str, float]] = field(default_factory=list, repr=False)  # metrics.jsonl, not in results.json
    stop_reason: str | None = None  # why a callback stopped the run early (None: it ran its epochs, or Ctrl-C)
    generalisation: Generalisation | None = None  # the second held-out set, before and after (None: not evaluated)

    @property
    def finished(self) -> bool:
        """Whether the run is done: it ran every epoch, or a callback stopped it (not interrupted)."""
        return not self.interrupted and (self.epochs_completed == self.epochs or self.stop_reason is not None)


def write_results(result: RunResult, output_dir: Path) -> None:
    """``results.json``: the result without its history (that is ``metrics.jsonl``)."""
    summary = asdict(result)
    del summary["history"]
    if summary["stop_reason"] is None:  # the key appears only when a callback stopped the run
        del summary["stop_reason"]
    if summary["generalisation"] is None:  # and only when the run evaluated a second held-out set
        del summary["generalisation"]
    (Path(output_dir) / RESULTS_FILE).write_text(json.dumps(json_safe(summary), indent=2) + "\n")


def read_run_result(output_dir: str | Path) -> RunResult:
    """A run folder's ``results.json`` (and ``metrics.jsonl``) back as a :class:`RunResult`."""
    data = json.loads((Path(output_dir) / RESULTS_FILE).read_text())
    data["base"], data["final"] = Scores(**data["base"]), Scores(**data["final"])
    if data.get("generalisation") is not None:
        generalisation = data["generalisation"]
        base, final = Scores(**generalisation.pop("base")), Scores(**generalisation.pop("final"))
        data["generalisation"] = Generalisation(**generalisation, base=base, final=final)
    data["history"] = read_history(output_dir)
    return RunResult(**data)


def read_history(output_dir: str | Path) -> list[dict[str, float]]:
    """A run folder's ``metrics.jsonl``, one dict per epoch."""
    with (Path(output_dir) / METRICS_FILE).open() as lines:
        return [json.loads(line) for line in lines if line.strip()]


def json_safe(value: Any) -> Any:
    """NaN and inf become null (JSON has neither); nested containers are converted recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value


def score_rows(base: Scores, final: Scores, reward: str) -> list[str]:
    """Markdown rows of gold, proxy and reward (those the world defines), base vs fine-tuned, the distance and the
    KL to the base (when evaluated)."""
    lines = []
    for key in ("gold", "proxy", "reward"):
        before, after = getattr(base, key), getattr(final, key)
        if before is None or after is None:
            continue
        name = f"reward ({reward})" if key == "reward" else f"{key} score"
        lines.append(f"| {name} | {before:.4f} | {after:.4f} | {after - before:+.4f} |")
    if final.distance_from_base is not None:
        lines.append(f"| RMS pixel distance from base images | 0 | {final.distance_from_base:.4f} | |")
    if final.kl_to_base is not None:
        lines.append(f"| KL to the base policy (nats per trajectory) | 0 | {final.kl_to_base:.4f} | |")
    return lines


def results_table(result: RunResult) -> str:
    """A short markdown table of held-out scores, base vs fine-tuned; a second one for the generalisation set."""
    lines = [
        f"| held-out ({result.num_eval_samples} samples, {result.eval_prompts}) | base | fine-tuned | change |",
        "|---|---:|---:|---:|",
        *score_rows(result.base, result.final, result.reward),
    ]
    generalisation = result.generalisation
    if generalisation is not None:
        lines += [
            "",
            f"| generalisation ({generalisation.num_samples} samples, {generalisation.prompts}) | base | fine-tuned "
            "| change |",
            "|---|---:|---:|---:|",
            *score_rows(generalisation.base, generalisation.final, result.reward),
        ]
    stopped = f" (stopped: {result.stop_reason})" if result.stop_reason is not None else ""
    lines.append(
        f"\n{result.label}: {result.epochs_completed}/{result.epochs} epochs, {result.samples_seen} samples "
        f"({result.train_samples_seen} trained on), {result.wall_seconds / 60:.1f} min"
        + (" (interrupted)" if result.interrupted else "")
        + stopped
    )
    return "\n".join(lines)


__all__ = [
    "BEFORE_AFTER_FILE",
    "DTYPE_NAMES",
    "Generalisation",
    "METRICS_FILE",
    "RESULTS_FILE",
    "REWARD_CURVE_FILE",
    "RUN_SETTINGS_BOUNDS",
    "RUN_SETTINGS_FILE",
    "RunFolderWarning",
    "RunResult",
    "RunSettings",
    "check_output_dir",
    "default_output_dir",
    "json_safe",
    "new_run_folder_problem",
    "read_history",
    "read_run_result",
    "read_settings",
    "results_table",
    "write_results",
    "write_atomically",
    "write_settings",
]
