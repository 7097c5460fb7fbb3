"""Training as a library call, in the spirit of SB3's ``model.learn()`` and TRL's ``trainer.train()``::

    import gymnasium as gym
    import diffusion_gym  # noqa: F401  (registers DiffusionT2I-v1)
    from agents import AgentConfig, Trainer

    env = gym.make_vec("DiffusionT2I-v1", num_envs=16, vectorization_mode="vector_entry_point")
    trainer = Trainer(env, agent="herd", config=AgentConfig(batch_size=16), output_dir="runs/herd")
    result = trainer.train(epochs=24)  # held-out evaluation, TensorBoard, metrics.jsonl, checkpoints, plots
    ...
    trainer = Trainer.resume("runs/herd")  # later, in another process: the latest checkpoint
    trainer.train(epochs=48)

:meth:`Trainer.train` evaluates the base model on fixed seeds, trains epoch by epoch (logging every epoch and
evaluating every ``eval_every`` epochs), checkpoints, evaluates the result and writes the run folder
(:mod:`agents.training.run_folder` lists its files). Ctrl-C stops after the current epoch's work is saved: the run
folder is written for what was trained. A :class:`TrainerCallback` sees every evaluation and every epoch, can add
metrics to the logs and can stop training early.

Data-parallel (``accelerate launch --num_processes N``, :mod:`agents.distributed`): every process builds its
own env and agent and calls :meth:`Trainer.train`; every process trains its own share (``batch_size`` is per
process), the main process alone evaluates, logs, calls the callbacks and saves, and each checkpoint holds
every process's agent state (RNGs, HERD buffer). A callback's stop is broadcast to every process.

Resume (:meth:`Trainer.resume`, and :meth:`Trainer._restore`, which loads a checkpoint): the epoch and sample
counters, the RNGs, the TensorBoard curves and ``metrics.jsonl`` continue where the latest checkpoint left them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from agents.algorithms.base import Agent
from agents.checkpoint import (
    CheckpointWarning,
    capture_rng_state,
    check_compatible,
    checkpoints_dir,
    export_lora_diffusers,
    list_checkpoints,
    load_checkpoint,
    newest_intact_checkpoint,
    restore_rng_state,
    save_checkpoint,
    set_aside,
    to_cpu,
    trim_jsonl,
    verify_checkpoint,
)
from agents.config import AgentConfig
from agents.distributed import Distributed, current
from agents.registry import agent_names, agent_spec, make_agent
from agents.training.evaluation import (
    Evaluation,
    Scores,
    eval_prompt_set,
    evaluate,
    evaluate_base_model,
    grid_rows,
    spread,
)
from agents.training.plots import history_curves, plot_before_after, plot_reward_curves, setting_summary
from agents.training.run_folder import (
    BEFORE_AFTER_FILE,
    METRICS_FILE,
    REWARD_CURVE_FILE,
    RUN_SETTINGS_FILE,
    Generalisation,
    RunFolderWarning,
    RunResult,
    RunSettings,
    default_output_dir,
    json_safe,
    new_run_folder_problem,
    read_run_result,
    read_settings,
    write_results,
    write_settings,
)
from agents.training.run_lock import RunFolderInUse, RunFolderLock
from agents.training.run_log import RunLog
from diffusion_gym.env_config import EnvConfig
from diffusion_gym.prompts import resolve_prompts

logger = logging.getLogger(__name__)


# ============================================================================================== callbacks
@dataclass
class TrainerEvent:
    """What a callback sees; :meth:`stop` ends training after this epoch (its checkpoint and the final evaluation
    still run, and ``results.json`` records the reason)."""

    epoch: int  # epochs completed
    samples_seen: int  # fresh trajectories sampled so far (the x axis of every curve)
    metrics: dict[str, float]  # add entries here to log them with the event's own (see the subclasses)
    stop_reason: str | None = None

    def stop(self, reason: str = "stopped by a callback") -> None:
        """Stop training after this epoch."""
        self.stop_reason = reason


@dataclass
class EvaluationEvent(TrainerEvent):
    """A held-out evaluation: ``metrics`` holds its scores by name (``reward``, ``gold``, ``proxy``,
    ``distance_from_base``, and ``kl_to_base`` with ``eval_kl``); entries a callback adds are logged as
    ``eval/<key>`` (TensorBoard) and ``eval_<key>`` (``metrics.jsonl``)."""

    evaluation: Evaluation | None = None  # the samples: images (N, 3, H, W), prompts, scores


@dataclass
class EpochEvent(TrainerEvent):
    """The end of a training epoch: ``metrics`` holds the agent's training metrics; entries a callback adds are
    logged as ``train/<key>`` (TensorBoard) and ``<key>`` (``metrics.jsonl``)."""

    evaluation: Evaluation | None = None  # this epoch's held-out evaluation, if it had one


class TrainerCallback:
    """Hooks :class:`Trainer` calls on the main process; override the ones you need (each does nothing here).

    To add a metric, put it into ``event.metrics``; to stop early, call ``event.stop(reason)``::

        class StopAtGold(TrainerCallback):
            def on_evaluation(self, trainer, event):
                if event.metrics.get("gold", 0.0) >= 0.9:
                    event.stop("held-out gold reached 0.9")
    """

    def on_train_begin(self, trainer: Trainer) -> None:
        """Before the first epoch of :meth:`Trainer.train` (after the base model's evaluation)."""

    def on_evaluation(self, trainer: Trainer, event: EvaluationEvent) -> None:
        """After each held-out evaluation (and the final one), before it is logged."""

    def on_epoch_end(self, trainer: Trainer, event: EpochEvent) -> None:
        """After each epoch's training (and evaluation), before its metrics are logged and it is checkpointed."""

    def on_train_end(self, trainer: Trainer, result: RunResult) -> None:
        """After the run folder is written."""


# ============================================================================================== run state
@dataclass
class RunState:
    """Where a run stands after some epochs; saved in every checkpoint and restored on resume."""

    epoch: int = 0
    samples_seen: int = 0
    train_samples_seen: int = 0
    elapsed_seconds: float = 0.0  # wall time of the run's earlier sessions


@dataclass
class _Progress:
    """A :meth:`Trainer.train` in memory: the counters, the base model's evaluation, the history, the latest
    evaluation (the evaluations and history: main process only); kept between two calls of ``train``."""

    state: RunState
    base: Evaluation | None
    history: list[dict[str, float]]
    latest: Evaluation | None
    latest_epoch: int = 0
    generalisation_base: Evaluation | None = None  # the base model on the generalisation prompts (None: none)


# ============================================================================================== the trainer
class Trainer:
    """Trains an agent on an env for some epochs and writes a run folder.

    ``env``: the vector env (``gym.make_vec("DiffusionT2I-v1", ..., vectorization_mode="vector_entry_point")``,
    possibly wrapped); its arguments are recorded in ``run.json`` (read from ``env.unwrapped.spec``) so that the
    run can be resumed (anything else is a ``TypeError`` saying so). ``agent``: an agent name
    (:data:`agents.AGENT_NAMES`), built with ``config`` (an :class:`AgentConfig` or a dict of its fields; default:
    ``AgentConfig(batch_size=env.num_envs)``; the agent's defaults, e.g. its learning rate, are filled in), or an
    :class:`~agents.algorithms.base.Agent` (then ``config`` must be None: it has its own; the trainer evaluates it as
    given as the "base" model). ``output_dir``: the run folder. The other arguments are :class:`RunSettings` fields:
    ``eval_prompts`` (a prompt set or one prompt; default: the world's eval prompts, else the training prompts),
    ``eval_samples`` held-out samples per evaluation, ``eval_every`` epochs between evaluations (default: about
    four per run), ``eval_kl`` (also the held-out KL to the base policy, ``kl_to_base``: two more UNet passes per
    evaluation step), ``checkpoint_every`` (default: at every evaluation; always after the last epoch),
    ``keep_checkpoints``, ``label`` (the name in progress bars and tables), ``command`` (recorded in
    ``results.json``); ``callbacks``: :class:`TrainerCallback` hooks. Every argument is checked here (the settings
    by :meth:`RunSettings.validate`, the held-out prompts by the env), before anything is built or written.

    The trainer closes what it built (the agent it made from a name; the env :meth:`from_settings` made) in
    :meth:`close`; it never closes an env or an agent it was given.
    """

    def __init__(
        self,
        env,
        agent: str | Agent = "ddpo",
        config: AgentConfig | None = None,
        output_dir: str | Path | None = None,
        *,
        eval_prompts: str | None = None,
        eval_samples: int = 64,
        eval_every: int | None = None,
        eval_kl: bool = False,
        checkpoint_every: int | None = None,
        keep_checkpoints: int = 3,
        label: str = "",
        command: str = "",
        callbacks: Sequence[TrainerCallback] = (),
    ):
        check_vector_env(env)
        env_config = EnvConfig.of(env)  # what run.json records to rebuild the env (ValueError if unknown)
        callbacks = checked_callbacks(callbacks)
        if isinstance(agent, Agent):
            if config is not None:
                raise ValueError("pass config only with an agent name: an Agent instance has its own config")
            name, config = agent_spec(agent)
        elif isinstance(agent, str):
            name, config = agent, agent_config(config, env.num_envs).with_agent_defaults(agent)
        else:
            raise TypeError(f"agent must be an agent name (one of {agent_names()}) or an Agent, got {agent!r}")
        settings = RunSettings(  # validated here, before an agent is built
            agent=name,
            config=config,
            output_dir=output_dir if output_dir is not None else default_output_dir(label or name),
            label=label,
            env=env_config,
            eval_prompts=eval_prompts,
            eval_samples=eval_samples,
            eval_every=eval_every,
            eval_kl=eval_kl,
            checkpoint_every=checkpoint_every,
            keep_checkpoints=keep_checkpoints,
            command=command,
        )
        check_held_out_prompts(env, settings)
        owns_agent = not isinstance(agent, Agent)
        if owns_agent:
            agent = make_agent(name, env, config)
        if output_dir is None:  # the main process's default (a timestamp) on every process
            settings = dataclasses.replace(settings, output_dir=default_folder(label or name, agent))
        self._setup(env, agent, owns_agent, settings, callbacks)

    def _setup(
        self, env, agent: Agent, owns_agent: bool, settings: RunSettings, callbacks: Sequence[TrainerCallback]
    ) -> None:
        self.env = env
        self.agent: Agent = agent
        self.settings: RunSettings = settings
        self.callbacks: list[TrainerCallback] = list(callbacks)
        self.distributed: Distributed = agent.distributed
        self._owns_agent = owns_agent
        self._owned_env = None  # the env from_settings built (closed by close())
        self._progress: _Progress | None = None
        self._started: float | None = None  # from_settings: when loading the model began

    # ------------------------------------------------------------------------------ building from settings
    @classmethod
    def for_task(
        cls,
        task: object,
        agent: str,
        output_dir: str | os.PathLike,
        config: AgentConfig | None = None,
        callbacks: Sequence[TrainerCallback] = (),
        **settings: object,
    ) -> Trainer:
        """A trainer of ``agent`` on a registered task (a name, e.g. ``"long"``, the default task of ``diffusion-gym
        run`` and ``make run``, or a :class:`~diffusion_gym.tasks.Task`), with the task's env, evaluation and budget
        (:meth:`RunSettings.for_task`); ``settings`` change any other :class:`RunSettings` field::

            Trainer.for_task("long", "ddpo", "runs/ddpo").train()  # the run of `make run`, seed 0
        """
        return cls.from_settings(RunSettings.for_task(task, agent, output_dir, config, **settings), callbacks=callbacks)

    @classmethod
    def from_settings(cls, settings: RunSettings, env=None, callbacks: Sequence[TrainerCallback] = ()) -> Trainer:
        """A trainer for ``settings`` (the CLI's, or a ``run.json``'s), recorded as given; with ``settings.resume``,
        :meth:`train` continues from the latest checkpoint of ``settings.output_dir``. ``env``: default, one built
        from the settings (on this process's GPU when data-parallel), closed by :meth:`close`; an env given must
        have been made with the same arguments (``ValueError`` listing those that differ; the device may)."""
        started = time.perf_counter()
        if settings.resume:  # before building anything: run.json against the checkpoint (train() checks it again)
            with warnings.catch_warnings():  # train() warns about skipped checkpoints
                warnings.simplefilter("ignore", CheckpointWarning)
                check_resume_settings(settings, resume_point(settings.output_dir, settings.resume_from))
        owned = None
        settings.validate()
        callbacks = checked_callbacks(callbacks)
        if env is not None:
            check_vector_env(env)
        if env is not None and env.unwrapped.spec is not None:
            keys = [key for key in EnvConfig.fields() if key != "device"]
            check_compatible(settings.env, EnvConfig.of(env), keys=keys)
        if env is None:
            device = current().device(settings.env.device)  # cuda -> this process's GPU
            env = owned = settings.env.make(settings.config.batch_size, device=device)
        try:
            check_held_out_prompts(env, settings)
            agent = make_agent(settings.agent, env, settings.config)
        except BaseException:
            if owned is not None:
                owned.close()
            raise
        trainer = cls.__new__(cls)
        trainer._setup(env, agent, True, settings, callbacks)
        trainer._owned_env = owned
        trainer._started = started  # the run's wall time includes loading the model
        return trainer

    # ------------------------------------------------------------------------------ resume
    @classmethod
    def resume(
        cls,
        run_dir: str | Path,
        env=None,
        callbacks: Sequence[TrainerCallback] = (),
        checkpoint: str | Path | None = None,
    ) -> Trainer:
        """A trainer that continues the run in ``run_dir`` with the run's settings (``run.json``), from its newest
        intact checkpoint (newer corrupt ones are skipped with a :class:`~agents.checkpoint.CheckpointWarning`) or
        from ``checkpoint`` (a checkpoint folder of the run, or its name); ``train(epochs=...)`` extends it (fewer
        epochs than the checkpoint's are refused). ``env``: default, one rebuilt from the settings."""
        resume_from = None if checkpoint is None else str(checkpoint)
        settings = dataclasses.replace(read_settings(run_dir), resume=True, resume_from=resume_from)
        return cls.from_settings(settings, env=env, callbacks=callbacks)

    def _restore(self, eval_prompts: list[str], point: ResumePoint) -> _Progress:
        """Load the checkpoint ``point``: the agent (this process's state), the global RNGs, the counters and the
        base model's evaluation; set the run's newer checkpoints aside and trim ``metrics.jsonl`` to the
        checkpoint (main process)."""
        output_dir = Path(self.settings.output_dir)
        checkpoint = load_checkpoint(point.path)
        self.agent.load_state_dict(process_agent_state(checkpoint, self.distributed))
        restore_rng_state(checkpoint["rng"])
        state = RunState(**checkpoint["run"])
        if not self.distributed.is_main_process:
            return _Progress(state, base=None, history=[], latest=None)
        saved = checkpoint["base"]
        if saved["images"].shape[0] != len(eval_prompts):
            raise ValueError(
                f"the checkpoint's base evaluation has {saved['images'].shape[0]} samples, not {len(eval_prompts)}"
            )
        base = Evaluation(Scores(**saved["scores"]), saved["images"], eval_prompts)
        for folder in point.newer:  # out of the way of the new saves (which would replace or prune them); kept
            moved = set_aside(folder, "corrupt" if folder in point.corrupt else "set-aside")
            logger.info(
                "%s: %s, newer than the checkpoint resumed from, moved to %s", self.settings.name, folder.name, moved
            )
        history = restore_metrics(output_dir, point)
        logger.info(
            "%s: resuming after epoch %d (%d samples) from %s",
            self.settings.name,
            state.epoch,
            state.samples_seen,
            point.path.name,
        )
        progress = _Progress(state, base, history, latest=base)
        saved = checkpoint.get("generalisation_base")  # absent in checkpoints of runs without the second set
        if saved is not None:
            prompts = self.generalisation_prompts()
            progress.generalisation_base = Evaluation(Scores(**saved["scores"]), saved["images"], prompts)
        return progress

    # ------------------------------------------------------------------------------ training
    @property
    def world(self):
        """The env's world (``env.unwrapped.diffusion.world``): default reward, prompt sets, eval prompts."""
        return self.env.unwrapped.diffusion.world

    def held_out_prompts(self) -> tuple[str | list[str], list[str]]:
        """The held-out prompt set (as named) and its ``eval_samples`` prompts, spread over it."""
        return held_out_prompts(self.settings, self.world)

    def generalisation_prompts(self) -> list[str]:
        """The ``eval_samples`` prompts spread over ``settings.generalisation_prompts`` (empty without one)."""
        return generalisation_prompts(self.settings)

    def _begin(self, eval_prompts: list[str], point: ResumePoint | None) -> tuple[_Progress, bool]:
        """This call's starting point: in memory (a second ``train``), the checkpoint ``point`` (resume), or a new
        run (the base model evaluated). Returns it and whether metrics.jsonl and TensorBoard continue an earlier
        session."""
        if self._progress is not None:
            return self._progress, True
        if point is not None:
            return self._restore(eval_prompts, point), True
        if not self.distributed.is_main_process:
            return _Progress(RunState(), base=None, history=[], latest=None), False
        base = self._evaluate_base(eval_prompts)
        logger.info("%s: base model on %d held-out samples: %s", self.settings.name, len(eval_prompts), base.scores)
        progress = _Progress(RunState(), base, [], latest=base)
        generalisation_prompts = self.generalisation_prompts()
        if generalisation_prompts:
            progress.generalisation_base = self._evaluate_base(generalisation_prompts)
            logger.info(
                "%s: base model on %d generalisation samples (%s): %s",
                self.settings.name,
                len(generalisation_prompts),
                self.settings.generalisation_prompts,
                progress.generalisation_base.scores,
            )
        return progress, False

    def _evaluate_base(self, eval_prompts: list[str]) -> Evaluation:
        """The base model's evaluation, shared by the runs of this process whose evaluations are the same
        (:func:`~agents.training.evaluation.base_evaluation_key`)."""
        settings = self.settings
        return evaluate_base_model(self.agent, eval_prompts, settings.env, kl_to_base=settings.eval_kl)

    def train(self, epochs: int | None = None) -> RunResult | None:
        """Train up to ``epochs`` epochs in all (default: ``settings.epochs``; a resumed or second call continues
        the count) and write the run folder. Returns the result (None on the other processes when data-parallel).

        A resumed or second call: fewer epochs than already trained is a ``ValueError`` (nothing written); as many
        returns ``results.json``'s result if it records them (nothing written), else evaluates the checkpoint and
        writes the run folder (the session that trained them ended before it did).

        The run folder is locked while ``train`` runs (:mod:`agents.training.run_lock`): another process writing it is a
        :class:`~agents.training.run_lock.RunFolderInUse`. A new run (neither resumed nor a second call) refuses a
        folder that is not empty (``ValueError``: it holds a run to resume, or other files), before anything is written.
        """
        settings = self.settings if epochs is None else dataclasses.replace(self.settings, epochs=epochs)
        settings.validate()  # epochs (ValueError/TypeError naming it), and any setting assigned since; nothing written
        lock = self._lock_output_dir()
        try:
            return self._train(settings)
        finally:
            if lock is not None:
                lock.release()

    def _lock_output_dir(self) -> RunFolderLock | None:
        """Lock the run folder (main process), first refusing a new run in a folder that is not empty
        (:func:`~agents.training.run_folder.new_run_folder_problem`); every process raises the main process's
        refusal."""
        output_dir = Path(self.settings.output_dir)
        new_run = self._progress is None and not self.settings.resume
        lock, refusal = None, None
        if self.distributed.is_main_process:
            try:
                problem = new_run_folder_problem(output_dir) if new_run else None
                if problem is not None:
                    raise ValueError(f"refusing to start a new run: {problem}")
                output_dir.mkdir(parents=True, exist_ok=True)
                lock = RunFolderLock(output_dir).acquire()
                problem = new_run_folder_problem(output_dir) if new_run else None  # a run that started meanwhile
                if problem is not None:
                    raise ValueError(f"refusing to start a new run: {problem}")
            except (ValueError, RunFolderInUse) as error:
                if lock is not None:
                    lock.release()
                refusal = error
        refusal = self.distributed.broadcast_object(None if refusal is None else (type(refusal).__name__, str(refusal)))
        if refusal is not None:
            kind, message = refusal
            raise (RunFolderInUse if kind == RunFolderInUse.__name__ else ValueError)(message)
        return lock

    def _train(self, settings: RunSettings) -> RunResult | None:
        """:meth:`train` to ``settings`` (validated), with the run folder locked: the epoch loop of the algorithm
        (the agent collects and updates in ``train_epoch``), evaluations and checkpoints at their epochs."""
        started = self._started if self._started is not None else time.perf_counter()
        self._started = None
        point = self._resume_point(settings)
        recorded = self._recorded_result(settings, point)
        if recorded is not None:  # results.json already records these epochs: nothing to train
            return recorded if self.distributed.is_main_process else None
        self.settings = settings
        progress, log = self._begin_session(point)
        state, stop_reason, interrupted = progress.state, None, False
        bar = self._epoch_bar(state.epoch)
        try:
            with logging_redirect_tqdm():  # messages through tqdm.write, under the bar
                for epoch in bar:
                    metrics = self._train_epoch(state)  # every process: collect a batch, update the policy
                    stop_reason = self._end_epoch_everywhere(log, progress, metrics, started, bar)
                    if settings.checkpoint_due(epoch) or stop_reason is not None:
                        self._checkpoint(progress)
                    if stop_reason is not None:
                        logger.info("%s: stopped after epoch %d: %s", settings.name, epoch, stop_reason)
                        break
        except KeyboardInterrupt:
            interrupted = True
            logger.info("%s: interrupted after epoch %d; evaluating what was trained", settings.name, state.epoch)
        finally:
            bar.close()
        self._progress = progress
        if not self.distributed.is_main_process:
            state.elapsed_seconds += time.perf_counter() - started  # a second train() counts on from here
            return None
        return self._finish(progress, log, started, interrupted, stop_reason)

    # ---------------------------------------------------------------- the steps of _train
    def _resume_point(self, settings: RunSettings) -> ResumePoint | None:
        """The checkpoint to continue from (a resume's first call), checked against ``settings``; else None."""
        if self._progress is not None or not settings.resume:
            return None
        point = resume_point(settings.output_dir, settings.resume_from)
        check_resume_settings(settings, point)
        return point

    def _recorded_result(self, settings: RunSettings, point: ResumePoint | None) -> RunResult | None:
        """``results.json``'s result when the run already reached ``settings.epochs`` and recorded it (fewer epochs
        than trained: ``ValueError``); None when there is something to train or to write."""
        done = self._progress.state if self._progress is not None else point.state if point is not None else None
        if done is None or settings.epochs > done.epoch:
            return None
        check_epochs(settings.output_dir, settings.epochs, done.epoch)
        recorded = recorded_result(settings.output_dir, done)
        if recorded is not None:
            logger.info("%s: already at %d epochs (results.json): nothing to train", settings.name, done.epoch)
        return recorded

    def _begin_session(self, point: ResumePoint | None) -> tuple[_Progress, RunLog | None]:
        """Write ``run.json`` (the new target, no pending resume), find the starting point (:meth:`_begin`), open
        the log (continuing an earlier session's), log the base model of a new run, call ``on_train_begin``."""
        settings, main = self.settings, self.distributed.is_main_process
        output_dir = Path(settings.output_dir)
        if main:
            output_dir.mkdir(parents=True, exist_ok=True)
            write_settings(dataclasses.replace(settings, resume=False, resume_from=None), output_dir)
        progress, continuing = self._begin(self.held_out_prompts()[1], point)
        if not main:
            return progress, None
        log = RunLog(output_dir, continue_after=progress.state.samples_seen if continuing else None)
        if not continuing:
            self._log_evaluation(log, progress.base, progress.state, final=True)
        for callback in self.callbacks:
            callback.on_train_begin(self)
        return progress, log

    def _epoch_bar(self, epochs_done: int) -> tqdm:
        """The progress bar over the epochs left (main process only)."""
        return tqdm(
            range(epochs_done + 1, self.settings.epochs + 1),
            desc=self.settings.name,
            unit="epoch",
            initial=epochs_done,
            total=self.settings.epochs,
            dynamic_ncols=True,
            disable=not self.distributed.is_main_process,
        )

    def _train_epoch(self, state: RunState) -> dict[str, float]:
        """One epoch of the agent (``agent.train_epoch``); its scalar metrics, averaged over the processes, and the
        sample counts advanced (``samples_per_epoch`` fresh samples over all processes)."""
        config, distributed = self.agent.config, self.distributed
        metrics = distributed.mean_metrics(scalar_metrics(self.agent.train_epoch().metrics))
        samples_per_epoch = config.batch_size * config.batches_per_epoch * distributed.num_processes  # global
        state.epoch += 1
        state.samples_seen += samples_per_epoch
        state.train_samples_seen += int(metrics.get("num_train_samples", samples_per_epoch))
        return metrics

    def _end_epoch_everywhere(
        self, log: RunLog | None, progress: _Progress, metrics: dict[str, float], started: float, bar: tqdm
    ) -> str | None:
        """The main process ends the epoch (:meth:`_end_epoch`); every process gets its stop reason."""
        stop_reason = None
        if self.distributed.is_main_process:
            stop_reason = self._end_epoch(log, progress, metrics, started)
            bar.set_postfix(progress_fields(metrics), refresh=False)
        return self.distributed.broadcast_object(stop_reason)  # every process stops together

    def _checkpoint(self, progress: _Progress) -> None:
        """Save the run's checkpoint now (its elapsed time: the main process's last record)."""
        elapsed = progress.history[-1]["elapsed_seconds"] if self.distributed.is_main_process else 0.0
        state = dataclasses.replace(progress.state, elapsed_seconds=elapsed)
        self._save_checkpoint(state, progress.base, progress.generalisation_base, progress.history)

    def _finish(
        self, progress: _Progress, log: RunLog, started: float, interrupted: bool, stop_reason: str | None
    ) -> RunResult:
        """The main process's end of :meth:`train`: the final and generalisation evaluations, the run folder,
        ``on_train_end``; returns the result."""
        settings, state, agent = self.settings, progress.state, self.agent
        eval_set, eval_prompts = self.held_out_prompts()
        if progress.latest_epoch != state.epoch:
            final = evaluate(agent, eval_prompts, progress.base, kl_to_base=settings.eval_kl)
            progress.latest, progress.latest_epoch = final, state.epoch
            if not evaluated(progress.history, state.epoch):  # else a resume with nothing to train: logged already
                self._log_evaluation(log, progress.latest, state, final=True)
        generalisation = self._evaluate_generalisation(log, progress)
        log.close()
        wall_seconds = state.elapsed_seconds + time.perf_counter() - started
        state.elapsed_seconds = wall_seconds  # a second train() counts on from here
        result = RunResult(
            label=settings.name,
            agent=settings.agent,
            model=settings.env.model,
            reward=settings.env.reward or str(self.world.default_reward),
            prompts=prompt_label(settings.env.prompts or str(self.world.default_prompts)),
            eval_prompts=prompt_label(eval_set),
            num_eval_samples=len(eval_prompts),
            seed=agent.config.seed,
            epochs=settings.epochs,
            epochs_completed=state.epoch,
            interrupted=interrupted,
            samples_seen=state.samples_seen,
            train_samples_seen=state.train_samples_seen,
            wall_seconds=wall_seconds,
            base=progress.base.scores,
            final=progress.latest.scores,
            config=asdict(agent.config),  # settings.config with the agent's defaults filled in
            command=settings.command,
            num_inference_steps=self.env.unwrapped.diffusion.num_inference_steps,
            device=settings.env.device,
            history=progress.history,
            stop_reason=stop_reason,
            generalisation=generalisation,
        )
        write_run_folder(Path(settings.output_dir), result, progress.base, progress.latest)
        for callback in self.callbacks:
            callback.on_train_end(self, result)
        return result

    def _end_epoch(self, log: RunLog, progress: _Progress, metrics: dict[str, float], started: float) -> str | None:
        """The main process's end of an epoch: evaluate if due, call the callbacks, log; returns a stop reason."""
        settings, state = self.settings, progress.state
        epoch = state.epoch
        record = {
            "epoch": epoch,
            "global_step": state.samples_seen,
            "train_samples": state.train_samples_seen,
            "elapsed_seconds": state.elapsed_seconds + time.perf_counter() - started,
        }
        evaluation, stop_reason = None, None
        if epoch % settings.eval_every_epochs() == 0 or epoch == settings.epochs:
            evaluation = evaluate(self.agent, progress.base.prompts, progress.base, kl_to_base=settings.eval_kl)
            progress.latest, progress.latest_epoch = evaluation, epoch
            scores, stop_reason = self._log_evaluation(log, evaluation, state, final=False)
            record_evaluation = {f"eval_{key}": value for key, value in scores.items()}
            logger.info("%s: epoch %d held-out: %s", settings.name, epoch, evaluation.scores)
        else:
            record_evaluation = {}
        event = EpochEvent(epoch, state.samples_seen, metrics, evaluation=evaluation)
        for callback in self.callbacks:
            callback.on_epoch_end(self, event)
        record.update(metrics)
        record.update(record_evaluation)
        progress.history.append(record)
        log.log_epoch(record, metrics, state.samples_seen)
        return event.stop_reason or stop_reason

    def _evaluate_generalisation(self, log: RunLog, progress: _Progress) -> Generalisation | None:
        """The trained model on the generalisation prompts (same fixed seeds as the base model's), logged as
        ``generalisation/`` scalars; None without a generalisation set."""
        base = progress.generalisation_base
        if base is None:
            return None
        final = evaluate(self.agent, base.prompts, base, kl_to_base=self.settings.eval_kl)
        logger.info(
            "%s: generalisation (%s): %s", self.settings.name, self.settings.generalisation_prompts, final.scores
        )
        log.log_scalars("generalisation", final.scores.fields(), progress.state.samples_seen)
        return Generalisation(self.settings.generalisation_prompts, len(base.prompts), base.scores, final.scores)

    def _log_evaluation(
        self, log: RunLog, evaluation: Evaluation, state: RunState, final: bool
    ) -> tuple[dict[str, float], str | None]:
        """Call the callbacks on an evaluation, then log it; returns its scores (with the callbacks' additions) and
        the stop a callback asked for (``final``: the base model's or the last evaluation, nothing left to stop)."""
        event = EvaluationEvent(state.epoch, state.samples_seen, evaluation.scores.fields(), evaluation=evaluation)
        for callback in self.callbacks:
            callback.on_evaluation(self, event)
        log.log_evaluation(evaluation, event.metrics, state.samples_seen)
        return event.metrics, None if final else event.stop_reason

    # ------------------------------------------------------------------------------ checkpoints
    def _save_checkpoint(
        self,
        state: RunState,
        base: Evaluation | None,
        generalisation_base: Evaluation | None = None,
        history: list[dict[str, float]] | None = None,
    ) -> Path | None:
        """A checkpoint of the agent, the run's counters, the global RNGs and the base evaluations, the settings a
        resume must share (:func:`resume_checked_settings`) and the history so far (``metrics.jsonl``'s lines, to
        rebuild it on resume); plus the LoRA export, written into the checkpoint before it appears.

        Data-parallel, every process's agent state is gathered (``processes``: ranks 1..N-1; their RNGs and HERD
        buffers differ), so a resume continues each process where it stopped; the main process saves.
        """
        agent_state = self.agent.state_dict()
        processes = self.distributed.gather_object(to_cpu(agent_state))[1:] if self.distributed.enabled else []
        if not self.distributed.is_main_process:
            return None
        checkpoint = {
            "agent": agent_state,
            "processes": processes,
            "run": asdict(state),
            "base": {"scores": asdict(base.scores), "images": base.images},
            "generalisation_base": None
            if generalisation_base is None
            else {"scores": asdict(generalisation_base.scores), "images": generalisation_base.images},
            "rng": capture_rng_state(),
            "settings": resume_checked_settings(self.settings),
            "history": json_safe(history or []),  # as metrics.jsonl holds it (NaN as null)
        }
        policy = self.agent.policy
        export_lora = None
        if policy.adapter_name is not None:  # LoRA: loadable with pipeline.load_lora_weights(path / "lora")

            def export_lora(folder: Path) -> None:  # into the checkpoint's temp folder, before it is renamed into place
                export_lora_diffusers(policy.unet, folder / "lora", adapter_name=policy.adapter_name)

        return save_checkpoint(
            self.settings.output_dir,
            f"epoch-{state.epoch:04d}",
            checkpoint,
            keep_last=self.settings.keep_checkpoints,
            write_extra=export_lora,
        )

    # ------------------------------------------------------------------------------ cleanup
    def close(self) -> None:
        """Close what the trainer built: the agent it made from a name (freeing the shared UNet of its adapter, so
        that the next run in this process starts from the base model) and the env it made from settings."""
        if self._owns_agent:
            self.agent.close()
        if self._owned_env is not None:
            self._owned_env.close()
            self._owned_env = None

    def __enter__(self) -> Trainer:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


CALLBACK_HOOKS = ("on_train_begin", "on_evaluation", "on_epoch_end", "on_train_end")


def check_vector_env(env) -> None:
    """``TypeError`` unless ``env`` is a Gymnasium vector env (possibly wrapped), saying how to make one."""
    import gymnasium as gym

    if isinstance(env, gym.vector.VectorEnv):
        return
    make = 'gym.make_vec("DiffusionT2I-v1", num_envs=..., vectorization_mode="vector_entry_point")'
    if isinstance(env, gym.Env):
        got = f"a single env ({type(env).__name__}, e.g. from gym.make)"
    elif isinstance(env, str):
        got = f"the str {env!r}: make the env first"
    else:
        got = f"{type(env).__name__} {env!r}"
    raise TypeError(f"env must be a vector env from {make} (or diffusion_gym.EnvConfig(...).make(num_envs)), got {got}")


def agent_config(config: AgentConfig | Mapping[str, object] | None, num_envs: int) -> AgentConfig:
    """The config of :class:`Trainer`'s ``config`` argument: as given, ``AgentConfig(**config)`` for a mapping
    (unknown keys named), default ``AgentConfig(batch_size=num_envs)`` (also a mapping's default batch size)."""
    if config is None:
        return AgentConfig(batch_size=num_envs)
    if isinstance(config, AgentConfig):
        return config
    if isinstance(config, Mapping):
        return AgentConfig.from_mapping({"batch_size": num_envs, **config})
    raise TypeError(f"config must be an agents.AgentConfig, a dict of its fields or None, got {type(config).__name__}")


def checked_callbacks(callbacks: Sequence[TrainerCallback]) -> list[TrainerCallback]:
    """``callbacks`` as a list; ``TypeError`` for a single callback or one without :class:`TrainerCallback`'s hooks."""
    if not isinstance(callbacks, Sequence) or isinstance(callbacks, str):
        raise TypeError(f"callbacks must be a list of TrainerCallback, got {type(callbacks).__name__}")
    for index, callback in enumerate(callbacks):
        missing = [hook for hook in CALLBACK_HOOKS if not callable(getattr(callback, hook, None))]
        if missing:
            raise TypeError(
                f"callbacks[{index}] ({type(callback).__name__}) has no {', '.join(missing)}: subclass "
                "agents.TrainerCallback and override the hooks you need"
            )
    return list(callbacks)


def held_out_prompts(settings: RunSettings, world) -> tuple[str | list[str], list[str]]:
    """The held-out prompt set (as named) and its ``eval_samples`` prompts, spread over it."""
    eval_set = eval_prompt_set(settings.eval_prompts, settings.env.prompts, world)
    return eval_set, spread(resolve_prompts(eval_set), settings.eval_samples)


def generalisation_prompts(settings: RunSettings) -> list[str]:
    """The ``eval_samples`` prompts spread over ``settings.generalisation_prompts`` (empty without one)."""
    if settings.generalisation_prompts is None:
        return []
    return spread(resolve_prompts(settings.generalisation_prompts), settings.eval_samples)


def check_held_out_prompts(env, settings: RunSettings) -> None:
    """``ValueError`` naming the setting if a held-out or generalisation prompt is one the env's ``reset`` would
    refuse (e.g. one its reward cannot score, or too long): when the trainer is made, not after the base
    evaluation has written the run folder. Encodes each distinct prompt once (the env's own check)."""
    diffusion = env.unwrapped.diffusion
    for argument, prompts in (
        ("eval_prompts", held_out_prompts(settings, diffusion.world)[1]),
        ("generalisation_prompts", generalisation_prompts(settings)),
    ):
        try:
            if prompts:
                diffusion.encode_prompts(sorted(set(prompts)))
        except (TypeError, ValueError) as error:
            raise ValueError(f"{argument}: {error}") from error


def check_settings(settings: RunSettings) -> None:
    """What :meth:`Trainer.from_settings` checks before it builds an agent, without keeping anything: the settings,
    the env (built with one episode: the model, the reward, the prompts, the steps) and the held-out prompts;
    ``ValueError`` naming the problem. For a caller that runs several trainers (a comparison) and wants bad settings
    refused before the first one writes its folder."""
    settings.validate()
    env = settings.env.make(1, device=current().device(settings.env.device))
    try:
        check_held_out_prompts(env, settings)
    finally:
        env.close()


def default_folder(name: str, agent: Agent) -> Path:
    """The main process's :func:`~agents.training.run_folder.default_output_dir`, on every process."""
    return agent.distributed.broadcast_object(default_output_dir(name))


# ============================================================================================== resume
@dataclass
class ResumePoint:
    """The checkpoint a resume continues from, the run's counters in it, and the run's newer checkpoints (that a
    resume sets aside): the corrupt ones skipped (with why), or every newer one when a checkpoint was picked."""

    path: Path
    state: RunState
    newer: list[Path]
    corrupt: dict[Path, str]
    settings: dict | None = None  # resume_checked_settings() at the save (None: a checkpoint of an older version)
    history: list[dict] | None = None  # metrics.jsonl's records up to the save (None: an older version's)


def resume_point(run_dir: str | Path, checkpoint: str | Path | None = None) -> ResumePoint:
    """Where a resume of ``run_dir`` continues: ``checkpoint`` (a checkpoint folder of the run, or its name in
    ``RUN_DIR/checkpoints``), else the newest intact checkpoint, with a :class:`~agents.checkpoint.CheckpointWarning`
    per newer corrupt one. Nothing is read but the manifests (and the tensor files' SHA-256); nothing is written.

    ``FileNotFoundError``: no checkpoint; ``ValueError``: none intact (each listed with why), ``checkpoint`` not
    one of the run's or not intact (the file and the problem).
    """
    run_dir = Path(run_dir)
    found = list_checkpoints(run_dir)
    if checkpoint is None:
        path, manifest, refused = newest_intact_checkpoint(run_dir)
        for folder, why in refused:
            message = f"skipping the corrupt checkpoint {folder.name} ({why}); resuming from {path.name}"
            warnings.warn(message, CheckpointWarning, stacklevel=2)
    else:
        path = Path(checkpoint)
        if not path.exists() and (checkpoints_dir(run_dir) / path).is_dir():
            path = checkpoints_dir(run_dir) / path
        if path.resolve() not in [folder.resolve() for folder in found]:
            names = ", ".join(folder.name for folder in found) or "none"
            raise ValueError(f"{checkpoint} is not a checkpoint of the run {run_dir} (its checkpoints: {names})")
        path, refused = found[[folder.resolve() for folder in found].index(path.resolve())], []
        manifest = verify_checkpoint(path)
    run = manifest["tree"].get("run") if isinstance(manifest["tree"], dict) else None
    if not isinstance(run, dict):
        raise ValueError(f"{path} is not a training checkpoint of agents.Trainer (no run counters)")
    newer = found[found.index(path) + 1 :]
    tree = manifest["tree"]
    return ResumePoint(path, RunState(**run), newer, dict(refused), tree.get("settings"), tree.get("history"))


# the settings a resume must share with its checkpoint (besides the agent's config): the agent, the env's arguments
# (not the device: a run may move to another) and what the base evaluations saved in it were made on
RESUME_CHECKED_FIELDS = (
    "agent",
    *(name for name in EnvConfig.fields() if name != "device"),
    "eval_prompts",
    "eval_samples",
    "generalisation_prompts",
)


def resume_checked_settings(settings: RunSettings) -> dict:
    """:data:`RESUME_CHECKED_FIELDS` and the agent's ``config`` of ``settings``, as JSON values (what ``run.json``
    records; a checkpoint records them too, so that a resume can check ``run.json`` against it)."""
    values: dict = {
        name: getattr(settings.env if name in EnvConfig.fields() else settings, name) for name in RESUME_CHECKED_FIELDS
    }
    values["config"] = asdict(settings.config)
    return json.loads(json.dumps(values))  # tuples as lists, as in run.json


def check_resume_settings(settings: RunSettings, point: ResumePoint) -> None:
    """``ValueError`` naming every field whose value in ``settings`` (``run.json``) differs from the one the
    checkpoint ``point`` was saved with (e.g. ``run.json`` edited since): the env, the agent's config and the
    held-out sets must be the checkpoint's. A checkpoint of an older version records none: nothing to check."""
    saved = point.settings
    if saved is None:
        return
    current = resume_checked_settings(settings)
    # an env argument a checkpoint does not record (max_prompt_bytes, image_cache_size before 2026-12-08) had its
    # default: a run could not record an env made otherwise
    unrecorded = json.loads(json.dumps(dataclasses.asdict(EnvConfig())))
    pairs = [
        (name, current[name], saved.get(name, unrecorded.get(name, _UNRECORDED))) for name in RESUME_CHECKED_FIELDS
    ]
    saved_config = saved.get("config") or {}
    pairs += [
        (f"config.{key}", value, saved_config[key]) for key, value in current["config"].items() if key in saved_config
    ]
    differ = [
        f"{name}: run.json {value!r}, checkpoint {recorded!r}" for name, value, recorded in pairs if value != recorded
    ]
    if differ:
        run_file = Path(settings.output_dir) / RUN_SETTINGS_FILE
        raise ValueError(
            f"refusing to resume: {run_file} does not match the checkpoint {point.path.name} it resumes from (changed "
            f"after the checkpoint was saved): {'; '.join(differ)}. Put these values back in {RUN_SETTINGS_FILE} to "
            "resume the run, or start a new run with the new settings"
        )


_UNRECORDED = "<not recorded>"


def restore_metrics(output_dir: str | Path, point: ResumePoint) -> list[dict]:
    """``metrics.jsonl`` as at the checkpoint ``point``, and its records.

    Intact (every line JSON but a last one a kill tore, and its records up to the checkpoint the checkpoint's own
    copy of the history): trimmed to the checkpoint's step. Missing, damaged or not the checkpoint's: rebuilt from
    the checkpoint's copy, with a :class:`~agents.training.run_folder.RunFolderWarning` (a damaged file is kept beside,
    as ``metrics.jsonl.damaged-<n>``). ``ValueError`` when it would have to be rebuilt from a checkpoint of an older
    version, which holds no copy (nothing is written then).
    """
    path = Path(output_dir) / METRICS_FILE
    step, saved = point.state.samples_seen, point.history
    records, problem = read_metrics_until(path, step)
    if problem is None and saved is not None and records != saved:
        problem = f"does not hold the {len(saved)} epochs the checkpoint {point.path.name} recorded"
    if problem is None:
        trim_jsonl(path, step)
        return records
    if saved is None:
        raise ValueError(
            f"refusing to resume: {path} {problem}, and the checkpoint {point.path.name} (saved by an older version) "
            "holds no copy of the history to rebuild it from: put the file back to resume"
        )
    kept = set_aside_file(path, "damaged") if path.exists() else None
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text("".join(json.dumps(record) + "\n" for record in saved))
    os.replace(tmp, path)
    beside = f"; the file found is kept as {kept.name}" if kept is not None else ""
    message = f"{path} {problem}: rebuilt from the checkpoint {point.path.name} ({len(saved)} epochs){beside}"
    warnings.warn(message, RunFolderWarning, stacklevel=3)
    return saved


def read_metrics_until(path: Path, step: int) -> tuple[list[dict], str | None]:
    """The records of a ``metrics.jsonl`` up to ``global_step`` ``step``, and what is wrong with the file (None:
    nothing; a torn last line is what a kill leaves, not a problem)."""
    if not path.is_file():
        return [], "is missing"
    lines = path.read_text(errors="replace").splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                continue  # the line a kill tore
            return records, f"is damaged (line {number} is not JSON)"
        if not isinstance(record, dict) or not isinstance(record.get("global_step"), int):
            return records, f"is damaged (line {number} is not an epoch's record)"
        if record["global_step"] <= step:
            records.append(record)
    return records, None


def set_aside_file(path: Path, label: str) -> Path:
    """Rename ``path`` to ``<name>.<label>-<n>`` beside it (the first free ``n``); returns the new path."""
    n = 1
    while (target := path.with_name(f"{path.name}.{label}-{n}")).exists():
        n += 1
    os.replace(path, target)
    return target


def check_epochs(run_dir: str | Path, epochs: int, done: int) -> None:
    """``ValueError`` naming both numbers if ``epochs`` is fewer than the ``done`` epochs a run has trained."""
    if epochs < done:
        raise ValueError(
            f"the run in {run_dir} has trained {done} epochs; refusing to set its epochs to {epochs}, fewer than "
            f"that (its model and metrics are from epoch {done}): give {done} or more"
        )


def recorded_result(run_dir: str | Path, state: RunState) -> RunResult | None:
    """``results.json``'s result if it records the run at ``state`` (its epochs and samples), else None."""
    try:
        result = read_run_result(run_dir)
    except (OSError, ValueError, TypeError, KeyError):  # missing, torn or from an older layout
        return None
    same = (result.epochs_completed, result.samples_seen) == (state.epoch, state.samples_seen)
    return result if same else None


def evaluated(history: list[dict[str, float]], epoch: int) -> bool:
    """Whether the ``metrics.jsonl`` record of ``epoch`` has held-out scores (its evaluation is logged)."""
    return any(record.get("epoch") == epoch and any(k.startswith("eval_") for k in record) for record in history)


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


def prompt_label(prompts: str | list[str]) -> str:
    """A prompt set's name or prompt as given, or several prompts joined with `` | `` (results and titles)."""
    return prompts if isinstance(prompts, str) else " | ".join(prompts)


def write_run_folder(output_dir: Path, result: RunResult, base: Evaluation, final: Evaluation) -> None:
    """``results.json``, ``reward_curve.png`` and ``before_after.png`` (metrics.jsonl is written as training goes)."""
    write_results(result, output_dir)
    title = f"{result.label}, seed {result.seed}: {setting_summary(result.model, result.reward, result.prompts)}"
    curves = history_curves(result.history, base=dataclasses.asdict(result.base))
    plot_reward_curves(curves, output_dir / REWARD_CURVE_FILE, title=title)
    rows = grid_rows(len(base.prompts))
    prompts = [base.prompts[row] for row in rows]
    plot_before_after(base.images[rows], final.images[rows], prompts, output_dir / BEFORE_AFTER_FILE)


# ============================================================================================== formatting
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


__all__ = [
    "EpochEvent",
    "EvaluationEvent",
    "ResumePoint",
    "RunState",
    "Trainer",
    "TrainerCallback",
    "TrainerEvent",
    "check_epochs",
    "check_held_out_prompts",
    "check_settings",
    "check_vector_env",
    "process_agent_state",
    "resume_point",
    "scalar_metrics",
    "write_run_folder",
]
