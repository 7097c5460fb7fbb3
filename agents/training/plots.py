"""Figures of a run folder (``reward_curve.png``, ``before_after.png``) and of a comparison (``comparison.png``);
matplotlib figures drawn without pyplot (no display, no global backend; matplotlib is imported on the first
figure).

Reward curves follow the HERD paper's figures: the raw per-epoch values faded, a running average over them
drawn solid.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch
    from matplotlib.figure import Figure

MAX_SMOOTHING_WINDOW = 25  # the HERD paper smooths its curves "with a scale of 25"


def smoothing_window(num_points: int) -> int:
    """A running-average window fitting the curve's length: up to 25 points, about a fifth of the curve."""
    return max(1, min(MAX_SMOOTHING_WINDOW, num_points // 5))


def running_average(values: Sequence[float], window: int) -> np.ndarray:
    """Trailing running average: point ``i`` is the mean of the last ``window`` values up to ``i`` (NaNs skipped)."""
    values = np.asarray(values, dtype=float)
    smoothed = np.full_like(values, np.nan)
    for i in range(len(values)):
        recent = values[max(0, i - window + 1) : i + 1]
        if np.isfinite(recent).any():
            smoothed[i] = np.nanmean(recent)
    return smoothed


@dataclass
class Curve:
    """One metric of one run against the number of samples seen."""

    steps: np.ndarray  # (E,)
    values: np.ndarray  # (E,), NaN where missing
    held_out: Curve | None = None  # the same score on the held-out evaluations (fresh noise), drawn with markers


# metrics.jsonl keys drawn in the reward curves, and their labels
CURVE_METRICS = {"reward_mean": "training reward", "gold_score": "gold score", "proxy_score": "proxy score"}
# the held-out evaluation's key (metrics.jsonl ``eval_<key>``, results.json ``base.<key>``) of each curve
HELD_OUT_KEYS = {"reward_mean": "reward", "gold_score": "gold", "proxy_score": "proxy"}


def held_out_curve(history: list[dict[str, float]], key: str, base: float | None = None) -> Curve | None:
    """Held-out score ``key`` (``gold``, ...) at the evaluation epochs against samples seen, starting with the base
    model's at 0 samples when ``base`` is given; None if no evaluation logged it."""
    points = [
        (record["global_step"], record[f"eval_{key}"]) for record in history if record.get(f"eval_{key}") is not None
    ]
    if not points:
        return None
    if base is not None:
        points.insert(0, (0, base))
    steps, values = zip(*points, strict=True)
    return Curve(np.array(steps, dtype=float), np.array(values, dtype=float))


def history_curves(history: list[dict[str, float]], base: dict[str, float | None] | None = None) -> dict[str, Curve]:
    """Per-epoch training reward, gold and proxy score against samples seen (NaN where an epoch lacks one), each
    with its held-out evaluations on fresh noise (from ``base``, the base model's held-out scores, at 0 samples)."""
    steps = np.array([record["global_step"] for record in history], dtype=float)
    base = base or {}
    curves = {
        label: Curve(
            steps,
            np.array([record.get(key, np.nan) for record in history], dtype=float),
            held_out_curve(history, HELD_OUT_KEYS[key], base.get(HELD_OUT_KEYS[key])),
        )
        for key, label in CURVE_METRICS.items()
    }
    reward = curves["training reward"].values
    if any(np.array_equal(reward, curves[score].values) for score in ("gold score", "proxy score")):
        del curves["training reward"]  # the reward is the gold (or proxy) score: one panel
    return curves


def setting_summary(model: str, reward: str, prompts: str) -> str:
    """``model, reward, prompts`` in a few words, for figure titles."""
    model = Path(model).name if Path(model).exists() else model
    return f"{model} · {reward} · {textwrap.shorten(prompts, 40, placeholder='…')}"


def new_figure(rows: int, columns: int, figsize: tuple[float, float]) -> tuple[Figure, np.ndarray]:
    """A matplotlib figure and its ``(rows, columns)`` array of axes, outside pyplot: nothing to close, and the
    caller's backend is left alone."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=figsize)
    return figure, figure.subplots(rows, columns, squeeze=False)


def plot_reward_curves(curves: dict[str, Curve], path: Path, title: str) -> None:
    """``reward_curve.png``: one panel per metric (e.g. training reward, gold score), raw faded + smoothed, and the
    held-out evaluations on fresh noise as markers."""
    panels = {name: curve for name, curve in curves.items() if np.isfinite(curve.values).any()}
    width = max(7.0, 5.5 * len(panels))
    figure, axes = new_figure(1, max(1, len(panels)), figsize=(width, 4.2))
    for axis, (name, curve) in zip(axes[0], panels.items(), strict=False):
        window = smoothing_window(len(curve.values))
        (line,) = axis.plot(curve.steps, curve.values, alpha=0.3, linewidth=1)
        axis.plot(
            curve.steps,
            running_average(curve.values, window),
            color=line.get_color(),
            linewidth=2,
            label=f"training samples, running average over {window}",
        )
        if curve.held_out is not None:
            axis.plot(
                curve.held_out.steps,
                curve.held_out.values,
                "o-",
                color="black",
                markersize=4,
                linewidth=1.2,
                label="held-out evaluation (fresh noise, fixed seeds)",
            )
        axis.legend(fontsize=8)
        axis.set(
            xlabel="samples",
            ylabel=name,
            title=name,
        )
        axis.grid(alpha=0.3)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


@dataclass
class BandCurve:
    """One metric of one agent over several seeds: the smoothed mean and its confidence band."""

    steps: np.ndarray  # (E,)
    raw_mean: np.ndarray  # (E,): mean over seeds of the raw values
    smoothed_mean: np.ndarray  # (E,): mean over seeds of the smoothed values
    low: np.ndarray  # (E,)
    high: np.ndarray  # (E,)


def plot_comparison(panels: dict[str, dict[str, BandCurve]], path: Path, title: str) -> None:
    """Overlaid curves: a panel per metric; per agent the smoothed mean, its CI band and the raw mean faded."""
    width = max(7.5, 6 * len(panels))
    figure, axes = new_figure(1, max(1, len(panels)), figsize=(width, 4.6))
    for axis, (metric, by_agent) in zip(axes[0], panels.items(), strict=False):
        for agent, band in by_agent.items():
            (line,) = axis.plot(band.steps, band.smoothed_mean, linewidth=2, label=agent, zorder=3)
            axis.plot(band.steps, band.raw_mean, color=line.get_color(), alpha=0.35, linewidth=1, zorder=2)
            axis.fill_between(band.steps, band.low, band.high, color=line.get_color(), alpha=0.12, linewidth=0)
        axis.set(xlabel="samples", ylabel=metric, title=f"{metric}: mean over seeds, 95% CI band")
        axis.grid(alpha=0.3)
        axis.legend()
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def plot_before_after(before: torch.Tensor, after: torch.Tensor, prompts: Sequence[str], path: Path) -> None:
    """Two rows of images ``(N, 3, H, W)`` in [0, 1] on the same seeds and prompts: base model, fine-tuned."""
    count = len(prompts)
    figure, axes = new_figure(2, count, figsize=(2.2 * count, 5.2))
    for column, prompt in enumerate(prompts):
        for row, (images, label) in enumerate(((before, "base model"), (after, "fine-tuned"))):
            axis = axes[row][column]
            axis.imshow(images[column].permute(1, 2, 0).clamp(0, 1).cpu().numpy(), interpolation="nearest")
            axis.set_xticks([])
            axis.set_yticks([])
            if column == 0:
                axis.set_ylabel(label, fontsize=10)
        axes[0][column].set_title(textwrap.fill(prompt, 28), fontsize=6)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
