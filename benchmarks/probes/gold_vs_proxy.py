"""Gold against proxy (Gao et al. 2022's picture): held-out gold and proxy of runs that optimised the proxy,
against fresh samples and against the KL of the fine-tuned policy from the base policy.

    python benchmarks/run.py --agent herd --reward shapes-clip --epochs 120 --eval-every 10 --eval-kl --seed 0 \\
        --output-dir runs/proxy-herd-seed0
    python benchmarks/probes/gold_vs_proxy.py runs/proxy-herd-seed0 [more run folders] --output gold_vs_proxy.png

Each run folder's held-out evaluations (``metrics.jsonl``'s ``eval_gold``, ``eval_proxy``, and ``eval_kl_to_base``,
the KL in nats per trajectory that ``--eval-kl`` logs; the base model's from ``results.json``, or the
``--base-gold``/``--base-proxy`` flags while a run is still going) are drawn, one line per run; the peak of gold is
printed with its samples and KL. A run made without ``--eval-kl`` takes the KL that ``checkpoint_kl.py`` computed
at its checkpoints (``checkpoint_kl.jsonl`` in the run folder); with neither, runs are drawn against
``eval_distance_from_base`` (the RMS pixel distance from the base model's images, a stand-in) instead; the runs of
one figure must agree on which.

Runs whose folder names differ only in a trailing ``-seedN`` (``proxy-dpok-seed0``, ``proxy-dpok-seed1``, ...) are
one group: drawn in one colour, thin per run, with the seed mean drawn thick when the group's runs were evaluated at
the same sample counts; the peak of that mean is printed with its samples and mean KL (the point of the Gao et al.
picture: where, on average, more optimisation of the proxy stops helping gold).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from agents.training.plots import Curve, held_out_curve  # noqa: E402
from agents.training.run_folder import read_history  # noqa: E402

# the second panel's x, by held-out key: axis label, how the peak line names it, panel title
AXES = {
    "kl_to_base": ("KL to the base policy (nats per trajectory)", "KL to base {:.4f} nats", "against KL to the base"),
    "distance_from_base": (
        "RMS pixel distance from the base images",
        "distance from base {:.4f}",
        "against distance from the base model",
    ),
}


# written by checkpoint_kl.py (the KL at each checkpoint of a run made without --eval-kl), one JSON line each
CHECKPOINT_KL_FILE = "checkpoint_kl.jsonl"


def history_with_kl(run_dir: Path) -> list[dict]:
    """The run's ``metrics.jsonl``; when it has no ``eval_kl_to_base`` but ``checkpoint_kl.py`` computed the KL at
    its checkpoints, each evaluation at a checkpoint's epoch gets that KL."""
    history = read_history(run_dir)
    path = run_dir / CHECKPOINT_KL_FILE
    if not path.exists() or any("eval_kl_to_base" in record for record in history):
        return history
    kl_by_epoch = {row["epoch"]: row["kl_to_base"] for row in map(json.loads, path.read_text().splitlines())}
    return [
        {**record, "eval_kl_to_base": kl_by_epoch[record["epoch"]]}
        if "eval_gold" in record and record["epoch"] in kl_by_epoch
        else record
        for record in history
    ]


def base_scores(run_dir: Path) -> dict[str, float] | None:
    """The base model's held-out scores of a run: results.json (a finished run) or its first checkpoint's record."""
    results = run_dir / "results.json"
    if results.exists():
        return json.loads(results.read_text())["base"]
    return None


def group_name(run_dir: Path) -> str:
    """The run's group: its folder name without a trailing ``-seedN``."""
    return re.sub(r"-seed\d+$", "", run_dir.name)


