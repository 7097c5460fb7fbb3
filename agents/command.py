"""The ``diffusion-gym`` console script: one command, a subcommand per job.

    diffusion-gym bench --tasks long,multi --agents ddpo,loop,herd --seeds 5 --output-dir runs/bench --jobs 2

Subcommands today: ``bench`` (:mod:`agents.bench`). Training one run or a comparison is still
``python benchmarks/run.py`` (``make run``); it joins this command as ``diffusion-gym run`` / ``compare``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

USAGE = "usage: diffusion-gym {bench} ... (diffusion-gym SUBCOMMAND --help for its flags)"


def _bench(argv: Sequence[str]) -> int:
    from agents.bench import main

    return main(argv)


SUBCOMMANDS: dict[str, tuple[Callable[[Sequence[str]], int], str]] = {
    "bench": (_bench, "train a task suite x agents x paired seeds and write the leaderboard (rliable statistics)"),
}


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch ``argv`` (default: ``sys.argv[1:]``) to its subcommand; exit status 2 with the usage for an unknown
    or missing one."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        lines = [USAGE, "", "subcommands:"]
        lines += [f"  {name:<8} {summary}" for name, (_, summary) in SUBCOMMANDS.items()]
        lines += ["", "Training one run or a comparison: python benchmarks/run.py --help (make run)."]
        print("\n".join(lines), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(
            f"{USAGE}\ndiffusion-gym: error: unknown subcommand {name!r}; expected one of {list(SUBCOMMANDS)}",
            file=sys.stderr,
        )
        return 2
    return SUBCOMMANDS[name][0](rest)


if __name__ == "__main__":
    sys.exit(main())
