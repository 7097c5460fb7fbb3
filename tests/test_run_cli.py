"""``diffusion-gym run`` (agents/run_command.py; ``python benchmarks/run.py`` is the same): the CLI, a run folder,
comparison mode and bad input, on the tiny random pipeline."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
from _scripts import REPO, load_script

from agents import AgentConfig, EnvConfig, RunSettings
from agents import run_command as run
from agents.training.run_folder import read_settings, write_settings

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_flags(tiny_pipeline: str, output_dir: Path) -> list[str]:
    return [
        "--model",
        tiny_pipeline,
        "--reward",
        "jpeg-incompressibility",
        "--prompts",
        "a red circle on the left",
        "--eval-prompts",
        "a small blue square",
        "--num-inference-steps",
        "3",
        "--batch-size",
        "2",
        "--batches-per-epoch",
        "1",
        "--loop-k",
        "2",
        "--lora-rank",
        "2",
        "--eval-samples",
        "2",
        "--latent-bound",
        "1e4",
        "--eval-every",
        "100",
        "--output-dir",
        str(output_dir),
    ]


def test_help_explains_every_flag(capsys):
    with pytest.raises(SystemExit) as exit_info:
        run.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    from agents.cli import agent_config_fields
    from agents.config import agent_config_help

    for field, _, _ in agent_config_fields():
        assert "--" + field.name.replace("_", "-") in text
        assert agent_config_help()[field.name], f"no docstring (help) for {field.name}"
    for flag in ("--agent", "--compare", "--reward", "--model", "--prompts", "--epochs", "--seeds", "herd-b2"):
        assert flag in text


def test_every_run_setting_and_env_argument_is_one_flag_whose_help_is_its_docstring(capsys):
    """One declaration per knob: RunSettings' and EnvConfig's fields are the flags (but the few the command line
    sets its own way), and each flag's help is its field's docstring."""
    from agents.cli import NOT_SETTING_FLAGS, setting_flags
    from agents.config import field_docstrings

    with pytest.raises(SystemExit):
        run.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for cls, skipped in ((RunSettings, NOT_SETTING_FLAGS), (EnvConfig, ())):
        for field in dataclasses.fields(cls):
            if field.name in skipped:
                continue
            assert setting_flags()[field.name].owner is cls, field.name
            assert "--" + field.name.replace("_", "-") in text, field.name
            assert field_docstrings(cls)[field.name] in text, f"{field.name}: its docstring is not its help"
    flagged = {name for name in setting_flags()}
    declared = {f.name for f in dataclasses.fields(RunSettings)} | set(EnvConfig.fields())
    assert flagged <= declared - set(NOT_SETTING_FLAGS)


def test_a_flag_sets_its_env_argument_and_the_run_records_it_under_env(tiny_pipeline, tmp_path):
    settings = run.parse_args(["--agent", "ddpo", "--model", tiny_pipeline, "--max-prompt-bytes", "512",
                               "--latent-bound", "1e4", "--num-inference-steps", "3"])  # fmt: skip
    assert settings.env == EnvConfig(tiny_pipeline, num_inference_steps=3, latent_bound=1e4, max_prompt_bytes=512)
    assert "--max-prompt-bytes 512" in settings.command
    write_settings(dataclasses.replace(settings, output_dir=tmp_path), tmp_path)
    recorded = json.loads((tmp_path / "run.json").read_text())
    assert recorded["env"]["max_prompt_bytes"] == 512 and "model" not in recorded
    assert read_settings(tmp_path).env == settings.env


def test_a_run_json_of_before_the_env_config_still_reads(tmp_path):
    """run.json before 2026-12-08 recorded the env's arguments at the top level (the committed runs do)."""
    settings = RunSettings(
        agent="ddpo", config=AgentConfig(), output_dir=tmp_path, env=EnvConfig(prompts="shapes-long")
    )
    write_settings(settings, tmp_path)
    recorded = json.loads((tmp_path / "run.json").read_text())
    flat = {**{k: v for k, v in recorded.items() if k != "env"}, **recorded["env"]}
    del flat["max_prompt_bytes"], flat["image_cache_size"]  # not recorded then
    (tmp_path / "run.json").write_text(json.dumps(flat))
    assert read_settings(tmp_path) == settings
    (tmp_path / "run.json").write_text(json.dumps({**flat, "latent_bound": "high"}))
    with pytest.raises(ValueError, match="env.latent_bound = 'high' is not of type float"):
        read_settings(tmp_path)