def print_peak(name: str, gold: Curve, proxy: Curve, away: Curve, axis_key: str) -> None:
    """Print where held-out gold peaks (samples, KL or distance, proxy there) and where the run ends."""
    peak = int(gold.values.argmax())
    where = AXES[axis_key][1].format(away.values[peak])
    print(
        f"{name}: gold peaks at {gold.values[peak]:.4f} after {int(gold.steps[peak])} samples "
        f"({where}, proxy {proxy.values[peak]:.3f}); "
        f"last: gold {gold.values[-1]:.4f}, proxy {proxy.values[-1]:.3f} at {int(gold.steps[-1])} samples"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run folders that optimised the proxy")
    parser.add_argument("--output", type=Path, default=Path("gold_vs_proxy.png"), help="the figure (PNG)")
    parser.add_argument(
        "--base-gold", type=float, default=None, help="the base model's held-out gold, for unfinished runs"
    )
    parser.add_argument(
        "--base-proxy", type=float, default=None, help="the base model's held-out proxy, for unfinished runs"
    )
    args = parser.parse_args(argv)

    histories = [history_with_kl(run_dir) for run_dir in args.runs]
    # the second panel's x: the KL to the base policy (0 for the base model) if the runs logged it, else the distance
    with_kl = [any("eval_kl_to_base" in record for record in history) for history in histories]
    if len(set(with_kl)) > 1:
        names = ", ".join(str(run_dir) for run_dir, kl in zip(args.runs, with_kl, strict=True) if kl)
        parser.error(f"only some runs logged eval_kl_to_base ({names}): evaluate all of them with --eval-kl, or none")
    axis_key = "kl_to_base" if with_kl[0] else "distance_from_base"
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    proxy_axes = [axis.twinx() for axis in axes]  # proxy on its own scale, right
    groups: dict[str, list[tuple[Curve, Curve, Curve]]] = {}
    for run_dir, history in zip(args.runs, histories, strict=True):
        base = base_scores(run_dir) or {"gold": args.base_gold, "proxy": args.base_proxy}
        gold = held_out_curve(history, "gold", base.get("gold"))
        proxy = held_out_curve(history, "proxy", base.get("proxy"))
        away = held_out_curve(history, axis_key, 0.0 if base.get("gold") is not None else None)
        if gold is None or proxy is None or away is None:
            parser.error(f"{run_dir}: no held-out gold, proxy and {axis_key} in its metrics.jsonl")
        if not len(gold.steps) == len(proxy.steps) == len(away.steps):
            parser.error(f"{run_dir}: its evaluations do not all log gold, proxy and {axis_key}")
        print_peak(str(run_dir), gold, proxy, away, axis_key)
        groups.setdefault(group_name(run_dir), []).append((gold, proxy, away))
    for index, (name, runs) in enumerate(groups.items()):
        color = f"C{index}"
        single = len(runs) == 1
        # a lone run is drawn and labelled in full; a group's runs thin and unlabelled, under their mean
        width, alpha, label = (1.5, 1.0, name) if single else (0.8, 0.35, None)
        for gold, proxy, away in runs:
            for axis, proxy_axis, x in zip(axes, proxy_axes, (gold.steps, away.values), strict=True):
                axis.plot(
                    x, gold.values, "o-", color=color, lw=width, ms=3, alpha=alpha, label=label and f"gold, {label}"
                )
                proxy_axis.plot(
                    x,
                    proxy.values,
                    "s--",
                    color=color,
                    lw=width,
                    ms=3,
                    alpha=alpha * 0.5,
                    label=label and f"proxy, {label}",
                )
        steps = [gold.steps for gold, _, _ in runs]
        if single:
            continue
        if any(not np.array_equal(steps[0], other) for other in steps[1:]):
            print(f"{name}: its runs were evaluated at different sample counts; no seed mean")
            continue
        gold, proxy, away = (
            Curve(steps[0], np.mean([run[part].values for run in runs], axis=0))  # (E,) mean over seeds
            for part in range(3)
        )
        print_peak(f"{name} (mean of {len(runs)} runs)", gold, proxy, away, axis_key)
        for axis, proxy_axis, x in zip(axes, proxy_axes, (gold.steps, away.values), strict=True):
            axis.plot(x, gold.values, "o-", color=color, lw=2.5, label=f"gold, {name}, mean of {len(runs)}")
            proxy_axis.plot(x, proxy.values, "s--", color=color, lw=2, alpha=0.6, label=f"proxy, {name}, mean")
    axes[0].set(xlabel="fresh samples", ylabel="held-out gold (solid)", title="gold and proxy against samples")
    xlabel, _, title = AXES[axis_key]
    axes[1].set(xlabel=xlabel, title=title)
    if axis_key == "kl_to_base":
        # logarithmic above 10 nats (linear below, for the base model's 0): a KL-regularised run stays orders of
        # magnitude closer to the base than an unregularised one, and both must be readable on one axis
        axes[1].set_xscale("symlog", linthresh=10.0)
    for axis, proxy_axis in zip(axes, proxy_axes, strict=True):
        axis.grid(alpha=0.3)
        proxy_axis.set_ylabel("held-out proxy (dashed, right)")
        lines = axis.get_legend_handles_labels()
        proxy_lines = proxy_axis.get_legend_handles_labels()
        axis.legend(lines[0] + proxy_lines[0], lines[1] + proxy_lines[1], fontsize=7, loc="best")
    figure.tight_layout()
    figure.savefig(args.output, dpi=110)
    print(f"figure: {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
