"""Bad input through the library path (AgentConfig, RunSettings, Trainer) and the command line gets the same clear
error naming the argument, raised before anything is built or written (issue 30, section 3)."""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from agents import AgentConfig, EnvConfig, RunSettings, Trainer, TrainerCallback
from agents import run_command as run
from agents.config import MAX_SEED
from agents.training.run_folder import read_settings, write_settings

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPTS = ("A cat. A dog on a mat.", "A red box. A blue sky.")


@pytest.fixture(scope="module")
def env(tiny_pipeline):
    env = EnvConfig(tiny_pipeline, "jpeg-incompressibility", PROMPTS, num_inference_steps=2, latent_bound=1e4)
    env = env.make(num_envs=2)
    yield env
    env.close()


def small_config(**overrides) -> AgentConfig:
    return AgentConfig(**{"batch_size": 2, "batches_per_epoch": 1, "lora_rank": 2, "loop_k": 2, **overrides})


def trainer(env, output_dir, **options) -> Trainer:
    options = {"eval_prompts": "a small blue square", "eval_samples": 2, **options}
    return Trainer(env, "ddpo", options.pop("config", small_config()), output_dir, **options)


# ------------------------------------------------------------------------------------------ AgentConfig
@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [
        ({"batch_size": "2"}, TypeError, "batch_size must be an int, got str '2'"),
        ({"batch_size": True}, TypeError, "batch_size must be an int, got bool True"),
        ({"lora_rank": 1.5}, TypeError, "lora_rank must be an int, got float 1.5"),
        ({"learning_rate": "1e-3"}, TypeError, "learning_rate must be a number (int or float) or None, got str"),
        ({"per_prompt_stats": 1}, TypeError, "per_prompt_stats must be a bool, got int 1"),
        ({"seed": -1}, ValueError, f"seed must be in [0, {MAX_SEED}]"),
        ({"seed": 2**70}, ValueError, f"seed must be in [0, {MAX_SEED}]"),
        ({"learning_rate": float("inf")}, ValueError, "learning_rate must be finite, got inf"),
        ({"weight_decay": float("nan")}, ValueError, "weight_decay must be finite, got nan"),
        ({"batch_size": 0}, ValueError, "batch_size must be >= 1, got 0"),
        ({"loop_k": 1}, ValueError, "loop_k must be >= 2 (the leave-one-out baseline needs others), got 1"),
        (
            {"herd_base": "herd"},
            ValueError,
            "herd_base must be one of ('reinforce', 'ddpo', 'dpok', 'loop', 'rwr', 'nft')",
        ),
        ({"attention": "flash"}, ValueError, "attention must be one of ('sdpa', 'classic'), got 'flash'"),
        ({"eta": 5.0}, ValueError, "eta must be in (0, 1] (eta = 0 is deterministic; DDIM's eta is at most 1)"),
    ],
)
def test_agent_config_refuses_a_wrong_type_or_range_on_construction(overrides, error, message):
    with pytest.raises(error) as raised:
        AgentConfig(**overrides)
    assert message in str(raised.value)


def test_agent_config_takes_numpy_scalars_and_ints_for_floats_as_plain_numbers():
    config = AgentConfig(batch_size=np.int64(4), learning_rate=1, clip_range=np.float32(0.5), seed=MAX_SEED)
    assert type(config.batch_size) is int and config.batch_size == 4
    assert config.learning_rate == 1 and type(config.clip_range) is float and config.clip_range == 0.5
    json.dumps(vars(config))  # run.json can record it


# ------------------------------------------------------------------------------------------ RunSettings
@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [
        ({"epochs": 0}, ValueError, "epochs must be >= 1, got 0"),
        ({"epochs": 1.5}, TypeError, "epochs must be an int, got float 1.5"),
        ({"eval_every": 0}, ValueError, "eval_every must be >= 1 or None, got 0"),
        ({"eval_every": -1}, ValueError, "eval_every must be >= 1 or None, got -1"),
        ({"checkpoint_every": 0}, ValueError, "checkpoint_every must be >= 1 or None, got 0"),
        ({"keep_checkpoints": 0}, ValueError, "keep_checkpoints must be >= 1, got 0"),
        ({"eval_samples": 0}, ValueError, "eval_samples must be >= 1, got 0"),
        ({"env": EnvConfig(dtype="float64")}, ValueError, "dtype must be one of ('float32', 'float16', 'bfloat16')"),
        ({"env": EnvConfig(num_inference_steps=0)}, ValueError, "num_inference_steps must be an int >= 1, got 0"),
        ({"env": EnvConfig(latent_bound=float("nan"))}, ValueError, "latent_bound must be a finite number > 0"),
        ({"env": {"model": "shapes"}}, TypeError, "env must be an EnvConfig, got dict"),
        ({"output_dir": ""}, ValueError, "output_dir is empty"),
        ({"config": {"batch_size": 2}}, TypeError, "config must be an AgentConfig, got dict"),
    ],
)
def test_run_settings_refuse_a_wrong_type_or_range_on_construction(overrides, error, message, tmp_path):
    with pytest.raises(error) as raised:
        RunSettings(**{"agent": "ddpo", "config": AgentConfig(), "output_dir": tmp_path / "run", **overrides})
    assert message in str(raised.value)


