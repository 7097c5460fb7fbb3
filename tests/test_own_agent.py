"""Bring your own agent: the open registry (agents.register_agent, the ``diffusion_gym.agents`` entry points), and
docs/agents.md's agent, run from a file outside the package: trained, resumed in a fresh process (exactly), and
compared with a built-in agent."""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
from _scripts import REPO

from agents import AGENT_NAMES, AgentConfig, EnvConfig, Trainer, agent_names, catalog, register_agent, registry
from agents.algorithms.base import Agent
from agents.algorithms.ddpo import DDPOAgent
from agents.experiments.comparison import resolve_variants, run_comparison
from agents.training.run_folder import RunSettings, read_history

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPTS = ("A cat. A dog on a mat.", "A red box. A blue sky.")
TIMING_KEYS = {"epoch_seconds", "samples_per_second", "elapsed_seconds"}


@pytest.fixture(autouse=True)
def clean_registry():
    """Each test sees the registry as it found it (registrations are process-wide)."""
    saved, loaded = dict(catalog._registered), catalog._entry_points_loaded
    yield
    catalog._registered.clear()
    catalog._registered.update(saved)
    catalog._entry_points_loaded = loaded


def documented_agent_source() -> str:
    """The first Python block of docs/agents.md's "Bring your own agent" section: the user's file."""
    text = (REPO / "docs" / "agents.md").read_text()
    section = text.split("## Bring your own agent", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """docs/agents.md's ``my_agent.py``, written to a folder outside the repository and imported from there."""
    folder = tmp_path / "user_code"
    folder.mkdir()
    (folder / "my_agent.py").write_text(documented_agent_source())
    monkeypatch.syspath_prepend(str(folder))
    sys.modules.pop("my_agent", None)
    module = importlib.import_module("my_agent")
    yield module
    sys.modules.pop("my_agent", None)


@pytest.fixture(scope="module")
def env_settings(tiny_pipeline) -> EnvConfig:
    return EnvConfig(tiny_pipeline, "jpeg-incompressibility", PROMPTS, num_inference_steps=2, latent_bound=1e4)


@pytest.fixture(scope="module")
def env(env_settings):
    env = env_settings.make(num_envs=2)
    yield env
    env.close()


def tiny_config(**overrides) -> AgentConfig:
    return AgentConfig(**{"batch_size": 2, "batches_per_epoch": 1, "lora_rank": 2, "loop_k": 2, "seed": 0, **overrides})


def without_timing(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in record.items() if k not in TIMING_KEYS} for record in history]


# ------------------------------------------------------------------------------------------ the registry
class NamedAgent(DDPOAgent):
    name = "named-ddpo"


def test_a_registered_agent_is_listed_after_the_builtins_and_built_by_name():
    register_agent("named-ddpo", NamedAgent)
    assert agent_names()[: len(AGENT_NAMES)] == AGENT_NAMES and "named-ddpo" in agent_names()
    assert (*registry.BUILTIN_AGENTS, "herd") == AGENT_NAMES and "named-ddpo" not in AGENT_NAMES  # built-ins only
    assert registry.agent_class("named-ddpo") is NamedAgent
    register_agent("named-ddpo", NamedAgent)  # the same class again (a module imported twice): no error
    assert [variant.agent for variant in resolve_variants("ddpo,named-ddpo")] == ["ddpo", "named-ddpo"]


@pytest.mark.parametrize(
    ("name", "cls", "error", "message"),
    [
        ("ddpo", NamedAgent, ValueError, "'ddpo' is a built-in agent"),
        ("herd", NamedAgent, ValueError, "'herd' is a built-in agent"),
        ("Named DDPO", NamedAgent, ValueError, "agent name must be lowercase letters"),
        ("", NamedAgent, ValueError, "agent name must be lowercase letters"),
        ("other-name", NamedAgent, ValueError, r"NamedAgent.name is 'named-ddpo', not 'other-name'"),
        ("named-ddpo", dict, TypeError, "must be a subclass of agents.algorithms.base.Agent"),
        ("named-ddpo", "no_colon.AgentClass", ValueError, "'module:Class'"),
    ],
)
def test_bad_registrations_are_clear_errors_and_register_nothing(name, cls, error, message):
    before = agent_names()
    with pytest.raises(error, match=message):
        register_agent(name, cls)
    assert agent_names() == before


def test_a_name_taken_by_another_class_needs_overwrite():
    class Other(Agent):
        name = "named-ddpo"

    register_agent("named-ddpo", NamedAgent)
    with pytest.raises(ValueError, match="already registered to .*NamedAgent; pass overwrite=True"):
        register_agent("named-ddpo", Other)
    assert registry.agent_class("named-ddpo") is NamedAgent
    register_agent("named-ddpo", Other, overwrite=True)
    assert registry.agent_class("named-ddpo") is Other


def test_an_unknown_agent_says_how_to_register_one():
    with pytest.raises(ValueError, match=r"unknown agent 'mine'; expected one of .*register_agent\('mine'"):
        registry.agent_class("mine")
    with pytest.raises(ValueError, match="unknown agent or variant 'mine'"):
        resolve_variants("ddpo,mine")