def test_command_line_reproduces_the_settings(tiny_pipeline, tmp_path):
    argv = ["--agent", "herd", "--epochs", "3", "--herd-buffer-batches", "2", "--no-per-prompt-stats", "--eval-kl"]
    settings = run.parse_args([*argv, "--model", tiny_pipeline, "--guidance-scale", "none", "--max-prompt-chunks", "2"])
    again = run.parse_args(shlex.split(settings.command)[2:])
    assert dataclasses.replace(again, command="") == dataclasses.replace(settings, command="")
    assert settings.eval_kl and not run.parse_args(["--agent", "herd", "--model", tiny_pipeline]).eval_kl
    assert settings.config.herd_buffer_batches == 2 and settings.config.per_prompt_stats is False


def test_the_learning_rate_defaults_to_the_agents_own(tiny_pipeline, tmp_path):
    from agents.experiments.comparison import plan_runs

    cases = [
        (["--agent", "ddpo"], 1e-3),
        (["--agent", "rwr"], 1e-4),  # RWR diverges at the policy-gradient agents' 1e-3
        (["--agent", "herd", "--herd-base", "rwr"], 1e-4),  # HERD takes its base's
        (["--agent", "rwr", "--learning-rate", "3e-4"], 3e-4),  # an explicit rate wins
        (["--agent", "nft"], 3e-4),  # NFT diverged at 1e-3 (issue 31)
    ]
    for argv, expected in cases:
        assert run.parse_args([*argv, "--model", tiny_pipeline]).config.learning_rate == expected, argv
    comparison = run.parse_args(["--compare", "ddpo,rwr", "--model", tiny_pipeline, "--output-dir", str(tmp_path)])
    planned = plan_runs(comparison.run, comparison.variants, [0], tmp_path)
    assert [p.config.learning_rate for p in planned] == [1e-3, 1e-4]


def test_a_variant_overrides_the_command_line_and_keeps_the_agents_learning_rate(tiny_pipeline, tmp_path):
    from agents.experiments.comparison import plan_runs

    argv = ["--compare", "loop,loop-k8,rwr-signed", "--loop-k", "2", "--model", tiny_pipeline]
    comparison = run.parse_args([*argv, "--output-dir", str(tmp_path)])
    planned = plan_runs(comparison.run, comparison.variants, [0, 1], tmp_path)
    assert [(p.agent, p.label, p.config.seed) for p in planned] == [
        ("loop", "loop", 0),
        ("loop", "loop", 1),
        ("loop", "loop-k8", 0),
        ("loop", "loop-k8", 1),
        ("rwr", "rwr-signed", 0),
        ("rwr", "rwr-signed", 1),
    ]
    assert [p.config.loop_k for p in planned[:4]] == [4, 4, 8, 8]  # the variant's K, not --loop-k 2
    assert all(p.config.rwr_baseline and p.config.learning_rate == 1e-4 for p in planned[4:])
    assert planned[2].output_dir == tmp_path / "loop-k8-seed0"
    every_step = run.parse_args(
        ["--compare", "loop-every-step", "--model", tiny_pipeline, "--output-dir", str(tmp_path)]
    )
    assert every_step.variants[0].overrides == {"loop_k": 4, "train_timestep_fraction": 1.0}
    knobs = run.parse_args(
        ["--compare", "ddpo-cosine,ddpo-lr2x", "--learning-rate", "5e-4", "--model", tiny_pipeline]
        + ["--output-dir", str(tmp_path)]
    )
    cosine, lr2x = plan_runs(knobs.run, knobs.variants, [0], tmp_path)
    assert (cosine.config.learning_rate, cosine.config.lr_decay_epochs, cosine.config.lr_final_fraction) == (
        5e-4,
        45,
        0.1,
    )
    assert lr2x.config.learning_rate == 2e-3  # the variant's, not --learning-rate 5e-4


