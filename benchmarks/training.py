"""One training run: an agent fine-tunes the env's model for some epochs; everything lands in a run folder.

The run folder (:func:`train_and_evaluate`):

* TensorBoard events: every training metric of the agent under ``train/``, held-out scores under ``eval/``,
  and an image grid of the held-out samples (fixed seeds) at every evaluation;
* ``metrics.jsonl``: one JSON line per epoch (``epoch``, ``global_step`` = fresh samples so far, the metrics);
* ``reward_curve.png``: the training reward (and gold/proxy score) per epoch, HERD-paper style;
* ``before_after.png``: the base model and the fine-tuned model on the same seeds and held-out prompts;
* ``results.json``: held-out gold/proxy/reward before and after, the config, wall time, samples seen;
* ``run.json``: the run's settings (what ``--resume`` reads);
* ``checkpoints/<seq>-epoch-<n>/``: the last few checkpoints (agent state with optimiser, RNGs and HERD buffer,
  pickle-free, :mod:`agents.checkpoint`), each with the LoRA adapter in the diffusers format under ``lora/``.

Data-parallel (``accelerate launch --num_processes N benchmarks/run.py ...``, :mod:`agents.distributed`): every
process trains its own share (``batch_size`` is per process), the main process alone evaluates, logs and saves
(:func:`train_worker` runs on the others); each checkpoint holds every process's agent state (RNGs, HERD buffer).

A run resumes from its latest checkpoint (:attr:`RunSettings.resume`): the epoch and sample counters, the
TensorBoard curves and ``metrics.jsonl`` continue where the checkpoint left them.

Held-out evaluation always uses the same noise (:data:`EVAL_SEED`), whatever the training seed, so that base
and fine-tuned models, agents and seeds are compared on identical samples.
"""

from __future__ import annotations

import dataclasses
import json
import math
import textwrap
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter
from torchvision.utils import make_grid
from tqdm.auto import tqdm

import diffusion_gym  # noqa: F401  (registers DiffusionT2I-v1)
from agents import make_agent
from agents.checkpoint import (
    capture_rng_state,
    export_lora_diffusers,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
    trim_jsonl,
)
from agents.common import AgentConfig
from agents.distributed import Distributed, current, to_cpu
from benchmarks.plots import Curve, plot_before_after, plot_reward_curves
from diffusion_gym.prompts import resolve_prompts

EVAL_SEED = 1_000_000  # held-out sample i uses noise seed EVAL_SEED + i, in every run
GRID_SIZE = 8  # images in before_after.png and in each TensorBoard grid, spread over the held-out samples


@dataclass
class RunSettings:
    """Everything a run needs; the CLI builds it, comparison mode varies ``agent``, ``label`` and ``config``."""

    agent: str
    config: AgentConfig
    output_dir: Path
    label: str = ""  # shown in progress bars and tables (e.g. a comparison variant, "herd-b2"); default: agent
    model: str = "shapes"
    reward: str | None = None  # None: the world's default reward
    prompts: str | None = None  # a prompt set name or one prompt; None: the world's default prompts
    eval_prompts: str | None = None  # None: the world's eval prompts, else the training prompts
    epochs: int = 24
    num_inference_steps: int | None = None  # None: the world's
    eval_every: int | None = None  # None: about four evaluations per run
    eval_samples: int = 64
    device: str = "cpu"
    dtype: str = "float32"  # of the frozen model; float16/bfloat16: mixed precision (trainable weights stay float32)
    latent_bound: float = 50.0
    max_prompt_chunks: int = 1  # encode prompts longer than the text encoder's window in this many windows
    threads: int | None = None  # torch CPU threads; None: torch's default
    checkpoint_every: int | None = None  # None: at every evaluation; always at the end
    keep_checkpoints: int = 3
    resume: bool = False  # continue from the latest checkpoint in output_dir
    command: str = ""  # the command line that reproduces the run (recorded in results.json)

    @property
    def name(self) -> str:
        return self.label or self.agent


