"""Checkpoints: exact round trips, atomicity, keep-last, clear errors, and a real SIGKILL-and-resume."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from agents.checkpoint import (
    capture_rng_state,
    check_compatible,
    checkpoint_info,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
    trim_jsonl,
)

WORKER = Path(__file__).with_name("_resume_worker.py")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


REPO = WORKER.parent.parent


def _trained_optimizer() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(3):
        model(torch.randn(5, 4)).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    return model, optimizer


def _agent_like_state() -> dict:
    model, optimizer = _trained_optimizer()
    generator = torch.Generator().manual_seed(3)
    return {
        "policy": {name: p.detach().clone() for name, p in model.named_parameters()},
        "optimizer": optimizer.state_dict(),
        "herd_buffer": {"latents": torch.randn(2, 3, 4, 4, 4), "prompts": ["a cat.", "a dog."], "relabeled": None},
        "stat_tracker": {"a cat.": [0.5, 1.25], "a dog.": []},
        "rng": {
            **capture_rng_state(),
            "agent_numpy": np.random.default_rng(7).bit_generator.state,  # PCG64: 128-bit ints
            "agent_torch": generator.get_state(),
        },
        "epoch": 4,
        "global_step": 48,
        "config": {"agent": "herd", "lora_rank": 4, "betas": (0.9, 0.999), "guidance_scale": None, "out": Path("r")},
        "extras": {"tuple": (1, (2.5, "x")), "int_keys": {0: "a", 7: [1]}, "half": torch.ones(3, dtype=torch.float16)},
        "scalars": {"np_int": np.int64(5), "np_float": np.float32(0.5), "zero_d": torch.tensor(2.0)},
        "empty": torch.zeros(0, 3),
    }


def _assert_same(a, b, path="") -> None:
    assert type(a) is type(b) or (isinstance(a, np.generic) and isinstance(b, (int, float))), path
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), path
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and np.array_equal(a, b), path
    elif isinstance(a, dict):
        assert list(a) == list(b), path
        for k in a:
            _assert_same(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same(x, y, f"{path}/{i}")
    else:
        assert a == b, path


def test_round_trip_restores_the_exact_structure(tmp_path):
    state = _agent_like_state()
    folder = save_checkpoint(tmp_path, "epoch-0004", state, keep_last=3)
    assert folder.parent == tmp_path / "checkpoints" and folder.name == "000001-epoch-0004"
    loaded = load_checkpoint(tmp_path)
    state["scalars"] = {"np_int": 5, "np_float": 0.5, "zero_d": state["scalars"]["zero_d"]}  # numpy scalars -> Python
    state["config"]["out"] = "r"  # paths -> str
    _assert_same(state, loaded)
    assert set(loaded["optimizer"]["state"]) == {0, 1, 2, 3}  # integer keys, as torch expects
    assert isinstance(loaded["optimizer"]["param_groups"][0]["betas"], tuple)
    from safetensors import safe_open

    with safe_open(folder / "tensors.safetensors", "pt") as f:
        keys = set(f.keys())
    assert {"optimizer/state/0/exp_avg", "rng/torch", "policy/0.weight"} <= keys
    assert checkpoint_info(tmp_path)["step_name"] == "epoch-0004"


def test_loaded_optimizer_and_rngs_continue_identically(tmp_path):
    model, optimizer = _trained_optimizer()
    random.seed(1)
    save_checkpoint(tmp_path, "a", {"model": model.state_dict(), "opt": optimizer.state_dict(),
                                    "rng": capture_rng_state()}, keep_last=1)  # fmt: skip

    def steps(m, opt):
        out = []
        for _ in range(3):
            loss = m(torch.randn(5, 4)).square().mean() + float(np.random.rand()) + random.random()  # noqa: NPY002
            loss.backward()
            opt.step()
            opt.zero_grad()
            out.append(loss.item())
        return out, [p.detach().clone() for p in m.parameters()]

    expected_losses, expected_params = steps(model, optimizer)
    state = load_checkpoint(tmp_path)
    fresh = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    fresh.load_state_dict(state["model"])
    fresh_optimizer = torch.optim.AdamW(fresh.parameters(), lr=1e-2)
    fresh_optimizer.load_state_dict(state["opt"])
    restore_rng_state(state["rng"])
    losses, params = steps(fresh, fresh_optimizer)
    assert losses == expected_losses
    assert all(torch.equal(a, b) for a, b in zip(params, expected_params, strict=True))


def test_keep_last_replacement_and_leftovers(tmp_path):
    for epoch in range(1, 6):
        save_checkpoint(tmp_path, f"epoch-{epoch}", {"epoch": epoch, "w": torch.full((2,), float(epoch))}, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["000004-epoch-4", "000005-epoch-5"]
    assert load_checkpoint(tmp_path)["epoch"] == 5
    # A half-written checkpoint (a SIGKILL mid-write) is a hidden temp folder: ignored, then cleaned up.
    dead = tmp_path / "checkpoints" / ".tmp-999999999-abc"
    dead.mkdir()
    (dead / "tensors.safetensors").write_bytes(b"\x00" * 10)
    assert load_checkpoint(tmp_path)["epoch"] == 5
    # Saving a step name again replaces it (the final save after the last epoch's).
    path = save_checkpoint(tmp_path, "epoch-5", {"epoch": 55}, keep_last=3)
    assert not dead.exists()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["000004-epoch-4", "000006-epoch-5"]
    assert latest_checkpoint(tmp_path) == path and load_checkpoint(path)["epoch"] == 55
    assert load_checkpoint(tmp_path / "checkpoints")["epoch"] == 55
    save_checkpoint(tmp_path, "epoch-6", {"epoch": 6}, keep_last=None)
    assert len(list_checkpoints(tmp_path)) == 3
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [p.name for p in list_checkpoints(tmp_path)]


def test_bad_inputs_are_refused_before_anything_is_written(tmp_path):
    with pytest.raises(TypeError, match="cannot checkpoint a object at 'a/b'"):
        save_checkpoint(tmp_path, "x", {"a": {"b": object()}}, keep_last=1)
    with pytest.raises(ValueError, match="step_name"):
        save_checkpoint(tmp_path, "../evil", {}, keep_last=1)
    with pytest.raises(ValueError, match="keep_last"):
        save_checkpoint(tmp_path, "x", {}, keep_last=0)
    assert list_checkpoints(tmp_path) == []
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == []


def test_corrupt_and_missing_files_raise_clear_errors(tmp_path):
    folder = save_checkpoint(tmp_path, "e1", {"w": torch.randn(64, 64), "epoch": 1}, keep_last=1)
    tensors, manifest = folder / "tensors.safetensors", folder / "state.json"
    original_tensors, original_manifest = tensors.read_bytes(), manifest.read_text()

    tensors.write_bytes(original_tensors[: len(original_tensors) // 2])  # truncated
    with pytest.raises(ValueError, match=r"corrupt checkpoint file .*tensors\.safetensors"):
        load_checkpoint(tmp_path)
    flipped = bytearray(original_tensors)
    flipped[-5] ^= 0xFF  # one bit flip in the data
    tensors.write_bytes(bytes(flipped))
    with pytest.raises(ValueError, match=r"tensors\.safetensors.*SHA-256"):
        load_checkpoint(folder)
    tensors.write_bytes(original_tensors)

    manifest.write_text(original_manifest[:-40])  # truncated JSON
    with pytest.raises(ValueError, match=r"corrupt checkpoint file .*state\.json"):
        load_checkpoint(tmp_path)
    manifest.write_text(original_manifest.replace('"epoch": 1', '"epoch": 2'))  # edited state
    with pytest.raises(ValueError, match=r"state\.json.*SHA-256"):
        load_checkpoint(tmp_path)
    manifest.write_text(original_manifest.replace('"version": 1', '"version": 99'))
    with pytest.raises(ValueError, match="version 99"):
        load_checkpoint(tmp_path)
    manifest.write_text(original_manifest)
    assert load_checkpoint(tmp_path)["epoch"] == 1

    tensors.unlink()
    with pytest.raises(FileNotFoundError, match=r"tensors\.safetensors"):
        load_checkpoint(tmp_path)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "nope")
    empty = tmp_path / "empty-run"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        load_checkpoint(empty)


def test_check_compatible_lists_every_differing_key():
    saved = {"agent": "herd", "lora_rank": 4, "betas": [0.9, 0.999], "seed": 0}
    check_compatible(
        saved, {"agent": "herd", "lora_rank": 4, "betas": (0.9, 0.999), "seed": 1}, keys=["agent", "betas"]
    )
    with pytest.raises(ValueError) as error:
        check_compatible(saved, {"agent": "ddpo", "lora_rank": 8, "seed": 0})
    message = str(error.value)
    assert "agent: checkpoint 'herd' != requested 'ddpo'" in message
    assert "lora_rank: checkpoint 4 != requested 8" in message
    assert "betas: checkpoint [0.9, 0.999] != requested '<missing>'" in message
    assert "seed" not in message


def test_trim_jsonl_drops_steps_after_the_checkpoint_and_torn_lines(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"global_step": s, "loss": s / 10}) for s in range(1, 7)] + [json.dumps({"note": "x"})]
    path.write_text("\n".join(lines) + '\n{"global_step": 7, "lo')
    assert trim_jsonl(path, 4) == 5
    assert [json.loads(line).get("global_step") for line in path.read_text().splitlines()] == [1, 2, 3, 4, None]


# ================================================================================== the real kill
def _worker(run_dir: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(WORKER), str(run_dir), "--epochs", "5", *extra]
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _wait_for_line(process: subprocess.Popen, timeout: float) -> str:
    """The next line ``process`` prints, waiting up to ``timeout`` seconds (a generous bound: the wait ends as soon
    as the line comes); fails with the process's stderr if it exits or stays silent."""
    import selectors

    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        ready = selector.select(timeout)
    if not ready:
        process.kill()
        raise AssertionError(f"no output from the worker in {timeout} s: {process.communicate()[1]}")
    line = process.stdout.readline()
    assert line, f"the worker exited ({process.wait()}): {process.stderr.read()}"
    return line


