"""Heavy imports are lazy: ``import agents`` and ``import diffusion_gym`` load none of diffusers, transformers, peft,
matplotlib, scipy, tensorboard or torch's compiler; ``from agents import Trainer`` loads torch but none of the rest.
Structural (which modules a fresh process has loaded), not timed: benchmarks/probes/import_cost.py times them."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from _scripts import REPO

import agents

HEAVY = ("diffusers", "transformers", "peft", "matplotlib", "scipy", "tensorboard", "torch._dynamo", "open_clip")


def loaded_after(statement: str) -> set[str]:
    """The top-level-or-named modules of HEAVY (and torch) that ``statement`` loads in a fresh interpreter."""
    script = f"import sys\n{statement}\nimport json\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300, check=True
    )
    modules = set(json.loads(done.stdout.splitlines()[-1]))
    return {name for name in (*HEAVY, "torch") if name in modules}


@pytest.mark.parametrize(
    ("statement", "allowed"),
    [
        ("import agents", set()),
        ("import diffusion_gym", set()),
        ("import agents, diffusion_gym; agents.register_agent; agents.agent_names()", set()),
        ("from agents import AgentConfig, Trainer", {"torch"}),
        ("import agents.experiments.comparison, agents.training.trainer", {"torch"}),
    ],
)
def test_an_import_loads_no_heavy_package(statement, allowed):
    assert loaded_after(statement) <= allowed


def test_every_public_name_resolves_lazily():
    assert sorted(agents.__all__) == sorted(agents._EXPORTS)
    for name in agents.__all__:
        assert getattr(agents, name) is not None, name
        assert name in dir(agents)
    from agents.training.trainer import Trainer

    assert agents.Trainer is Trainer
    with pytest.raises(AttributeError, match="module 'agents' has no attribute 'Trainr'"):
        agents.Trainr  # noqa: B018