@pytest.fixture(scope="module")
def tiny_world(tiny_pipeline, tmp_path_factory) -> str:
    """The tiny pipeline with world metadata: JPEG (in)compressibility stand in for gold and proxy scores."""
    folder = tmp_path_factory.mktemp("world") / "tiny-world"
    shutil.copytree(tiny_pipeline, folder)
    world = {"gold_reward": "jpeg-compressibility", "proxy_reward": "jpeg-incompressibility"}
    (folder / "diffusion_gym.json").write_text(json.dumps({**world, "eval_prompts": "a small blue square"}))
    return str(folder)


def test_the_default_task_is_the_herd_papers_protocol_on_the_embedded_world(tiny_pipeline):
    settings = run.parse_args(["--agent", "herd"])
    assert (settings.env.model, settings.env.prompts, settings.eval_prompts) == ("shapes", "shapes-long", "shapes-long")
    assert (settings.env.num_inference_steps, settings.generalisation_prompts) == (10, "shapes-heldout")
    assert (settings.epochs, settings.eval_every) == (40, 5)
    assert (settings.config.herd_base, settings.config.compile_unet) == ("loop", False)
    assert "--generalisation-prompts shapes-heldout" in settings.command  # the command reproduces it
    # each default applies only where its flag is missing; 'none' turns the generalisation set off
    settings = run.parse_args(["--agent", "herd", "--num-inference-steps", "6", "--generalisation-prompts", "none"])
    assert (settings.env.prompts, settings.env.num_inference_steps, settings.generalisation_prompts) == (
        "shapes-long",
        6,
        None,
    )
    # other prompts or another model: the world's own defaults, no second set
    for flags in (["--prompts", "shapes-train"], ["--model", tiny_pipeline]):
        settings = run.parse_args(["--agent", "ddpo", *flags])
        assert (settings.eval_prompts, settings.env.num_inference_steps, settings.generalisation_prompts) == (None,) * 3


def test_a_preset_sets_the_paper_setup_and_flags_override_it(tiny_pipeline):
    from agents.experiments.presets import FOREST_PROMPT

    settings = run.parse_args(["--preset", "herd-b2-forest-aesthetic", "--model", tiny_pipeline, "--epochs", "2"])
    assert (settings.agent, settings.env.reward, settings.env.prompts) == ("herd", "aesthetic", FOREST_PROMPT)
    assert (settings.env.model, settings.epochs, settings.env.max_prompt_chunks) == (tiny_pipeline, 2, 2)
    config = settings.config
    assert (config.batch_size, config.batches_per_epoch, config.herd_buffer_batches) == (12, 3, 2)


def test_one_epoch_run_writes_the_run_folder(tiny_world, tmp_path, capsys):
    from safetensors.torch import load_file
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folder = tmp_path / "run"
    flags = tiny_flags(tiny_world, folder)
    del flags[flags.index("--eval-prompts") : flags.index("--eval-prompts") + 2]  # the world's eval prompts
    assert run.main(["--agent", "ddpo", "--epochs", "1", *flags]) == 0

    (record,) = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert record["epoch"] == 1 and record["global_step"] == 2
    assert {"reward_mean", "reward_std", "gold_score", "proxy_score", "loss", "samples_per_second"} <= set(record)
    assert {"eval_reward", "eval_gold", "eval_proxy", "eval_distance_from_base"} <= set(record)
    assert "eval_kl_to_base" not in record  # only with --eval-kl

    results = json.loads((folder / "results.json").read_text())
    assert results["agent"] == "ddpo" and results["epochs_completed"] == 1 and results["samples_seen"] == 2
    assert results["eval_prompts"] == "a small blue square" and results["num_eval_samples"] == 2
    assert results["base"]["reward"] == results["base"]["proxy"] > 0 > results["base"]["gold"]  # JPEG kB, -kB
    assert results["final"]["distance_from_base"] >= 0 and results["final"]["kl_to_base"] is None
    assert results["config"]["batch_size"] == 2 and results["wall_seconds"] > 0
    assert "--agent ddpo" in results["command"]

    for image in ("reward_curve.png", "before_after.png"):
        assert (folder / image).read_bytes()[:4] == b"\x89PNG"
    (checkpoint,) = sorted((folder / "checkpoints").iterdir())
    assert checkpoint.name.endswith("epoch-0001") and (checkpoint / "tensors.safetensors").exists()
    assert any("lora.up" in key for key in load_file(str(checkpoint / "lora" / "pytorch_lora_weights.safetensors")))

    events = EventAccumulator(str(folder)).Reload()
    scalars = {"train/reward_mean", "train/gold_score", "train/loss", "train/approx_kl", "eval/gold", "eval/proxy"}
    assert scalars <= set(events.Tags()["scalars"])
    assert "eval/samples" in events.Tags()["images"]
    output = capsys.readouterr().out
    assert "| gold score |" in output and "| reward (jpeg-incompressibility) |" in output