def test_an_installed_packages_entry_point_registers_its_agent(tmp_path, monkeypatch):
    """A distribution on sys.path declaring ``[diffusion_gym.agents] named-ddpo = module:Class`` is found without
    an import; its module is imported when the agent is first built."""
    (tmp_path / "plugin_agents.py").write_text(
        "from agents.algorithms.ddpo import DDPOAgent\n\n\nclass PluginAgent(DDPOAgent):\n    name = 'plugin-ddpo'\n"
    )
    info = tmp_path / "plugin_agents-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: plugin-agents\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[diffusion_gym.agents]\nplugin-ddpo = plugin_agents:PluginAgent\nddpo = plugin_agents:PluginAgent\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    catalog._entry_points_loaded = False
    with pytest.warns(UserWarning, match="skipped the diffusion_gym.agents entry point 'ddpo': 'ddpo' is a built-in"):
        names = agent_names()  # a plugin claiming a built-in's name is skipped, the others load
    assert "plugin-ddpo" in names and "plugin_agents" not in sys.modules
    cls = registry.agent_class("plugin-ddpo")
    assert cls.__module__ == "plugin_agents" and cls.name == "plugin-ddpo"
    sys.modules.pop("plugin_agents", None)


class Tweaked(DDPOAgent):  # a subclass that kept its parent's name, "ddpo"
    pass


class OwnDDPO(DDPOAgent):
    name = "own-ddpo"


def test_an_agent_its_name_would_not_rebuild_is_warned_about(env):
    """A trainer given an agent instance records the agent's name; a subclass that kept its parent's name, or an
    unregistered class, would resume as another agent or not at all: agent_spec says so (a registered one is
    silent)."""
    from agents import agent_spec

    tweaked, own = Tweaked(env, tiny_config()), OwnDDPO(env, tiny_config())
    try:
        with pytest.warns(UserWarning, match="agent name 'ddpo' builds DDPOAgent, not Tweaked"):
            assert agent_spec(tweaked)[0] == "ddpo"
        with pytest.warns(UserWarning, match="agent name 'own-ddpo' is not registered"):
            agent_spec(own)
        register_agent("own-ddpo", OwnDDPO)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert agent_spec(own)[0] == "own-ddpo"
    finally:
        tweaked.close()
        own.close()


# ------------------------------------------------------------------------------------------ a user's file
def test_the_documented_agent_trains_and_resumes_in_a_fresh_process(user_module, env, env_settings, tmp_path):
    assert user_module.__file__.startswith(str(tmp_path)) and "rank-ppo" in agent_names()
    options = {"eval_prompts": "a small blue square", "eval_samples": 2, "eval_every": 2, "checkpoint_every": 1}
    with Trainer(env, "rank-ppo", tiny_config(), tmp_path / "straight", **options) as trainer:
        trainer.train(epochs=3)
    with Trainer(env, "rank-ppo", tiny_config(), tmp_path / "resumed", **options) as trainer:
        trainer.train(epochs=2)
    straight = without_timing(read_history(tmp_path / "straight"))
    assert [record["global_step"] for record in straight] == [2, 4, 6]
    assert all("abs_advantage" in record for record in straight)  # the agent's own metric is logged
    assert json.loads((tmp_path / "resumed" / "run.json").read_text())["agent"] == "rank-ppo"

    # a process that does not know the agent refuses to resume, saying how, and leaves the run folder as it was
    folder = tmp_path / "resumed"
    before = {path: path.read_bytes() for path in folder.rglob("*") if path.is_file()}
    registry.unregister_agent("rank-ppo")
    with pytest.raises(ValueError, match=r"unknown agent 'rank-ppo'.*register_agent\('rank-ppo', YourAgent\)"):
        Trainer.resume(folder, env=env)
    assert {path: path.read_bytes() for path in folder.rglob("*") if path.is_file()} == before

    # a fresh process that imports the user's module resumes the run exactly where it stopped
    script = textwrap.dedent(
        f"""
        import my_agent  # registers "rank-ppo"
        from agents import Trainer

        with Trainer.resume({str(folder)!r}) as trainer:
            trainer.train(epochs=3)
        """
    )
    python_path = os.pathsep.join([str(Path(user_module.__file__).parent), str(REPO)])
    environment = {**os.environ, "PYTHONPATH": python_path, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    assert without_timing(read_history(folder)) == straight


def test_the_documented_agent_enters_a_comparison(user_module, env_settings, tmp_path):
    settings = RunSettings(
        agent="ddpo",
        config=tiny_config(),
        output_dir=tmp_path,
        env=env_settings,
        epochs=1,
        eval_prompts="a small blue square",
        eval_samples=2,
        eval_every=100,
    )
    summary = run_comparison(settings, resolve_variants("ddpo,rank-ppo"), seeds=[0], output_dir=tmp_path / "cmp")
    table = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "| ddpo | 1 |" in table and "| rank-ppo | 1 |" in table
    assert [variant.name for variant in summary.variants] == ["ddpo", "rank-ppo"]
    results = json.loads((tmp_path / "cmp" / "rank-ppo-seed0" / "results.json").read_text())
    assert results["agent"] == "rank-ppo" and results["epochs_completed"] == 1


def test_the_documented_agent_enters_the_bench(user_module, tmp_path):
    """In this process (``jobs=1``; subprocesses find an agent through its package's entry point), at the smoke
    budget of the ``long`` task: both agents are ranked, paired by seed."""
    from agents.experiments.bench import bench

    board = bench(["long"], ["ddpo", "rank-ppo"], [0], tmp_path / "bench", budget="smoke", reps=100)
    task = board["tasks"]["long"]
    assert set(task["agents"]) == {"ddpo", "rank-ppo"} and task["agents"]["rank-ppo"]["seeds"] == 1
    assert [(pair["a"], pair["b"]) for pair in task["pairs"]] in ([("ddpo", "rank-ppo")], [("rank-ppo", "ddpo")])
    assert (
        json.loads((tmp_path / "bench" / "long" / "rank-ppo-seed0" / "results.json").read_text())["agent"] == "rank-ppo"
    )