@dataclass
class Scores:
    """Mean scores of one set of generated images; gold and proxy only where the world defines them."""

    reward: float
    gold: float | None
    proxy: float | None
    distance_from_base: float | None = None  # RMS pixel difference to the base model's images (same seeds)


@dataclass
class Evaluation:
    """Held-out samples on fixed seeds: their mean scores, images ``(N, 3, H, W)`` and prompts."""

    scores: Scores
    images: torch.Tensor
    prompts: list[str]


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


def train_and_evaluate(settings: RunSettings) -> RunResult | None:
    """Train ``settings.agent`` for ``settings.epochs`` epochs and write the run folder (Ctrl-C stops early).

    Data-parallel, only the main process returns the result (the others return None).
    """
    started = time.perf_counter()
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    distributed = current()
    env = make_env(settings, distributed.device(settings.device))  # cuda -> this process's GPU
    agent = make_agent(settings.agent, env.unwrapped, settings.config)
    try:
        if not distributed.is_main_process:
            return train_worker(agent, settings, distributed)
        return train(agent, env.unwrapped, settings, started, distributed)
    finally:
        agent.close()  # frees the shared UNet of the adapter: the next run in this process starts from the base
        env.close()


def make_env(settings: RunSettings, device: str | torch.device | None = None):
    """The run's vector env: ``batch_size`` episodes of ``DiffusionT2I-v1`` with the run's model, reward, prompts."""
    return gym.make_vec(
        "DiffusionT2I-v1",
        num_envs=settings.config.batch_size,
        vectorization_mode="vector_entry_point",
        model=settings.model,
        reward=settings.reward,
        prompts=settings.prompts,
        num_inference_steps=settings.num_inference_steps,
        device=settings.device if device is None else device,
        dtype=settings.dtype,
        latent_bound=settings.latent_bound,
        max_prompt_chunks=settings.max_prompt_chunks,
        array_backend="torch",  # the agents take torch tensors on the env's device
    )


def eval_prompt_set(settings: RunSettings, world) -> str:
    """The prompts a run evaluates on: ``--eval-prompts``, else the world's eval set, else the training prompts."""
    return settings.eval_prompts or world.eval_prompts or settings.prompts or world.default_prompts


@dataclass
class RunState:
    """Where a run stands after some epochs; saved in every checkpoint and restored on resume."""

    epoch: int = 0
    samples_seen: int = 0
    train_samples_seen: int = 0
    elapsed_seconds: float = 0.0  # wall time of the run's earlier sessions


