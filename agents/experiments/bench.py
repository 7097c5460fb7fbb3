"""The bench: every (task, agent, seed) of a suite as a run folder, then a leaderboard with rliable's statistics.

    diffusion-gym bench --tasks long,multi --agents ddpo,loop,herd --seeds 5 --output-dir runs/bench
    python benchmarks/bench.py --tasks long --agents ddpo,ddpo-aa --seeds 5 --output-dir runs/aa --jobs 2
    diffusion-gym bench --tasks long --agents ddpo,loop --seeds 2 --output-dir runs/smoke --budget smoke

Tasks come from the library's registry (:mod:`diffusion_gym.tasks`; the Shapes world's in
:mod:`diffusion_gym.shapes.tasks`), agents are the comparison variants
(:data:`agents.experiments.comparison.VARIANTS`) plus
the calibration variants of :data:`BENCH_AGENTS`. Run ``(task, agent, seed)`` is an ordinary run folder
``<output-dir>/<task>/<agent>-seed<seed>/`` made by the same :class:`~agents.training.trainer.Trainer` path as
comparison mode, so a bench is resumable like a comparison: a finished run is only summarised, an interrupted one
resumes from its latest checkpoint, a run folder with other settings is an error. ``jobs > 1`` runs that many at once,
each as a subprocess (``python -m agents.experiments.bench --run-one ...``) at one torch thread, its output in
``<output-dir>/logs/``.

Paired by design (common random numbers): held-out sample ``i`` draws its noise from seed
``RUN_EVAL_SEED + i`` in every run (:mod:`agents.training.evaluation`), so all agents and seeds of a task are scored on
the same evaluation noise; a seed also fixes the LoRA initialisation, and the first batch's initial noise of the
agents that draw their prompts the same way (DDPO, DPOK, REINFORCE, RWR, HERD over DDPO; LOOP draws one prompt
per K samples, so its stream differs). A calibration twin (``ddpo-aa``) runs the same agent on another seed
stream (``seed + 1000``).

:func:`summarise_bench` writes ``leaderboard.json`` (the shape in :func:`leaderboard`), ``leaderboard.md``,
``bench_summary.json`` (everything else: per-seed values, AUC, normalised scores across tasks) and three figures:
``leaderboard_iqm.png``, ``performance_profiles.png``, ``gold_curves.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import logging
import math
import os
import shlex
import shutil
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import numpy as np

from agents.config import AgentConfig, Bound, annotated_bounds, check_fields
from agents.experiments.comparison import VARIANTS, continue_or_start, crossings, held_out_band, held_out_gains
from agents.training.run_folder import RESULTS_FILE, RunResult, RunSettings, json_safe, read_run_result
from agents.training.trainer import EvaluationEvent, Trainer, TrainerCallback

logger = logging.getLogger(__name__)

BUDGETS = ("full", "smoke")
AA_SEED_OFFSET = 1000  # the A/A twin's seed stream: seed + 1000
LEADERBOARD_FILE = "leaderboard.json"
PER_PROMPT_FILE = "per_prompt_gold.json"  # in a run folder of a per-prompt task
PROFILE_TAUS = np.linspace(-0.25, 1.0, 51)  # thresholds of the performance profiles (normalised gold)
# fewer seeds than this and leaderboard.md calls no pair decided: a bootstrap of 3 runs has 10 distinct resamples
# and its intervals are too narrow (docs/experiments/2026-12-07-bench.md)
MIN_SEEDS_FOR_DECISION = 5


@dataclass(frozen=True)
class BenchAgent:
    """An agent of the bench: an agent name with ``AgentConfig`` overrides (over the task's budget), a seed offset
    (the A/A twin's other seed stream), and for a calibration agent the one agent it is compared with
    (``reference``: the leaderboard pairs it with that agent only)."""

    name: str
    agent: str
    overrides: dict[str, object] = field(default_factory=dict)
    description: str = ""
    seed_offset: int = 0
    reference: str | None = None


CALIBRATION_AGENTS = (
    BenchAgent(
        "ddpo-aa", "ddpo", {}, "A/A twin: DDPO on another seed stream (seed + 1000)", AA_SEED_OFFSET, reference="ddpo"
    ),
    BenchAgent(
        "ddpo-half-lr",
        "ddpo",
        {"learning_rate": 5e-4},
        "handicap: DDPO at half the learning rate (5e-4)",
        reference="ddpo",
    ),
    BenchAgent(
        "ddpo-tenth-lr",
        "ddpo",
        {"learning_rate": 1e-4},
        "handicap sized above the MDE on long: DDPO at a tenth of the learning rate (1e-4)",
        reference="ddpo",
    ),
    BenchAgent(
        "ddpo-half-batch",
        "ddpo",
        {"batches_per_epoch": 1},
        "handicap: DDPO on half the fresh samples (1 batch/epoch)",
        reference="ddpo",
    ),
)


def compared(a: str, b: str) -> bool:
    """Whether the leaderboard pairs bench agents ``a`` and ``b``: any two agents, except that a calibration agent
    (one with a ``reference``) is paired with its reference only. The A/A twin's seed ``s`` is not paired with
    another agent's seed ``s`` (its first batch and training noise are seed + 1000's), and the calibration measures
    one comparison's error rate, not that of a family of extra pairs."""
    reference_a = BENCH_AGENTS[a].reference if a in BENCH_AGENTS else None
    reference_b = BENCH_AGENTS[b].reference if b in BENCH_AGENTS else None
    if reference_a is not None or reference_b is not None:
        return reference_a == b or reference_b == a
    return True


BENCH_AGENTS: dict[str, BenchAgent] = {
    **{v.name: BenchAgent(v.name, v.agent, dict(v.overrides), v.description) for v in VARIANTS.values()},
    **{agent.name: agent for agent in CALIBRATION_AGENTS},
}


def resolve_agents(names: Sequence[str]) -> list[BenchAgent]:
    """Bench agents by name (:data:`BENCH_AGENTS` or a plain agent name); ``ValueError`` naming an unknown or
    repeated one."""
    from agents.registry import agent_names

    agents: list[BenchAgent] = []
    for name in names:
        if name in BENCH_AGENTS:
            agents.append(BENCH_AGENTS[name])
        elif name in agent_names():
            agents.append(BenchAgent(name, name))
        else:
            known = sorted(set(BENCH_AGENTS) | set(agent_names()))
            raise ValueError(f"unknown bench agent {name!r}; known: {', '.join(known)}")
    if len({agent.name for agent in agents}) != len(agents):
        raise ValueError(f"an agent is listed twice in {list(names)}")
    if not agents:
        raise ValueError("no agents given")
    return agents


def resolve_tasks(names: Sequence[str]):
    """Registered tasks by name (``ValueError`` naming an unknown or repeated one)."""
    from diffusion_gym.tasks import get_task

    tasks = [get_task(name) for name in names]
    if len({task.name for task in tasks}) != len(tasks):
        raise ValueError(f"a task is listed twice in {list(names)}")
    if not tasks:
        raise ValueError("no tasks given")
    return tasks


def budget_task(task, budget: str):
    """``task`` at ``budget``: ``full`` is the task as registered; ``smoke`` shrinks it to seconds (2 epochs of 4
    samples, 3 DDIM steps, 4 held-out samples, an evaluation every epoch) for CI."""
    if budget == "full":
        return task
    if budget == "smoke":
        return task.replace(
            epochs=2, batch_size=4, batches_per_epoch=1, num_inference_steps=3, eval_samples=4, eval_every=1
        )
    raise ValueError(f"budget must be one of {BUDGETS}, got {budget!r}")


@dataclass(frozen=True)
class BenchRun:
    """One (task, agent, seed) of the suite and the settings of its run folder."""

    task: str
    agent: str
    seed: int
    settings: RunSettings
    definition: object = None  # the Task at the bench's budget


def bench_command(task: str, agent: str, seed: int, output_dir: Path, budget: str) -> str:
    """The command that (re)runs one run of a bench."""
    return shlex.join(
        [
            "diffusion-gym",
            "bench",
            "--tasks",
            task,
            "--agents",
            agent,
            "--seeds",
            seeds_text([seed]),
            "--budget",
            budget,
            "--output-dir",
            str(output_dir),
        ]  # fmt: skip
    )


def run_settings(task, agent: BenchAgent, seed: int, output_dir: Path, budget: str = "full") -> RunSettings:
    """The :class:`RunSettings` of ``agent`` with ``seed`` on ``task`` (already at its budget), into
    ``<output_dir>/<task>/<agent>-seed<seed>``; the agent's overrides win over the task's batch settings."""
    config = dataclasses.replace(
        AgentConfig(),
        seed=seed + agent.seed_offset,
        batch_size=task.batch_size,
        batches_per_epoch=task.batches_per_epoch,
    )
    config = dataclasses.replace(config, **agent.overrides).with_agent_defaults(agent.agent)
    config.validate()
    return RunSettings.for_task(
        task,
        agent.agent,
        output_dir / task.name / f"{agent.name}-seed{seed}",
        config,
        label=agent.name,
        threads=1,
        command=bench_command(task.name, agent.name, seed, output_dir, budget),
    )


def plan_bench(
    tasks: Sequence[str], agents: Sequence[str], seeds: Sequence[int], output_dir: Path, budget: str = "full"
) -> list[BenchRun]:
    """Every (task, agent, seed), task-major; names are checked before anything is run or written."""
    if budget not in BUDGETS:
        raise ValueError(f"budget must be one of {BUDGETS}, got {budget!r}")
    seeds = check_seeds(seeds)
    resolved_tasks = [budget_task(task, budget) for task in resolve_tasks(tasks)]
    resolved_agents = resolve_agents(agents)
    return [
        BenchRun(task.name, agent.name, seed, run_settings(task, agent, seed, Path(output_dir), budget), task)
        for task in resolved_tasks
        for agent in resolved_agents
        for seed in seeds
    ]


def check_seeds(seeds: Sequence[int]) -> list[int]:
    """``seeds`` as a list of distinct ints >= 0 (``ValueError`` otherwise)."""
    seeds = list(seeds)
    if not seeds:
        raise ValueError("no seeds given")
    for seed in seeds:
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seeds must be ints >= 0, got {seed!r}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"a seed is listed twice in {seeds}")
    return seeds


