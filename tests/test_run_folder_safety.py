"""Run folders, nothing lost and nothing mixed (issue 30): a new run refuses an existing run's folder (the rule the
command line uses too); a folder is locked while a process writes it (a second writer is refused, a killed one
leaves no lock); a resume checks run.json against the checkpoint and rebuilds a missing or damaged metrics.jsonl
from it; the LoRA export is part of the atomic checkpoint; the base evaluations are shared only by equal settings."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import test_trainer
from _scripts import REPO
from test_runs_checkpoints import cli_error, run, snapshot, trainer

import agents.training.evaluation as evaluation
import agents.training.trainer as trainer_module
from agents import AgentConfig, Trainer
from agents.checkpoint import list_checkpoints
from agents.experiments.comparison import continue_or_start
from agents.training.evaluation import Evaluation, Scores
from agents.training.run_folder import RunFolderWarning, new_run_folder_problem, read_history, read_settings
from agents.training.run_lock import LOCK_FILE, RunFolderInUse, RunFolderLock

pytestmark = pytest.mark.usefixtures("one_torch_thread")
env = test_trainer.env  # the tiny env fixture (one per module)


@pytest.fixture(scope="module")
def two_epochs(env, tmp_path_factory) -> Path:
    """A finished 2-epoch DDPO run with one checkpoint, after epoch 2 (copy it before changing it)."""
    folder = tmp_path_factory.mktemp("runs") / "two"
    with trainer(env, folder) as straight:
        straight.train(epochs=2)
    assert [p.name for p in list_checkpoints(folder)] == ["000001-epoch-0002"]
    return folder


def copy_run(source: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(source, tmp_path / "run"))


# ------------------------------------------------------------------------------------------ 4a: no overwrite
def test_a_new_run_refuses_an_existing_runs_folder_and_writes_nothing(env, two_epochs, tmp_path, capsys):
    folder = copy_run(two_epochs, tmp_path)
    before = snapshot(folder)
    with trainer(env, folder) as second, pytest.raises(ValueError, match="refusing to start a new run") as error:
        second.train(epochs=1)
    message = str(error.value)
    assert str(folder) in message and f"Trainer.resume({str(folder)!r})" in message and "--resume" in message
    assert snapshot(folder) == before
    # the command line refuses it by the same rule
    assert "holds a run (run.json)" in cli_error(["--agent", "ddpo", "--output-dir", str(folder)], capsys)

    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with trainer(env, other) as third, pytest.raises(ValueError, match="is not empty; pick a new folder"):
        third.train(epochs=1)
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"]


def test_a_folder_holding_only_a_lock_file_counts_as_empty(tmp_path):
    (tmp_path / LOCK_FILE).write_text("")
    assert new_run_folder_problem(tmp_path) is None
    assert new_run_folder_problem(tmp_path / "missing") is None
    settings = run.parse_args(["--agent", "ddpo", "--output-dir", str(tmp_path)])  # the command line agrees
    assert settings.output_dir == tmp_path


def test_a_comparison_restarts_a_run_stopped_before_its_first_checkpoint_and_keeps_its_files(two_epochs, tmp_path):
    folder = copy_run(two_epochs, tmp_path)
    for checkpoint in list_checkpoints(folder):  # as if stopped before its first checkpoint
        shutil.rmtree(checkpoint)
    (folder / "results.json").unlink()
    planned = dataclasses.replace(read_settings(folder), label="")
    assert continue_or_start(planned) == planned  # a new run in the folder...
    assert not folder.exists()  # ...which is free again
    kept = tmp_path / "run.stopped-1"
    assert (kept / "run.json").is_file() and (kept / "metrics.jsonl").is_file()


# ------------------------------------------------------------------------------------------ 4b: one writer
def hold_lock(folder: Path) -> subprocess.Popen:
    """A process that locks ``folder`` and waits (until killed); returns once the lock is held."""
    code = (
        "import sys; from agents.training.run_lock import RunFolderLock; lock = RunFolderLock(sys.argv[1]).acquire(); "
        "print('locked', flush=True); sys.stdin.read()"
    )
    environment = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(folder)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
    )
    line = holder.stdout.readline()  # blocks until the child printed (or died): no deadline to miss
    assert line == "locked\n", holder.stderr.read()
    return holder


def test_a_second_writer_is_refused_while_a_process_holds_the_folder(env, two_epochs, tmp_path):
    folder = copy_run(two_epochs, tmp_path)
    (folder / LOCK_FILE).unlink(missing_ok=True)
    new = tmp_path / "new"
    new.mkdir()
    holders = [hold_lock(folder), hold_lock(new)]
    try:
        before = snapshot(folder)
        with Trainer.resume(folder, env=env) as resumed, pytest.raises(RunFolderInUse) as error:
            resumed.train(epochs=3)  # a --resume of a run that is still training
        assert f"{folder} is in use" in str(error.value) and f"pid {holders[0].pid}" in str(error.value)
        assert snapshot(folder) == before
        with trainer(env, new) as second, pytest.raises(RunFolderInUse, match="is in use"):
            second.train(epochs=1)  # a second run into a folder another run has just started
        assert [p.name for p in new.iterdir()] == [LOCK_FILE]  # nothing written
    finally:
        for holder in holders:
            holder.send_signal(signal.SIGKILL)  # a killed holder leaves no lock
            holder.wait()
            holder.stdin.close()
            holder.stdout.close()
            holder.stderr.close()
    with Trainer.resume(folder, env=env) as resumed:
        assert resumed.train(epochs=3).epochs_completed == 3
    with RunFolderLock(new), pytest.raises(RunFolderInUse):  # free again; two locks of one process exclude each other
        RunFolderLock(new).acquire()
    with RunFolderLock(folder):  # released when train() returned
        pass


# ------------------------------------------------------------------------------------------ 4c: resume checks
@pytest.mark.parametrize(
    ("edit", "names"),
    [
        ({"env": {"num_inference_steps": 3}}, ["num_inference_steps: run.json 3, checkpoint 2"]),
        ({"config": {"lora_rank": 4}}, ["config.lora_rank: run.json 4, checkpoint 2"]),
        ({"config": {"batch_size": 4}}, ["config.batch_size: run.json 4, checkpoint 2"]),
        ({"eval_samples": 3, "config": {"eta": 0.5}}, ["eval_samples: run.json 3, checkpoint 2", "config.eta"]),
    ],
)
def test_a_resume_refuses_a_run_json_edited_since_the_checkpoint(two_epochs, tmp_path, capsys, edit, names):
    folder = copy_run(two_epochs, tmp_path)
    data = json.loads((folder / "run.json").read_text())
    data.update({k: v for k, v in edit.items() if k not in ("config", "env")})
    data["config"].update(edit.get("config", {}))
    data["env"].update(edit.get("env", {}))
    (folder / "run.json").write_text(json.dumps(data))
    before = snapshot(folder)
    with pytest.raises(ValueError, match="refusing to resume") as error:
        Trainer.resume(folder)  # before the env or the agent is built
    for name in names:
        assert name in str(error.value)
    assert "000001-epoch-0002" in str(error.value)
    output = cli_error(["--resume", str(folder)], capsys)
    assert "argument --resume: refusing to resume" in output and names[0] in output
    assert snapshot(folder) == before


@pytest.mark.parametrize("how", ["deleted", "garbage", "edited"])
def test_a_missing_or_damaged_metrics_file_is_rebuilt_from_the_checkpoint(env, two_epochs, tmp_path, how):
    folder = copy_run(two_epochs, tmp_path)
    metrics = folder / "metrics.jsonl"
    original = read_history(two_epochs)
    if how == "deleted":
        metrics.unlink()
    elif how == "garbage":
        metrics.write_bytes(b"\x00\xffnot json\nat all\n")
    else:  # an epoch's line dropped
        metrics.write_text(metrics.read_text().splitlines()[1] + "\n")
    damaged = None if how == "deleted" else metrics.read_bytes()
    with Trainer.resume(folder, env=env) as resumed, pytest.warns(RunFolderWarning, match="rebuilt from the check"):
        result = resumed.train(epochs=3)
    history = read_history(folder)
    assert [r["epoch"] for r in history] == [1, 2, 3] and history[:2] == original
    assert [r["epoch"] for r in result.history] == [1, 2, 3]
    if damaged is not None:  # the file found is kept beside
        assert (folder / "metrics.jsonl.damaged-1").read_bytes() == damaged


def test_an_intact_metrics_file_with_a_torn_last_line_is_trimmed_without_a_warning(env, two_epochs, tmp_path):
    folder = copy_run(two_epochs, tmp_path)
    with (folder / "metrics.jsonl").open("a") as metrics:
        metrics.write('{"epoch": 3, "global_st')  # a kill mid-line
    with Trainer.resume(folder, env=env) as resumed, warnings.catch_warnings():
        warnings.simplefilter("error", RunFolderWarning)
        resumed.train(epochs=3)
    assert [r["epoch"] for r in read_history(folder)] == [1, 2, 3]
    assert not list(folder.glob("metrics.jsonl.*"))


# ------------------------------------------------------------------------------------------ 5a: LoRA export
def test_the_lora_export_is_written_inside_the_checkpoint_before_it_appears(env, tmp_path, monkeypatch):
    real, seen = trainer_module.export_lora_diffusers, []

    def export(unet, folder, adapter_name=None):
        seen.append(Path(folder).parent.name)  # the checkpoint folder it is written into
        return real(unet, folder, adapter_name=adapter_name)

    monkeypatch.setattr(trainer_module, "export_lora_diffusers", export)
    with trainer(env, tmp_path / "run") as good:
        good.train(epochs=2)
    assert len(seen) == 1 and seen[0].startswith(".tmp-")  # the temp folder, renamed into place afterwards
    (checkpoint,) = list_checkpoints(tmp_path / "run")
    assert (checkpoint / "lora" / "pytorch_lora_weights.safetensors").is_file()

    def failing_export(unet, folder, adapter_name=None):
        raise OSError("disk full")  # or a kill: the export never completes

    monkeypatch.setattr(trainer_module, "export_lora_diffusers", failing_export)
    with trainer(env, tmp_path / "failed") as failed, pytest.raises(OSError, match="disk full"):
        failed.train(epochs=2)
    assert list_checkpoints(tmp_path / "failed") == []  # no checkpoint that looks complete without its export
    assert [p.name for p in (tmp_path / "failed" / "checkpoints").iterdir()] == []  # and no temp folder left


# ------------------------------------------------------------------------------------------ 5c: base evaluations
def test_runs_share_a_base_evaluation_only_when_nothing_that_changes_it_differs(env, tiny_pipeline, monkeypatch):
    """The base model's evaluation is cached per process; runs differing only in a setting that changes the base
    samples (the prompt-chunk limit, attention, autocast, channels_last, the KL asked for) each get their own."""
    calls = []

    def fake_evaluate(agent, prompts, base=None, kl_to_base=False):
        calls.append(agent)
        return Evaluation(Scores(reward=float(len(calls)), gold=None, proxy=None), object(), list(prompts))

    monkeypatch.setattr(evaluation, "evaluate", fake_evaluate)
    monkeypatch.setattr(evaluation, "_BASE_EVALUATIONS", {})
    prompts = ["a small blue square"] * 2
    config = AgentConfig(batch_size=2, batches_per_epoch=1, lora_rank=2, seed=0)

    def base_reward(environment=env, eval_kl=False, **overrides) -> float:
        options = {"eval_prompts": prompts[0], "eval_samples": 2, "eval_kl": eval_kl}
        with Trainer(environment, "ddpo", dataclasses.replace(config, **overrides), "unused", **options) as built:
            return built._evaluate_base(prompts).scores.reward

    first = base_reward()
    assert base_reward(seed=3, learning_rate=5e-3, lora_rank=4) == first  # training-only: shared
    assert len(calls) == 1
    differing = [
        base_reward(attention="classic"),
        base_reward(channels_last=True),
        base_reward(autocast_bf16=True),
        base_reward(eval_kl=True),
    ]
    chunks = dataclasses.replace(trainer_module.EnvConfig.of(env), max_prompt_chunks=2).make(num_envs=2)
    try:
        differing.append(base_reward(chunks))
    finally:
        chunks.close()
    assert differing == [2.0, 3.0, 4.0, 5.0, 6.0]  # each one evaluated anew
