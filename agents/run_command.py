"""``diffusion-gym run``: fine-tune the env's diffusion model with an RL agent and write a run folder; or compare
agents over seeds (``diffusion-gym compare`` = ``run --compare``).

    diffusion-gym run --agent ddpo                       # the default task (below) = make run
    diffusion-gym run --agent herd                       # the same task, HERD over LOOP
    diffusion-gym run --agent loop --task multi          # another registered task (diffusion-gym bench --help)
    diffusion-gym run --agent ddpo --prompts shapes-long --epochs 40 --output-dir runs/ddpo-long
    diffusion-gym compare ddpo,herd,herd-b2 --seeds 0,1,2 --epochs 30
    diffusion-gym run --resume runs/ddpo-long --epochs 60  # continue a run from its newest intact checkpoint
    accelerate launch --multi_gpu --num_processes 4 benchmarks/run.py --agent ddpo --device cuda  # data-parallel

``python benchmarks/run.py`` is the same command (a thin script over :func:`main`).

Data-parallel, ``--batch-size`` is per process: an epoch samples ``batch_size x batches_per_epoch x N``
trajectories; advantages are computed on the global batch and gradients averaged (``agents/distributed.py``).

A run folder holds TensorBoard events (``tensorboard --logdir runs``), ``metrics.jsonl``, ``reward_curve.png``,
``before_after.png``, ``results.json``, ``run.json`` and ``checkpoints/`` (see ``agents/training/run_folder.py``); a
comparison folder holds one run folder per agent and seed plus ``comparison.md``, ``comparison.png`` and
``comparison.json`` (see ``agents/experiments/comparison.py``). This command is a thin layer over the library:
``agents.Trainer`` trains and writes the folder, the same as ``Trainer(env, agent, config, output_dir).train()``.

The default task, on the embedded Shapes world when neither ``--prompts`` nor ``--preset`` is given, is the
registered task ``long`` (:mod:`diffusion_gym.tasks`; ``--task`` picks another), the HERD paper's protocol: train
on the long multi-sentence prompt (``shapes-long``, 5 sentences) for 40 epochs of 2 x 16 samples, evaluate gold on
64 fresh-noise samples of that prompt every 5 epochs, with 10 DDIM steps; prompts never trained on
(``shapes-heldout``) are evaluated before and after training as a second, generalisation figure. Each of the
task's settings applies where its flag is not given; ``RunSettings.for_task("long", ...)`` and
``Trainer.for_task("long", ...)`` build the same run in Python.

The flags are generated from the fields of ``agents.config.AgentConfig``, ``RunSettings`` and
``diffusion_gym.EnvConfig`` (``agents.cli``), so the CLI never drifts from them.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import shlex
import sys
import warnings
from pathlib import Path

import torch

from agents import AgentConfig, RunSettings, Trainer, agent_names
from agents.checkpoint import CheckpointWarning
from agents.cli import (
    add_agent_config_flags,
    add_setting_flags,
    agent_config_fields,
    config_from_args,
    device_name,
    folder_path,
    model_name,
    run_folder,
    seed_list,
    setting_flags_of,
    settings_from_args,
    task_name,
    variant_list,
)
from agents.distributed import Distributed
from agents.experiments.comparison import VARIANTS, Variant, resolve_variants, run_comparison
from agents.experiments.presets import apply_preset, preset_names
from agents.training.run_folder import (
    RUN_SETTINGS_FILE,
    default_output_dir,
    new_run_folder_problem,
    read_settings,
    results_table,
    task_run_fields,
)
from agents.training.trainer import check_epochs, check_resume_settings, check_settings, resume_point
from diffusion_gym.tasks import get_task

DEFAULT_MODEL = "shapes"
# The default task on the default world (see the module docstring), a registered task: its settings apply where
# their flags are not given. See docs/experiments/2026-12-05-default-run.md for the measured minutes and gain of
# each agent, and 2026-12-04-compute-options.md for why the UNet is not compiled by default.
DEFAULT_TASK = "long"
DEFAULT_SEEDS = "0,1,2"


# ----------------------------------------------------------------------------------------------- the parser
def build_parser(prog: str = "diffusion-gym run") -> argparse.ArgumentParser:
    variants = "\n".join(f"  {v.name:<18} {v.description}" for v in VARIANTS.values())
    parser = argparse.ArgumentParser(
        prog=prog,
        description=__doc__,
        epilog=f"comparison variants (--compare), besides the plain agent names:\n{variants}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--agent", choices=agent_names(), help="the agent to train (or take it from --preset)")
    mode.add_argument(
        "--compare",
        type=variant_list,
        metavar="V1,V2,...",
        help="comparison mode: run these agents or variants (see below) x --seeds, one run at a time; the table "
        "also gives each one's final scores minus V1's, paired by seed",
    )
    mode.add_argument(
        "--resume",
        type=Path,  # checked as a run folder after the flags that may come with it (resume_settings)
        metavar="RUN_DIR",
        help="continue a run from its newest intact checkpoint (a newer corrupt one is skipped with a warning and "
        "kept), with its own settings (only --epochs, to extend it, --resume-from and --threads may be given too); "
        "--epochs fewer than the checkpoint's is an error",
    )
    parser.add_argument(
        "--resume-from",
        type=Path,
        metavar="CHECKPOINT_DIR",
        help="with --resume: continue from this checkpoint of the run (RUN_DIR/checkpoints/<seq>-epoch-<n>, or its "
        "name) instead; the run's newer checkpoints are moved aside (kept, renamed set-aside-<name>)",
    )

    run = parser.add_argument_group("run")
    run.add_argument(
        "--preset",
        choices=preset_names(),
        default=None,
        help="one of the HERD paper's experiments on Stable Diffusion v1.5 (agents/experiments/presets.py): sets the "
        "agent, model, reward, prompt, epochs, batch, steps and LoRA rank; any flag given explicitly overrides it",
    )
    run.add_argument(
        "--task",
        type=task_name,
        default=None,
        help=f"a registered task (diffusion-gym bench --help lists them): its model, reward, prompts, evaluation and "
        f"budget, each where its flag is not given (default: {DEFAULT_TASK} on the default world when neither "
        "--prompts nor --preset is given)",
    )
    run.add_argument(
        "--output-dir",
        type=folder_path,
        default=None,
        help="the run (or comparison) folder (default: runs/<agent>-<timestamp> or runs/compare-<timestamp>); "
        "a comparison rerun into its folder continues it",
    )
    evaluation = parser.add_argument_group("held-out evaluation (fixed seeds, before, during and after training)")
    add_setting_flags({"run": run, "evaluation": evaluation}, get_task(DEFAULT_TASK))

    comparison = parser.add_argument_group("comparison mode")
    comparison.add_argument(
        "--seeds", type=seed_list, default=None, help=f"seeds of every agent in --compare (default: {DEFAULT_SEEDS})"
    )

    add_agent_config_flags(parser.add_argument_group("agent (agents.config.AgentConfig)"))
    return parser


# ----------------------------------------------------------------------------------------------- settings
@dataclasses.dataclass
class ComparisonSettings:
    variants: list[Variant]
    seeds: list[int]
    output_dir: Path
    run: RunSettings  # the command line's settings, shared by every run


def parse_args(
    argv: list[str] | None = None, parser: argparse.ArgumentParser | None = None
) -> RunSettings | ComparisonSettings:
    """Parse and validate the command line; errors exit with an argparse message naming the problem. Every value
    is checked by the library's own declarations (``AgentConfig``, ``RunSettings``); what needs the model (the
    prompts against the reward and the text encoder, the steps against the scheduler) is checked by :func:`main`
    when it builds the env, before anything is written."""
    parser = parser or build_parser()
    preset = preset_defaults(argv)
    parser.set_defaults(**preset)  # explicit flags still win
    args = parser.parse_args(argv)
    if args.resume is not None:
        return resume_settings(parser, args, argv)
    if args.resume_from is not None:
        parser.error("argument --resume-from: continues a run: give --resume RUN_DIR too")
    if args.agent is None and args.compare is None:
        parser.error("one of the arguments --agent --compare --preset --resume is required")
    if args.seeds is not None and args.compare is None:
        parser.error("--seeds is for comparison mode (--compare); a single run takes --seed")
    if args.task is not None and args.preset is not None:
        parser.error("argument --task: a task and a --preset both set the run; give one")
    task = args.task
    if task is None and (args.model or DEFAULT_MODEL) == DEFAULT_MODEL and args.prompts is None and args.preset is None:
        task = DEFAULT_TASK
    if task is not None:
        apply_task(args, task, given_flags(argv))
    try:
        config = config_from_args(args)
        config.validate()
        if args.agent is not None:  # recorded in run.json as a number (comparison mode: per variant)
            config = config.with_agent_defaults(args.agent)
    except (ValueError, TypeError) as error:
        parser.error(f"invalid agent configuration: {error}")
    if args.output_dir is not None and args.compare is None:  # a comparison continues in its own folder
        problem = new_run_folder_problem(args.output_dir)  # the rule Trainer.train applies too
        if problem is not None:
            parser.error(f"argument --output-dir: {problem}")
    model = args.model or DEFAULT_MODEL
    try:
        model_name(model)
    except argparse.ArgumentTypeError as error:
        parser.error(f"argument --model: {error}")
    default_dir = default_output_dir("compare" if args.compare else args.agent)
    try:
        settings = run_settings(args, model, config, default_dir)
    except (TypeError, ValueError) as error:
        parser.error(f"invalid run settings: {error}")
    if args.compare is not None:
        variants = resolve_variants(args.compare)
        return ComparisonSettings(variants, args.seeds or seed_list(DEFAULT_SEEDS), settings.output_dir, settings)
    return dataclasses.replace(settings, command=command_line(settings))


def apply_task(args: argparse.Namespace, name: str, given: set[str]) -> None:
    """Set each of the task's settings (:func:`agents.training.run_folder.task_run_fields`, and its batch size and
    batches per epoch) on ``args`` where its flag is not in ``given``."""
    task = get_task(name)
    for key, value in {**task_run_fields(task), "batch_size": task.batch_size,
                       "batches_per_epoch": task.batches_per_epoch}.items():  # fmt: skip
        if "--" + key.replace("_", "-") not in given:
            setattr(args, key, value)


def run_settings(args: argparse.Namespace, model: str, config: AgentConfig, default_dir: Path) -> RunSettings:
    """The :class:`RunSettings` of the parsed flags (validated on construction)."""
    args = argparse.Namespace(**{**vars(args), "model": model})
    return settings_from_args(args, agent=args.agent or "", config=config, output_dir=args.output_dir or default_dir)


def resume_settings(parser: argparse.ArgumentParser, args: argparse.Namespace, argv: list[str]) -> RunSettings:
    """The settings of the run in ``--resume RUN_DIR``, with ``--epochs`` (if given) to extend it."""
    given = given_flags(argv)
    if given - {"--resume", "--epochs", "--threads", "--resume-from"}:
        parser.error(
            "--resume continues a run with its own settings; it takes only --epochs, --resume-from and --threads, "
            f"got {sorted(given)}"
        )
    try:
        settings = read_settings(run_folder(str(args.resume)))
    except (argparse.ArgumentTypeError, FileNotFoundError, ValueError) as error:
        parser.error(f"argument --resume: {error}")
    try:
        device_name(settings.env.device)
    except argparse.ArgumentTypeError as error:
        parser.error(f"argument --resume: {args.resume / RUN_SETTINGS_FILE} records device {error}")
    try:
        with warnings.catch_warnings():  # the trainer warns when it resumes
            warnings.simplefilter("ignore", CheckpointWarning)
            point = resume_point(args.resume, args.resume_from)
    except FileNotFoundError as error:
        parser.error(f"argument --resume: {error}: nothing to resume from")
    except ValueError as error:
        parser.error(f"argument {'--resume' if args.resume_from is None else '--resume-from'}: {error}")
    try:
        check_resume_settings(settings, point)  # run.json edited since the checkpoint was saved
    except ValueError as error:
        parser.error(f"argument --resume: {error}")
    epochs = args.epochs if "--epochs" in given else settings.epochs
    try:
        check_epochs(args.resume, epochs, point.state.epoch)
    except ValueError as error:
        parser.error(f"argument --epochs: {error}")
    resume_from = None if args.resume_from is None else str(args.resume_from)
    settings = dataclasses.replace(settings, resume=True, resume_from=resume_from, epochs=epochs, threads=args.threads)
    return dataclasses.replace(settings, command=command_line(settings))


def given_flags(argv: list[str] | None) -> set[str]:
    """The long flags on the command line (``--epochs 3`` and ``--epochs=3`` alike give ``--epochs``)."""
    return {token.split("=")[0] for token in (argv or []) if token.startswith("--")}


def preset_defaults(argv: list[str] | None) -> dict[str, object]:
    """The settings of the ``--preset`` on the command line, as parser defaults (empty without one)."""
    early = argparse.ArgumentParser(add_help=False)
    early.add_argument("--preset", choices=preset_names())
    name = early.parse_known_args(argv)[0].preset
    if name is None:
        return {}
    return {key: value for key, value in apply_preset(name).items() if key not in ("preset", "description")}


def command_line(settings: RunSettings) -> str:
    """The command that reproduces one run: every setting that differs from its default, spelled as flags."""
    parts = ["diffusion-gym", "run", "--agent", settings.agent, *setting_flags_of(settings)]
    if "--epochs" not in parts:  # the run's length, always spelled out
        parts += ["--epochs", str(settings.epochs)]
    defaults = RunSettings(agent="", config=AgentConfig(), output_dir=Path())
    for field, kind, _ in agent_config_fields():
        value, default = getattr(settings.config, field.name), getattr(defaults.config, field.name)
        flag = "--" + field.name.replace("_", "-")
        if field.name == "seed":
            parts += [flag, str(value)]
        elif value != default and kind is bool:
            parts.append(flag if value else "--no-" + flag[2:])
        elif value != default:
            parts += [flag, "none" if value is None else str(value)]
    parts += ["--output-dir", str(settings.output_dir)]
    return shlex.join(parts)


# ----------------------------------------------------------------------------------------------- running
def run_single(settings: RunSettings, parser: argparse.ArgumentParser | None = None) -> None:
    """Train, write the run folder and print the results table (the main process, when data-parallel). With
    ``parser``, a ``ValueError`` while the trainer is built (the env refuses a prompt or the steps, the agent the
    config; nothing is written yet) is the parser's error (usage, exit status 2)."""
    try:
        trainer = Trainer.from_settings(settings)
    except ValueError as error:
        if parser is None:
            raise
        parser.error(f"invalid run settings: {error}")
    with trainer:
        result = trainer.train()
    if result is not None:
        print(results_table(result))
        print(f"run folder: {settings.output_dir}")