def test_a_resumed_run_continues_exactly_where_it_stopped(tiny_pipeline, tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def metrics(folder: Path) -> list[dict]:
        return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]

    flags = ["--agent", "herd", "--checkpoint-every", "1", "--eval-every", "2", "--eval-kl"]
    flags += ["--generalisation-prompts", "a green triangle"]  # its base evaluation is restored from the checkpoint
    assert run.main([*flags, "--epochs", "3", *tiny_flags(tiny_pipeline, tmp_path / "straight")]) == 0
    assert run.main([*flags, "--epochs", "2", *tiny_flags(tiny_pipeline, tmp_path / "resumed")]) == 0
    assert json.loads((tmp_path / "resumed" / "run.json").read_text())["eval_kl"] is True
    capsys.readouterr()
    assert run.main(["--resume", str(tmp_path / "resumed"), "--epochs", "3"]) == 0
    # --eval-kl is a setting of the run (run.json): the resumed session evaluates the KL too
    assert "| KL to the base policy (nats per trajectory) | 0 |" in capsys.readouterr().out

    straight, resumed = metrics(tmp_path / "straight"), metrics(tmp_path / "resumed")
    assert [r["global_step"] for r in resumed] == [2, 4, 6]
    for key in ("reward_mean", "loss", "num_train_samples"):
        assert [r[key] for r in resumed] == pytest.approx([r[key] for r in straight], rel=1e-5)
    kls = [r["eval_kl_to_base"] for r in resumed if "eval_kl_to_base" in r]  # each session's last epoch: 2 and 3
    (straight_kl,) = [r["eval_kl_to_base"] for r in straight if "eval_kl_to_base" in r]  # epoch 3
    assert len(kls) == 2 and all(kl > 0 for kl in kls) and kls[-1] == pytest.approx(straight_kl, rel=1e-4)
    results = json.loads((tmp_path / "resumed" / "results.json").read_text())
    assert results["epochs_completed"] == 3 and results["samples_seen"] == 6
    straight_results = json.loads((tmp_path / "straight" / "results.json").read_text())
    generalisation = results["generalisation"]
    assert generalisation["prompts"] == "a green triangle" and generalisation["num_samples"] == 2
    assert generalisation["base"] == straight_results["generalisation"]["base"]
    final, straight_final = generalisation["final"], straight_results["generalisation"]["final"]
    assert final["reward"] == pytest.approx(straight_final["reward"], rel=1e-5) and final["distance_from_base"] > 0
    assert final["kl_to_base"] > 0 and generalisation["base"]["kl_to_base"] == 0.0
    assert results["base"]["kl_to_base"] == 0.0 and results["final"]["kl_to_base"] == pytest.approx(kls[-1])
    assert json.loads((tmp_path / "resumed" / "run.json").read_text())["epochs"] == 3  # the extension is kept
    events = EventAccumulator(str(tmp_path / "resumed")).Reload()
    assert [event.step for event in events.Scalars("train/reward_mean")] == [2, 4, 6]
    assert [event.step for event in events.Scalars("eval/kl_to_base")] == [0, 4, 6]  # the base model's 0 first


