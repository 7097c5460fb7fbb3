"""The bench: its task registry, its plan, pairing by seed (the same evaluation noise for every agent and seed),
resume (a killed bench finishes without rerunning finished runs) and the leaderboard's shape; the real
``--budget smoke`` runs at the end."""

from __future__ import annotations

import ast
import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from agents import AgentConfig, make_agent
from agents.experiments.bench import (
    AA_SEED_OFFSET,
    PER_PROMPT_FILE,
    bench,
    budget_task,
    compared,
    leaderboard,
    main,
    plan_bench,
    seed_spec,
    seeds_text,
    stalled_seeds,
    summarise_bench,
)
from agents.training.evaluation import RUN_EVAL_SEED, Scores, evaluate
from agents.training.run_folder import METRICS_FILE, RESULTS_FILE, RunResult, RunSettings, write_results, write_settings
from diffusion_gym.prompts import resolve_prompts, split_sentences
from diffusion_gym.tasks import Task, get_task, register_task, task_names
from tests._scripts import REPO

pytestmark = pytest.mark.usefixtures("one_torch_thread")

AGENT_KEYS = {"iqm", "ci_low", "ci_high", "seeds", "samples_to_0.05", "samples_to_0.10", "minutes_to_0.10"}
PAIR_KEYS = {"a", "b", "prob_improvement", "ci_low", "ci_high"}
REPS = 100  # bootstrap replications: the shape and the points are checked, not the bounds


# ----------------------------------------------------------------------------------------------- tasks
def test_the_shapes_world_registers_its_five_tasks():
    assert task_names()[:5] == ["long", "multi", "heldout", "proxy", "standard"]


def test_the_long_task_is_the_default_task_of_diffusion_gym_run():
    from agents import run_command

    long = get_task("long")
    assert run_command.DEFAULT_TASK == "long"
    assert (long.batch_size, long.batches_per_epoch) == (AgentConfig.batch_size, AgentConfig.batches_per_epoch)
    assert long.eval_samples == RunSettings.eval_samples and long.reward is None and long.fresh_samples == 1280
    assert (long.prompts, long.eval_prompts, long.generalisation_prompts) == ("shapes-long",) * 2 + ("shapes-heldout",)
    assert (long.epochs, long.eval_every, long.num_inference_steps) == (40, 5, 10)


