"""What does importing the library cost next to ``import torch``? A benchmark, not a test.

Runs each import statement in a fresh interpreter ``--repetitions`` times, the statements interleaved per
repetition (a loaded machine slows them alike), and prints a markdown table: the median and min wall time of the
import (``time.perf_counter`` around it) and the median peak RSS of the process (``resource.getrusage``
``ru_maxrss``). Target (issue 29): ``import agents`` and ``import diffusion_gym`` within 1.5x the time and RSS of
``import torch``. tests/test_light_imports.py checks which packages the imports load.

    python benchmarks/probes/import_cost.py
    python benchmarks/probes/import_cost.py --repetitions 9 "import torch" "from agents import Trainer"
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys

DEFAULT_STATEMENTS = (
    "import torch",
    "import agents",
    "import diffusion_gym",
    "from agents import AgentConfig, Trainer",
    "import diffusion_gym, agents.training.trainer, agents.experiments.comparison",
)
TIMED = """
import resource, time
started = time.perf_counter()
{statement}
seconds = time.perf_counter() - started
print(seconds, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)  # Linux: ru_maxrss in KiB
"""


def measure(statement: str) -> tuple[float, float]:
    """Seconds of ``statement`` and the peak RSS (MiB) of a fresh interpreter that ran it."""
    done = subprocess.run(
        [sys.executable, "-c", TIMED.format(statement=statement)], capture_output=True, text=True, check=True
    )
    seconds, rss = map(float, done.stdout.split())
    return seconds, rss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("statements", nargs="*", default=list(DEFAULT_STATEMENTS), help="import statements to time")
    parser.add_argument("--repetitions", type=int, default=5, help="fresh interpreters per statement")
    args = parser.parse_args()
    times: dict[str, list[float]] = {statement: [] for statement in args.statements}
    rss: dict[str, list[float]] = {statement: [] for statement in args.statements}
    for _ in range(args.repetitions):
        for statement in args.statements:
            seconds, peak = measure(statement)
            times[statement].append(seconds)
            rss[statement].append(peak)
    reference = args.statements[0]
    base_time, base_rss = statistics.median(times[reference]), statistics.median(rss[reference])
    print(f"median of {args.repetitions} fresh interpreters; ratios against `{reference}`\n")
    print("| statement | median s | min s | x time | median peak RSS (MiB) | x RSS |")
    print("|---|---|---|---|---|---|")
    for statement in args.statements:
        median_time, median_rss = statistics.median(times[statement]), statistics.median(rss[statement])
        print(
            f"| `{statement}` | {median_time:.2f} | {min(times[statement]):.2f} | {median_time / base_time:.2f} "
            f"| {median_rss:.0f} | {median_rss / base_rss:.2f} |"
        )


if __name__ == "__main__":
    main()