class PerPromptGold(TrainerCallback):
    """Scores each evaluation's images per prompt with the task's gold scorer: ``gold_prompt<j>`` (``j`` the
    prompt's index in the evaluation set) joins the evaluation's metrics (``eval_gold_prompt<j>`` in
    ``metrics.jsonl``), and ``per_prompt_gold.json`` in the run folder keeps every evaluation's values by fresh
    samples seen, the base model's (0 samples) included."""

    def __init__(self, gold: str, eval_prompts: str, output_dir: Path):
        from diffusion_gym.prompts import resolve_prompts

        self.gold = gold
        self.prompts = list(dict.fromkeys(resolve_prompts(eval_prompts)))
        self.path = Path(output_dir) / PER_PROMPT_FILE

    def on_evaluation(self, trainer: Trainer, event: EvaluationEvent) -> None:
        import torch

        from diffusion_gym.rewards import make_reward

        evaluation = event.evaluation
        if evaluation is None:
            return
        scores = torch.as_tensor(make_reward(self.gold)(evaluation.images, evaluation.prompts)).float()  # (N,)
        values: list[float | None] = []
        for index, prompt in enumerate(self.prompts):
            rows = [i for i, p in enumerate(evaluation.prompts) if p == prompt]
            value = float(scores[rows].mean()) if rows else None
            values.append(value)
            if value is not None:
                event.metrics[f"gold_prompt{index}"] = value
        record = (
            json.loads(self.path.read_text()) if self.path.exists() else {"prompts": self.prompts, "by_samples": {}}
        )
        record["by_samples"][str(event.samples_seen)] = values
        self.path.write_text(json.dumps(record, indent=2) + "\n")


def train_bench_run(settings: RunSettings, task=None) -> None:
    """One run of a bench in this process: :class:`~agents.training.trainer.Trainer` from its settings (a resume when
    ``settings.resume``), with :class:`PerPromptGold` when ``task.per_prompt``."""
    callbacks = []
    if task is not None and task.per_prompt:
        callbacks.append(PerPromptGold(task.gold, task.eval_prompts, Path(settings.output_dir)))
    with Trainer.from_settings(settings, callbacks=callbacks) as trainer:
        trainer.train()


