"""benchmarks/run.py's torch thread count: ``--threads``, else one intra-op thread (not torch's one per core), which
stays fast beside other busy processes. Why: docs/experiments/2026-12-07-cpu-under-load.md."""

from __future__ import annotations

import pytest
import torch

from agents import AgentConfig, RunSettings
from agents import run_command as run


@pytest.fixture
def restore_threads():
    previous = torch.get_num_threads()
    yield
    torch.set_num_threads(previous)


@pytest.mark.parametrize(("given", "expected"), [(None, 1), (1, 1), (2, 2)])
def test_the_run_uses_one_torch_thread_unless_threads_is_given(restore_threads, given, expected):
    torch.set_num_threads(2)
    run.set_threads(RunSettings(agent="ddpo", config=AgentConfig(), output_dir="unused", threads=given))
    assert torch.get_num_threads() == expected


def test_the_cli_records_no_thread_count_when_none_is_given(tmp_path):
    settings = run.parse_args(["--agent", "ddpo", "--output-dir", str(tmp_path / "run")])
    assert settings.threads is None  # the default (1) is applied by set_threads, not written into run.json