def test_comparison_mode_writes_table_and_plot(tiny_pipeline, tmp_path, caplog):
    folder = tmp_path / "comparison"
    argv = ["--compare", "ddpo,herd-b2", "--seeds", "0,1", "--epochs", "1", *tiny_flags(tiny_pipeline, folder)]
    assert run.main(argv) == 0

    table = (folder / "comparison.md").read_text()
    assert "| ddpo | 2 |" in table and "| herd-b2 | 2 |" in table and "±" in table
    assert (folder / "comparison.png").read_bytes()[:4] == b"\x89PNG"
    summary = json.loads((folder / "comparison.json").read_text())
    assert [v["name"] for v in summary["variants"]] == ["ddpo", "herd-b2"]
    assert summary["variants"][1]["seeds"] == [0, 1]
    # herd-b2's final reward minus ddpo's, paired by seed (the tiny world has no gold or proxy score)
    assert summary["reference"] == "ddpo" and "| agent | reward vs ddpo |" in table
    finals = {
        (name, seed): json.loads((folder / f"{name}-seed{seed}" / "results.json").read_text())["final"]["reward"]
        for name in ("ddpo", "herd-b2")
        for seed in (0, 1)
    }
    paired = summary["variants"][1]["vs_reference"]["reward"]
    assert paired["mean"] == pytest.approx(np.mean([finals["herd-b2", s] - finals["ddpo", s] for s in (0, 1)]))
    herd_b2 = json.loads((folder / "herd-b2-seed1" / "results.json").read_text())
    assert herd_b2["config"]["herd_buffer_batches"] == 2 and herd_b2["config"]["seed"] == 1

    caplog.set_level(logging.INFO, logger="agents")  # the comparison's messages (benchmarks/run.py shows them)
    assert run.main(argv) == 0  # the same command again continues the comparison: nothing left to run
    assert caplog.text.count("already finished") == 4
    assert (folder / "comparison.md").read_text() == table


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--agent", "ppo"], "invalid choice: 'ppo'"),
        (["--agent", "ddpo", "--reward", "no-such-reward"], "unknown reward 'no-such-reward'"),
        (["--agent", "ddpo", "--model", "no_such_model"], "unknown model 'no_such_model'"),
        (["--agent", "ddpo", "--model", "./missing/folder"], "does not exist"),
        (["--agent", "ddpo", "--batch-size", "0"], "--batch-size: expected a positive integer, got '0'"),
        (["--agent", "ddpo", "--learning-rate", "nan"], "--learning-rate: expected a finite number > 0"),
        (["--agent", "ddpo", "--seeds", "0,1"], "--seeds is for comparison mode"),
        (["--compare", "ddpo,herd-b3"], "unknown agent or variant 'herd-b3'"),
        (["--compare", "ddpo", "--seeds", "0,0"], "distinct"),
        ([], "one of the arguments --agent --compare --preset --resume is required"),
        (["--preset", "herd-standard-nothing"], "invalid choice: 'herd-standard-nothing'"),
        (["--resume", "/no/such/run"], "argument --resume: /no/such/run does not exist"),
        (["--agent", "ddpo", "--output-dir", str(REPO)], "is not empty; pick a new folder"),
        (["--resume", "/no/such/run", "--lora-rank", "4"], "it takes only --epochs, --resume-from and --threads"),
    ],
)
def test_bad_input_is_a_clear_argparse_error(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_statistics_and_smoothing_by_hand():
    from agents.experiments.stats import mean_ci, paired_difference
    from agents.training.evaluation import spread
    from agents.training.plots import running_average

    interval = mean_ci([1.0, 2.0, 3.0])  # sd 1, sem 1/sqrt(3), t_{0.975, 2} = 4.3027
    assert interval.mean == pytest.approx(2.0) and interval.half_width == pytest.approx(4.3027 / 3**0.5, rel=1e-4)
    assert str(mean_ci([0.5, None])) == "0.5000" and str(mean_ci([None])) == "–"
    # paired by seed: seeds 0-2 are shared, seed 3 is not; differences 0.1, 0.2, 0.0 -> mean 0.1, sd 0.1
    paired = paired_difference({0: 0.5, 1: 0.6, 2: 0.7}, {0: 0.6, 1: 0.8, 2: 0.7, 3: 1.0})
    assert (paired.mean, paired.count) == (pytest.approx(0.1), 3)
    assert paired.half_width == pytest.approx(4.3027 * 0.1 / math.sqrt(3), rel=1e-4)
    assert paired_difference({0: 0.5, 1: None}, {0: 0.7, 1: 0.9}).count == 1  # a missing score is skipped
    assert running_average([1.0, 2.0, 3.0, 4.0], window=2).tolist() == [1.0, 1.5, 2.5, 3.5]
    assert spread(["a", "b", "c", "d"], 2) == ["a", "c"] and spread(["a", "b"], 3) == ["a", "b", "a"]


def test_an_interrupted_comparison_continues_when_rerun(tiny_pipeline, tmp_path, monkeypatch, caplog):
    from agents.training import trainer

    caplog.set_level(logging.INFO, logger="agents")

    folder = tmp_path / "comparison"
    argv = ["--compare", "ddpo", "--seeds", "0,1", "--epochs", "2", "--checkpoint-every", "1"]
    argv += tiny_flags(tiny_pipeline, folder)
    calls = {"epochs": 0}
    make_agent = trainer.make_agent

    def make_agent_interrupted_at_second_epoch(name, env, config):
        agent = make_agent(name, env, config)
        train_epoch = agent.train_epoch

        def train_epoch_or_ctrl_c():
            calls["epochs"] += 1
            if calls["epochs"] == 2:
                raise KeyboardInterrupt
            return train_epoch()

        agent.train_epoch = train_epoch_or_ctrl_c
        return agent

    monkeypatch.setattr(trainer, "make_agent", make_agent_interrupted_at_second_epoch)
    assert run.main(argv) == 0
    assert json.loads((folder / "ddpo-seed0" / "results.json").read_text())["interrupted"]
    assert not (folder / "ddpo-seed1").exists() and "comparison interrupted" in caplog.text
    caplog.clear()

    monkeypatch.setattr(trainer, "make_agent", make_agent)
    assert run.main(argv) == 0
    assert "(resuming)" in caplog.text
    records = [json.loads(line) for line in (folder / "ddpo-seed0" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert "| ddpo | 2 |" in (folder / "comparison.md").read_text()


def test_evaluate_run_on_the_shapes_world_reports_the_object_facts(tmp_path, capsys):
    evaluate_run = load_script("benchmarks/evaluate_run.py")

    folder = tmp_path / "run"
    prompt = "A large red circle on the left. A gray background."
    flags = ["--agent", "ddpo", "--epochs", "1", "--model", "shapes", "--prompts", prompt, "--eval-prompts", prompt]
    flags += ["--num-inference-steps", "2", "--batch-size", "2", "--batches-per-epoch", "1", "--lora-rank", "2"]
    assert run.main([*flags, "--eval-samples", "2", "--eval-every", "100", "--output-dir", str(folder)]) == 0
    result = evaluate_run.main([str(folder), "--samples-per-prompt", "2", "--threads", "1"])

    facts = result["object_facts"]
    assert set(facts) == {"base", "fine_tuned"}
    for model_facts in facts.values():
        assert set(model_facts) == {"colour_present", "shape", "size", "position"}
        # One object sentence per sample, naming a size and a cell: every fraction is k / 2 or NaN (none drawn).
        assert all(np.isnan(v) or v in (0.0, 0.5, 1.0) for v in model_facts.values())
    # The one object sentence names a circle: only the circle row can count anything, at most 2 per model.
    for confusion in result["shape_confusion"].values():
        assert sum(confusion["square"].values()) == sum(confusion["triangle"].values()) == 0
        assert sum(confusion["circle"].values()) <= 2
    out = capsys.readouterr().out
    assert "| position |" in out
    assert "| shape named -> drawn (base / fine-tuned) | circle | square | triangle |" in out


def test_evaluate_run_compares_the_checkpoint_with_the_base_model(tiny_pipeline, tmp_path, capsys):
    evaluate_run = load_script("benchmarks/evaluate_run.py")

    folder = tmp_path / "run"
    assert (
        run.main(["--agent", "ddpo", "--epochs", "1", "--learning-rate", "0.05", *tiny_flags(tiny_pipeline, folder)])
        == 0
    )
    result = evaluate_run.main([str(folder), "--samples-per-prompt", "3", "--threads", "1"])

    assert result == json.loads((folder / "evaluation.json").read_text())
    assert result["epoch"] == 1 and result["num_samples"] == 3 and result["eval_prompts"] == "a small blue square"
    assert Path(result["checkpoint"]).parent == folder / "checkpoints"
    reward = result["scores"]["reward"]
    assert reward["change"] == pytest.approx(reward["fine_tuned"] - reward["base"])
    assert reward["ci95"] >= 0 and result["distance_from_base"] > 0  # the trained LoRA changed the images
    assert "| reward |" in capsys.readouterr().out

    with pytest.raises(SystemExit):
        evaluate_run.main([str(folder), "--samples-per-prompt", "0"])
    assert "--samples-per-prompt" in capsys.readouterr().err
    shutil.rmtree(folder / "checkpoints")
    with pytest.raises(SystemExit):  # an argparse error naming the problem, not a traceback
        evaluate_run.main([str(folder)])
    assert "argument run_dir:" in (err := capsys.readouterr().err) and "no complete checkpoint" in err
    for bad, problem in ((tmp_path / "nowhere", "does not exist"), (tmp_path, "is not a run folder (no run.json)")):
        with pytest.raises(SystemExit):
            evaluate_run.main([str(bad)])
        assert problem in capsys.readouterr().err


def test_gold_vs_proxy_is_drawn_against_the_kl_when_the_runs_logged_it(tmp_path, capsys):
    probe = load_script("benchmarks/probes/gold_vs_proxy.py")

    def proxy_run(name: str, kl: bool, shift: float = 0.0) -> Path:
        """A run folder whose held-out gold peaks at its second evaluation (16 samples, KL 3, distance 0.2); ``shift``
        is added to its gold and its KL."""
        folder = tmp_path / name
        folder.mkdir()
        evaluations = [(0.6, 1.5, 0.1, 1.0), (0.7, 2.0, 0.2, 3.0), (0.55, 2.5, 0.3, 9.0)]  # gold, proxy, distance, KL
        evaluations = [(gold + shift, proxy, distance, kl + shift) for gold, proxy, distance, kl in evaluations]
        lines = []
        for epoch, (gold, proxy, distance, kl_to_base) in enumerate(evaluations, start=1):
            record = {"epoch": epoch, "global_step": 8 * epoch, "eval_gold": gold, "eval_proxy": proxy}
            record["eval_distance_from_base"] = distance
            if kl:
                record["eval_kl_to_base"] = kl_to_base
            lines.append(json.dumps(record))
        (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")
        (folder / "results.json").write_text(json.dumps({"base": {"gold": 0.5, "proxy": 1.0}}))
        return folder

    with_kl, without = proxy_run("with-kl", kl=True), proxy_run("without", kl=False)
    assert probe.main([str(with_kl), "--output", str(tmp_path / "kl.png")]) == 0
    output = capsys.readouterr().out
    assert "gold peaks at 0.7000 after 16 samples (KL to base 3.0000 nats, proxy 2.000)" in output
    assert (tmp_path / "kl.png").read_bytes()[:4] == b"\x89PNG"
    assert probe.main([str(without), "--output", str(tmp_path / "distance.png")]) == 0
    assert "(distance from base 0.2000, proxy 2.000)" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # one x axis per figure
        probe.main([str(with_kl), str(without), "--output", str(tmp_path / "mixed.png")])
    assert "evaluate all of them with --eval-kl, or none" in capsys.readouterr().err

    # seeds of one agent: drawn as a group, whose seed mean's peak is printed (gold 0.7 and 0.9, KL 3 and 3.2)
    seeds = [proxy_run("agent-seed0", kl=True), proxy_run("agent-seed1", kl=True, shift=0.2)]
    assert probe.main([*map(str, seeds), "--output", str(tmp_path / "group.png")]) == 0
    output = capsys.readouterr().out
    assert "agent (mean of 2 runs): gold peaks at 0.8000 after 16 samples (KL to base 3.1000 nats" in output
    assert (tmp_path / "group.png").read_bytes()[:4] == b"\x89PNG"
