"""How much of a paired difference on the bench is evaluation noise? The evaluation-size lever of issue 28's MDE.

    OMP_NUM_THREADS=1 python benchmarks/probes/eval_size.py --bench-dir runs/bench --task long \
        --agents ddpo,ddpo-aa --seeds 6-17 --samples 512 \
        --output docs/experiments/data/2026-12-08-eval-size/long-aa-seeds6-17.json

A bench run's final gold gain is the mean gold of ``eval_samples`` (64 on ``long``) held-out samples, sample
``i`` on noise seed ``RUN_EVAL_SEED + i`` in every run (common random numbers), minus the base model's on the
same noise. Two agents' gains on seed ``s`` differ by :math:`D_s`; the MDE rests on the spread of :math:`D_s`
over seeds, which holds two parts:

.. math::

    \\operatorname{Var}(D_s) = \\tau^2 + \\sigma_d^2 / n,

:math:`\\tau^2` from training (the two runs reach different models) and :math:`\\sigma_d^2 / n` from
evaluation, with :math:`\\sigma_d^2` the variance over samples of the per-sample difference :math:`d_i = g_{A,i}
- g_{B,i}` of the two final models' gold on shared noise (the base cancels: it is scored on the same noise).
This probe scores every named run's final checkpoint (and the base model, once) on ``--samples`` samples of the
task's evaluation prompts, noise seeds ``RUN_EVAL_SEED + i`` (so its first ``eval_samples`` repeat the run's own
final evaluation, which it checks), estimates :math:`\\sigma_d^2` per pair and :math:`\\tau^2` from the seeds,
and prints the MDE at the bench's seeds for evaluation sizes of 64 to ``--samples``: whether more final
evaluation samples, not more seeds, would bring the MDE to the 0.02 goal. Only the final evaluation enters the
gain, so the cost is one larger evaluation per run.

Scores are cached per run in ``--output`` (rerunning skips scored runs). Runs are read from
``BENCH_DIR/TASK/AGENT-seedS`` (a bench folder on this machine: the checkpoints are not archived).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from pathlib import Path

import numpy as np

logger = logging.getLogger("eval_size")


def score_run(run_dir: Path, samples: int, base: bool = False) -> list[float]:
    """Per-sample gold of ``run_dir``'s final checkpoint (``base``: of the untrained model, with the run's
    settings) on ``samples`` of the run's evaluation prompts, noise seed ``RUN_EVAL_SEED + i`` for sample ``i``."""
    from agents.checkpoint import checkpoint_info, load_checkpoint
    from agents.registry import make_agent
    from agents.training.evaluation import RUN_EVAL_SEED, eval_prompt_set, spread
    from agents.training.run_folder import read_settings
    from diffusion_gym.prompts import resolve_prompts

    settings = read_settings(run_dir)
    env = settings.env.make(settings.config.batch_size)
    world = env.unwrapped.diffusion.world
    prompts = spread(resolve_prompts(eval_prompt_set(settings.eval_prompts, settings.env.prompts, world)), samples)
    agent = make_agent(settings.agent, env, settings.config)
    try:
        if not base:
            checkpoint = load_checkpoint(checkpoint_info(run_dir)["path"])  # a clear error if corrupt
            agent.load_state_dict(checkpoint["agent"])
        generation = agent.generate(prompts, seed=RUN_EVAL_SEED)
    finally:
        agent.close()
        env.close()
    if generation.gold_scores is None:
        raise ValueError(f"{run_dir}: the world has no gold score")
    return [float(g) for g in generation.gold_scores]


def decompose(gold_a: np.ndarray, gold_b: np.ndarray, n: int) -> tuple[np.ndarray, float]:
    """Per-seed differences of the mean gold over the first ``n`` samples ``(S,)`` and the mean over pairs of the
    per-sample difference variance :math:`\\sigma_d^2`, from two agents' per-sample gold ``(S, N)`` on shared
    noise."""
    if gold_a.shape != gold_b.shape or gold_a.ndim != 2:
        raise ValueError(f"gold tables must both be (seeds, samples), got {gold_a.shape} and {gold_b.shape}")
    if not 2 <= n <= gold_a.shape[1]:
        raise ValueError(f"n must be in 2..{gold_a.shape[1]}, got {n}")
    differences = gold_a[:, :n] - gold_b[:, :n]  # (S, n): per-sample differences on shared noise
    return differences.mean(axis=1), float(differences.var(axis=1, ddof=1).mean())