def test_a_run_folder_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    for output_dir, message in [
        (tmp_path / "file", "is a file, not a folder"),
        (tmp_path / "file" / "run", f"is inside {tmp_path / 'file'}, which is a file"),
    ]:
        with pytest.raises(ValueError, match=message):
            RunSettings(agent="ddpo", config=AgentConfig(), output_dir=output_dir)


def test_run_json_is_replaced_atomically(tmp_path, monkeypatch):
    import os

    settings = RunSettings(agent="ddpo", config=AgentConfig(), output_dir=tmp_path)
    write_settings(settings, tmp_path)
    before = (tmp_path / "run.json").read_text()

    def failing_replace(source, target):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk gone"):
        write_settings(RunSettings(agent="ddpo", config=AgentConfig(), output_dir=tmp_path, epochs=7), tmp_path)
    assert (tmp_path / "run.json").read_text() == before  # the old file, whole
    assert sorted(path.name for path in tmp_path.iterdir()) == ["run.json"]  # no temporary file left


def test_an_edited_run_json_value_out_of_range_is_a_corrupt_file(tmp_path):
    write_settings(RunSettings(agent="ddpo", config=AgentConfig(), output_dir=tmp_path), tmp_path)
    data = json.loads((tmp_path / "run.json").read_text())
    data["config"]["batch_size"] = 0
    (tmp_path / "run.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"corrupt .*run.json: config.batch_size must be >= 1, got 0"):
        read_settings(tmp_path)


# ------------------------------------------------------------------------------------------ Trainer
@pytest.mark.parametrize(
    ("bad_env", "got"),
    [(None, "got NoneType None"), ("DiffusionT2I-v1", "got the str 'DiffusionT2I-v1': make the env first")],
)
def test_a_trainer_needs_a_vector_env(bad_env, got, tmp_path):
    with pytest.raises(TypeError, match="env must be a vector env from gym.make_vec") as raised:
        Trainer(bad_env, "ddpo", AgentConfig(), tmp_path / "run")
    assert got in str(raised.value)


def test_a_trainer_refuses_a_single_env(tiny_pipeline, tmp_path):
    single = gym.make(
        "DiffusionT2I-v1", model=tiny_pipeline, reward="jpeg-incompressibility", prompts=list(PROMPTS), latent_bound=1e4
    )
    try:
        with pytest.raises(TypeError, match=r"env must be a vector env .* got a single env"):
            Trainer(single, "ddpo", AgentConfig(), tmp_path / "run")
    finally:
        single.close()


def test_a_config_dict_is_an_agent_config_and_its_unknown_keys_are_named(env, tmp_path):
    with trainer(env, tmp_path / "run", config={"batches_per_epoch": 1, "lora_rank": 2}) as made:
        assert isinstance(made.settings.config, AgentConfig)
        assert (made.settings.config.batch_size, made.settings.config.lora_rank) == (2, 2)  # batch: env.num_envs
    with pytest.raises(ValueError, match=r"unknown AgentConfig field\(s\) \['lr'\]"):
        trainer(env, tmp_path / "other", config={"lr": 1e-3})
    with pytest.raises(TypeError, match="config must be an agents.AgentConfig, a dict of its fields or None"):
        trainer(env, tmp_path / "other", config="ddpo")
    assert not (tmp_path / "other").exists()


def test_callbacks_are_checked_when_the_trainer_is_made(env, tmp_path):
    with pytest.raises(TypeError, match=r"callbacks\[0\] \(object\) has no on_train_begin, on_evaluation"):
        trainer(env, tmp_path / "run", callbacks=[object()])
    with pytest.raises(TypeError, match="callbacks must be a list of TrainerCallback, got TrainerCallback"):
        trainer(env, tmp_path / "run", callbacks=TrainerCallback())
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"checkpoint_every": 0}, "checkpoint_every must be >= 1 or None, got 0"),
        ({"eval_every": 0}, "eval_every must be >= 1 or None, got 0"),
        ({"eval_every": -1}, "eval_every must be >= 1 or None, got -1"),
        ({"keep_checkpoints": 0}, "keep_checkpoints must be >= 1, got 0"),
        ({"eval_samples": 0}, "eval_samples must be >= 1, got 0"),
        ({"output_dir": ""}, "output_dir is empty"),
        ({"eval_prompts": "a small blue square. " * 60}, "eval_prompts: prompt is 1260 UTF-8 bytes"),
    ],
)
def test_trainer_arguments_are_checked_before_anything_is_written(env, tmp_path, monkeypatch, options, message):
    monkeypatch.chdir(tmp_path)  # an empty output_dir would have written here
    output_dir = options.pop("output_dir", tmp_path / "run")
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        trainer(env, output_dir, **options)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("epochs", "error", "message"),
    [
        (0, ValueError, "epochs must be >= 1, got 0"),
        (-3, ValueError, "epochs must be >= 1, got -3"),
        (True, TypeError, "epochs must be an int, got bool True"),
        (1.5, TypeError, "epochs must be an int, got float 1.5"),
        ("2", TypeError, "epochs must be an int, got str '2'"),
    ],
)
def test_train_checks_epochs_before_writing_anything(env, tmp_path, epochs, error, message):
    with trainer(env, tmp_path / "run") as made, pytest.raises(error) as raised:
        made.train(epochs=epochs)
    assert message in str(raised.value)
    assert not (tmp_path / "run").exists()


