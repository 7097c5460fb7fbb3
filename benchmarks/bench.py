"""The bench: a task suite x agents x seeds, resumable, summarised as a leaderboard (``agents/experiments/bench.py``).

    python benchmarks/bench.py --tasks long,multi --agents ddpo,loop,herd --seeds 5 --output-dir runs/bench
    python benchmarks/bench.py --tasks long --agents ddpo,loop --seeds 2 --budget smoke --output-dir runs/smoke
    python benchmarks/bench.py --help        # every flag, the tasks and the agents

A thin script over :func:`agents.experiments.bench.main` (the same as ``python -m agents.experiments.bench``); the
statistics need the ``bench`` extra (``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import sys

from agents.experiments.bench import main

if __name__ == "__main__":
    sys.exit(main())