# ----------------------------------------------------------------------------------------------- running
def bench(
    tasks: Sequence[str],
    agents: Sequence[str],
    seeds: Sequence[int],
    output_dir: str | Path,
    budget: str = "full",
    jobs: int = 1,
    run_one: Callable[[RunSettings], None] | None = None,
    summarise: bool = True,
    reps: int | None = None,
    archive_dir: str | Path | None = None,
) -> dict:
    """Run every (task, agent, seed) not finished yet, then summarise; returns the leaderboard (``{}`` with
    ``summarise=False``).

    ``jobs`` 1 trains in this process, one run after the other (``run_one``, default :func:`train_bench_run`, at
    one torch thread); more starts up to ``jobs`` subprocesses at once.
    Finished runs are never rerun; interrupted runs resume from their latest checkpoint. Ctrl-C stops the bench
    after the running runs saved what they trained; rerun the same command to continue. A run that fails is
    reported (its log in ``<output-dir>/logs/``) and the others go on; ``RuntimeError`` at the end names them.
    ``reps``: bootstrap replications of the leaderboard's CIs (default
    :data:`agents.experiments.bench_stats.BOOTSTRAP_REPS`). ``archive_dir``: first restore the runs archived there
    (:func:`restore_archived_runs`), then archive every run
    as it finishes (:func:`archive_finished_runs`): a folder to commit, so that a bench continues on another machine.
    """
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be an int >= 1, got {jobs!r}")
    output_dir = Path(output_dir)
    runs = plan_bench(tasks, agents, seeds, output_dir, budget)
    if archive_dir is not None:
        restored = restore_archived_runs(archive_dir, output_dir)
        if restored:
            logger.info("restored %d finished runs from %s", len(restored), archive_dir)

    def archive() -> None:
        if archive_dir is not None:
            archive_finished_runs(output_dir, archive_dir)

    pending = [run for run in runs if continue_or_start(run.settings) is not None]  # checks every folder first
    from tqdm.auto import tqdm

    failed: list[BenchRun] = []
    with tqdm(total=len(runs), initial=len(runs) - len(pending), desc="bench", unit="run") as bar:
        if pending and jobs == 1:
            failed = _run_in_process(pending, run_one, bar, archive)
        elif pending:
            failed = _run_in_subprocesses(pending, output_dir, budget, jobs, bar, archive)
    archive()
    board = summarise_bench(output_dir, tasks, agents, seeds, budget, reps, archive_dir) if summarise else {}
    if failed:
        names = ", ".join(f"{run.task}/{run.agent}-seed{run.seed}" for run in failed)
        raise RuntimeError(f"bench runs failed: {names} (logs in {output_dir / 'logs'})")
    return board


def _train_one_thread(settings: RunSettings, task) -> None:
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(settings.threads or previous)
    try:
        train_bench_run(settings, task)
    finally:
        torch.set_num_threads(previous)


def _run_in_process(
    pending: list[BenchRun], run_one: Callable[[RunSettings], None] | None, bar, after_run: Callable[[], None]
) -> list[BenchRun]:
    for run in pending:
        settings = continue_or_start(run.settings)
        if settings is None:  # finished meanwhile
            bar.update(1)
            continue
        bar.set_postfix_str(f"{run.task}/{run.agent}-seed{run.seed}")
        try:
            if run_one is None:
                _train_one_thread(settings, run.definition)
            else:
                run_one(settings)
        except KeyboardInterrupt:
            logger.warning("bench interrupted; rerun the same command to continue")
            break
        if (Path(settings.output_dir) / RESULTS_FILE).exists() and read_run_result(settings.output_dir).interrupted:
            logger.warning("bench interrupted; rerun the same command to continue")
            break
        after_run()
        bar.update(1)
    return []


def _run_in_subprocesses(
    pending: list[BenchRun], output_dir: Path, budget: str, jobs: int, bar, after_run: Callable[[], None]
) -> list[BenchRun]:
    logs = output_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    environment = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    root = str(Path(__file__).resolve().parent.parent)  # the agents package's checkout, first on the path
    environment["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [os.environ.get("PYTHONPATH")])])
    queue, running, failed = list(pending), [], []
    try:
        while queue or running:
            while queue and len(running) < jobs:
                run = queue.pop(0)
                command = [sys.executable, "-m", "agents.experiments.bench", "--run-one", run.task, run.agent,
                           str(run.seed), "--budget", budget, "--output-dir", str(output_dir)]  # fmt: skip
                log = (logs / f"{run.task}-{run.agent}-seed{run.seed}.log").open("a")
                running.append(
                    (run, subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=environment), log)
                )
            time.sleep(0.5)
            for entry in list(running):
                run, process, log = entry
                if process.poll() is None:
                    continue
                running.remove(entry)
                log.close()
                if process.returncode != 0:
                    failed.append(run)
                    logger.error("bench run %s/%s-seed%d failed (exit %d)", run.task, run.agent, run.seed,
                                 process.returncode)  # fmt: skip
                after_run()
                bar.update(1)
    except KeyboardInterrupt:
        logger.warning("bench interrupted: stopping the running runs (they save what they trained)")
        for _, process, _ in running:
            process.send_signal(2)  # SIGINT: the trainer evaluates and saves what it trained
        for _, process, log in running:
            process.wait()
            log.close()
    return failed


def run_one_main(task: str, agent: str, seed: int, output_dir: Path, budget: str) -> int:
    """One run of a bench in this process (what ``--jobs`` starts): resumes or starts it, at one thread."""
    import torch

    torch.set_num_threads(1)
    (run,) = plan_bench([task], [agent], [seed], output_dir, budget)
    settings = continue_or_start(run.settings)
    if settings is not None:
        train_bench_run(settings, run.definition)
    return 0


# ----------------------------------------------------------------------------------------------- summary
@dataclass
class AgentOnTask:
    """The finished runs of one agent on one task, by seed."""

    agent: str
    seeds: list[int]
    results: list[RunResult]

    def gains(self) -> np.ndarray:
        """Final minus base held-out gold, per seed ``(S,)``."""
        return np.array([r.final.gold - r.base.gold for r in self.results], dtype=float)

    def by_seed(self) -> dict[int, float]:
        return dict(zip(self.seeds, self.gains().tolist(), strict=True))


def finished_runs(output_dir: Path, task: str, agent: str, seeds: Sequence[int]) -> AgentOnTask:
    """The finished runs among ``seeds`` of ``agent`` on ``task`` (missing or unfinished ones are left out)."""
    kept_seeds, results = [], []
    for seed in seeds:
        folder = output_dir / task / f"{agent}-seed{seed}"
        if not (folder / RESULTS_FILE).exists():
            continue
        result = read_run_result(folder)
        if result.finished and result.base.gold is not None and result.final.gold is not None:
            kept_seeds.append(seed)
            results.append(result)
    return AgentOnTask(agent, kept_seeds, results)


def paired_differences(a: AgentOnTask, b: AgentOnTask) -> np.ndarray:
    """``a``'s gain minus ``b``'s on the seeds both finished ``(S,)``."""
    ga, gb = a.by_seed(), b.by_seed()
    return np.array([ga[s] - gb[s] for s in sorted(ga.keys() & gb.keys())], dtype=float)


def auc_per_seed(runs: AgentOnTask, ceiling: float) -> np.ndarray:
    """The normalised area under each seed's held-out gold curve ``(S,)`` (:func:`normalised_auc`)."""
    from agents.experiments.bench_stats import normalised_auc

    found = held_out_gains(runs.results, "gold")
    if found is None:
        return np.full(len(runs.results), math.nan)
    steps, gains, _ = found  # (P,), (S, P)
    return np.array(
        [normalised_auc(steps, gains[i] + r.base.gold, r.base.gold, ceiling) for i, r in enumerate(runs.results)]
    )