def test_a_bad_epochs_leaves_an_existing_run_resumable(env, tmp_path):
    folder = tmp_path / "run"
    with trainer(env, folder, eval_every=1, checkpoint_every=1) as made:
        made.train(epochs=1)
    recorded = (folder / "run.json").read_bytes()
    with Trainer.resume(folder, env=env) as resumed, pytest.raises(TypeError, match="must be an int, got float 4.5"):
        resumed.train(epochs=4.5)
    assert (folder / "run.json").read_bytes() == recorded
    with Trainer.resume(folder, env=env) as resumed:
        assert resumed.train(epochs=2).epochs_completed == 2


# ------------------------------------------------------------------------------------------ the command line
def cli_flags(tiny_pipeline: str, output_dir: Path) -> list[str]:
    return [
        "--agent",
        "ddpo",
        "--model",
        tiny_pipeline,
        "--batch-size",
        "2",
        "--batches-per-epoch",
        "1",
        "--lora-rank",
        "2",
        "--eval-samples",
        "2",
        "--latent-bound",
        "1e4",
        "--num-inference-steps",
        "2",
        "--output-dir",
        str(output_dir),
    ]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--reward", "shapes-gold", "--prompts", "a photo of a cat"],
            "reward 'shapes-gold' cannot score the prompt 'a photo of a cat'",
        ),
        (
            ["--reward", "shapes-gold", "--prompts", "\U0001f431 \U0001f436"],
            "reward 'shapes-gold' cannot score the prompt",
        ),
        (["--reward", "jpeg-incompressibility", "--prompts", "a red circle. " * 715], "prompt is 10010 UTF-8 bytes"),
        (
            ["--reward", "jpeg-incompressibility", "--prompts", "a cat. " * 60],  # 420 bytes, ~180 tokens
            "but the text encoder of",  # ... takes at most N tokens and the env uses max_prompt_chunks=1
        ),
        (
            ["--reward", "jpeg-incompressibility", "--prompts", "a cat", "--num-inference-steps", "5000"],
            "num_inference_steps=5000 is more than the 1000 timesteps the model was trained on",
        ),
        (
            ["--reward", "jpeg-incompressibility", "--prompts", "a cat", "--eval-prompts", "x" * 2000],
            "eval_prompts: prompt is 2000 UTF-8 bytes",
        ),
        (["--seed", str(2**70)], f"argument --seed: expected an integer in [0, {MAX_SEED}]"),
        (["--epochs", "1.5"], "argument --epochs: expected a positive integer, got '1.5'"),
        (["--eval-every", "0"], "argument --eval-every: expected a positive integer, got '0'"),
        (["--loop-k", "1"], "argument --loop-k: expected an integer >= 2 (the leave-one-out baseline needs others)"),
        (["--train-timestep-fraction", "1.5"], "--train-timestep-fraction: expected a finite number in (0, 1]"),
        (["--eta", "5"], "argument --eta: expected a finite number in (0, 1] (eta = 0 is deterministic"),
    ],
)
def test_the_command_line_turns_library_errors_into_argparse_errors(tiny_pipeline, tmp_path, capsys, argv, message):
    folder = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        run.main([*cli_flags(tiny_pipeline, folder), *argv])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "usage: diffusion-gym run" in error and message in error
    assert not folder.exists()


def test_a_comparison_with_settings_the_env_refuses_writes_nothing(tiny_pipeline, tmp_path, capsys):
    folder = tmp_path / "compare"
    argv = cli_flags(tiny_pipeline, folder)[2:] + ["--reward", "shapes-gold", "--prompts", "a photo of a cat"]
    with pytest.raises(SystemExit) as exit_info:
        run.main(["--compare", "ddpo", "--seeds", "0", *argv])
    assert exit_info.value.code == 2
    assert "cannot score the prompt 'a photo of a cat'" in capsys.readouterr().err
    assert not folder.exists()
