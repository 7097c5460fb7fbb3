"""agents.Trainer, the library call behind benchmarks/run.py: callbacks, resume, agents given as instances, and the
README's Python quickstart run against an installed (non-editable) copy of the package, outside the repository."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import gymnasium as gym
import pytest
from _scripts import REPO

from agents import AgentConfig, EnvConfig, EpochEvent, EvaluationEvent, Trainer, TrainerCallback, make_agent
from agents.training.run_folder import read_history, results_table

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPTS = ("A cat. A dog on a mat.", "A red box. A blue sky.")
TIMING_KEYS = {"epoch_seconds", "samples_per_second", "elapsed_seconds"}


@pytest.fixture(scope="module")
def env(tiny_pipeline):
    env = EnvConfig(tiny_pipeline, "jpeg-incompressibility", PROMPTS, num_inference_steps=2, latent_bound=1e4)
    env = env.make(num_envs=2)
    yield env
    env.close()


def config(**overrides) -> AgentConfig:
    # loop_k=2: HERD's default base (LOOP) needs batch_size to be a multiple of K
    return AgentConfig(**{"batch_size": 2, "batches_per_epoch": 1, "lora_rank": 2, "loop_k": 2, "seed": 0, **overrides})


def trainer(env, output_dir: Path, agent="herd", **options) -> Trainer:
    options = {"eval_prompts": "a small blue square", "eval_samples": 2, **options}
    return Trainer(env, agent, config() if isinstance(agent, str) else None, output_dir, **options)


def without_timing(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in record.items() if k not in TIMING_KEYS} for record in history]


# ------------------------------------------------------------------------------------------ callbacks
class Recorder(TrainerCallback):
    """Adds a training metric and a held-out metric; stops after ``stop_after`` epochs."""

    def __init__(self, stop_after: int | None = None, stop_on_evaluation: bool = False):
        self.stop_after, self.stop_on_evaluation = stop_after, stop_on_evaluation
        self.calls: list[tuple[str, int]] = []

    def on_train_begin(self, trainer: Trainer) -> None:
        self.calls.append(("begin", 0))

    def on_evaluation(self, trainer: Trainer, event: EvaluationEvent) -> None:
        self.calls.append(("evaluation", event.epoch))
        event.metrics["twice_reward"] = 2 * event.metrics["reward"]
        assert event.evaluation is not None and event.evaluation.images.shape == (2, 3, 32, 32)
        if self.stop_on_evaluation and event.epoch == self.stop_after:
            event.stop("held-out reward is enough")

    def on_epoch_end(self, trainer: Trainer, event: EpochEvent) -> None:
        self.calls.append(("epoch", event.epoch))
        assert event.samples_seen == 2 * event.epoch and "reward_mean" in event.metrics
        event.metrics["epoch_squared"] = float(event.epoch**2)
        if not self.stop_on_evaluation and event.epoch == self.stop_after:
            event.stop("two epochs are enough")

    def on_train_end(self, trainer: Trainer, result) -> None:
        self.calls.append(("end", result.epochs_completed))


def test_callbacks_add_metrics_and_stop_training_early(env, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    recorder = Recorder(stop_after=2)
    with trainer(env, tmp_path / "run", eval_every=1, checkpoint_every=3, callbacks=[recorder]) as run:
        result = run.train(epochs=4)
    assert result.epochs_completed == 2 and result.stop_reason == "two epochs are enough"
    assert not result.interrupted and result.finished
    assert recorder.calls == [
        ("evaluation", 0),  # the base model's
        ("begin", 0),
        ("evaluation", 1),
        ("epoch", 1),
        ("evaluation", 2),
        ("epoch", 2),
        ("end", 2),
    ]
    history = read_history(tmp_path / "run")
    assert [r["epoch_squared"] for r in history] == [1.0, 4.0]
    assert [r["eval_twice_reward"] for r in history] == pytest.approx([2 * r["eval_reward"] for r in history])
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["stop_reason"] == "two epochs are enough" and results["epochs_completed"] == 2
    # checkpoint_every 3 would save after epoch 3 (and 4): the stop saves epoch 2, so the run can resume
    assert [p.name for p in sorted((tmp_path / "run" / "checkpoints").iterdir())] == ["000001-epoch-0002"]
    events = EventAccumulator(str(tmp_path / "run")).Reload()
    assert {"train/epoch_squared", "eval/twice_reward", "eval/reward"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("eval/twice_reward")] == [0, 2, 4]


def test_an_evaluation_callback_can_stop_training(env, tmp_path):
    with trainer(env, tmp_path / "run", eval_every=1, callbacks=[Recorder(1, stop_on_evaluation=True)]) as run:
        result = run.train(epochs=3)
    assert (result.epochs_completed, result.stop_reason) == (1, "held-out reward is enough")
    assert "stopped: held-out reward is enough" in results_table(result)


# ------------------------------------------------------------------------------------------ resume
def test_resume_and_a_second_train_call_continue_exactly(env, tmp_path):
    with trainer(env, tmp_path / "straight", eval_every=2, checkpoint_every=1) as run:
        run.train(epochs=3)
    with trainer(env, tmp_path / "twice", eval_every=2, checkpoint_every=1) as run:
        run.train(epochs=2)
        second = run.train(epochs=3)  # in memory: continues the count
    with trainer(env, tmp_path / "resumed", eval_every=2, checkpoint_every=1) as run:
        run.train(epochs=2)
    with Trainer.resume(tmp_path / "resumed", env=env) as resumed:
        assert resumed.settings.resume and resumed.settings.agent == "herd"
        result = resumed.train(epochs=3)

    straight = without_timing(read_history(tmp_path / "straight"))
    assert [r["global_step"] for r in straight] == [2, 4, 6]
    for folder in ("twice", "resumed"):
        assert without_timing(read_history(tmp_path / folder)) == straight, folder
    assert result.epochs_completed == second.epochs_completed == 3
    assert json.loads((tmp_path / "resumed" / "run.json").read_text())["epochs"] == 3  # the extension is kept


# ------------------------------------------------------------------------------------------ what a trainer takes
def test_a_trainer_takes_an_agent_on_a_wrapped_env_and_records_how_to_rebuild_it(env, tmp_path):
    from gymnasium.vector import VectorWrapper

    wrapped = VectorWrapper(env)
    agent = make_agent("herd", wrapped, config(herd_base="rwr"))
    try:
        with pytest.raises(ValueError, match="pass config only with an agent name"):
            Trainer(wrapped, agent, config(), tmp_path / "x")
        with trainer(wrapped, tmp_path / "run", agent=agent) as run:
            settings = run.settings
            assert (settings.agent, settings.config.herd_base, settings.config.learning_rate) == ("herd", "rwr", 1e-4)
            assert (settings.env.model, settings.env.prompts, settings.env.num_inference_steps) == (
                env.unwrapped.spec.kwargs["model"],
                tuple(PROMPTS),
                2,
            )
            run.train(epochs=1)
        assert agent.policy.adapter_name is not None  # the trainer does not close an agent it was given
    finally:
        agent.close()
    saved = json.loads((tmp_path / "run" / "run.json").read_text())
    assert saved["agent"] == "herd" and saved["env"]["prompts"] == list(PROMPTS) and saved["env"]["latent_bound"] == 1e4


def test_an_env_made_without_gym_make_vec_is_a_clear_error(tiny_pipeline, tmp_path):
    from diffusion_gym.vector_env import DiffusionT2IVectorEnv

    kwargs = {"model": tiny_pipeline, "reward": "jpeg-incompressibility", "prompts": list(PROMPTS)}
    env = DiffusionT2IVectorEnv(2, **kwargs)
    try:
        with pytest.raises(ValueError, match="cannot tell how this env was made"):
            Trainer(env, "ddpo", config(), tmp_path / "run")
    finally:
        env.close()
    env = gym.make_vec(
        "DiffusionT2I-v1", num_envs=2, vectorization_mode="vector_entry_point", render_mode="rgb_array", **kwargs
    )
    try:
        with pytest.raises(ValueError, match=r"made with \['render_mode'\], which a run folder does not record"):
            EnvConfig.of(env)
    finally:
        env.close()


# ------------------------------------------------------------------------------------------ the quickstart
QUICKSTART = """
import gymnasium as gym
import diffusion_gym  # registers DiffusionT2I-v1