# a seed stalled when its best held-out gold gain stays below this fraction of its agent's median seed on the task
STALL_FRACTION = 1 / 3
# ... provided that median is above the evaluation's noise: about two standard errors of one evaluation's mean on
# the built-in tasks (0.012-0.013, docs/experiments/2026-12-07-bench.md); below it no seed learned to compare with
STALL_MEDIAN_FLOOR = 0.02


def stalled_seeds(
    seeds: Sequence[int],
    best_gains: Sequence[float],
    fraction: float = STALL_FRACTION,
    floor: float = STALL_MEDIAN_FLOOR,
) -> list[int]:
    """The seeds whose best gain (over every evaluation) is below ``fraction`` of the median best gain of all the
    ``seeds`` (one agent on one task): runs that failed where their siblings learned, which the IQM discounts and
    the mean does not. Relative to the agent's own seeds, so that one rule fits a task where every run gains
    +0.03 (``multi`` at this budget) and one where they gain +0.12 (``long``); an agent that learns nothing on any
    seed has no stalled seed (its IQM says so): none when the median best gain is not above ``floor``."""
    best = np.asarray(best_gains, dtype=float)  # (S,)
    if best.shape != (len(seeds),):
        raise ValueError(f"got {best.shape} best gains for {len(seeds)} seeds")
    median = float(np.median(best)) if len(best) else math.nan
    if not median > floor:
        return []
    return [seed for seed, gain in zip(seeds, best, strict=True) if gain < fraction * median]


def seeds_that_stalled(runs: AgentOnTask) -> list[int]:
    """:func:`stalled_seeds` of ``runs``, from each seed's held-out gold curve."""
    found = held_out_gains(runs.results, "gold")
    if found is None:
        return []
    _, gains, _ = found  # (S, P)
    return stalled_seeds(runs.seeds, np.nanmax(gains, axis=1))


def per_prompt_gains(output_dir: Path, task: str, runs: AgentOnTask) -> dict:
    """Per evaluation prompt, the base model's and the final gold, mean over the seeds whose run folder recorded
    both (``per_prompt_gold.json``): ``{"prompts", "per_prompt_base", "per_prompt_final", "per_prompt_gain"}``."""
    prompts: list[str] = []
    base_rows, final_rows, seeds = [], [], []
    for seed in runs.seeds:
        path = output_dir / task / f"{runs.agent}-seed{seed}" / PER_PROMPT_FILE
        if not path.exists():
            continue
        record = json.loads(path.read_text())
        by_samples = record["by_samples"]
        last = max(by_samples, key=int)
        if "0" not in by_samples or last == "0":
            continue
        prompts = record["prompts"]
        base_rows.append(by_samples["0"])
        final_rows.append(by_samples[last])
        seeds.append(seed)
    if not base_rows:
        return {}
    base = np.array(base_rows, dtype=float)  # (seeds, prompts); None -> nan
    final = np.array(final_rows, dtype=float)
    with warnings.catch_warnings():  # a prompt no seed evaluated (a small evaluation): NaN, not a warning
        warnings.simplefilter("ignore", RuntimeWarning)
        return {
            "prompts": prompts,
            "per_prompt_base": np.nanmean(base, axis=0).tolist(),
            "per_prompt_final": np.nanmean(final, axis=0).tolist(),
            "per_prompt_gain": np.nanmean(final - base, axis=0).tolist(),
            "per_prompt_seeds": seeds,
            "per_prompt_gain_by_seed": (final - base).tolist(),  # (seeds, prompts)
        }


def leaderboard(
    output_dir: Path, tasks: Sequence[str], agents: Sequence[str], seeds: Sequence[int], reps: int | None = None
) -> tuple[dict, dict]:
    """``(leaderboard, details)`` of the finished runs. The leaderboard has exactly this shape::

        {"tasks": {TASK: {"mde": float | null, "agents": {AGENT: {"iqm", "ci_low", "ci_high", "seeds",
         "samples_to_0.05", "samples_to_0.10", "minutes_to_0.10"}}, "pairs": [{"a", "b", "prob_improvement",
         "ci_low", "ci_high"}]}}}

    ``iqm`` and its CI: the final held-out gold gain over the base model, IQM over seeds with a stratified
    bootstrap 95% CI. ``pairs``: every pair of agents (in the order given; a calibration agent only with its
    reference, :func:`compared`), P(a's gain > b's) with its CI.
    ``mde``: the minimum detectable gold-gain difference at ``len(seeds)`` seeds (80% power, two-sided 5%), from
    the pooled per-seed variance of the pairs' paired differences (null with fewer than 2 paired seeds).
    An agent without finished runs is left out. ``details`` holds the per-seed gains, the normalised AUC and the
    scores normalised across tasks.
    """
    from agents.experiments.bench_stats import (
        BOOTSTRAP_REPS,
        iqm_interval,
        minimum_detectable_effect,
        normalised_gold,
        pooled_std_of_differences,
        probability_of_improvement,
    )
    from diffusion_gym.tasks import get_task

    reps = reps or BOOTSTRAP_REPS
    board: dict = {"tasks": {}}
    details: dict = {"tasks": {}, "across_tasks": {}, "bootstrap_reps": reps}
    for task_name in tasks:
        task = get_task(task_name)
        present = [runs for runs in (finished_runs(output_dir, task_name, a, seeds) for a in agents) if runs.seeds]
        entry: dict = {"mde": None, "agents": {}, "pairs": []}
        detail: dict = {"agents": {}, "pairs": []}
        for runs in present:
            interval = iqm_interval(runs.gains(), reps=reps)
            crossing = {c.threshold: c for c in crossings(runs.results, "gold")}
            entry["agents"][runs.agent] = {
                "iqm": interval.point,
                "ci_low": interval.low,
                "ci_high": interval.high,
                "seeds": len(runs.seeds),
                "samples_to_0.05": crossing[0.05].samples,
                "samples_to_0.10": crossing[0.10].samples,
                "minutes_to_0.10": crossing[0.10].minutes,
            }
            auc = auc_per_seed(runs, task.ceiling)
            auc_interval = iqm_interval(auc, reps=reps) if np.isfinite(auc).all() else None
            if task.per_prompt:
                detail["agents"].setdefault(runs.agent, {}).update(per_prompt_gains(output_dir, task_name, runs))
            detail["agents"].setdefault(runs.agent, {}).update(
                {
                    "seeds": runs.seeds,
                    "base_gold": [r.base.gold for r in runs.results],
                    "final_gold": [r.final.gold for r in runs.results],
                    "gain": runs.gains().tolist(),
                    "stalled": seeds_that_stalled(runs),
                    "auc": auc.tolist(),
                    "auc_iqm": None if auc_interval is None else dataclasses.asdict(auc_interval),
                    "normalised_final": normalised_gold(
                        [r.final.gold for r in runs.results], [r.base.gold for r in runs.results], task.ceiling
                    ).tolist(),
                }
            )
        differences = []
        for a, b in itertools.combinations(present, 2):
            if not compared(a.agent, b.agent):
                continue
            interval = probability_of_improvement(a.gains(), b.gains(), reps=reps)
            entry["pairs"].append(
                {
                    "a": a.agent,
                    "b": b.agent,
                    "prob_improvement": interval.point,
                    "ci_low": interval.low,
                    "ci_high": interval.high,
                }  # fmt: skip
            )
            paired = paired_differences(a, b)
            differences.append(paired)
            pair_sd = float(paired.std(ddof=1)) if len(paired) >= 2 else math.nan
            detail["pairs"].append(
                {
                    "a": a.agent,
                    "b": b.agent,
                    "paired_differences": paired.tolist(),
                    "mean_difference": paired_t_interval(paired),
                    "std": pair_sd,
                    "mde": minimum_detectable_effect(pair_sd, len(list(seeds))),
                }  # fmt: skip
            )
        if task.per_prompt:
            per_prompt_statistics(detail, reps)
        sd = pooled_std_of_differences(differences) if differences else math.nan
        entry["mde"] = minimum_detectable_effect(sd, len(list(seeds)))
        detail["std_of_paired_differences"] = sd
        board["tasks"][task_name] = entry
        details["tasks"][task_name] = detail
    details["across_tasks"] = across_tasks(details, tasks, agents, reps)
    return json_safe(board), json_safe(details)


