"""Comparison mode: several agents (or named variants) x several seeds, on the same sample budget
(``benchmarks/run.py --compare``).

Every run is an ordinary run folder (``<output>/<variant>-seed<seed>/``), run one after the other. From the run
folders, :func:`summarise` writes:

* ``comparison.md``: one markdown table of held-out gold, proxy and reward (base and final), mean ± 95% CI
  over seeds (t-distribution), and one of every variant's final scores minus the first variant's, paired by
  seed (the runs of a seed share their evaluation seeds, so the pairing removes the evaluation noise they share);
  then the race on learning per sample: the samples and wall minutes until the seed-mean held-out gold (fresh
  noise) first gains :data:`THRESHOLDS` over the base model, the mean approx-KL of the updates, and the change on
  the generalisation set when the runs evaluated one;
* ``comparison.png``: the held-out gold on fresh noise against samples (mean over seeds with its 95% CI band)
  and the training curves overlaid, per agent the mean over seeds of the running average, with its 95% CI band
  and the raw mean faded;
* ``comparison.json``: the same numbers, per variant and per seed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from agents.checkpoint import latest_checkpoint
from agents.experiments.stats import MeanCI, mean_ci, paired_difference
from agents.training.plots import (
    CURVE_METRICS,
    BandCurve,
    held_out_curve,
    plot_comparison,
    running_average,
    setting_summary,
    smoothing_window,
)
from agents.training.run_folder import RunResult, RunSettings, json_safe, read_run_result, read_settings
from agents.training.run_lock import RunFolderLock

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Variant:
    """A named agent configuration: an agent and ``AgentConfig`` overrides on top of the command line's."""

    name: str
    agent: str
    overrides: dict[str, object] = field(default_factory=dict)
    description: str = ""


VARIANTS: dict[str, Variant] = {
    variant.name: variant
    for variant in (
        Variant("reinforce", "reinforce", {}, "REINFORCE (DDPO-SF)"),
        Variant("ddpo", "ddpo", {}, "DDPO-IS: PPO clipping, inner epochs, per-prompt stats"),
        # knobs of the default agent, measured on the default task's race (docs/experiments/2026-12-05-knobs.md)
        Variant("ddpo-lr2x", "ddpo", {"learning_rate": 2e-3}, "DDPO at twice the default learning rate (2e-3)"),
        Variant(
            "ddpo-cosine",
            "ddpo",
            {"lr_decay_epochs": 45, "lr_final_fraction": 0.1},
            "DDPO with a cosine learning-rate decay to 0.1x over 45 epochs (the race's length)",
        ),
        Variant(
            "ddpo-noisy-half",
            "ddpo",
            {"train_timestep_min": 500, "train_timestep_fraction": 1.0},
            "DDPO trained on every step with t >= 500 (the noisiest half) instead of a random half",
        ),
        Variant("ddpo-inner4", "ddpo", {"inner_epochs": 4, "clip_range": 0.1}, "DDPO, 4 inner epochs, clip 0.1"),
        Variant("dpok", "dpok", {}, "DPOK: reward + beta * per-step KL to the base model, value baseline"),
        Variant("dpok-nokl", "dpok", {"kl_beta": 0.0}, "DPOK without its KL term (beta = 0)"),
        Variant("loop", "loop", {"loop_k": 4}, "LOOP with K = 4 trajectories per prompt"),
        Variant("loop-k8", "loop", {"loop_k": 8}, "LOOP with K = 8 trajectories per prompt (half the prompts)"),
        Variant(
            "loop-every-step",
            "loop",
            {"loop_k": 4, "train_timestep_fraction": 1.0},
            "LOOP (K = 4) trained on every denoising step, not a random half",
        ),
        Variant("rwr", "rwr", {}, "RWR: the diffusion loss on the agent's own samples, weighted by exp(A / tau)"),
        Variant("rwr-signed", "rwr", {"rwr_baseline": True}, "RWR with signed weights exp(A / tau) - mean"),
        Variant("nft", "nft", {}, "NFT: DiffusionNFT's forward-process loss on the env sampler's clean samples"),
        Variant(
            "nft-ddim5",
            "nft",
            {"nft_sampling_steps": 5},
            "NFT with its training samples from a deterministic 5-step DDIM (evaluation: the env's sampler)",
        ),
        Variant(
            "nft-two-std",
            "nft",
            {"nft_optimality": "two-std"},
            "NFT with r = 1/2 + clip((R - mean) / (4 sd), -1/2, 1/2): every sample pushes, not the extreme one alone",
        ),
        Variant(
            "nft-t16",
            "nft",
            {"nft_timesteps": 16},
            "NFT with 16 noised points per image, not 4: 4x the noise draws behind each image's gradient (issue 31)",
        ),
        Variant(
            "nft-soft",
            "nft",
            {"nft_old_ema": 0.5},
            "NFT sampling from a soft-updated old policy, old <- 0.5 old + 0.5 theta after each epoch (the paper's)",
        ),
        Variant(
            "nft-k4",
            "nft",
            {"nft_group_size": 4},
            "NFT with K = 4 samples per prompt, r normalised within each prompt's four (DiffusionNFT's groups)",
        ),
        Variant(
            "herd-nft",
            "herd",
            {"herd_base": "nft", "herd_buffer_batches": 2},
            "HERD over NFT: every image of the last epoch replayed under one sentence of its prompt, its reward "
            "recomputed for it (a reward per sentence; issue 31)",
        ),
        Variant("herd", "herd", {}, "HERD over LOOP (the default base): 1 batch of relabeled trajectories replayed"),
        Variant("herd-ddpo", "herd", {"herd_base": "ddpo"}, "HERD over DDPO, 1 batch replayed (the paper's HERD)"),
        Variant("herd-b2", "herd", {"herd_buffer_batches": 2}, "HERD with 2 batches replayed (paper's HERD-b2)"),
        Variant(
            "herd-uncorrected",
            "herd",
            {"herd_off_policy_correction": False},
            "HERD without the off-policy correction (as in the paper)",
        ),
        Variant("herd-history", "herd", {"herd_keep_history": True}, "HERD keeping an extended history"),
    )
}