def run_comparison_member(settings: RunSettings) -> None:
    """One run of a comparison, in this process (one at a time); its command line is recorded as for a single run."""
    run_single(dataclasses.replace(settings, command=command_line(settings)))


def configure_logging() -> None:
    """The library's messages (the ``agents`` and ``diffusion_gym`` loggers, INFO and up) on stderr, as plain lines;
    other packages' loggers stay at Python's default (WARNING)."""
    logging.basicConfig(format="%(message)s")
    for name in ("agents", "diffusion_gym"):
        logging.getLogger(name).setLevel(logging.INFO)


DEFAULT_THREADS = 1  # alone ~11% slower than 2 on 2 cores, but 3x-20x faster beside a busy process (below)


def set_threads(run: RunSettings) -> None:
    """torch's intra-op CPU threads for the run: ``--threads``, else :data:`DEFAULT_THREADS`. Two threads of torch's
    OpenMP runtime (libgomp) spin while they wait: beside one busy process an epoch took 3x to 17x as long (one
    thread: 1.2x), and a passive wait policy made them slower alone than one thread
    (docs/experiments/2026-12-07-cpu-under-load.md)."""
    torch.set_num_threads(run.threads if run.threads is not None else DEFAULT_THREADS)


def main(argv: list[str] | None = None, prog: str = "diffusion-gym run") -> int:
    """``diffusion-gym run`` (``prog`` names the command in usage and errors); the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(prog)
    settings = parse_args(argv, parser)
    run = settings if isinstance(settings, RunSettings) else settings.run
    set_threads(run)
    device = run.env.device
    distributed = Distributed.from_environment(cpu=torch.device(device).type == "cpu")  # accelerate launch
    if isinstance(settings, RunSettings):
        if distributed.enabled:  # the main's folder (a default name has a timestamp) and launch command
            launch = f"accelerate launch --num_processes {distributed.num_processes}"
            output_dir = distributed.broadcast_object(settings.output_dir)
            command = settings.command.replace("diffusion-gym run", f"{launch} benchmarks/run.py", 1)
            settings = dataclasses.replace(settings, output_dir=output_dir, command=command)
        run_single(settings, parser)
        return 0
    if distributed.enabled:
        print(f"{prog}: --compare runs in one process; launch each run with accelerate instead")
        return 2
    try:
        check_settings(settings.run)  # the env and its held-out prompts, once for every run, before any is written
    except ValueError as error:
        parser.error(f"invalid run settings: {error}")
    command = shlex.join(["diffusion-gym", "run", *argv])
    summary = run_comparison(
        settings.run, settings.variants, settings.seeds, settings.output_dir, run_comparison_member, command=command
    )
    print(summary.table)
    print(f"comparison folder: {settings.output_dir}")
    return 0


if __name__ == "__main__":
    configure_logging()
    sys.exit(main())
