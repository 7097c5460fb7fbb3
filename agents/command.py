"""The ``diffusion-gym`` console script: one command, a subcommand per job.

    diffusion-gym run --agent ddpo                  # the default task (make run): one run folder
    diffusion-gym compare ddpo,loop --seeds 0,1,2   # agents x seeds, one at a time, a comparison table
    diffusion-gym evaluate runs/ddpo-...            # re-evaluate a finished run on many samples, with a CI
    diffusion-gym bench --tasks long,multi --agents ddpo,loop,herd --seeds 5 --output-dir runs/bench --jobs 2
    diffusion-gym SUBCOMMAND --help                 # its flags

Each subcommand is a module's ``main`` (:mod:`agents.run_command`, :mod:`agents.reevaluation`,
:mod:`agents.experiments.bench`), imported only when it runs; ``python benchmarks/run.py`` is ``diffusion-gym run``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

USAGE = "usage: diffusion-gym {run,compare,evaluate,bench} ... (diffusion-gym SUBCOMMAND --help for its flags)"


def _run(argv: Sequence[str]) -> int:
    from agents.run_command import configure_logging, main

    configure_logging()
    return main(list(argv))


def _compare(argv: Sequence[str]) -> int:
    """``compare V1,V2,... [flags]`` is ``run --compare V1,V2,... [flags]``."""
    from agents.run_command import configure_logging, main

    argv = list(argv)
    if argv and not argv[0].startswith("-"):
        argv = ["--compare", *argv]
    configure_logging()
    return main(argv, prog="diffusion-gym compare")


def _evaluate(argv: Sequence[str]) -> int:
    from agents.reevaluation import main

    main(argv)
    return 0


def _bench(argv: Sequence[str]) -> int:
    from agents.experiments.bench import main

    return main(argv)


SUBCOMMANDS: dict[str, tuple[Callable[[Sequence[str]], int], str]] = {
    "run": (_run, "train one agent on a task (default: the long prompt) and write a run folder; or --resume one"),
    "compare": (_compare, "train agents or variants x seeds on the same task and write a comparison table"),
    "evaluate": (_evaluate, "re-evaluate a finished run against the base model on many samples, with a 95% CI"),
    "bench": (_bench, "train a task suite x agents x paired seeds and write the leaderboard (rliable statistics)"),
}


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch ``argv`` (default: ``sys.argv[1:]``) to its subcommand; exit status 2 with the usage for an unknown
    or missing one."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        lines = [USAGE, "", "subcommands:"]
        lines += [f"  {name:<9} {summary}" for name, (_, summary) in SUBCOMMANDS.items()]
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
