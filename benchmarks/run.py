"""Fine-tune the env's diffusion model with an RL agent, or compare agents over seeds: ``diffusion-gym run``.

    python benchmarks/run.py --agent ddpo           # the default task = make run = diffusion-gym run --agent ddpo
    python benchmarks/run.py --agent herd
    python benchmarks/run.py --help                 # every flag

The project's documented entry, kept as a thin script over :func:`agents.run_command.main` (the same as the
installed ``diffusion-gym run``).
"""

from __future__ import annotations

import sys

from agents.run_command import configure_logging, main

if __name__ == "__main__":
    configure_logging()
    sys.exit(main(prog="benchmarks/run.py"))
