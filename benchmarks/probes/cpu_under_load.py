"""An epoch of the default run on the CPU alone and beside a busy process, before and after the fix. A benchmark.

The question (issue 30, "the CPU under load"): with one other single-threaded busy process on the cores, an
epoch of ``benchmarks/run.py --agent ddpo`` at the default thread count took 17x as long as with ``--threads 1``,
its threads spinning in the OpenMP runtime's barriers instead of computing. This probe times, in a fresh process
each (the OpenMP runtime reads its wait policy once, when torch loads it), ``--epochs`` epochs of the default
run's agent (``agent.train_epoch()`` of ``Trainer.from_settings`` on ``benchmarks/run.py``'s settings, after
``--warmup`` epochs; no evaluation, no checkpoint) for each variant:

* ``before``: the run as it was: torch loaded before ``benchmarks/run.py``'s module, so the OpenMP runtime
  starts with its own default wait policy (libgomp: spin 300000 times before sleeping), torch's default thread
  count (one per core);
* ``threads1``: ``before`` with ``torch.set_num_threads(1)`` (``--threads 1``);
* ``spin1000``: ``before`` with ``GOMP_SPINCOUNT=1000`` when torch loads (libgomp's spin before sleeping cut
  300-fold; not in the default list);
* ``passive``: ``before`` with ``OMP_WAIT_POLICY=PASSIVE`` when torch loads (waiting threads sleep at once; not
  in the default list);
* ``after``: the run as it is now: ``benchmarks/run.py``'s module loaded before torch, then the threads as
  ``main`` sets them (``set_threads``: ``--threads``, else 1);

under each condition: ``alone``, and ``busy``: beside ``python -c "while True: pass"`` (one core busy), started
before the child and killed after it. The children run without ``OMP_WAIT_POLICY`` and ``GOMP_SPINCOUNT`` in
their environment (the default is what is measured). Conditions and variants are interleaved, round by round.

Prints, per agent and variant, the median wall seconds of an epoch alone and busy, busy/alone, the process CPU
seconds per wall second busy (about 1 per thread that computes or spins), and each variant's ratio to ``before``;
the load average (1 min) when each child started is printed as it runs: on a shared machine "alone" is only as
alone as the load says. Nothing is asserted.

    python benchmarks/probes/cpu_under_load.py                              # ddpo, the default run's epoch
    python benchmarks/probes/cpu_under_load.py --agents ddpo,herd --rounds 2
    python benchmarks/probes/cpu_under_load.py --variants before,after --conditions busy -- --batch-size 8
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VARIANTS = ("before", "threads1", "after", "spin1000", "passive")
CONDITIONS = ("alone", "busy")
USER_SETTINGS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")  # removed from the children's environment
BUSY = "while True: pass"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", default="ddpo", help="comma-separated agents (default: %(default)s)")
    parser.add_argument("--variants", default=",".join(VARIANTS[:3]), help="comma-separated (default: %(default)s)")
    parser.add_argument("--conditions", default=",".join(CONDITIONS), help="comma-separated (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs per child (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed epochs first (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=1, help="children per agent, variant, condition (default: 1)")
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)  # one measurement, in this process
    parser.add_argument("run_args", nargs="*", help="after --: more benchmarks/run.py flags (e.g. --batch-size 8)")
    args = parser.parse_args(argv)
    for name, allowed in (("variants", VARIANTS), ("conditions", CONDITIONS)):
        values = getattr(args, name).split(",")
        unknown = [value for value in values if value not in allowed]
        if unknown or not values:
            parser.error(f"--{name}: unknown {unknown}, choose from {', '.join(allowed)}")
        setattr(args, name, values)
    args.agents = args.agents.split(",")
    for name in ("epochs", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.warmup < 0:
        parser.error(f"--warmup must be >= 0, got {args.warmup}")
    return args


# ----------------------------------------------------------------------------------------------- the child
def load_run_script():
    """``benchmarks/run.py`` as a module (a script, not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("benchmarks_run", REPO / "benchmarks" / "run.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def child(args: argparse.Namespace, agent: str) -> dict:
    """Time the epochs of one variant in this process; the OpenMP runtime is not loaded yet."""
    if args.child == "after":
        run_script = load_run_script()  # first, as when run.py runs: whatever it sets before torch loads applies
        environment = {name: os.environ.get(name) for name in USER_SETTINGS}
        import torch
    else:
        if args.child == "spin1000":
            os.environ["GOMP_SPINCOUNT"] = "1000"
        elif args.child == "passive":
            os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        environment = {name: os.environ.get(name) for name in USER_SETTINGS}
        import torch  # the OpenMP runtime starts with the environment as it is

        run_script = load_run_script()
    from agents import Trainer

    output_dir = tempfile.mkdtemp(prefix="cpu_under_load-")
    settings = run_script.parse_args(["--agent", agent, "--output-dir", output_dir, *args.run_args])
    if args.child == "after":
        run_script.set_threads(settings)  # as main() does
    elif args.child == "threads1":
        torch.set_num_threads(1)
    # the probe never trains through the trainer: no run folder is written
    trainer = Trainer.from_settings(settings)
    for _ in range(args.warmup):
        trainer.agent.train_epoch()
    wall, cpu = [], []
    for _ in range(args.epochs):
        wall_start, cpu_start = time.perf_counter(), time.process_time()
        trainer.agent.train_epoch()
        wall.append(time.perf_counter() - wall_start)
        cpu.append(time.process_time() - cpu_start)
    trainer.close()
    shutil.rmtree(output_dir, ignore_errors=True)
    return {
        "wall": wall,
        "cpu": cpu,
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "os_threads": len(os.listdir("/proc/self/task")) if os.path.isdir("/proc/self/task") else None,
        "environment_at_torch": environment,  # what the OpenMP runtime read
    }


# ----------------------------------------------------------------------------------------------- the parent
def measure(args: argparse.Namespace, agent: str, variant: str, condition: str) -> dict:
    """One child process (beside a busy one under ``busy``); its measurement and the load when it started."""
    environment = {key: value for key, value in os.environ.items() if key not in USER_SETTINGS}
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), environment.get("PYTHONPATH")]))
    command = [sys.executable, __file__, "--child", variant, "--agents", agent]
    command += ["--epochs", str(args.epochs), "--warmup", str(args.warmup), "--", *args.run_args]
    busy = subprocess.Popen([sys.executable, "-c", BUSY]) if condition == "busy" else None
    load = os.getloadavg()[0]
    try:
        done = subprocess.run(command, env=environment, capture_output=True, text=True, check=False)
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()
    if done.returncode != 0:
        raise SystemExit(f"the {variant} child ({condition}) failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["load"] = load
    return result


def table(results: dict[tuple[str, str, str], list[dict]], args: argparse.Namespace) -> str:
    """Median epoch seconds per agent and variant, alone and busy, with the ratios."""

    def median(agent: str, variant: str, condition: str, key: str = "wall") -> float | None:
        runs = results.get((agent, variant, condition))
        return statistics.median(value for run in runs for value in run[key]) if runs else None

    def cell(value: float | None, digits: int = 1, suffix: str = "") -> str:
        return "-" if value is None else f"{value:.{digits}f}{suffix}"

    def ratio(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else a / b

    lines = [
        "| agent | variant | threads | alone s/epoch | busy s/epoch | busy / alone | busy CPU s per s | "
        "alone / before's | busy / before's | load at starts |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for agent in args.agents:
        for variant in args.variants:
            alone, busy = median(agent, variant, "alone"), median(agent, variant, "busy")
            busy_cpu = median(agent, variant, "busy", "cpu")
            runs = [run for condition in CONDITIONS for run in results.get((agent, variant, condition), [])]
            loads = " ".join(f"{run['load']:.1f}" for run in runs)
            lines.append(
                f"| {agent} | {variant} | {runs[0]['threads']} | {cell(alone)} | {cell(busy)} | "
                f"{cell(ratio(busy, alone), 2, 'x')} | {cell(ratio(busy_cpu, busy), 2)} | "
                f"{cell(ratio(alone, median(agent, 'before', 'alone')), 2, 'x')} | "
                f"{cell(ratio(busy, median(agent, 'before', 'busy')), 2, 'x')} | {loads} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child is not None:
        print(json.dumps(child(args, args.agents[0])))
        return
    print(f"cpus {sorted(os.sched_getaffinity(0))}, load average {os.getloadavg()}", flush=True)
    results: dict[tuple[str, str, str], list[dict]] = {}
    for round_index in range(args.rounds):
        for agent in args.agents:
            for condition in args.conditions:
                # the variants' order rotated by round, so that no variant always runs first
                shift = round_index % len(args.variants)
                for variant in args.variants[shift:] + args.variants[:shift]:
                    result = measure(args, agent, variant, condition)
                    results.setdefault((agent, variant, condition), []).append(result)
                    walls = " ".join(f"{value:.1f}" for value in result["wall"])
                    cpus = " ".join(f"{value:.1f}" for value in result["cpu"])
                    print(
                        f"round {round_index + 1} {agent} {variant} {condition}: wall {walls} s, cpu {cpus} s, "
                        f"threads {result['threads']} (interop {result['interop_threads']}, os "
                        f"{result['os_threads']}), env when torch loaded {result['environment_at_torch']}, "
                        f"load {result['load']:.1f}",
                        flush=True,
                    )
    print(f"load average at the end {os.getloadavg()}")
    print(table(results, args))


if __name__ == "__main__":
    main()