def paired_t_interval(differences: np.ndarray) -> dict[str, float] | None:
    """The mean of per-seed paired differences with its two-sided 95% t-interval, ``{"point", "low", "high"}``
    (None with fewer than 2 seeds): the paired test whose power :func:`minimum_detectable_effect` gives. (A
    percentile bootstrap of 6 values is too narrow here: A/A no. 2's excluded 0, docs/experiments/2026-12-07-bench.md.)
    """
    from agents.experiments.stats import mean_ci

    if len(differences) < 2:
        return None
    interval = mean_ci(differences.tolist())
    return {
        "point": interval.mean,
        "low": interval.mean - interval.half_width,
        "high": interval.mean + interval.half_width,
    }


def per_prompt_statistics(detail: dict, reps: int) -> None:
    """A per-prompt task's evaluation prompts as rliable's tasks: per agent, the IQM of the per-prompt gold gain over
    (seed, prompt) with a bootstrap CI stratified by prompt (``per_prompt_iqm``); per pair, P(a > b) on a prompt,
    averaged over the prompts, with its CI (``per_prompt_prob_improvement``; over the seeds both finished). Only
    the prompts every seed evaluated count (a small evaluation leaves some out). Added to ``detail`` in place."""
    from agents.experiments.bench_stats import iqm_interval, probability_of_improvement

    def matrix(agent: str, seeds: Sequence[int] | None = None) -> np.ndarray | None:
        row = detail["agents"][agent]
        if not row.get("per_prompt_gain_by_seed"):
            return None
        gains = np.array(row["per_prompt_gain_by_seed"], dtype=float)  # (seeds, prompts)
        if seeds is not None:
            gains = gains[[row["per_prompt_seeds"].index(s) for s in seeds]]
        return gains

    for agent, row in detail["agents"].items():
        gains = matrix(agent)
        if gains is not None:
            evaluated = gains[:, np.isfinite(gains).all(axis=0)]
            row["per_prompt_iqm"] = dataclasses.asdict(iqm_interval(evaluated, reps=reps))
    for pair in detail["pairs"]:
        a, b = detail["agents"][pair["a"]], detail["agents"][pair["b"]]
        if not (a.get("per_prompt_gain_by_seed") and b.get("per_prompt_gain_by_seed")):
            continue
        common = sorted(set(a["per_prompt_seeds"]) & set(b["per_prompt_seeds"]))
        x, y = matrix(pair["a"], common), matrix(pair["b"], common)
        evaluated = np.isfinite(x).all(axis=0) & np.isfinite(y).all(axis=0)
        if common and evaluated.any():
            interval = probability_of_improvement(x[:, evaluated], y[:, evaluated], reps=reps)
            pair["per_prompt_prob_improvement"] = dataclasses.asdict(interval)


def across_tasks(details: dict, tasks: Sequence[str], agents: Sequence[str], reps: int) -> dict:
    """Per agent, the IQM (with CI) of the final gold normalised between the base model and each task's ceiling,
    over the seeds finished on every task, stratified by task; and the performance profiles of those scores."""
    from agents.experiments.bench_stats import iqm_interval, performance_profiles

    matrices: dict[str, np.ndarray] = {}
    for agent in agents:
        per_task = [details["tasks"][task]["agents"].get(agent) for task in tasks]
        if any(entry is None for entry in per_task):
            continue
        common = sorted(set.intersection(*(set(entry["seeds"]) for entry in per_task)))
        if not common:
            continue
        columns = [[entry["normalised_final"][entry["seeds"].index(s)] for s in common] for entry in per_task]
        matrices[agent] = np.array(columns, dtype=float).T  # (seeds, tasks)
    out: dict = {"agents": {}, "profile_taus": PROFILE_TAUS.tolist(), "profiles": {}}
    for agent, matrix in matrices.items():
        out["agents"][agent] = {"seeds": matrix.shape[0], **dataclasses.asdict(iqm_interval(matrix, reps=reps))}
    if matrices:
        profile = performance_profiles(matrices, PROFILE_TAUS, reps=reps)
        out["profiles"] = {
            agent: {
                "fraction": profile.fractions[agent].tolist(),
                "low": profile.low[agent].tolist(),
                "high": profile.high[agent].tolist(),
            }  # fmt: skip
            for agent in matrices
        }
    return out


