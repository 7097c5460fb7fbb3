"""Runs and checkpoints (issue 19): resuming with fewer epochs than done is refused and rewrites nothing; a corrupt
latest checkpoint falls back to the newest intact one (or ``--resume-from`` picks one) and is kept; TensorBoard and
``metrics.jsonl`` hold every step once after a kill and resume; a corrupt ``run.json`` and bad CLI paths and
devices are clear errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import test_trainer
import torch
from test_trainer import without_timing

from agents import AgentConfig, Trainer, TrainerCallback
from agents import run_command as run
from agents.checkpoint import CheckpointWarning, list_checkpoints
from agents.training.run_folder import read_history, read_settings
from agents.training.trainer import resume_point

pytestmark = pytest.mark.usefixtures("one_torch_thread")
env = test_trainer.env  # the tiny env fixture (one per module)


def trainer(env, output_dir: Path) -> Trainer:
    """DDPO, evaluated every epoch, checkpointed every 2 epochs."""
    config = AgentConfig(batch_size=2, batches_per_epoch=1, lora_rank=2, seed=0)
    options = {"eval_prompts": "a small blue square", "eval_samples": 2, "eval_every": 1, "checkpoint_every": 2}
    return Trainer(env, "ddpo", config, output_dir, **options)


@pytest.fixture(scope="module")
def four_epochs(env, tmp_path_factory) -> Path:
    """A finished 4-epoch run, evaluated every epoch, checkpointed after epochs 2 and 4 (copy it before changing)."""
    folder = tmp_path_factory.mktemp("runs") / "four"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the tests' one_torch_thread: the resumed runs match it exactly
    try:
        with trainer(env, folder) as straight:
            straight.train(epochs=4)
    finally:
        torch.set_num_threads(threads)
    assert [p.name for p in list_checkpoints(folder)] == ["000001-epoch-0002", "000002-epoch-0004"]
    return folder


def copy_run(source: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(source, tmp_path / "run"))


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file of a run folder with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def event_steps(folder: Path) -> dict[str, list[int]]:
    """The steps of every scalar and image tag in a run folder's TensorBoard events, read back as TensorBoard does
    (purges applied)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0}).Reload()
    steps = {tag: [e.step for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    steps.update({tag: [e.step for e in events.Images(tag)] for tag in events.Tags()["images"]})
    return steps


def corrupt(checkpoint: Path, how: str) -> None:
    tensors = checkpoint / "tensors.safetensors"
    if how == "modified":
        data = bytearray(tensors.read_bytes())
        data[-1] ^= 0xFF
        tensors.write_bytes(bytes(data))
    elif how == "truncated":
        tensors.write_bytes(tensors.read_bytes()[: tensors.stat().st_size // 2])
    elif how == "missing":
        (checkpoint / "state.json").unlink()
    else:
        raise ValueError(how)


def cli_error(argv: list[str], capsys) -> str:
    """benchmarks/run.py's argparse error for ``argv`` (exit code 2, no traceback)."""
    with pytest.raises(SystemExit) as exit_info:
        run.main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


# ------------------------------------------------------------------------------------------ epochs vs done
def test_fewer_epochs_than_done_is_refused_and_nothing_is_rewritten(env, four_epochs, tmp_path, capsys):
    folder = copy_run(four_epochs, tmp_path)
    before = snapshot(folder)
    with Trainer.resume(folder, env=env) as resumed:
        with pytest.raises(ValueError, match="has trained 4 epochs; refusing to set its epochs to 3"):
            resumed.train(epochs=3)
        assert resumed.settings.epochs == 4  # the trainer is unchanged too
    error = cli_error(["--resume", str(folder), "--epochs", "3"], capsys)
    assert "argument --epochs:" in error and "trained 4 epochs" in error and "to 3" in error
    assert snapshot(folder) == before


def test_a_second_train_call_with_fewer_epochs_is_refused(env, tmp_path):
    with trainer(env, tmp_path / "run") as twice:
        twice.train(epochs=2)
        before = snapshot(tmp_path / "run")
        with pytest.raises(ValueError, match="has trained 2 epochs; refusing to set its epochs to 1"):
            twice.train(epochs=1)
    assert snapshot(tmp_path / "run") == before


def test_as_many_epochs_as_done_trains_nothing_and_rewrites_nothing(env, four_epochs, tmp_path, capsys):
    folder = copy_run(four_epochs, tmp_path)
    before = snapshot(folder)
    with Trainer.resume(folder, env=env) as resumed:
        result = resumed.train(epochs=4)
    assert (result.epochs, result.epochs_completed, result.samples_seen) == (4, 4, 8)
    assert run.main(["--resume", str(folder)]) == 0  # run.json's 4 epochs
    assert "4/4 epochs" in capsys.readouterr().out
    assert snapshot(folder) == before  # not even a new TensorBoard event file


def test_as_many_epochs_as_done_completes_a_run_folder_a_kill_left_without_results(env, four_epochs, tmp_path):
    folder = copy_run(four_epochs, tmp_path)
    expected = json.loads((folder / "results.json").read_text())
    (folder / "results.json").unlink()  # killed after its last checkpoint, before results.json was written
    with Trainer.resume(folder, env=env) as resumed:
        result = resumed.train()
    assert (result.epochs, result.epochs_completed) == (4, 4)
    written = json.loads((folder / "results.json").read_text())
    assert (written["epochs"], written["epochs_completed"], written["final"]) == (4, 4, expected["final"])
    steps = event_steps(folder)
    assert steps["eval/reward"] == [0, 2, 4, 6, 8]  # the final evaluation is not logged twice


# ------------------------------------------------------------------------------------------ corrupt checkpoints
@pytest.mark.parametrize(
    ("how", "why"),
    [("modified", "SHA-256 does not match"), ("truncated", "SHA-256 does not match"), ("missing", "file missing")],
)
def test_resume_skips_a_corrupt_latest_checkpoint_with_a_warning(four_epochs, tmp_path, how, why):
    folder = copy_run(four_epochs, tmp_path)
    corrupt(folder / "checkpoints" / "000002-epoch-0004", how)
    before = snapshot(folder)
    with pytest.warns(CheckpointWarning, match=f"corrupt checkpoint 000002-epoch-0004 .*{why}"):
        point = resume_point(folder)
    assert (point.path.name, point.state.epoch, point.state.samples_seen) == ("000001-epoch-0002", 2, 4)
    assert [p.name for p in point.newer] == ["000002-epoch-0004"] and why in point.corrupt[point.newer[0]]
    assert snapshot(folder) == before  # choosing reads, never writes


def test_a_run_resumed_past_a_corrupt_checkpoint_continues_exactly_and_keeps_it(env, four_epochs, tmp_path):
    folder = copy_run(four_epochs, tmp_path)
    corrupt(folder / "checkpoints" / "000002-epoch-0004", "modified")
    kept = snapshot(folder / "checkpoints" / "000002-epoch-0004")
    with Trainer.resume(folder, env=env) as resumed, pytest.warns(CheckpointWarning, match="000002-epoch-0004"):
        result = resumed.train()
    assert result.epochs_completed == 4
    assert without_timing(read_history(folder)) == without_timing(read_history(four_epochs))
    names = sorted(p.name for p in (folder / "checkpoints").iterdir())
    assert names == ["000001-epoch-0002", "000002-epoch-0004", "corrupt-000002-epoch-0004"]
    assert snapshot(folder / "checkpoints" / "corrupt-000002-epoch-0004") == kept  # never deleted
    assert all(steps == sorted(set(steps)) for steps in event_steps(folder).values())


def test_no_intact_checkpoint_is_an_error_listing_each_and_why(four_epochs, tmp_path, capsys):
    folder = copy_run(four_epochs, tmp_path)
    corrupt(folder / "checkpoints" / "000001-epoch-0002", "truncated")
    corrupt(folder / "checkpoints" / "000002-epoch-0004", "missing")
    before = snapshot(folder)
    with pytest.raises(ValueError, match="no intact checkpoint") as error:
        resume_point(folder)
    assert "000001-epoch-0002: corrupt checkpoint file" in str(error.value)
    assert "000002-epoch-0004: checkpoint file missing" in str(error.value)
    output = cli_error(["--resume", str(folder)], capsys)
    assert "argument --resume: no intact checkpoint" in output and "000001-epoch-0002: " in output
    assert snapshot(folder) == before


def test_resume_from_picks_a_checkpoint_and_sets_the_newer_ones_aside(env, four_epochs, tmp_path, capsys):
    folder = copy_run(four_epochs, tmp_path)
    assert "is not a checkpoint of the run" in cli_error(["--resume", str(folder), "--resume-from", "nope"], capsys)
    assert "give --resume RUN_DIR too" in cli_error(["--agent", "ddpo", "--resume-from", str(folder)], capsys)
    corrupt(folder / "checkpoints" / "000001-epoch-0002", "modified")
    error = cli_error(["--resume", str(folder), "--resume-from", "000001-epoch-0002"], capsys)
    assert "argument --resume-from: corrupt checkpoint file" in error and "SHA-256" in error
    shutil.rmtree(folder)
    folder = copy_run(four_epochs, tmp_path)
    settings = run.parse_args(["--resume", str(folder), "--resume-from", str(folder / "checkpoints/000001-epoch-0002")])
    assert settings.resume and settings.resume_from.endswith("000001-epoch-0002")

    with Trainer.resume(folder, env=env, checkpoint="000001-epoch-0002") as resumed:
        result = resumed.train()
    assert result.epochs_completed == 4
    assert without_timing(read_history(folder)) == without_timing(read_history(four_epochs))
    names = sorted(p.name for p in (folder / "checkpoints").iterdir())
    assert names == ["000001-epoch-0002", "000002-epoch-0004", "set-aside-000002-epoch-0004"]
    assert read_settings(folder).resume_from is None  # run.json records no pending resume


# ------------------------------------------------------------------------------------------ logs after a kill
class Kill(TrainerCallback):
    """Dies at the end of epoch ``epoch``, before it is logged or checkpointed (as a SIGKILL would)."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_epoch_end(self, trainer: Trainer, event) -> None:
        if event.epoch == self.epoch:
            raise RuntimeError("killed")


def test_tensorboard_and_metrics_hold_each_step_once_after_a_kill_and_resume(env, four_epochs, tmp_path):
    folder = tmp_path / "killed"
    with trainer(env, folder) as killed:  # checkpoints after epoch 2; epoch 3 and epoch 4's evaluation logged
        killed.callbacks.append(Kill(epoch=4))
        with pytest.raises(RuntimeError, match="killed"):
            killed.train(epochs=4)
    assert [r["epoch"] for r in read_history(folder)] == [1, 2, 3]
    assert 8 in event_steps(folder)["eval/reward"]  # logged by the killed session, past the checkpoint (step 4)

    with Trainer.resume(folder, env=env) as resumed:
        resumed.train()
    assert without_timing(read_history(folder)) == without_timing(read_history(four_epochs))  # trimmed, once each
    steps = event_steps(folder)
    assert steps == event_steps(four_epochs)  # the steps past the checkpoint were purged, then logged once
    assert steps["train/reward_mean"] == [2, 4, 6, 8] and steps["eval/reward"] == [0, 2, 4, 6, 8]
    assert steps["eval/samples"] == [0, 2, 4, 6, 8]


# ------------------------------------------------------------------------------------------ bad run.json and flags
@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (lambda text, data: text[: len(text) // 2], "not valid JSON"),
        (lambda text, data: "[1, 2]", "expected a JSON object, got list"),
        (lambda text, data: {k: v for k, v in data.items() if k != "agent"}, "missing ['agent']"),
        (lambda text, data: {**data, "epochz": 3}, "unknown ['epochz']"),
        (lambda text, data: {**data, "epochs": "six"}, "epochs = 'six' is not of type int"),
        (lambda text, data: {**data, "resume": 1}, "resume = 1 is not of type bool"),
        (
            lambda text, data: {**data, "env": {**data["env"], "prompts": ["a", 2]}},
            "env.prompts = ['a', 2] is not of type",
        ),
        (lambda text, data: {**data, "env": ["shapes"]}, "env = ['shapes'] is not of type EnvConfig"),
        (lambda text, data: {**data, "config": [2]}, "config = [2] is not of type AgentConfig"),
        (lambda text, data: {**data, "config": {**data["config"], "batch_size": 2.0}}, "config.batch_size = 2.0"),
        (lambda text, data: {**data, "config": {**data["config"], "lr": 1}}, "unknown ['config.lr']"),
    ],
)
def test_a_corrupt_run_json_is_an_error_naming_the_file_and_the_problem(four_epochs, tmp_path, capsys, edit, problem):
    folder = tmp_path / "run"
    folder.mkdir()
    text = (four_epochs / "run.json").read_text()
    edited = edit(text, json.loads(text))
    (folder / "run.json").write_text(edited if isinstance(edited, str) else json.dumps(edited))
    with pytest.raises(ValueError, match="corrupt .*run.json") as error:
        read_settings(folder)
    assert problem in str(error.value) and str(folder / "run.json") in str(error.value)
    with pytest.raises(ValueError, match="corrupt"):
        Trainer.resume(folder)
    output = cli_error(["--resume", str(folder)], capsys)
    assert "argument --resume: corrupt" in output and problem in output


def test_bad_paths_and_devices_are_argparse_errors_naming_the_flag(tmp_path, capsys, monkeypatch):
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    assert "argument --output-dir: " in cli_error(["--agent", "ddpo", "--output-dir", str(afile)], capsys)
    error = cli_error(["--agent", "ddpo", "--output-dir", str(afile / "run")], capsys)
    assert "argument --output-dir: " in error and "which is a file" in error
    assert "is a file, not a run folder" in cli_error(["--resume", str(afile)], capsys)
    assert "is not a run folder (no run.json)" in cli_error(["--resume", str(tmp_path)], capsys)
    assert "does not exist" in cli_error(["--resume", str(tmp_path / "missing")], capsys)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    error = cli_error(["--agent", "ddpo", "--device", "cuda"], capsys)
    assert "argument --device: 'cuda': CUDA is not available" in error
    assert "argument --device: 'cuda:1': CUDA is not available" in cli_error(
        ["--agent", "ddpo", "--device", "cuda:1"], capsys
    )
    assert "not a torch device" in cli_error(["--agent", "ddpo", "--device", "gpu"], capsys)


def test_a_resumed_run_recorded_on_cuda_is_an_argparse_error_without_cuda(four_epochs, tmp_path, capsys, monkeypatch):
    folder = copy_run(four_epochs, tmp_path)
    settings = json.loads((folder / "run.json").read_text())
    (folder / "run.json").write_text(json.dumps({**settings, "env": {**settings["env"], "device": "cuda"}}))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    error = cli_error(["--resume", str(folder)], capsys)
    assert "argument --resume:" in error and "run.json records device 'cuda': CUDA is not available" in error