def test_the_generic_task_module_imports_no_world():
    tree = ast.parse((REPO / "diffusion_gym" / "tasks.py").read_text())
    imported = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
    imported += [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    assert not [name for name in imported if "shapes" in name]


def test_unknown_duplicate_and_bad_tasks_are_refused_with_their_name():
    with pytest.raises(ValueError, match="unknown task 'lon'.*did you mean 'long'"):
        get_task("lon")
    with pytest.raises(ValueError, match="already registered"):
        register_task(get_task("long"))
    with pytest.raises(ValueError, match="epochs must be an int >= 1"):
        Task("t", "d", prompts="shapes-long", eval_prompts="shapes-long", gold="shapes-gold", epochs=0)
    with pytest.raises(ValueError, match="eval_samples"):
        get_task("long").replace(eval_samples=0)


def test_the_multi_prompts_are_eight_multi_sentence_prompts_of_differing_measured_base_gold():
    prompts = resolve_prompts("shapes-multi")
    assert len(set(prompts)) == 8 and all(len(split_sentences(p)) >= 4 for p in prompts)
    measured = json.loads((REPO / "docs/experiments/data/2026-12-07-multi-base-gold.json").read_text())["prompts"]
    gold = {row["prompt"]: row["base_gold"] for row in measured}
    chosen = [gold[p] for p in prompts]  # every chosen prompt was measured
    assert max(chosen) - min(chosen) > 0.2
    assert chosen == sorted(chosen)  # hardest first
    assert not set(prompts) & (set(resolve_prompts("shapes-train")) | set(resolve_prompts("shapes-heldout")))


# ----------------------------------------------------------------------------------------------- the plan
def test_the_plan_is_one_run_folder_per_task_agent_and_seed_with_the_tasks_settings(tmp_path):
    runs = plan_bench(["long", "multi"], ["ddpo", "loop", "ddpo-aa", "ddpo-half-batch"], [0, 3], tmp_path)
    assert len(runs) == 2 * 4 * 2
    by_name = {(run.task, run.agent, run.seed): run.settings for run in runs}
    loop = by_name[("multi", "loop", 3)]
    assert loop.output_dir == tmp_path / "multi" / "loop-seed3"
    assert (loop.env.prompts, loop.eval_prompts, loop.epochs, loop.eval_samples) == (
        "shapes-multi",
        "shapes-multi",
        40,
        64,
    )
    assert (loop.config.seed, loop.config.loop_k, loop.threads) == (3, 4, 1)
    assert by_name[("long", "ddpo-aa", 3)].config.seed == 3 + AA_SEED_OFFSET
    assert by_name[("long", "ddpo-half-batch", 0)].config.batches_per_epoch == 1
    assert by_name[("long", "ddpo", 0)].command.startswith("diffusion-gym bench --tasks long --agents ddpo")
    assert not any(tmp_path.iterdir())  # planning writes nothing


def test_unknown_names_are_refused_before_anything_is_written(tmp_path):
    target = tmp_path / "bench"
    with pytest.raises(ValueError, match="unknown bench agent 'dpoo'"):
        bench(["long"], ["ddpo", "dpoo"], [0], target)
    with pytest.raises(ValueError, match="unknown task"):
        bench(["lnog"], ["ddpo"], [0], target)
    with pytest.raises(ValueError, match="twice"):
        bench(["long"], ["ddpo"], [0, 0], target)
    with pytest.raises(SystemExit):
        main(["--tasks", "long", "--agents", "nope", "--output-dir", str(target)])
    assert not target.exists()


def test_the_smoke_budget_shrinks_every_task_to_seconds():
    for name in task_names():
        smoke = budget_task(get_task(name), "smoke")
        assert smoke.fresh_samples == 8 and smoke.eval_samples == 4 and smoke.num_inference_steps == 3
    with pytest.raises(ValueError, match="budget"):
        budget_task(get_task("long"), "huge")


# ----------------------------------------------------------------------------------------------- pairing
def test_a_seed_gives_every_agent_the_same_evaluation_noise_and_the_same_first_batch(tiny_env_settings, monkeypatch):
    env = dataclasses.replace(tiny_env_settings, prompts=["A red box. A blue sky."]).make(num_envs=2)
    resets: list[int] = []
    reset = env.reset

    def recording_reset(*args, seed=None, **kwargs):
        resets.append(seed)
        return reset(*args, seed=seed, **kwargs)

    monkeypatch.setattr(env, "reset", recording_reset)
    config = AgentConfig(batch_size=2, batches_per_epoch=1, lora_rank=2, loop_k=2)
    prompts = ["A red box. A blue sky."] * 3
    evaluations, first_batches = {}, {}
    try:
        for name, seed in (("ddpo", 3), ("dpok", 3), ("loop", 4), ("ddpo", 4)):
            agent = make_agent(name, env, dataclasses.replace(config, seed=seed))
            resets.clear()
            batch = agent.collect()[0]  # the first training batch (advances the agent's RNGs)
            first_batches[(name, seed)] = (resets[0], batch.latents[:, 0].clone())  # seed, (B, C, H, W) x_T
            resets.clear()
            evaluations[(name, seed)] = (list(resets), evaluate(agent, prompts).images)
            evaluations[(name, seed)] = (list(resets), evaluations[(name, seed)][1])
            agent.close()
    finally:
        env.close()
    # evaluation: the same reset seeds (RUN_EVAL_SEED) and, untrained, the same images for every agent and seed
    reference_seeds, reference_images = evaluations[("ddpo", 3)]
    assert reference_seeds == [RUN_EVAL_SEED, RUN_EVAL_SEED + 2]  # chunks of num_envs = 2 samples
    for seeds, images in evaluations.values():
        assert seeds == reference_seeds
        torch.testing.assert_close(images, reference_images, rtol=0, atol=0)
    # training: the same seed draws the same first batch's initial noise for agents that draw prompts alike
    assert first_batches[("ddpo", 3)][0] == first_batches[("dpok", 3)][0]
    torch.testing.assert_close(first_batches[("ddpo", 3)][1], first_batches[("dpok", 3)][1], rtol=0, atol=0)
    assert first_batches[("ddpo", 3)][0] != first_batches[("ddpo", 4)][0]


# ----------------------------------------------------------------------------------------------- resume
GAINS = {"ddpo": 0.10, "loop": 0.04, "ddpo-aa": 0.10}  # + 0.01 x seed: ddpo beats loop on every seed


def test_stalled_seeds_by_hand():
    """A seed stalled when its best gain is below a third of its agent's median seed's: DDPO on ``long`` (the
    verdict suite's seed 5, +0.026 against a median of +0.119) stalled; ``multi``'s slow and even seeds did not;
    an agent whose median seed stays within an evaluation's noise (``heldout``) has no stalled seed."""
    long_ddpo = [0.134, 0.112, 0.119, 0.086, 0.119, 0.026]  # median 0.1155: threshold 0.0385
    assert stalled_seeds(range(6), long_ddpo) == [5]
    multi_loop = [0.033, 0.026, 0.045, 0.027, 0.019, 0.026]  # median 0.0265: threshold 0.0088
    assert stalled_seeds(range(6), multi_loop) == []
    assert stalled_seeds([3, 4, 7], [0.09, 0.02, 0.10]) == [4]  # seeds are reported by their own numbers
    assert stalled_seeds([0, 1], [-0.01, 0.0]) == []
    heldout_ddpo = [0.005, 0.002, -0.002, 0.000, 0.009, 0.003]  # median 0.0025: within an evaluation's noise
    assert stalled_seeds(range(6), heldout_ddpo) == []
    assert stalled_seeds(range(6), heldout_ddpo, floor=0.0) == [2, 3]
    with pytest.raises(ValueError, match="best gains for 3 seeds"):
        stalled_seeds([0, 1, 2], [0.1, 0.2])


def test_calibration_agents_are_paired_with_their_reference_only():
    """The A/A twin and the handicaps are compared with DDPO, not with LOOP nor with each other (the twin's seeds
    are not paired with LOOP's); every other pair is compared."""
    assert compared("ddpo", "loop") and compared("herd-b2", "nft") and compared("my-agent", "ddpo")
    assert compared("ddpo", "ddpo-aa") and compared("ddpo-half-batch", "ddpo")
    assert not compared("loop", "ddpo-aa") and not compared("ddpo-half-lr", "herd-b2")
    assert not compared("ddpo-aa", "ddpo-half-batch")


def test_the_seeds_a_command_prints_read_back_as_the_same_seeds():
    """The leaderboard's and each run's regenerating command name their seeds so that ``--seeds`` reads them back:
    one seed 0 is ``0-0`` (a bare ``0`` would be a count of none)."""
    for seeds, text in [([0], "0-0"), ([3], "3-3"), ([0, 1, 2, 3, 4, 5], "0-5"), ([0, 3, 7], "0,3,7"), ([2, 1], "2,1")]:
        assert seeds_text(seeds) == text
        assert seed_spec(text) == seeds


def fake_run(settings: RunSettings) -> None:
    """A finished run folder without training: gold gains GAINS[agent] + 0.01 x seed, evaluated every epoch."""
    folder = Path(settings.output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    write_settings(settings, folder)
    base, gain = 0.8, GAINS[settings.label] + 0.01 * settings.config.seed
    per_epoch = settings.config.batch_size * settings.config.batches_per_epoch
    with (folder / METRICS_FILE).open("w") as lines:
        for epoch in range(1, settings.epochs + 1):
            record = {"epoch": epoch, "global_step": epoch * per_epoch, "elapsed_seconds": 6.0 * epoch}
            record["eval_gold"] = base + gain * epoch / settings.epochs
            lines.write(json.dumps(record) + "\n")
    result = RunResult(
        label=settings.label, agent=settings.agent, model=settings.env.model, reward="shapes-gold",
        prompts=str(settings.env.prompts), eval_prompts=str(settings.eval_prompts),
        num_eval_samples=settings.eval_samples, seed=settings.config.seed, epochs=settings.epochs,
        epochs_completed=settings.epochs, interrupted=False, samples_seen=settings.epochs * per_epoch,
        train_samples_seen=settings.epochs * per_epoch, wall_seconds=6.0 * settings.epochs,
        base=Scores(reward=base, gold=base, proxy=None), final=Scores(reward=base + gain, gold=base + gain, proxy=None),
        config=dataclasses.asdict(settings.config), command=settings.command,
        num_inference_steps=settings.env.num_inference_steps or 10, device="cpu",
    )  # fmt: skip
    write_results(result, folder)


def test_a_killed_bench_finishes_without_rerunning_finished_runs_and_writes_the_leaderboard(tmp_path):
    calls: list[str] = []

    def killed_at_the_third(settings: RunSettings) -> None:
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(settings.output_dir.name)
        fake_run(settings)

    bench(["long"], ["ddpo", "loop"], [0, 1], tmp_path, budget="smoke", run_one=killed_at_the_third, summarise=False)
    assert calls == ["ddpo-seed0", "ddpo-seed1"]
    finished = {name: (tmp_path / "long" / name / RESULTS_FILE).stat().st_mtime_ns for name in calls}

    def continuing(settings: RunSettings) -> None:
        calls.append(settings.output_dir.name)
        fake_run(settings)

    board = bench(["long"], ["ddpo", "loop"], [0, 1], tmp_path, budget="smoke", run_one=continuing, reps=REPS)
    assert calls == ["ddpo-seed0", "ddpo-seed1", "loop-seed0", "loop-seed1"]  # the finished ones were not rerun
    assert {name: (tmp_path / "long" / name / RESULTS_FILE).stat().st_mtime_ns for name in finished} == finished
    bench(["long"], ["ddpo", "loop"], [0, 1], tmp_path, budget="smoke", run_one=continuing, reps=REPS)
    assert len(calls) == 4  # all finished: only summarised

    assert set(board) == {"tasks"} and set(board["tasks"]) == {"long"}
    task = board["tasks"]["long"]
    assert set(task) == {"mde", "agents", "pairs"} and set(task["agents"]) == {"ddpo", "loop"}
    assert all(set(row) == AGENT_KEYS for row in task["agents"].values())
    assert task["agents"]["ddpo"]["iqm"] == pytest.approx(0.105) and task["agents"]["ddpo"]["seeds"] == 2
    assert task["agents"]["ddpo"]["samples_to_0.05"] == 4  # smoke: 4 samples an epoch, +0.05 after epoch 1 of 2
    assert task["agents"]["loop"]["samples_to_0.10"] is None
    (pair,) = task["pairs"]
    assert set(pair) == PAIR_KEYS and (pair["a"], pair["b"], pair["prob_improvement"]) == ("ddpo", "loop", 1.0)
    assert task["mde"] == pytest.approx(0.0)  # the paired differences are all 0.06: no spread
    assert "| too few seeds (< 5) | +0.0600 [+0.0600, +0.0600] |" in (tmp_path / "leaderboard.md").read_text()
    assert json.loads((tmp_path / "leaderboard.json").read_text()) == board
    for name in ("leaderboard.md", "bench_summary.json", "leaderboard_iqm.png", "performance_profiles.png",
                 "gold_curves.png"):  # fmt: skip
        assert (tmp_path / name).stat().st_size > 0
    # LOOP's seeds gain +0.04 and +0.05: lower than DDPO's, but neither stalled against its sibling
    summary = json.loads((tmp_path / "bench_summary.json").read_text())["tasks"]["long"]["agents"]
    assert (summary["ddpo"]["stalled"], summary["loop"]["stalled"]) == ([], [])
    assert "| 0/2 |" in (tmp_path / "leaderboard.md").read_text()
    # a task with no finished run yet is named, not printed as an empty table
    summarise_bench(tmp_path, ["long", "multi"], ["ddpo", "loop"], [0, 1], "smoke", REPS)
    text = (tmp_path / "leaderboard.md").read_text()
    assert "## long" in text and "## multi" not in text and "No finished run yet on: multi." in text


def test_the_leaderboard_pairs_the_a_a_twin_with_ddpo_only(tmp_path):
    board = bench(["long"], ["ddpo", "loop", "ddpo-aa"], [0, 1], tmp_path, budget="smoke", run_one=fake_run, reps=REPS)
    pairs = [(pair["a"], pair["b"]) for pair in board["tasks"]["long"]["pairs"]]
    assert pairs == [("ddpo", "loop"), ("ddpo", "ddpo-aa")]


def test_an_archived_bench_continues_in_another_folder_without_rerunning_its_runs(tmp_path):
    """``--archive``: every finished run's summary files (no checkpoints) are copied as it finishes; a fresh bench
    folder restored from the archive (another machine) summarises them and trains only the rest."""
    archive, calls = tmp_path / "archive", []

    def run(settings: RunSettings) -> None:
        calls.append(settings.output_dir.name)
        fake_run(settings)
        (settings.output_dir / "checkpoints").mkdir()  # not archived

    bench(["long"], ["ddpo"], [0, 1], tmp_path / "here", budget="smoke", run_one=run, reps=REPS, archive_dir=archive)
    assert sorted(p.name for p in (archive / "long").iterdir()) == ["ddpo-seed0", "ddpo-seed1"]
    archived = sorted(p.name for p in (archive / "long" / "ddpo-seed0").iterdir())
    assert archived == [METRICS_FILE, RESULTS_FILE, "run.json"]
    board = bench(["long"], ["ddpo", "loop"], [0, 1], tmp_path / "there", budget="smoke", run_one=run, reps=REPS,
                  archive_dir=archive)  # fmt: skip
    assert calls == ["ddpo-seed0", "ddpo-seed1", "loop-seed0", "loop-seed1"]  # ddpo came from the archive
    assert board["tasks"]["long"]["agents"]["ddpo"]["seeds"] == 2
    assert (archive / "long" / "loop-seed1" / RESULTS_FILE).exists()
    with pytest.raises(SystemExit):  # an archive is a folder
        main(["--archive"])


def test_a_folder_of_other_settings_is_refused(tmp_path):
    (run,) = plan_bench(["long"], ["ddpo"], [0], tmp_path, budget="smoke")
    fake_run(dataclasses.replace(run.settings, epochs=3))
    with pytest.raises(ValueError, match="other settings"):
        bench(["long"], ["ddpo"], [0], tmp_path, budget="smoke", run_one=fake_run)


# ----------------------------------------------------------------------------------------------- real runs
def test_the_smoke_bench_trains_and_ranks_two_agents(tmp_path):
    """``--budget smoke`` end to end on the Shapes world: 1 task x 2 agents x 1 seed, in this process."""
    assert main(["--tasks", "long", "--agents", "ddpo,loop", "--seeds", "1", "--budget", "smoke",
                 "--output-dir", str(tmp_path), "--bootstrap-reps", "100"]) == 0  # fmt: skip
    board = json.loads((tmp_path / "leaderboard.json").read_text())
    assert set(board["tasks"]["long"]["agents"]) == {"ddpo", "loop"}
    assert board["tasks"]["long"]["mde"] is None  # one seed: no variance of the paired differences
    assert all(set(row) == AGENT_KEYS for row in board["tasks"]["long"]["agents"].values())


def test_the_multi_task_scores_gold_per_prompt(tmp_path):
    """``multi`` (smoke: 4 held-out samples, one each of 4 of its 8 prompts): every evaluation's gold per prompt is
    logged, and its mean is the evaluation's gold."""
    board = bench(["multi"], ["ddpo"], [0], tmp_path, budget="smoke", reps=REPS)
    folder = tmp_path / "multi" / "ddpo-seed0"
    record = json.loads((folder / PER_PROMPT_FILE).read_text())
    assert record["prompts"] == resolve_prompts("shapes-multi")
    assert sorted(record["by_samples"], key=int) == ["0", "4", "8"]  # the base model, then every epoch of 4 samples
    lines = [json.loads(line) for line in (folder / METRICS_FILE).read_text().splitlines()]
    for line in lines:
        per_prompt = [value for key, value in line.items() if key.startswith("eval_gold_prompt")]
        assert len(per_prompt) == 4 and sum(per_prompt) / 4 == pytest.approx(line["eval_gold"], abs=1e-6)
        assert [v for v in record["by_samples"][str(line["global_step"])] if v is not None] == pytest.approx(
            [line[f"eval_gold_prompt{j}"] for j in range(8) if f"eval_gold_prompt{j}" in line]
        )
    summary = json.loads((tmp_path / "bench_summary.json").read_text())["tasks"]["multi"]["agents"]["ddpo"]
    assert len(summary["per_prompt_gain"]) == 8 and summary["per_prompt_gain"].count(None) == 4
    assert "Gold gain per evaluation prompt" in (tmp_path / "leaderboard.md").read_text()
    assert board["tasks"]["multi"]["agents"]["ddpo"]["seeds"] == 1


def test_the_prompts_of_a_per_prompt_task_are_rliables_tasks(tmp_path):
    """``multi``'s per-prompt gains of every seed: the IQM over (seed, prompt) and P(a > b) averaged over prompts.
    DDPO gains 0.10 + 0.01 j on prompt j, LOOP 0.04 + 0.01 j (+ 0.001 x seed each): DDPO wins on every prompt."""
    prompts = resolve_prompts("shapes-multi")
    for planned in plan_bench(["multi"], ["ddpo", "loop"], [0, 1, 2], tmp_path, budget="smoke"):
        fake_run(planned.settings)
        gain = {"ddpo": 0.10, "loop": 0.04}[planned.agent] + 0.001 * planned.seed
        final = [0.8 + gain + 0.01 * j for j in range(len(prompts))]
        record = {"prompts": prompts, "by_samples": {"0": [0.8] * len(prompts), "8": final}}
        (planned.settings.output_dir / PER_PROMPT_FILE).write_text(json.dumps(record))
    _, details = leaderboard(tmp_path, ["multi"], ["ddpo", "loop"], [0, 1, 2], reps=REPS)
    ddpo = details["tasks"]["multi"]["agents"]["ddpo"]
    assert np.array(ddpo["per_prompt_gain_by_seed"]).shape == (3, 8) and ddpo["per_prompt_seeds"] == [0, 1, 2]
    by_hand = np.sort([0.10 + 0.001 * seed + 0.01 * j for seed in range(3) for j in range(8)])[6:18].mean()
    assert ddpo["per_prompt_iqm"]["point"] == pytest.approx(by_hand)  # the middle 12 of 24 scores
    (pair,) = details["tasks"]["multi"]["pairs"]
    assert pair["per_prompt_prob_improvement"]["point"] == 1.0 and pair["per_prompt_prob_improvement"]["low"] == 1.0


@pytest.mark.slow
def test_the_smoke_suite_of_two_seeds_in_two_jobs_resumes_a_run_that_lost_its_results(tmp_path):
    """1 task x 2 agents x 2 seeds as 2 subprocesses; then one run's results.json is deleted (a session killed
    after its last checkpoint): the rerun resumes that one from its checkpoint and leaves the others alone."""
    argv = ["--tasks", "long", "--agents", "ddpo,loop", "--seeds", "2", "--budget", "smoke", "--jobs", "2",
            "--output-dir", str(tmp_path), "--bootstrap-reps", "100"]  # fmt: skip
    assert main(argv) == 0
    folders = sorted((tmp_path / "long").iterdir())
    assert [folder.name for folder in folders] == ["ddpo-seed0", "ddpo-seed1", "loop-seed0", "loop-seed1"]
    before = {folder.name: (folder / METRICS_FILE).stat().st_mtime_ns for folder in folders}
    lost = json.loads((folders[0] / RESULTS_FILE).read_text())
    (folders[0] / RESULTS_FILE).unlink()
    assert main(argv) == 0
    assert json.loads((folders[0] / RESULTS_FILE).read_text())["final"] == lost["final"]  # rewritten, not retrained
    assert {folder.name: (folder / METRICS_FILE).stat().st_mtime_ns for folder in folders[1:]} == {
        name: mtime for name, mtime in before.items() if name != folders[0].name
    }
    board = json.loads((tmp_path / "leaderboard.json").read_text())
    assert all(row["seeds"] == 2 for row in board["tasks"]["long"]["agents"].values())
    assert (tmp_path / "logs").is_dir() and os.listdir(tmp_path / "logs")


def test_the_bench_flags_are_the_fields_of_bench_settings_and_refuse_what_they_refuse(capsys):
    """One declaration per knob: each BenchSettings field is a flag whose help is its docstring; its range is checked
    by the command line and by the dataclass alike."""
    from agents.config import field_docstrings
    from agents.experiments.bench import BenchSettings

    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for setting in dataclasses.fields(BenchSettings):
        assert "--" + setting.name.replace("_", "-") in text, setting.name
        assert field_docstrings(BenchSettings)[setting.name] in text, setting.name
    refused = {"--jobs": ("0", "expected a positive integer"), "--bootstrap-reps": ("5", "expected an integer >= 10")}
    for flag, (value, expected) in refused.items():
        argv, message = [flag, value], f"argument {flag}: {expected}"
        with pytest.raises(SystemExit):
            main(argv)
        assert message in capsys.readouterr().err
    with pytest.raises(ValueError, match="jobs must be >= 1, got 0"):
        BenchSettings(jobs=0)
    with pytest.raises(ValueError, match="budget must be one of"):
        BenchSettings(budget="tiny")
    with pytest.raises(ValueError, match="a seed is listed twice"):
        BenchSettings(seeds=[1, 1])