env = gym.make_vec("DiffusionT2I-v1", num_envs=2, vectorization_mode="vector_entry_point", {world})
observation, info = env.reset(seed=0)
observation, reward, terminated, truncated, info = env.step(env.action_space.sample())

from agents import AgentConfig, Trainer

config = AgentConfig(batch_size=2, batches_per_epoch=1, lora_rank=2, loop_k=2)
trainer = Trainer(env, agent="herd", config=config, output_dir="runs/quickstart", eval_samples=2)
result = trainer.train(epochs=1)
print(result.final)
"""


@pytest.fixture(scope="module")
def installed_package(tmp_path_factory) -> Path:
    """``pip install --no-deps --target SITE`` of a copy of the repository's package files (a regular, non-editable
    install: a wheel is built and unpacked into SITE); returns SITE."""
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, source / name)
    for package in ("agents", "diffusion_gym"):
        shutil.copytree(REPO / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    site = tmp_path_factory.mktemp("site")
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--no-build-isolation"]
    done = subprocess.run([*command, "--target", str(site), str(source)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return site


def test_the_readme_quickstart_runs_on_an_installed_package(installed_package, tiny_pipeline, tmp_path):
    world = f"model={tiny_pipeline!r}, reward='jpeg-incompressibility', prompts={list(PROMPTS)!r}, "
    world += "num_inference_steps=2, latent_bound=1e4"  # the tiny test pipeline; the README's runs the Shapes world
    script = textwrap.dedent(QUICKSTART).format(world=world) + (
        "import agents\nprint('AGENTS_FROM', agents.__file__)\nprint('GYM_FROM', diffusion_gym.__file__)\n"
    )
    environment = {**os.environ, "PYTHONPATH": str(installed_package), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    lines = dict(line.split(" ", 1) for line in done.stdout.splitlines() if line.startswith(("AGENTS_", "GYM_")))
    assert Path(lines["AGENTS_FROM"]).is_relative_to(installed_package)  # the installed copy ran, not the repository
    assert Path(lines["GYM_FROM"]).is_relative_to(installed_package)
    assert "reward" in done.stdout  # print(result.final)
    run_dir = tmp_path / "runs" / "quickstart"
    for name in ("run.json", "results.json", "metrics.jsonl", "reward_curve.png", "before_after.png"):
        assert (run_dir / name).exists(), name
    assert json.loads((run_dir / "results.json").read_text())["epochs_completed"] == 1
