"""Data-parallel training with ``accelerate launch``: 2 CPU processes (gloo) on the tiny pipeline.

``accelerate launch --cpu --num_processes 2`` starts ONE process (accelerate's simple launcher spawns several
only through mpirun), so the test launches with ``--multi_gpu`` (torchrun) and ``ACCELERATE_USE_CPU=true``:
without a GPU, accelerate then runs 2 CPU processes on gloo. The worker (``tests/_distributed_worker.py``) trains
DDPO, HERD and DPOK, then runs ``benchmarks/run.py`` (and a ``--resume``) end to end.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _distributed_worker import CONFIG, RUNS
from _scripts import REPO

from agents.algorithms.math import PerPromptStatTracker, clip_advantages
from agents.checkpoint import load_checkpoint
from agents.distributed import Distributed
from agents.training.trainer import process_agent_state

WORKER = Path(__file__).with_name("_distributed_worker.py")

ACCELERATE = Path(sys.executable).with_name("accelerate")  # the venv's launcher


@pytest.fixture(scope="module")
def launched(tiny_pipeline, tmp_path_factory) -> Path:
    """Run the 2-process worker once; its output folder."""
    if not ACCELERATE.exists():
        pytest.skip(f"accelerate's launcher is not installed ({ACCELERATE})")
    out_dir = tmp_path_factory.mktemp("distributed")
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "ACCELERATE_USE_CPU": "true",
        "CUDA_VISIBLE_DEVICES": "",
    }
    command = [
        str(ACCELERATE),
        "launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        "0",  # a free port
        str(WORKER),
        tiny_pipeline,
        str(out_dir),
    ]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    (out_dir / "stdout.txt").write_text(done.stdout)
    return out_dir


def reports(out_dir: Path, name: str) -> list[dict]:
    return [json.loads((out_dir / f"{name}-rank{rank}.json").read_text()) for rank in range(2)]


@pytest.mark.parametrize("name", [run[0] for run in RUNS])
def test_parameters_are_bit_identical_across_ranks(launched, name):
    ranks = reports(launched, name)
    assert [r["num_processes"] for r in ranks] == [2, 2]
    assert ranks[0]["initial_hash"] == ranks[1]["initial_hash"]
    assert ranks[0]["hash"] != ranks[0]["initial_hash"]  # the LoRA moved
    assert ranks[0]["hash"] == ranks[1]["hash"]
    assert ranks[0]["stat_tracker"] == ranks[1]["stat_tracker"]  # both normalised the same global batches
    assert ranks[0]["reward_mean"] == ranks[1]["reward_mean"]  # global metrics
    first, second = ranks[0]["records"][0], ranks[1]["records"][0]
    assert first["rewards"] != second["rewards"]  # each rank sampled its own episodes


@pytest.mark.parametrize("name", [run[0] for run in RUNS])
def test_advantages_equal_single_process_on_global_batch(launched, name):
    """The per-rank advantages, concatenated, are those one process computes on the concatenated batch."""
    ranks = reports(launched, name)
    tracker = PerPromptStatTracker(CONFIG["stat_buffer_size"], CONFIG["stat_min_count"])
    epochs = dict((run[0], run[2]) for run in RUNS)[name]
    assert len(ranks[0]["records"]) == len(ranks[1]["records"]) == epochs
    used_history = False
    for first, second in zip(ranks[0]["records"], ranks[1]["records"], strict=True):
        prompts = first["prompts"] + second["prompts"]
        rewards = torch.tensor(first["rewards"] + second["rewards"], dtype=torch.float32)
        expected = clip_advantages(tracker.update(prompts, rewards), 5.0)
        got = torch.tensor(first["advantages"] + second["advantages"], dtype=torch.float32)
        assert torch.equal(got, expected)
        used_history |= any(len(tracker.stats[p]) >= CONFIG["stat_min_count"] for p in set(prompts))
    assert used_history  # the per-prompt statistics (not only batch-wide ones) were exercised
    assert tracker.state_dict() == ranks[0]["stat_tracker"]
    if name == "herd":
        assert any(ranks[0]["records"][-1]["relabeled"])  # the replay joined the global statistics


def test_run_cli_writes_once_and_resumes(launched):
    run_dir = launched / "run"
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2, 3]
    assert [line["global_step"] for line in lines] == [4, 8, 12]  # 2 processes x batch 2
    assert (launched / "stdout.txt").read_text().count("run folder:") == 2  # main process only, run + resume
    results = json.loads((run_dir / "results.json").read_text())
    assert results["epochs_completed"] == 3 and results["command"].startswith("accelerate launch --num_processes 2")
    checkpoint = load_checkpoint(run_dir)
    assert len(checkpoint["processes"]) == 1  # rank 1's agent state (its RNGs and HERD buffer)
    assert checkpoint["processes"][0]["rng"]["numpy"] != checkpoint["agent"]["rng"]["numpy"]
    assert checkpoint["agent"]["relabeler"]["history"] is not None  # HERD's buffer, composed with the base agent


def test_resume_with_another_process_count_is_a_clear_error():
    checkpoint = {"agent": {}, "processes": [{}]}  # saved by 2 processes
    with pytest.raises(ValueError, match="saved by 2 process"):
        process_agent_state(checkpoint, Distributed())
    assert process_agent_state({"agent": {"a": 1}}, Distributed()) == {"a": 1}  # a single-process checkpoint


def test_single_process_is_a_no_op():
    distributed = Distributed()
    assert (distributed.num_processes, distributed.process_index, distributed.is_main_process) == (1, 0, True)
    assert distributed.process_seed(7) == 7
    assert distributed.gather_object({"a": 1}) == [{"a": 1}] and distributed.broadcast_object("x") == "x"
    parameter = torch.nn.Parameter(torch.ones(2))
    parameter.grad = torch.full((2,), 3.0)
    distributed.sync_gradients([parameter])
    assert parameter.grad.tolist() == [3.0, 3.0]
    assert distributed.mean_metrics({"a": 1.0}) == {"a": 1.0}
    loss = (parameter * 2.0).sum()
    distributed.backward(loss)  # plain loss.backward(): the gradient accumulates
    assert parameter.grad.tolist() == [5.0, 5.0]
    assert Distributed().device("cuda") == "cuda"