def resolve_variants(names: str, agent_names: Sequence[str] | None = None) -> list[Variant]:
    """``"ddpo,herd,herd-b2"`` -> variants; a plain agent name is a variant without overrides. ``agent_names``:
    default, every agent of the registry (:func:`agents.registry.agent_names`, a registered agent of your own
    included)."""
    if agent_names is None:
        from agents.registry import agent_names as registered_agent_names

        agent_names = registered_agent_names()
    variants: list[Variant] = []
    for name in (part.strip() for part in names.split(",")):
        if name in VARIANTS:
            variants.append(VARIANTS[name])
        elif name in agent_names:
            variants.append(Variant(name, name))
        else:
            known = sorted(set(VARIANTS) | set(agent_names))
            raise ValueError(f"unknown agent or variant {name!r}; known: {', '.join(known)}")
    if len({variant.name for variant in variants}) != len(variants):
        raise ValueError(f"a variant is listed twice in {names!r}")
    return variants


def plan_runs(settings: RunSettings, variants: list[Variant], seeds: list[int], output_dir: Path) -> list[RunSettings]:
    """One run per variant and seed, all with the command line's settings (hence the same sample budget)."""
    return [
        replace(
            settings,
            agent=variant.agent,
            label=variant.name,
            config=replace(settings.config, seed=seed, **variant.overrides).with_agent_defaults(variant.agent),
            output_dir=output_dir / f"{variant.name}-seed{seed}",
        )
        for variant in variants
        for seed in seeds
    ]


def train_run(settings: RunSettings) -> None:
    """One run of a comparison in this process: a :class:`~agents.training.trainer.Trainer` from its settings."""
    from agents.training.trainer import Trainer

    with Trainer.from_settings(settings) as trainer:
        trainer.train()


