"""The default task lives once, in the task registry: ``diffusion-gym run`` (what ``make run`` calls), ``python
benchmarks/run.py`` (the project's documented script) and ``Trainer.for_task("long", ...)`` build the same run and
give the same seed-0 figures (on a small budget of the real Shapes world: the task's prompts, evaluation and
generalisation sets)."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest
from _scripts import REPO

from agents import AgentConfig, EnvConfig, RunSettings, Trainer
from agents.command import main
from agents.training.run_folder import RESULTS_FILE, RUN_SETTINGS_FILE
from diffusion_gym.tasks import get_task

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# a small budget: 2 epochs of 4 samples, 3 DDIM steps, 2 held-out samples
SMALL = {"epochs": 2, "num_inference_steps": 3, "eval_samples": 2}
FLAGS = ["--epochs", "2", "--num-inference-steps", "3", "--eval-samples", "2", "--batch-size", "4"]
FLAGS += ["--batches-per-epoch", "1", "--seed", "0"]


def figures(folder: Path) -> dict:
    """What a run reports, without its wall time and command."""
    result = json.loads((folder / RESULTS_FILE).read_text())
    for key in ("wall_seconds", "command"):
        result.pop(key)
    settings = json.loads((folder / RUN_SETTINGS_FILE).read_text())
    for key in ("output_dir", "command", "threads"):
        settings.pop(key)
    return {"results": result, "settings": settings}


def test_the_task_fills_the_settings_it_names_and_changes_win():
    settings = RunSettings.for_task("long", "ddpo", "runs/x", epochs=3)
    long = get_task("long")
    assert (settings.env.prompts, settings.eval_prompts, settings.generalisation_prompts) == (
        long.prompts,
        long.eval_prompts,
        long.generalisation_prompts,
    )
    assert (settings.epochs, settings.eval_every, settings.env.num_inference_steps) == (3, 5, 10)
    expected = AgentConfig(batch_size=long.batch_size, batches_per_epoch=long.batches_per_epoch)
    assert settings.config == expected.with_agent_defaults("ddpo")  # the learning rate recorded as a number
    # an env argument changes the task's env; an env given whole is used as given
    changed = RunSettings.for_task("long", "ddpo", "runs/x", num_inference_steps=4, latent_bound=20.0)
    assert changed.env == EnvConfig(prompts="shapes-long", num_inference_steps=4, latent_bound=20.0)
    own = EnvConfig(model="/my/pipeline", prompts="a cat")
    assert RunSettings.for_task("long", "ddpo", "runs/x", env=own).env == own
    assert RunSettings.for_task("long", "ddpo", "runs/x", env=own, dtype="bfloat16").env.dtype == "bfloat16"
    with pytest.raises(ValueError, match="unknown task 'lnog'"):
        RunSettings.for_task("lnog", "ddpo", "runs/x")
    with pytest.raises(TypeError, match="task must be a task name"):
        RunSettings.for_task(3, "ddpo", "runs/x")


def test_diffusion_gym_run_make_run_and_the_trainer_give_the_same_seed0_figures(tmp_path, monkeypatch):
    assert main(["run", "--agent", "ddpo", *FLAGS, "--output-dir", str(tmp_path / "command")]) == 0

    monkeypatch.setattr(
        sys, "argv", ["benchmarks/run.py", "--agent", "ddpo", *FLAGS, "--output-dir", str(tmp_path / "make")]
    )
    with pytest.raises(SystemExit) as exit_info:  # python benchmarks/run.py --agent ddpo
        runpy.run_path(str(REPO / "benchmarks" / "run.py"), run_name="__main__")
    assert exit_info.value.code == 0

    config = AgentConfig(batch_size=4, batches_per_epoch=1, seed=0)
    with Trainer.for_task("long", "ddpo", tmp_path / "trainer", config, **SMALL) as trainer:
        trainer.train()

    command, make, library = (figures(tmp_path / name) for name in ("command", "make", "trainer"))
    assert command == make == library
    assert command["settings"]["env"]["prompts"] == "shapes-long" and command["results"]["generalisation"] is not None
    assert command["results"]["final"] != command["results"]["base"]  # it trained: the figures say something