def summarise_bench(
    output_dir: str | Path,
    tasks: Sequence[str],
    agents: Sequence[str],
    seeds: Sequence[int],
    budget: str = "full",
    reps: int | None = None,
    archive_dir: str | Path | None = None,
) -> dict:
    """Write ``leaderboard.json``, ``leaderboard.md``, ``bench_summary.json`` and the figures from the finished runs
    in ``output_dir``; returns the leaderboard. ``archive_dir``: named in the command that regenerates it."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    board, details = leaderboard(output_dir, tasks, agents, seeds, reps)
    command = shlex.join(
        [
            "diffusion-gym",
            "bench",
            "--tasks",
            ",".join(tasks),
            "--agents",
            ",".join(agents),
            "--seeds",
            seeds_text(seeds),
            "--budget",
            budget,
            "--output-dir",
            str(output_dir),
            *(["--archive", str(archive_dir)] if archive_dir is not None else []),
        ]  # fmt: skip
    )
    (output_dir / LEADERBOARD_FILE).write_text(json.dumps(board, indent=2) + "\n")
    details["command"] = command
    (output_dir / "bench_summary.json").write_text(json.dumps(details, indent=2) + "\n")
    (output_dir / "leaderboard.md").write_text(leaderboard_markdown(board, details, command) + "\n")
    plot_bench(output_dir, board, details, tasks, agents, seeds)
    return board


SUMMARY_FILES = ("run.json", RESULTS_FILE, "metrics.jsonl", PER_PROMPT_FILE)  # what a finished run is summarised from


def archive_finished_runs(output_dir: str | Path, archive_dir: str | Path) -> list[Path]:
    """Copy the summary files (:data:`SUMMARY_FILES`, no checkpoints or images) of every finished run of the bench
    in ``output_dir`` to the same ``<task>/<run>/`` place under ``archive_dir``: a few tens of KB a run, small
    enough to commit. Returns the run folders copied this time (those already archived unchanged are skipped)."""
    output_dir, archive_dir = Path(output_dir), Path(archive_dir)
    copied = []
    for results in sorted(output_dir.glob(f"*/*/{RESULTS_FILE}")):
        folder = results.parent
        if not read_run_result(folder).finished:
            continue
        target = archive_dir / folder.parent.name / folder.name
        files = [folder / name for name in SUMMARY_FILES if (folder / name).exists()]
        if target.exists() and all(
            (target / f.name).exists() and (target / f.name).read_bytes() == f.read_bytes() for f in files
        ):
            continue
        target.mkdir(parents=True, exist_ok=True)
        for file in files:
            shutil.copy2(file, target / file.name)
        copied.append(target)
    return copied


def restore_archived_runs(archive_dir: str | Path, output_dir: str | Path) -> list[Path]:
    """The reverse of :func:`archive_finished_runs`: copy archived runs into a bench folder, where they count as
    finished (they are summarised, never rerun). A run folder that already exists is left alone. Returns the run
    folders restored."""
    archive_dir, output_dir = Path(archive_dir), Path(output_dir)
    restored = []
    for results in sorted(archive_dir.glob(f"*/*/{RESULTS_FILE}")):
        target = output_dir / results.parent.parent.name / results.parent.name
        if target.exists():
            continue
        shutil.copytree(results.parent, target)
        restored.append(target)
    return restored


def _number(value: float | None, digits: int = 4, signed: bool = True) -> str:
    if value is None:
        return "–"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def failed_seeds(seeds: list[int], out_of: int) -> str:
    """``0/6``, or ``1/6 (seed 5)``."""
    if not seeds:
        return f"0/{out_of}"
    return f"{len(seeds)}/{out_of} (seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))})"


def leaderboard_markdown(board: dict, details: dict, command: str) -> str:
    """``leaderboard.md``: per task the agents' IQM gold gain with CI, AUC, crossings; the pairs; the MDE."""
    lines = [
        "# Leaderboard",
        "",
        "Final held-out gold gain over the base model (fresh noise, the same noise for every agent and seed): IQM "
        "over seeds with a stratified bootstrap 95% CI (rliable); AUC: area under the held-out gold curve, "
        "normalised between the base model (0) and the task's ceiling (1), IQM over seeds; samples (minutes) until "
        "the seed-mean gain first reaches +0.05 and +0.10; stalled: the seeds whose best gain at any evaluation "
        f"stayed below {STALL_FRACTION:.2f} x its agent's median seed's best, when that median exceeds "
        f"+{STALL_MEDIAN_FLOOR:.2f} (failed runs the IQM discounts). "
        "P(a > b): probability of improvement with its 95% CI; "
        f"the CI excluding 0.5 is a decision (with at least {MIN_SEEDS_FOR_DECISION} seeds each). MDE: the "
        "gold-gain difference detected with 80% power (two-sided 5%) at this many seeds, from the measured variance "
        "of the paired differences (the task's: pooled over every pair; a pair's: from its own). Beside P(a > b), "
        "which compares the two sets of runs unpaired and decides, the mean paired difference (a's gain - b's, seed "
        "by seed) with its 95% t-interval: the paired test the MDE describes.",
        "",
    ]
    not_run = [task for task, entry in board["tasks"].items() if not entry["agents"]]
    for task, entry in board["tasks"].items():
        if task in not_run:
            continue
        detail = details["tasks"][task]
        lines += [f"## {task} (MDE {_number(entry['mde'], signed=False)})", ""]
        lines += [
            "| agent | seeds | IQM gold gain [95% CI] | AUC (IQM) | samples to +0.05 | samples (min) to +0.10 | "
            "stalled |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for agent, row in entry["agents"].items():
            auc = detail["agents"][agent]["auc_iqm"]
            minutes = "" if row["minutes_to_0.10"] is None else f" ({row['minutes_to_0.10']:.1f})"
            lines.append(
                f"| {agent} | {row['seeds']} | {_number(row['iqm'])} [{_number(row['ci_low'])}, "
                f"{_number(row['ci_high'])}] | {_number(auc['point'] if auc else None, 3)} | "
                f"{row['samples_to_0.05'] if row['samples_to_0.05'] is not None else 'not reached'} | "
                f"{row['samples_to_0.10'] if row['samples_to_0.10'] is not None else 'not reached'}{minutes} | "
                f"{failed_seeds(detail['agents'][agent]['stalled'], row['seeds'])} |"
            )
        per_prompt = {agent: row for agent, row in detail["agents"].items() if row.get("per_prompt_gain")}
        if per_prompt:
            first = next(iter(per_prompt.values()))
            lines += [
                "",
                "Gold gain per evaluation prompt, mean over seeds (the header: prompt j and its base gold, the same "
                "model on the same noise for every agent; the prompts are in `bench_summary.json`):",
                "",
                "| agent | "
                + " | ".join(
                    f"p{j} ({_number(value, 2, signed=False)})" for j, value in enumerate(first["per_prompt_base"])
                )
                + " |",
                "|---|" + "---:|" * len(first["per_prompt_base"]),
            ]
            for agent, row in per_prompt.items():
                lines.append(f"| {agent} | " + " | ".join(_number(v, 3) for v in row["per_prompt_gain"]) + " |")
            lines += [
                "",
                "The prompts as rliable's tasks (per-prompt gold gain of every seed): IQM over (seed, prompt) with a "
                "bootstrap 95% CI stratified by prompt; P(a > b) on a prompt, averaged over the prompts. rliable "
                "resamples the seeds of each prompt independently, as if a seed's prompts were independent runs: "
                "where seeds differ as a whole (one seed good on every prompt), these CIs are too narrow; the "
                "per-seed table below is the decision:",
                "",
                "| agent | IQM per-prompt gain [95% CI] |",
                "|---|---:|",
            ]
            for agent, row in per_prompt.items():
                if row.get("per_prompt_iqm"):
                    value = row["per_prompt_iqm"]
                    lines.append(
                        f"| {agent} | {_number(value['point'])} [{_number(value['low'])}, {_number(value['high'])}] |"
                    )
            pairs = [pair for pair in detail["pairs"] if pair.get("per_prompt_prob_improvement")]
            if pairs:
                lines += ["", "| a | b | P(a > b) over prompts [95% CI] |", "|---|---|---:|"]
                for pair in pairs:
                    point, low, high = (pair["per_prompt_prob_improvement"][k] for k in ("point", "low", "high"))
                    lines.append(f"| {pair['a']} | {pair['b']} | {point:.3f} [{low:.3f}, {high:.3f}] |")
        if entry["pairs"]:
            lines += [
                "",
                "| a | b | P(a > b) [95% CI] | decision | mean paired difference [95% CI] | this pair's MDE |",
                "|---|---|---:|---|---:|---:|",
            ]
            for pair, pair_detail in zip(entry["pairs"], detail["pairs"], strict=True):
                differences = pair_detail["paired_differences"]
                paired = pair_detail["mean_difference"]
                paired_text = (
                    "–"
                    if paired is None
                    else f"{_number(paired['point'])} [{_number(paired['low'])}, {_number(paired['high'])}]"
                )
                low, high = pair["ci_low"], pair["ci_high"]
                decision = f"{pair['a']} better" if low > 0.5 else f"{pair['b']} better" if high < 0.5 else "undecided"
                if min(len(differences), *(entry["agents"][pair[k]]["seeds"] for k in "ab")) < MIN_SEEDS_FOR_DECISION:
                    decision = f"too few seeds (< {MIN_SEEDS_FOR_DECISION})"
                lines.append(
                    f"| {pair['a']} | {pair['b']} | {pair['prob_improvement']:.3f} [{low:.3f}, {high:.3f}] | "
                    f"{decision} | {paired_text} | {_number(pair_detail['mde'], signed=False)} |"
                )
        lines.append("")
    across = details["across_tasks"]["agents"]
    if across:
        lines += [
            "## Across tasks",
            "",
            "Final gold normalised between the base model (0) and each task's ceiling (1): IQM over seeds x tasks, "
            "stratified bootstrap 95% CI.",
            "",
            "| agent | seeds | IQM normalised gold [95% CI] |",
            "|---|---:|---:|",
        ]
        for agent, row in across.items():
            lines.append(f"| {agent} | {row['seeds']} | {row['point']:.4f} [{row['low']:.4f}, {row['high']:.4f}] |")
        lines.append("")
    if not_run:
        lines += [f"No finished run yet on: {', '.join(not_run)}.", ""]
    lines.append(f"Regenerate with: `{command}`")
    return "\n".join(lines)


def plot_bench(
    output_dir: Path, board: dict, details: dict, tasks: Sequence[str], agents: Sequence[str], seeds: Sequence[int]
) -> None:
    """``leaderboard_iqm.png`` (IQM with CIs per task), ``performance_profiles.png`` (across tasks) and
    ``gold_curves.png`` (held-out gold against samples, mean over seeds with its 95% band, per task)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from agents.training.plots import plot_comparison

    names = list(board["tasks"])
    figure, axes = plt.subplots(1, max(1, len(names)), figsize=(max(6, 4.5 * len(names)), 0.6 * len(agents) + 2),
                                squeeze=False)  # fmt: skip
    for axis, task in zip(axes[0], names, strict=False):
        rows = board["tasks"][task]["agents"]
        labels = list(rows)
        points = np.array([rows[a]["iqm"] for a in labels], dtype=float)
        errors = np.array([[rows[a]["iqm"] - rows[a]["ci_low"], rows[a]["ci_high"] - rows[a]["iqm"]] for a in labels],
                          dtype=float).T.reshape(2, len(labels))  # fmt: skip
        axis.errorbar(points, np.arange(len(labels)), xerr=errors, fmt="o", capsize=4)
        axis.set_yticks(np.arange(len(labels)), labels)
        axis.axvline(0, color="gray", linewidth=0.8)
        axis.set(xlabel="IQM final gold gain (95% CI)", title=task)
        axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(output_dir / "leaderboard_iqm.png", dpi=120)
    plt.close(figure)

    profiles = details["across_tasks"]["profiles"]
    figure, axis = plt.subplots(figsize=(6, 4))
    taus = np.array(details["across_tasks"]["profile_taus"])
    for agent, profile in profiles.items():
        (line,) = axis.plot(taus, profile["fraction"], label=agent)
        axis.fill_between(taus, profile["low"], profile["high"], color=line.get_color(), alpha=0.15, linewidth=0)
    axis.set(xlabel="normalised final gold tau (0: base model, 1: ceiling)", ylabel="fraction of runs > tau",
             title="performance profiles across " + ", ".join(names))  # fmt: skip
    axis.grid(alpha=0.3)
    if profiles:
        axis.legend()
    figure.tight_layout()
    figure.savefig(output_dir / "performance_profiles.png", dpi=120)
    plt.close(figure)

    panels: dict = {}
    for task in names:
        for agent in agents:
            runs = finished_runs(output_dir, task, agent, seeds)
            band = held_out_band(runs.results, "gold") if runs.results else None
            if band is not None:
                panels.setdefault(f"{task}: held-out gold", {})[agent] = band
    plot_comparison(panels, output_dir / "gold_curves.png", title="held-out gold on fresh noise")


# ----------------------------------------------------------------------------------------------- command line
def seeds_text(seeds: Sequence[int]) -> str:
    """The ``--seeds`` text that :func:`seed_spec` reads back as ``seeds``: ``"0-5"`` for a run of consecutive
    seeds (one seed too: ``"3-3"``, since ``"3"`` is a count), else ``"0,3,7"``."""
    seeds = list(seeds)
    if seeds and seeds == list(range(seeds[0], seeds[0] + len(seeds))):
        return f"{seeds[0]}-{seeds[-1]}"
    return ",".join(map(str, seeds))


def seed_spec(text: str) -> list[int]:
    """``"5"`` -> seeds 0..4; ``"0,3,7"`` -> those; ``"5-9"`` -> 5..9 (argparse type)."""
    try:
        if "," in text:
            seeds = [int(part) for part in text.split(",")]
        elif "-" in text:
            first, last = (int(part) for part in text.split("-"))
            if last < first:
                raise ValueError
            seeds = list(range(first, last + 1))
        else:
            count = int(text)
            if count < 1:
                raise ValueError
            seeds = list(range(count))
        return check_seeds(seeds)
    except ValueError as error:
        raise argparse.ArgumentTypeError(
            f"expected a count N (seeds 0..N-1), a list 0,3,7 or a range 5-9 of seeds >= 0, got {text!r}"
        ) from error


def name_list(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"expected comma-separated names, got {text!r}")
    return names


DESCRIPTION = """\
Run every (task, agent, seed) of a suite as a run folder <output-dir>/<task>/<agent>-seed<seed>/, then write
leaderboard.json, leaderboard.md, bench_summary.json and the figures (IQM with CIs, performance profiles, gold
curves). Rerunning the command continues the bench: finished runs are only summarised, interrupted ones resume
from their latest checkpoint. Every agent and seed of a task is scored on the same evaluation noise (paired);
statistics by rliable: IQM of the final gold gain with stratified bootstrap 95% CIs, probability of improvement
for every pair, the minimum detectable effect at these seeds.

    diffusion-gym bench --tasks long,multi --agents ddpo,loop,herd --seeds 5 --output-dir runs/bench --jobs 2
    diffusion-gym bench --tasks long --agents ddpo,loop --seeds 2 --budget smoke --output-dir runs/smoke
"""


@dataclass
class BenchSettings:
    """What ``diffusion-gym bench`` runs, and where. The command line's flags are these fields (each docstring is its
    flag's help); validated on construction: ``TypeError``/``ValueError`` naming the field."""

    tasks: list[str] = field(default_factory=lambda: ["long"])
    """comma-separated registered tasks"""
    agents: list[str] = field(default_factory=lambda: ["ddpo", "loop", "herd"])
    """comma-separated agents or variants; every pair is compared"""
    seeds: list[int] = field(default_factory=lambda: list(range(5)))
    """a count N (seeds 0..N-1), a list 0,3,7 or a range 5-9; the same seeds for every task and agent, paired"""
    output_dir: Path = Path("runs/bench")
    """the bench folder: <task>/<agent>-seed<seed>/ run folders, logs/, leaderboard.json and .md, figures; rerunning
    into it continues the bench"""
    budget: str = "full"
    """full: each task's registered sample budget; smoke: 2 epochs of 4 samples, 3 DDIM steps, 4 held-out samples,
    seconds per run (CI)"""
    jobs: Annotated[int, Bound(1)] = 1
    """runs at once: 1 trains in this process one run after the other; N > 1 starts N subprocesses of one torch
    thread each (one per core)"""
    bootstrap_reps: Annotated[int | None, Bound(10)] = None
    """bootstrap replications of every confidence interval (None: 2000; rliable's own default is 50000)"""
    archive: Path | None = None
    """restore the finished runs archived in this folder first, and archive every run's summary files there as it
    finishes (run.json, results.json, metrics.jsonl, per_prompt_gold.json; no checkpoints): commit it and the bench
    continues from it on another machine"""
    summarise_only: bool = False
    """train nothing: write the leaderboard from the runs finished so far"""

    def __post_init__(self) -> None:
        check_fields(self, annotated_bounds(BenchSettings), {"budget": BUDGETS})
        self.seeds = check_seeds(self.seeds)


# how the command line reads the fields that are not numbers (the numbers: their declared type and range)
BENCH_FLAG_PARSERS: dict[str, Callable[[str], object]] = {
    "tasks": name_list,
    "agents": name_list,
    "seeds": seed_spec,
    "output_dir": Path,
    "archive": Path,
}


def build_parser() -> argparse.ArgumentParser:
    from agents.cli import add_field_flag
    from diffusion_gym.tasks import get_task, task_names

    tasks = "\n".join(f"  {name:<10} {get_task(name).description}" for name in task_names())
    agents = "\n".join(f"  {agent.name:<18} {agent.description}" for agent in BENCH_AGENTS.values())
    parser = argparse.ArgumentParser(
        prog="diffusion-gym bench",
        description=DESCRIPTION,
        epilog=f"tasks:\n{tasks}\n\nagents (besides the plain agent names):\n{agents}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    defaults = BenchSettings()
    for setting in dataclasses.fields(BenchSettings):
        name, default = setting.name, getattr(defaults, setting.name)
        add_field_flag(
            parser,
            BenchSettings,
            name,
            default,
            parse=BENCH_FLAG_PARSERS.get(name),
            choices=BUDGETS if name == "budget" else None,
            shown=",".join(map(str, default)) if isinstance(default, list) else None,
            metavar="DIR" if name == "archive" else None,
        )
    parser.add_argument("--run-one", nargs=3, metavar=("TASK", "AGENT", "SEED"), help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``diffusion-gym bench``: see :func:`build_parser`'s help."""
    parser = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        settings = BenchSettings(
            **{setting.name: getattr(args, setting.name) for setting in dataclasses.fields(BenchSettings)}
        )
    except (TypeError, ValueError) as error:
        parser.error(str(error))
    if args.run_one is not None:
        task, agent, seed = args.run_one
        return run_one_main(task, agent, int(seed), settings.output_dir, settings.budget)
    try:
        plan_bench(settings.tasks, settings.agents, settings.seeds, settings.output_dir, settings.budget)  # names
    except ValueError as error:
        parser.error(str(error))
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if settings.summarise_only:
        if settings.archive is not None:
            restore_archived_runs(settings.archive, settings.output_dir)
        board = summarise_bench(
            settings.output_dir,
            settings.tasks,
            settings.agents,
            settings.seeds,
            settings.budget,
            settings.bootstrap_reps,
            settings.archive,
        )
    else:
        try:
            board = bench(
                settings.tasks,
                settings.agents,
                settings.seeds,
                settings.output_dir,
                settings.budget,
                settings.jobs,
                reps=settings.bootstrap_reps,
                archive_dir=settings.archive,
            )
        except RuntimeError as error:
            print(error, file=sys.stderr)
            return 1
    print((settings.output_dir / "leaderboard.md").read_text())
    print(f"leaderboard: {settings.output_dir / LEADERBOARD_FILE}")
    return 0 if board is not None else 1


if __name__ == "__main__":
    sys.exit(main())


__all__ = [
    "BENCH_AGENTS",
    "BUDGETS",
    "BenchAgent",
    "BenchRun",
    "BenchSettings",
    "SUMMARY_FILES",
    "archive_finished_runs",
    "bench",
    "budget_task",
    "leaderboard",
    "main",
    "plan_bench",
    "resolve_agents",
    "restore_archived_runs",
    "run_settings",
    "summarise_bench",
]