def run_comparison(
    settings: RunSettings,
    variants: list[Variant],
    seeds: list[int],
    output_dir: Path,
    run_one: Callable[[RunSettings], None] = train_run,
    command: str = "",
) -> ComparisonSummary:
    """Run every variant x seed one after the other with ``run_one`` (default: :func:`train_run`), then summarise
    the run folders.

    Rerunning the same comparison into the same folder continues it: finished runs are kept, interrupted ones
    resume from their latest checkpoint. Ctrl-C stops the comparison after the current run has saved its folder;
    the summary then covers the finished runs. ``command`` (the command line that regenerates the comparison) is
    recorded in the table and the JSON.
    """
    runs = plan_runs(settings, variants, seeds, output_dir)
    completed: list[RunSettings] = []
    for index, planned in enumerate(runs, start=1):
        run = continue_or_start(planned)
        where = f"{planned.name} seed {planned.config.seed} -> {planned.output_dir}"
        if run is None:
            logger.info("[%d/%d] %s: already finished", index, len(runs), where)
        else:
            logger.info("[%d/%d] %s%s", index, len(runs), where, " (resuming)" if run.resume else "")
            try:
                run_one(run)
            except KeyboardInterrupt:
                break
            if read_run_result(Path(run.output_dir)).interrupted:
                break
        completed.append(planned)
    if len(completed) < len(runs):
        logger.warning("comparison interrupted; summarising the finished runs (rerun the command to continue)")
    return summarise(completed, output_dir, {v.name: v.description for v in variants}, command)


def continue_or_start(run: RunSettings) -> RunSettings | None:
    """``None`` if ``run`` already finished in its folder, ``run`` to resume if it was interrupted, else ``run`` (a
    folder the run stopped in before its first checkpoint is set aside first: :func:`set_aside_folder`).

    ``ValueError`` if the folder holds a run with other settings (a different comparison in the same folder).
    """
    folder = Path(run.output_dir)
    if not (folder / "run.json").exists():
        return run
    saved = read_settings(folder)
    # a single run of the same settings counts (its label is empty: the label only names it in tables)
    ignored = {"command": "", "resume": False, "threads": None, "output_dir": folder, "label": run.label}
    if replace(saved, **ignored) != replace(run, **ignored):
        raise ValueError(f"{folder} holds a run with other settings; compare into a new --output-dir")
    if (folder / "results.json").exists():
        result = read_run_result(folder)
        if result.finished and result.epochs == run.epochs:
            return None
    if latest_checkpoint(folder) is not None:
        return replace(run, resume=True)
    # stopped before its first checkpoint: nothing to resume; the run starts over in its folder (a Trainer refuses a
    # folder that is not empty), the stopped session's files are kept beside it
    with RunFolderLock(folder):  # not while another process writes it
        moved = set_aside_folder(folder)
    logger.warning("%s: stopped before its first checkpoint; starting it over (its files moved to %s)", folder, moved)
    return run


def set_aside_folder(folder: Path) -> Path:
    """Rename ``folder`` to ``<name>.stopped-<n>`` beside it (the first free ``n``); returns the new path."""
    n = 1
    while (target := folder.with_name(f"{folder.name}.stopped-{n}")).exists():
        n += 1
    folder.rename(target)
    return target


# ----------------------------------------------------------------------------------------------- summary
SCORE_COLUMNS = ("gold", "proxy", "reward")
THRESHOLDS = (0.05, 0.10)  # held-out gains over the base model that the race times


@dataclass
class Crossing:
    """When the seed-mean held-out score first gained ``threshold`` over the base model (None: not reached)."""

    threshold: float
    samples: int | None  # fresh samples seen at that evaluation
    minutes: float | None  # mean over seeds of the wall time at that evaluation

    def __str__(self) -> str:
        return "not reached" if self.samples is None else f"{self.samples} ({self.minutes:.1f} min)"