def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run(tmp_path):
    from safetensors.torch import load_file

    reference_dir, run_dir = tmp_path / "reference", tmp_path / "killed"
    reference = _worker(reference_dir)
    # the worker stops after the first step of its 3rd epoch (2 checkpoints saved) and waits there to be killed:
    # no race with a busy machine (the kill point is a condition, not a deadline)
    victim = _worker(run_dir, "--stop-at-step", "9")
    assert _wait_for_line(victim, timeout=900) == "stopped at step 9\n"
    assert len(list_checkpoints(run_dir)) == 2 and '"epoch": 2' in (run_dir / "metrics.jsonl").read_text()
    os.kill(victim.pid, signal.SIGKILL)
    assert victim.wait(timeout=900) == -signal.SIGKILL
    victim.stdout.close()
    victim.stderr.close()
    before = _records(run_dir)
    checkpoint = load_checkpoint(run_dir)
    assert before[-1]["global_step"] - checkpoint["global_step"] <= 4  # at most the epoch in progress (4 steps) lost
    assert checkpoint["epoch"] >= before[-1]["epoch"]  # every finished epoch is in the checkpoint

    resumed = _worker(run_dir, "--resume")
    assert resumed.wait(timeout=900) == 0, resumed.stderr.read()  # generous: only a hang reaches it
    assert reference.wait(timeout=900) == 0, reference.stderr.read()
    records, expected = _records(run_dir), _records(reference_dir)
    assert [r["global_step"] for r in records] == list(range(1, 21))  # the same curve, no gap, no repeat
    assert records == expected  # losses equal bitwise (JSON floats round-trip exactly)
    final, expected_final = load_file(run_dir / "final.safetensors"), load_file(reference_dir / "final.safetensors")
    assert final.keys() == expected_final.keys()
    assert all(torch.equal(final[k], expected_final[k]) for k in final)
    assert [p.name for p in list_checkpoints(run_dir)] == [p.name for p in list_checkpoints(reference_dir)]