def main(argv: list[str] | None = None) -> int:
    from agents.experiments.bench import seed_spec, seeds_text

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bench-dir", type=Path, default=Path("runs/bench"), help="a bench folder with checkpoints")
    parser.add_argument("--task", default="long", help="the bench task (default: long)")
    parser.add_argument("--agents", default="ddpo,ddpo-aa", help="two bench agents, paired by seed")
    parser.add_argument("--seeds", type=seed_spec, default="6-11", help="seeds: a range 6-11 or a list 0,3,7")
    parser.add_argument("--mde-seeds", type=int, default=6, help="the seeds per agent the MDE is given at (6)")
    parser.add_argument("--samples", type=int, default=512, help="evaluation samples per model (default: 512)")
    parser.add_argument("--output", type=Path, required=True, help="JSON of per-sample gold (a cache; resumes)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    import torch

    from agents.experiments.bench_stats import minimum_detectable_effect, seeds_for_effect
    from diffusion_gym.tasks import get_task

    torch.set_num_threads(1)
    task = get_task(args.task)
    names = args.agents.split(",")
    if len(names) != 2:
        parser.error(f"--agents takes two agents, got {args.agents!r}")
    seeds = args.seeds
    if args.mde_seeds < 2:
        parser.error(f"--mde-seeds must be at least 2, got {args.mde_seeds}")
    if args.samples < task.eval_samples:
        parser.error(f"--samples must be at least the task's eval_samples ({task.eval_samples})")
    runs = {f"{name}-seed{seed}": args.bench_dir / task.name / f"{name}-seed{seed}" for name in names for seed in seeds}
    for run_dir in runs.values():
        if not (run_dir / "results.json").is_file():
            parser.error(f"{run_dir} has no results.json: not a finished run")
        if not any((run_dir / "checkpoints").glob("*/state.json")):
            parser.error(f"{run_dir} has no checkpoint (archived runs keep only their summaries)")

    cache = json.loads(args.output.read_text()) if args.output.is_file() else {}
    if cache and (cache.get("samples"), cache.get("task")) != (args.samples, task.name):
        parser.error(
            f"{args.output} holds {cache.get('samples')} samples a run of task {cache.get('task')!r}, "
            f"not {args.samples} of {task.name!r}"
        )
    cache.update(task=task.name, samples=args.samples)
    cache.setdefault("gold", {})
    to_score = [("base", next(iter(runs.values())))] + list(runs.items())
    for label, run_dir in to_score:
        if label in cache["gold"]:
            continue
        logger.info("scoring %s on %d samples", label, args.samples)
        cache["gold"][label] = score_run(run_dir, args.samples, base=label == "base")
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(cache) + "\n")

    base = np.asarray(cache["gold"]["base"])
    for label, run_dir in runs.items():  # the first eval_samples repeat the run's own final evaluation
        own = json.loads((run_dir / "results.json").read_text())["final"]["gold"]
        again = float(np.mean(cache["gold"][label][: task.eval_samples]))
        if abs(own - again) > 1e-4:
            logger.warning(
                "%s: its final evaluation said %.4f, the first %d samples here %.4f",
                label,
                own,
                task.eval_samples,
                again,
            )
    gold = {name: np.asarray([cache["gold"][f"{name}-seed{seed}"] for seed in seeds]) for name in names}  # (S, N)

    lines = [
        f"{task.name}: {names[0]} - {names[1]}, seeds {seeds_text(seeds)}, "
        f"base gold {base[: task.eval_samples].mean():.4f} "
        f"({task.eval_samples} samples), {base.mean():.4f} ({args.samples})",
        "",
        "| evaluation samples | mean difference | sd of per-seed differences | sigma_d | evaluation share of the "
        "variance | MDE at --mde-seeds | seeds for 0.02 |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    sizes = sorted({task.eval_samples, *[n for n in (128, 256, 512, 1024) if n <= args.samples], args.samples})
    per_seed_full, sigma_full = decompose(gold[names[0]], gold[names[1]], args.samples)
    # tau^2 from the largest evaluation: Var(D) - sigma_d^2 / N (floored at 0)
    tau_squared = max(float(per_seed_full.var(ddof=1)) - sigma_full / args.samples, 0.0)
    rows = []
    for n in sizes:
        per_seed, sigma_squared = decompose(gold[names[0]], gold[names[1]], n)
        predicted_sd = math.sqrt(tau_squared + sigma_full / n)
        rows.append(
            {
                "samples": n,
                "mean_difference": float(per_seed.mean()),
                "sd_observed": float(per_seed.std(ddof=1)),
                "sd_predicted": predicted_sd,
                "sigma_d": math.sqrt(sigma_squared),
                "evaluation_share": (sigma_full / n) / (tau_squared + sigma_full / n),
                "mde": minimum_detectable_effect(predicted_sd, args.mde_seeds),
                "seeds_for_0.02": seeds_for_effect(predicted_sd, 0.02),
            }
        )
        row = rows[-1]
        lines.append(
            f"| {n} | {row['mean_difference']:+.4f} | {row['sd_observed']:.4f} (model {predicted_sd:.4f}) | "
            f"{row['sigma_d']:.3f} | {row['evaluation_share']:.0%} | {row['mde']:.4f} | {row['seeds_for_0.02']} |"
        )
    lines += [
        "",
        f"training part tau = {math.sqrt(tau_squared):.4f}; with infinitely many evaluation samples the MDE at "
        f"{args.mde_seeds} seeds would be {minimum_detectable_effect(math.sqrt(tau_squared), args.mde_seeds):.4f}",
    ]
    cache["analysis"] = {"tau": math.sqrt(tau_squared), "sigma_d": math.sqrt(sigma_full), "rows": rows}
    args.output.write_text(json.dumps(cache) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