def train(
    agent, vector_env, settings: RunSettings, started: float, distributed: Distributed | None = None
) -> RunResult:
    """The run itself: evaluate the base model, train epoch by epoch, evaluate again, write the folder."""
    distributed = distributed or Distributed()
    config = agent.config  # settings.config with the agent's defaults filled in (e.g. its learning rate)
    world = vector_env.diffusion.world
    output_dir = Path(settings.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)

    eval_set = eval_prompt_set(settings, world)
    eval_prompts = spread(resolve_prompts(eval_set), settings.eval_samples)
    eval_every = settings.eval_every or max(1, settings.epochs // 4)
    samples_per_epoch = config.batch_size * config.batches_per_epoch * distributed.num_processes  # global

    if settings.resume:
        state, base = restore_checkpoint(agent, output_dir, eval_prompts, distributed)
        trim_jsonl(output_dir / "metrics.jsonl", state.samples_seen)
        # keep an extension (--resume --epochs N) in run.json: a later --resume, or a comparison rerun, then
        # continues to the new target instead of the original one
        if distributed.is_main_process:
            write_settings(dataclasses.replace(settings, resume=False), output_dir / "run.json")
        history = read_history(output_dir)
        tqdm.write(f"{settings.name}: resuming after epoch {state.epoch} ({state.samples_seen} samples)")
    else:
        state, history = RunState(), []
        if distributed.is_main_process:
            write_settings(settings, output_dir / "run.json")
        base = evaluate_base_model(agent, eval_prompts, settings)
        tqdm.write(f"{settings.name}: base model on {len(eval_prompts)} held-out samples: {format_scores(base.scores)}")
    writer = SummaryWriter(log_dir=str(output_dir), purge_step=state.samples_seen + 1 if settings.resume else None)
    if not settings.resume:
        log_evaluation(writer, base, step=0)

    latest, latest_epoch = base, 0
    interrupted = False
    first_epoch = state.epoch + 1
    progress = tqdm(
        range(first_epoch, settings.epochs + 1),
        desc=settings.name,
        unit="epoch",
        initial=state.epoch,
        total=settings.epochs,
        dynamic_ncols=True,
    )
    try:
        with (output_dir / "metrics.jsonl").open("a" if settings.resume else "w") as metrics_file:
            for epoch in progress:
                metrics = distributed.mean_metrics(scalar_metrics(agent.train_epoch().metrics))
                state.epoch = epoch
                state.samples_seen += samples_per_epoch
                state.train_samples_seen += int(metrics.get("num_train_samples", samples_per_epoch))
                for key, value in metrics.items():
                    writer.add_scalar(f"train/{key}", value, state.samples_seen)
                record = {
                    "epoch": epoch,
                    "global_step": state.samples_seen,
                    "train_samples": state.train_samples_seen,
                    "elapsed_seconds": state.elapsed_seconds + time.perf_counter() - started,
                    **metrics,
                }
                if epoch % eval_every == 0 or epoch == settings.epochs:
                    latest, latest_epoch = evaluate(agent, eval_prompts, base), epoch
                    log_evaluation(writer, latest, step=state.samples_seen)
                    record.update(eval_fields(latest.scores))
                    tqdm.write(f"{settings.name}: epoch {epoch} held-out: {format_scores(latest.scores)}")
                history.append(record)
                metrics_file.write(json.dumps(json_safe(record)) + "\n")
                metrics_file.flush()
                writer.flush()
                if checkpoint_due(epoch, settings):
                    saved = dataclasses.replace(state, elapsed_seconds=record["elapsed_seconds"])
                    save_run_checkpoint(agent, saved, base, output_dir, settings.keep_checkpoints, distributed)
                progress.set_postfix(progress_fields(metrics), refresh=False)
    except KeyboardInterrupt:
        interrupted = True
        tqdm.write(f"{settings.name}: interrupted after epoch {state.epoch}; evaluating what was trained")
    finally:
        progress.close()

    final = latest if latest_epoch == state.epoch else evaluate(agent, eval_prompts, base)
    if latest_epoch != state.epoch:
        log_evaluation(writer, final, step=state.samples_seen)
    writer.close()

    result = RunResult(
        label=settings.name,
        agent=settings.agent,
        model=settings.model,
        reward=settings.reward or str(world.default_reward),
        prompts=settings.prompts or str(world.default_prompts),
        eval_prompts=eval_set,
        num_eval_samples=len(eval_prompts),
        seed=config.seed,
        epochs=settings.epochs,
        epochs_completed=state.epoch,
        interrupted=interrupted,
        samples_seen=state.samples_seen,
        train_samples_seen=state.train_samples_seen,
        wall_seconds=state.elapsed_seconds + time.perf_counter() - started,
        base=base.scores,
        final=final.scores,
        config=asdict(config),
        command=settings.command,
        num_inference_steps=vector_env.diffusion.num_inference_steps,
        device=settings.device,
        history=history,
    )
    write_run_folder(output_dir, result, base, final)
    return result


def train_worker(agent, settings: RunSettings, distributed: Distributed) -> None:
    """A non-main process of a data-parallel run: trains in step with the main process; logs and saves nothing."""
    first_epoch = 1
    if settings.resume:
        checkpoint = load_checkpoint(settings.output_dir)
        agent.load_state_dict(process_agent_state(checkpoint, distributed))
        restore_rng_state(checkpoint["rng"])
        first_epoch = int(checkpoint["run"]["epoch"]) + 1
    for epoch in range(first_epoch, settings.epochs + 1):
        distributed.mean_metrics(scalar_metrics(agent.train_epoch().metrics))  # the main process logs them
        if checkpoint_due(epoch, settings):
            distributed.gather_object(to_cpu(agent.state_dict()))  # the main process saves it


def checkpoint_due(epoch: int, settings: RunSettings) -> bool:
    """Whether a checkpoint is saved after ``epoch``: every ``checkpoint_every`` (default: eval) epochs, and last."""
    every = settings.checkpoint_every or settings.eval_every or max(1, settings.epochs // 4)
    return epoch % every == 0 or epoch == settings.epochs


# ----------------------------------------------------------------------------------------------- checkpoints
def save_run_checkpoint(
    agent, state: RunState, base: Evaluation, output_dir: Path, keep: int, distributed: Distributed | None = None
) -> Path:
    """A checkpoint of the agent, the run's counters, the global RNGs and the base evaluation; plus the LoRA.

    Data-parallel, every process's agent state is gathered (``processes``: ranks 1..N-1; their RNGs and HERD
    buffers differ), so a resume continues each process where it stopped.
    """
    agent_state = agent.state_dict()
    processes = []
    if distributed is not None and distributed.enabled:
        processes = distributed.gather_object(to_cpu(agent_state))[1:]
    checkpoint = {
        "agent": agent_state,
        "processes": processes,
        "run": asdict(state),
        "base": {"scores": asdict(base.scores), "images": base.images},
        "rng": capture_rng_state(),
    }
    path = save_checkpoint(output_dir, f"epoch-{state.epoch:04d}", checkpoint, keep_last=keep)
    if agent.policy.adapter_name is not None:  # LoRA: loadable with pipeline.load_lora_weights(path / "lora")
        export_lora_diffusers(agent.policy.unet, path / "lora", adapter_name=agent.policy.adapter_name)
    return path


def restore_checkpoint(
    agent, output_dir: Path, eval_prompts: list[str], distributed: Distributed | None = None
) -> tuple[RunState, Evaluation]:
    """Load the latest checkpoint of ``output_dir`` into ``agent``; return the run's counters and base evaluation."""
    checkpoint = load_checkpoint(output_dir)
    agent.load_state_dict(process_agent_state(checkpoint, distributed or Distributed()))
    restore_rng_state(checkpoint["rng"])
    base = checkpoint["base"]
    if base["images"].shape[0] != len(eval_prompts):
        raise ValueError(
            f"the checkpoint's base evaluation has {base['images'].shape[0]} samples, not {len(eval_prompts)}"
        )
    return RunState(**checkpoint["run"]), Evaluation(Scores(**base["scores"]), base["images"], eval_prompts)


def process_agent_state(checkpoint: dict, distributed: Distributed) -> dict:
    """This process's agent state in ``checkpoint``; ``ValueError`` if it was saved by another number of processes."""
    saved = 1 + len(checkpoint.get("processes") or [])
    if saved != distributed.num_processes:
        raise ValueError(
            f"the checkpoint was saved by {saved} process(es) and this run has {distributed.num_processes}; "
            f"resume with the same number of processes (accelerate launch --num_processes {saved})"
        )
    return (
        checkpoint["agent"] if distributed.is_main_process else checkpoint["processes"][distributed.process_index - 1]
    )


def write_settings(settings: RunSettings, path: Path) -> None:
    data = asdict(settings)
    data["output_dir"] = str(settings.output_dir)
    path.write_text(json.dumps(data, indent=2) + "\n")


def read_settings(output_dir: Path) -> RunSettings:
    """A run folder's ``run.json`` back as :class:`RunSettings` (the folder may have moved: it is ``output_dir``)."""
    path = Path(output_dir) / "run.json"
    if not path.exists():
        raise FileNotFoundError(f"{output_dir} is not a run folder (no run.json)")
    data = json.loads(path.read_text())
    data["config"] = AgentConfig(**data["config"])
    data["output_dir"] = Path(output_dir)
    return RunSettings(**data)


# ----------------------------------------------------------------------------------------------- evaluation
def spread(prompts: list[str], count: int) -> list[str]:
    """``count`` prompts spread evenly over the list (cycling through it when ``count`` exceeds its length)."""
    if count >= len(prompts):
        return [prompts[i % len(prompts)] for i in range(count)]
    return [prompts[(i * len(prompts)) // count] for i in range(count)]


@torch.no_grad()
def evaluate(agent, prompts: list[str], base: Evaluation | None = None) -> Evaluation:
    """One sample per prompt; sample ``i`` draws its initial noise from env seed ``EVAL_SEED + i`` in every run.

    With ``base`` (the base model's evaluation), also how far the images moved from the base model's.
    """
    generation = agent.generate(prompts, seed=EVAL_SEED)
    images = generation.images.detach().float().cpu()  # (N, 3, H, W)
    scores = Scores(
        reward=mean_of(generation.rewards),
        gold=mean_of(generation.gold_scores),
        proxy=mean_of(generation.proxy_scores),
        distance_from_base=None if base is None else float((images - base.images).pow(2).mean().sqrt()),
    )
    return Evaluation(scores, images, list(prompts))


_BASE_EVALUATIONS: dict[tuple, Evaluation] = {}


def evaluate_base_model(agent, prompts: list[str], settings: RunSettings) -> Evaluation:
    """:func:`evaluate` before training, cached per process: the runs of a comparison share one base model.

    Every agent starts exactly at the pretrained model (a zero-initialised adapter), so its samples on the fixed
    evaluation seeds depend only on the model, the reward, the prompts and the sampler settings in the key.
    """
    config = settings.config
    key = (
        str(Path(settings.model).resolve()) if Path(settings.model).exists() else settings.model,
        settings.reward,
        tuple(prompts),
        settings.num_inference_steps,
        settings.device,
        settings.dtype,
        settings.latent_bound,
        config.guidance_scale,
        config.eta,
    )
    if key not in _BASE_EVALUATIONS:
        _BASE_EVALUATIONS[key] = evaluate(agent, prompts)
    return _BASE_EVALUATIONS[key]


def mean_of(scores: torch.Tensor | None) -> float | None:
    """The mean of per-sample scores, or None when the world has no such score."""
    return None if scores is None else float(torch.as_tensor(scores, dtype=torch.float32).mean())


def log_evaluation(writer: SummaryWriter, evaluation: Evaluation, step: int) -> None:
    for key, value in eval_fields(evaluation.scores).items():
        writer.add_scalar(key.replace("eval_", "eval/"), value, step)
    rows = grid_rows(len(evaluation.prompts))
    writer.add_image("eval/samples", make_grid(evaluation.images[rows], nrow=len(rows), padding=1), step)
    writer.flush()


def grid_rows(count: int) -> list[int]:
    """The held-out samples shown in image grids: up to ``GRID_SIZE``, spread over the set (1, 2, 3 objects...)."""
    return spread(list(range(count)), min(GRID_SIZE, count))


def eval_fields(scores: Scores) -> dict[str, float]:
    return {f"eval_{key}": value for key, value in asdict(scores).items() if value is not None}


# ----------------------------------------------------------------------------------------------- formatting
def scalar_metrics(metrics: dict[str, object]) -> dict[str, float]:
    """The agent's metrics that are numbers, as floats."""
    scalars: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
            scalars[key] = float(value)
    return scalars


def progress_fields(metrics: dict[str, float]) -> dict[str, str]:
    names = {"reward_mean": "reward", "gold_score": "gold", "proxy_score": "proxy"}
    return {short: f"{metrics[key]:.3f}" for key, short in names.items() if key in metrics}


def format_scores(scores: Scores) -> str:
    return ", ".join(f"{key} {value:.4f}" for key, value in asdict(scores).items() if value is not None)


def json_safe(value):
    """NaN and inf become null (JSON has neither); nested containers are converted recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value


def results_table(result: RunResult) -> str:
    """A short markdown table of held-out scores, base vs fine-tuned."""
    lines = [
        f"| held-out ({result.num_eval_samples} samples, {result.eval_prompts}) | base | fine-tuned | change |",
        "|---|---:|---:|---:|",
    ]
    for key in ("gold", "proxy", "reward"):
        before, after = getattr(result.base, key), getattr(result.final, key)
        if before is None or after is None:
            continue
        name = f"reward ({result.reward})" if key == "reward" else f"{key} score"
        lines.append(f"| {name} | {before:.4f} | {after:.4f} | {after - before:+.4f} |")
    if result.final.distance_from_base is not None:
        lines.append(f"| RMS pixel distance from base images | 0 | {result.final.distance_from_base:.4f} | |")
    lines.append(
        f"\n{result.label}: {result.epochs_completed}/{result.epochs} epochs, {result.samples_seen} samples "
        f"({result.train_samples_seen} trained on), {result.wall_seconds / 60:.1f} min"
        + (" (interrupted)" if result.interrupted else "")
    )
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- run folder
def write_run_folder(output_dir: Path, result: RunResult, base: Evaluation, final: Evaluation) -> None:
    """``results.json``, ``reward_curve.png`` and ``before_after.png`` (metrics.jsonl is written as training goes)."""
    summary = asdict(result)
    del summary["history"]
    (output_dir / "results.json").write_text(json.dumps(json_safe(summary), indent=2) + "\n")
    plot_reward_curves(history_curves(result.history), output_dir / "reward_curve.png", title=curve_title(result))
    rows = grid_rows(len(base.prompts))
    prompts = [base.prompts[row] for row in rows]
    plot_before_after(base.images[rows], final.images[rows], prompts, output_dir / "before_after.png")


CURVE_METRICS = {"reward_mean": "training reward", "gold_score": "gold score", "proxy_score": "proxy score"}


def history_curves(history: list[dict[str, float]]) -> dict[str, Curve]:
    """Per-epoch training reward, gold and proxy score against samples seen (NaN where an epoch lacks one)."""
    steps = np.array([record["global_step"] for record in history], dtype=float)
    curves = {
        label: Curve(steps, np.array([record.get(key, np.nan) for record in history], dtype=float))
        for key, label in CURVE_METRICS.items()
    }
    reward = curves["training reward"].values
    if any(np.array_equal(reward, curves[score].values) for score in ("gold score", "proxy score")):
        del curves["training reward"]  # the reward is the gold (or proxy) score: one panel
    return curves


def setting_summary(result: RunResult) -> str:
    """``model, reward, prompts`` in a few words, for figure titles."""
    model = Path(result.model).name if Path(result.model).exists() else result.model
    return f"{model} · {result.reward} · {textwrap.shorten(result.prompts, 40, placeholder='…')}"


def curve_title(result: RunResult) -> str:
    return f"{result.label}, seed {result.seed}: {setting_summary(result)}"


def read_run_result(output_dir: Path) -> RunResult:
    """A run folder's ``results.json`` (and ``metrics.jsonl``) back as a :class:`RunResult`."""
    data = json.loads((Path(output_dir) / "results.json").read_text())
    data["base"], data["final"] = Scores(**data["base"]), Scores(**data["final"])
    data["history"] = read_history(output_dir)
    return RunResult(**data)


def read_history(output_dir: Path) -> list[dict[str, float]]:
    """A run folder's ``metrics.jsonl``, one dict per epoch."""
    with (Path(output_dir) / "metrics.jsonl").open() as lines:
        return [json.loads(line) for line in lines if line.strip()]