def held_out_gains(results: list[RunResult], key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Per seed, held-out ``key`` minus the base model's at every evaluation the seeds share, with the samples
    and the mean wall seconds there: ``(steps (P,), gains (seeds, P), seconds (P,))``; None if not evaluated."""
    curves, seconds = [], []
    for result in results:
        base = getattr(result.base, key)
        curve = held_out_curve(result.history, key)
        if base is None or curve is None:
            return None
        curves.append((curve.steps, curve.values - base))
        elapsed = {record["global_step"]: record["elapsed_seconds"] for record in result.history}
        seconds.append([elapsed[int(step)] for step in curve.steps])
    length = min(len(steps) for steps, _ in curves)
    steps = curves[0][0][:length]
    if any(not np.array_equal(other[:length], steps) for other, _ in curves):
        return None  # the seeds evaluated at different sample counts
    gains = np.stack([values[:length] for _, values in curves])  # (seeds, P)
    return steps, gains, np.array([row[:length] for row in seconds], dtype=float).mean(axis=0)


def crossings(results: list[RunResult], key: str) -> list[Crossing]:
    """:class:`Crossing` of every :data:`THRESHOLDS` by the seed-mean held-out gain of ``key``."""
    found = held_out_gains(results, key)
    if found is None:
        return [Crossing(threshold, None, None) for threshold in THRESHOLDS]
    steps, gains, seconds = found
    mean_gain = gains.mean(axis=0)  # (P,)
    out = []
    for threshold in THRESHOLDS:
        reached = np.flatnonzero(mean_gain >= threshold - 1e-9)
        if len(reached) == 0:
            out.append(Crossing(threshold, None, None))
        else:
            first = reached[0]
            out.append(Crossing(threshold, int(steps[first]), float(seconds[first] / 60)))
    return out


def held_out_band(results: list[RunResult], key: str) -> BandCurve | None:
    """Held-out ``key`` against samples, base model at 0: mean over seeds with its 95% t-band (no smoothing)."""
    found = held_out_gains(results, key)
    if found is None:
        return None
    steps, gains, _ = found
    base = np.array([getattr(result.base, key) for result in results], dtype=float)
    values = np.concatenate([base[:, None], gains + base[:, None]], axis=1)  # (seeds, 1 + P): base at 0 samples
    intervals = [mean_ci(list(values[:, i])) for i in range(values.shape[1])]
    means = np.array([interval.mean for interval in intervals])
    half = np.nan_to_num(np.array([interval.half_width for interval in intervals]))  # one seed: no band
    return BandCurve(np.concatenate([[0.0], steps]), means, means, means - half, means + half)


@dataclass
class VariantSummary:
    """One variant over its seeds: held-out scores before and after, and the run folders."""

    name: str
    description: str
    seeds: list[int]
    base: dict[str, MeanCI]  # score name -> mean ± CI
    final: dict[str, MeanCI]
    change: dict[str, MeanCI]  # paired per seed: final - base
    distance_from_base: MeanCI  # RMS pixel distance of the final images to the base model's (same seeds)
    samples_seen: int
    train_samples_seen: MeanCI
    wall_minutes: MeanCI
    runs: list[str]
    final_by_seed: dict[str, dict[int, float | None]]  # score name -> seed -> final score
    vs_reference: dict[str, MeanCI] = field(default_factory=dict)  # final - the first variant's, paired by seed
    crossings: list[Crossing] = field(default_factory=list)  # of THRESHOLDS by the held-out gold (else reward)
    approx_kl: MeanCI | None = None  # mean over the run of the updates' approx-KL, over seeds (None: not logged)
    generalisation_change: MeanCI | None = None  # gold (else reward) on the generalisation set, final - base


@dataclass
class ComparisonSummary:
    variants: list[VariantSummary]
    reference: str  # the first variant: the one the paired differences are taken against
    table: str
    output_dir: str
    command: str


def summarise(
    runs: list[RunSettings], output_dir: Path, description: dict[str, str], command: str = ""
) -> ComparisonSummary:
    """Write ``comparison.md``, ``comparison.png`` and ``comparison.json`` from finished run folders."""
    output_dir.mkdir(parents=True, exist_ok=True)
    by_variant: dict[str, list[RunSettings]] = {}
    for run in runs:
        by_variant.setdefault(run.name, []).append(run)

    summaries: list[VariantSummary] = []
    panels: dict[str, dict[str, BandCurve]] = {}
    for name, variant_runs in by_variant.items():
        results = [read_run_result(Path(run.output_dir)) for run in variant_runs]
        summaries.append(summarise_variant(name, description.get(name, ""), variant_runs, results))
        key = race_score(results)
        band = held_out_band(results, key)
        if band is not None:
            panels.setdefault(f"held-out {key} (fresh noise)", {})[name] = band
        histories = [result.history for result in results]
        for key, label in CURVE_METRICS.items():
            band = band_curve(histories, key)
            if band is not None:
                panels.setdefault(label, {})[name] = band

    for score in ("gold score", "proxy score"):  # the reward is often the gold (or proxy) score: one panel then
        same = [
            np.array_equal(band.raw_mean, panels.get(score, {})[name].raw_mean, equal_nan=True)
            for name, band in panels.get("training reward", {}).items()
            if name in panels.get(score, {})
        ]
        if same and all(same) and len(same) == len(panels["training reward"]):
            del panels["training reward"]
            break

    for summary in summaries[1:]:  # against the first variant
        summary.vs_reference = {
            key: paired_difference(summaries[0].final_by_seed[key], summary.final_by_seed[key]) for key in SCORE_COLUMNS
        }

    first = read_run_result(Path(runs[0].output_dir)) if runs else None
    title = f"{first.model}: reward {first.reward}, prompts {first.prompts!r}" if first else "no finished runs"
    table = comparison_table(summaries, title)
    if command:
        table += f"\n\nRegenerate with: `{command}`"
    (output_dir / "comparison.md").write_text(table + "\n")
    short = setting_summary(first.model, first.reward, first.prompts) if first else ""
    plot_comparison(panels, output_dir / "comparison.png", title=short)
    summary = ComparisonSummary(summaries, summaries[0].name if summaries else "", table, str(output_dir), command)
    (output_dir / "comparison.json").write_text(json.dumps(json_safe(asdict(summary)), indent=2) + "\n")
    return summary


def race_score(results: list[RunResult]) -> str:
    """The score the race times: gold where the world defines it, else the reward."""
    return "gold" if all(result.base.gold is not None for result in results) else "reward"


def summarise_variant(name: str, description: str, runs: list[RunSettings], results: list[RunResult]) -> VariantSummary:
    seeds = [run.config.seed for run in runs]
    key = race_score(results)

    def scores(when: str, key: str) -> list[float | None]:
        return [getattr(getattr(result, when), key) for result in results]

    def change(key: str) -> list[float | None]:
        pairs = zip(scores("base", key), scores("final", key), strict=True)
        return [None if before is None or after is None else after - before for before, after in pairs]

    return VariantSummary(
        name=name,
        description=description,
        seeds=seeds,
        base={key: mean_ci(scores("base", key)) for key in SCORE_COLUMNS},
        final={key: mean_ci(scores("final", key)) for key in SCORE_COLUMNS},
        change={key: mean_ci(change(key)) for key in SCORE_COLUMNS},
        distance_from_base=mean_ci([result.final.distance_from_base for result in results]),
        samples_seen=results[0].samples_seen,
        train_samples_seen=mean_ci([result.train_samples_seen for result in results]),
        wall_minutes=mean_ci([result.wall_seconds / 60 for result in results]),
        runs=[str(run.output_dir) for run in runs],
        final_by_seed={key: dict(zip(seeds, scores("final", key), strict=True)) for key in SCORE_COLUMNS},
        crossings=crossings(results, key),
        approx_kl=run_mean(results, "approx_kl"),
        generalisation_change=generalisation_change(results, key),
    )


def run_mean(results: list[RunResult], metric: str) -> MeanCI | None:
    """Per seed the mean of a training metric over the run's epochs; their mean ± CI (None if never logged)."""
    means = []
    for result in results:
        values = [record[metric] for record in result.history if record.get(metric) is not None]
        means.append(float(np.mean(values)) if values else None)
    return None if all(value is None for value in means) else mean_ci(means)


def generalisation_change(results: list[RunResult], key: str) -> MeanCI | None:
    """Final minus base ``key`` on the runs' generalisation set, mean ± CI over seeds (None: not evaluated)."""
    sets = [result.generalisation for result in results]
    if any(generalisation is None for generalisation in sets):
        return None
    changes = [getattr(g.final, key) - getattr(g.base, key) for g in sets]
    return mean_ci(changes)


def comparison_table(summaries: list[VariantSummary], title: str) -> str:
    """Markdown: one row per variant, held-out scores as mean ± 95% CI over seeds; then, with two or more
    variants, every other variant's final scores minus the first's, paired by seed."""
    present = [key for key in SCORE_COLUMNS if any(s.final[key].count for s in summaries)]
    for score in ("gold", "proxy"):  # the reward is often the gold (or proxy) score itself: one column then
        if score in present and all(s.final["reward"].mean == s.final[score].mean for s in summaries):
            present.remove("reward")
            break
    header = ["agent", "seeds"]
    for key in present:
        header += [f"base {key}", f"final {key}", f"Δ {key}"]
    header += ["distance from base", "samples", "trained on", "minutes"]
    lines = [
        f"**{title}**; held-out scores, mean ± 95% CI over seeds (t-distribution); distance from base: RMS pixel "
        "difference to the base model's images on the same seeds",
        "",
    ]
    lines += ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for s in summaries:
        row = [s.name, str(len(s.seeds))]
        for key in present:
            row += [str(s.base[key]), str(s.final[key]), signed(s.change[key])]
        row += [str(s.distance_from_base), str(s.samples_seen), f"{s.train_samples_seen.mean:.0f}"]
        row.append(f"{s.wall_minutes.mean:.1f}")
        lines.append("| " + " | ".join(row) + " |")
    if len(summaries) >= 2:
        reference = summaries[0].name
        lines += [
            "",
            f"Final scores minus `{reference}`'s, paired by seed (mean ± 95% CI over the shared seeds):",
            "",
            "| agent | " + " | ".join(f"{key} vs {reference}" for key in present) + " |",
            "|" + "|".join(["---"] + ["---:"] * len(present)) + "|",
        ]
        for s in summaries[1:]:
            lines.append(f"| {s.name} | " + " | ".join(signed(s.vs_reference[key]) for key in present) + " |")
    lines += ["", *race_table(summaries)]
    return "\n".join(lines)


def race_table(summaries: list[VariantSummary]) -> list[str]:
    """Markdown lines of the race on learning per sample (see the module docstring)."""
    header = ["agent"]
    header += [f"samples (minutes) to +{threshold:.2f}" for threshold in THRESHOLDS]
    header += ["final Δ", "approx-KL (run mean)", "distance from base"]
    with_generalisation = any(s.generalisation_change is not None for s in summaries)
    if with_generalisation:
        header.append("generalisation Δ")
    lines = [
        "The race on learning per sample: fresh samples (and wall minutes) until the held-out score on fresh noise, "
        "averaged over seeds, first gained each threshold over the base model (evaluations only, so a crossing "
        "is at most one evaluation interval late); approx-KL: DDPO's 1/2 E[(log ratio)^2] of the updates, summed "
        "log-probabilities; minutes are wall time as the runs measured it, under whatever else ran on the machine.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|",
    ]
    for s in summaries:
        row = [s.name, *(str(crossing) for crossing in s.crossings)]
        race_key = "gold" if s.final["gold"].count else "reward"
        row += [signed(s.change[race_key]), str(s.approx_kl) if s.approx_kl is not None else "–"]
        row.append(str(s.distance_from_base))
        if with_generalisation:
            row.append(signed(s.generalisation_change) if s.generalisation_change is not None else "–")
        lines.append("| " + " | ".join(row) + " |")
    return lines


def signed(value: MeanCI) -> str:
    text = str(value)
    return text if text.startswith("-") or text == "–" else "+" + text


def band_curve(histories: list[list[dict]], key: str) -> BandCurve | None:
    """Mean over seeds of one metric's running average, with a 95% t-band; None if no run logged the metric."""
    length = min(len(history) for history in histories)
    if length == 0:
        return None
    raw = np.array([[record.get(key, np.nan) for record in history[:length]] for history in histories], dtype=float)
    if not np.isfinite(raw).any():
        return None
    window = smoothing_window(length)
    smoothed = np.stack([running_average(row, window) for row in raw])  # (seeds, E)
    intervals = [mean_ci(list(smoothed[:, i])) for i in range(length)]
    means = np.array([interval.mean for interval in intervals])
    half = np.nan_to_num(np.array([interval.half_width for interval in intervals]))  # one seed: no band
    steps = np.array([record["global_step"] for record in histories[0][:length]], dtype=float)
    with np.errstate(all="ignore"):
        raw_mean = np.nanmean(raw, axis=0)
    return BandCurve(steps, raw_mean, means, means - half, means + half)


__all__ = [
    "THRESHOLDS",
    "VARIANTS",
    "Crossing",
    "ComparisonSummary",
    "Variant",
    "VariantSummary",
    "plan_runs",
    "resolve_variants",
    "run_comparison",
    "summarise",
    "train_run",
]
