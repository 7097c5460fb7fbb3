r"""Checkpoint and resume: atomic, pickle-free checkpoints of a nested training state, and LoRA export.

A checkpoint is a folder ``RUN_DIR/checkpoints/<seq>-<step_name>/`` with two files:

* ``tensors.safetensors``: every tensor (and numpy array) of the state, flattened under its path in the state
  (``optimizer/state/0/exp_avg``, ``policy/down_blocks.0...lora_A.weight``, ``rng/torch``);
* ``state.json``: everything else (the tree, with a ``{"__type__": "tensor", "key": ...}`` placeholder per
  tensor), the format version, the SHA-256 of the tensor file, a manifest (dtype and shape of each tensor) and
  the SHA-256 of the tree. Tuples, dicts with non-string keys (the optimizer's ``state: {0: ...}``) and numpy
  arrays are tagged, so :func:`load_checkpoint` rebuilds exactly the structure that was saved.

Nothing is ever pickled. Writes are atomic: both files are written and fsynced in a hidden temp folder that
is then renamed into place, so a SIGKILL mid-write leaves at most a ``.tmp-*`` folder (ignored, and removed by
the next save), never a checkpoint that looks valid. Old checkpoints are deleted (renamed away first, then
removed) only after the new one is complete. Checkpoints are ordered by the ``<seq>`` prefix.

Typical use (main process only when data-parallel)::

    lora = lambda folder: export_lora_diffusers(unet, folder / "lora", adapter_name=adapter_name)
    path = save_checkpoint(run_dir, f"epoch-{epoch:04d}", agent.state_dict(), keep_last=3, write_extra=lora)
    ...
    state = load_checkpoint(run_dir)  # the latest complete checkpoint of the run
    check_compatible(state["config"], asdict(config), keys=("agent", "model", "lora_rank"))
    agent.load_state_dict(state)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

FORMAT = "diffusion-gym-checkpoint"
FORMAT_VERSION = 1
CHECKPOINTS_DIR = "checkpoints"
TENSORS_FILE = "tensors.safetensors"
STATE_FILE = "state.json"
_TYPE = "__type__"
_STEP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_CHECKPOINT_DIR = re.compile(r"^(\d{6,})-(.+)$")
_MISSING = "<missing>"


class CheckpointWarning(UserWarning):
    """A checkpoint of a run was skipped on resume (corrupt or incomplete): see :func:`newest_intact_checkpoint`."""


# ============================================================================================== encoding
class _Encoder:
    """Split a nested state into a JSON tree and a flat ``{key: tensor}`` dict."""

    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}
        self._storages: set[tuple[str, int]] = set()

    def _add(self, path: str, tensor: torch.Tensor) -> str:
        key, n = path or "_", 1
        while key in self.tensors:  # e.g. {"a/b": t, "a": {"b": t}}
            key, n = f"{path}#{n}", n + 1
        tensor = tensor.detach().to("cpu")
        storage = (str(tensor.device), tensor.untyped_storage().data_ptr())
        if storage in self._storages and tensor.numel() > 0:  # safetensors refuses tensors sharing memory
            tensor = tensor.clone()
        self._storages.add(storage)
        self.tensors[key] = tensor.contiguous()
        return key

    def encode(self, value: Any, path: str) -> Any:
        if value is None or isinstance(value, (bool, str)):
            return value
        if isinstance(value, (int, float)):  # after bool; JSON keeps big ints (PCG64 state) exactly
            return value
        if isinstance(value, torch.Tensor):
            return {_TYPE: "tensor", "key": self._add(path, value)}
        if isinstance(value, np.ndarray):
            if value.dtype == object:
                raise TypeError(f"cannot checkpoint an object array at {path!r}")
            return {_TYPE: "ndarray", "key": self._add(path, torch.from_numpy(np.ascontiguousarray(value)))}
        if isinstance(value, np.generic):  # numpy scalars -> Python scalars
            return self.encode(value.item(), path)
        if isinstance(value, os.PathLike):  # paths in a config -> str
            return os.fspath(value)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return self.encode(dataclasses.asdict(value), path)
        if isinstance(value, (list, tuple)):
            items = [self.encode(v, f"{path}/{i}") for i, v in enumerate(value)]
            return items if isinstance(value, list) else {_TYPE: "tuple", "items": items}
        if isinstance(value, dict):
            if all(isinstance(k, str) for k in value) and _TYPE not in value:
                return {k: self.encode(v, f"{path}/{k}" if path else k) for k, v in value.items()}
            items = []
            for k, v in value.items():
                if isinstance(k, (torch.Tensor, np.ndarray, dict, list)):
                    raise TypeError(f"cannot checkpoint a dict key of type {type(k).__name__} at {path!r}")
                items.append([self.encode(k, path), self.encode(v, f"{path}/{k}" if path else str(k))])
            return {_TYPE: "dict", "items": items}
        raise TypeError(
            f"cannot checkpoint a {type(value).__name__} at {path or '<root>'!r}: only tensors, numpy arrays and "
            "plain values (dict, list, tuple, str, int, float, bool, None) are saved (nothing is pickled)"
        )


def _decode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    kind = value.get(_TYPE)
    if kind is None:
        return {k: _decode(v, tensors) for k, v in value.items()}
    if kind == "tensor":
        return tensors[value["key"]]
    if kind == "ndarray":
        return tensors[value["key"]].cpu().numpy()
    if kind == "tuple":
        return tuple(_decode(v, tensors) for v in value["items"])
    if kind == "dict":
        return {_hashable(_decode(k, tensors)): _decode(v, tensors) for k, v in value["items"]}
    raise ValueError(f"unknown tag {kind!r} in checkpoint tree")


def _hashable(key: Any) -> Any:
    return tuple(_hashable(k) for k in key) if isinstance(key, (list, tuple)) else key


def _canonical(tree: Any) -> bytes:
    return json.dumps(tree, sort_keys=True, separators=(",", ":")).encode()


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 23), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ============================================================================================== listing
def checkpoints_dir(run_dir: str | Path) -> Path:
    """``RUN_DIR/checkpoints``."""
    return Path(run_dir) / CHECKPOINTS_DIR


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """The complete (renamed-into-place) checkpoint folders of a run, oldest first."""
    root = checkpoints_dir(run_dir)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _CHECKPOINT_DIR.match(child.name)
        if match and child.is_dir():
            found.append((int(match.group(1)), child))
    return [path for _, path in sorted(found)]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint folder of a run, or None."""
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def _remove_stale_temp_dirs(root: Path) -> None:
    """Remove ``.tmp-*`` / ``.trash-*`` folders left by processes that died (never a live writer's)."""
    for child in root.iterdir():
        if not child.name.startswith((".tmp-", ".trash-")):
            continue
        parts = child.name.split("-")
        pid = int(parts[1]) if len(parts) > 2 and parts[1].isdigit() else None
        if pid is not None and pid != os.getpid() and _pid_alive(pid):
            continue
        if pid == os.getpid() and child.name.startswith(".tmp-"):
            continue  # another thread of this process may be writing it
        shutil.rmtree(child, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _discard(path: Path) -> None:
    """Delete a checkpoint folder so that no half-deleted folder keeps a valid-looking name."""
    trash = path.with_name(f".trash-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    os.rename(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


# ============================================================================================== save / load
def save_checkpoint(
    run_dir: str | Path,
    step_name: str,
    state: dict[str, Any],
    *,
    keep_last: int | None,
    write_extra: Callable[[Path], Any] | None = None,
) -> Path:
    """Write ``state`` atomically as ``RUN_DIR/checkpoints/<seq>-<step_name>/`` and return that folder.

    ``state``: nested dicts/lists/tuples of tensors (any device, moved to CPU), numpy arrays and plain JSON-able
    values; dataclasses are saved as dicts, paths as str. ``keep_last``: how many checkpoints to keep (older ones
    are deleted after the new one is complete); ``None`` keeps all. Saving a ``step_name`` that exists replaces it.
    ``write_extra(folder)`` is called on the temp folder before the rename, to add files that must appear
    atomically with the checkpoint, e.g. ``lambda d: export_lora_diffusers(unet, d / "lora", adapter_name=...)``.
    """
    if not _STEP_NAME.match(step_name):
        raise ValueError(f"step_name must match {_STEP_NAME.pattern} (a folder name), got {step_name!r}")
    if keep_last is not None and keep_last < 1:
        raise ValueError(f"keep_last must be >= 1 or None (keep all), got {keep_last}")
    if not isinstance(state, dict):
        raise TypeError(f"state must be a dict, got {type(state).__name__}")
    from safetensors.torch import save_file

    root = checkpoints_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    _remove_stale_temp_dirs(root)
    existing = list_checkpoints(run_dir)
    sequence = int(_CHECKPOINT_DIR.match(existing[-1].name).group(1)) + 1 if existing else 1

    encoder = _Encoder()
    tree = encoder.encode(state, "")
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{os.getpid()}-", dir=root))
    try:
        tensor_path = tmp / TENSORS_FILE
        save_file(encoder.tensors, tensor_path, metadata={"format": FORMAT, "version": str(FORMAT_VERSION)})
        manifest = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "step_name": step_name,
            "sequence": sequence,
            "torch_version": torch.__version__,
            "tensor_file": TENSORS_FILE,
            "tensor_sha256": _sha256_file(tensor_path),
            "tensors": {
                k: {"dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape)}
                for k, t in encoder.tensors.items()
            },
            "tree_sha256": hashlib.sha256(_canonical(tree)).hexdigest(),
            "tree": tree,
        }
        with open(tmp / STATE_FILE, "w") as f:
            json.dump(manifest, f)
            f.flush()
            os.fsync(f.fileno())
        with open(tensor_path, "rb+") as f:
            os.fsync(f.fileno())
        if write_extra is not None:
            write_extra(tmp)
        _fsync_dir(tmp)
        final = root / f"{sequence:06d}-{step_name}"
        replaced = [path for path in existing if _CHECKPOINT_DIR.match(path.name).group(2) == step_name]
        os.rename(tmp, final)  # atomic: the checkpoint appears complete or not at all
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for path in replaced:
        _discard(path)
    if keep_last is not None:
        for path in list_checkpoints(run_dir)[:-keep_last]:
            _discard(path)
    return final


def _resolve_checkpoint(path_or_run_dir: str | Path) -> Path:
    path = Path(path_or_run_dir)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint or run folder at {path}")
    if (path / STATE_FILE).exists() or (path / TENSORS_FILE).exists():
        return path  # a checkpoint folder
    for run_dir in (path, path.parent if path.name == CHECKPOINTS_DIR else None):
        if run_dir is not None and (latest := latest_checkpoint(run_dir)) is not None:
            return latest
    raise FileNotFoundError(
        f"{path} holds no complete checkpoint (expected {path / CHECKPOINTS_DIR}/<seq>-<step>/{STATE_FILE})"
    )


def load_checkpoint(path_or_run_dir: str | Path, *, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint folder, or the latest complete checkpoint of a run folder, as the saved nested dict.

    Tensors come back on ``map_location``, numpy arrays as numpy arrays, tuples as tuples and dict keys with
    their original types (the optimizer's integer keys). ``ValueError`` naming the file for a corrupt, truncated
    or mismatched file; ``FileNotFoundError`` when a file is missing. Which folder was loaded (and its step
    name): :func:`checkpoint_info` on the same argument.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = _resolve_checkpoint(path_or_run_dir)
    state_path, tensor_path = folder / STATE_FILE, folder / TENSORS_FILE
    manifest = verify_checkpoint(folder)
    try:
        tensors = load_file(tensor_path, device=str(map_location))
    except (SafetensorError, OSError, RuntimeError) as error:
        raise ValueError(f"corrupt checkpoint file {tensor_path}: {error}") from error
    expected = manifest["tensors"]
    if set(tensors) != set(expected):
        diff = sorted(set(tensors) ^ set(expected))
        raise ValueError(f"checkpoint file {tensor_path} does not match the manifest in {state_path}: keys {diff[:5]}")
    for key, info in expected.items():
        tensor = tensors[key]
        if str(tensor.dtype).removeprefix("torch.") != info["dtype"] or list(tensor.shape) != info["shape"]:
            raise ValueError(
                f"checkpoint file {tensor_path}: tensor {key!r} is {tensor.dtype} {list(tensor.shape)}, the manifest "
                f"in {state_path} says {info['dtype']} {info['shape']}"
            )
    return _decode(manifest["tree"], tensors)


def verify_checkpoint(folder: str | Path) -> dict[str, Any]:
    """The manifest (with the state tree) of an intact checkpoint folder, without loading its tensors.

    ``FileNotFoundError`` naming a missing file; ``ValueError`` naming the file and the problem when
    ``state.json`` is not a valid manifest or the tensor file's SHA-256 is not the recorded one (truncated or
    modified after saving).
    """
    state_path, tensor_path = Path(folder) / STATE_FILE, Path(folder) / TENSORS_FILE
    for required in (state_path, tensor_path):
        if not required.is_file():
            raise FileNotFoundError(f"checkpoint file missing: {required}")
    manifest = _read_manifest(state_path)
    if _sha256_file(tensor_path) != manifest["tensor_sha256"]:
        raise ValueError(
            f"corrupt checkpoint file {tensor_path}: its SHA-256 does not match the one recorded in {state_path} "
            "(truncated or modified after saving)"
        )
    return manifest


def newest_intact_checkpoint(run_dir: str | Path) -> tuple[Path, dict[str, Any], list[tuple[Path, str]]]:
    """The newest checkpoint of a run that :func:`verify_checkpoint` accepts, its manifest, and the newer ones it
    refused, each with why (newest first).

    ``FileNotFoundError`` when the run has no checkpoint; ``ValueError`` listing every checkpoint and why when none
    is intact. Nothing is deleted or moved (see :func:`set_aside`).
    """
    found = list_checkpoints(run_dir)
    if not found:
        raise FileNotFoundError(f"{run_dir} holds no checkpoint (no {checkpoints_dir(run_dir)}/<seq>-<step>/)")
    refused: list[tuple[Path, str]] = []
    for folder in reversed(found):
        try:
            return folder, verify_checkpoint(folder), refused
        except (FileNotFoundError, ValueError) as error:
            refused.append((folder, str(error)))
    reasons = "".join(f"\n  {folder.name}: {why}" for folder, why in refused)
    raise ValueError(f"no intact checkpoint in {checkpoints_dir(run_dir)}:{reasons}")


def set_aside(folder: str | Path, prefix: str = "set-aside") -> Path:
    """Rename a checkpoint folder to ``<prefix>-<name>`` beside it, out of its run's checkpoints: no longer
    listed, resumed from, replaced or pruned by :func:`save_checkpoint`, and never deleted. Returns the new path."""
    folder = Path(folder)
    target, n = folder.with_name(f"{prefix}-{folder.name}"), 1
    while target.exists():
        n += 1
        target = folder.with_name(f"{prefix}{n}-{folder.name}")
    os.rename(folder, target)
    return target


def _read_manifest(state_path: Path) -> dict[str, Any]:
    try:
        manifest = json.loads(state_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"corrupt checkpoint file {state_path}: not valid JSON ({error})") from error
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(f"{state_path} is not a {FORMAT} manifest")
    if manifest.get("version") != FORMAT_VERSION:
        raise ValueError(
            f"{state_path} has checkpoint format version {manifest.get('version')!r}; this code reads version "
            f"{FORMAT_VERSION}"
        )
    missing = [k for k in ("tensor_sha256", "tensors", "tree", "tree_sha256") if k not in manifest]
    if missing:
        raise ValueError(f"corrupt checkpoint file {state_path}: missing fields {missing}")
    if hashlib.sha256(_canonical(manifest["tree"])).hexdigest() != manifest["tree_sha256"]:
        raise ValueError(f"corrupt checkpoint file {state_path}: the state tree does not match its recorded SHA-256")
    return manifest


def checkpoint_info(path_or_run_dir: str | Path) -> dict[str, Any]:
    """The manifest of a checkpoint (``step_name``, ``sequence``, ``tensors``...) and its ``path``, without tensors."""
    folder = _resolve_checkpoint(path_or_run_dir)
    manifest = _read_manifest(folder / STATE_FILE)
    return {"path": folder, **{k: v for k, v in manifest.items() if k != "tree"}}


# ============================================================================================== compatibility
def _normalise(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, (list, tuple)):
        return [_normalise(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _normalise(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        return value.item()
    return value


def check_compatible(saved_config: Any, config: Any, keys: Iterable[str] | None = None) -> None:
    """Raise ``ValueError`` listing every key whose value differs between a checkpoint's config and this run's.

    Configs are dicts or dataclasses; tuples and lists compare equal. ``keys``: the keys that must match (a key
    missing on one side counts as different); ``None`` compares every key of either config.
    """
    saved, current = _normalise(saved_config), _normalise(config)
    if not isinstance(saved, dict) or not isinstance(current, dict):
        raise TypeError("check_compatible expects two dicts or dataclasses")
    names = sorted(set(saved) | set(current)) if keys is None else list(keys)
    diffs = [
        f"{k}: checkpoint {saved.get(k, _MISSING)!r} != requested {current.get(k, _MISSING)!r}"
        for k in names
        if saved.get(k, _MISSING) != current.get(k, _MISSING)
    ]
    if diffs:
        raise ValueError("the checkpoint does not match the requested run:\n  " + "\n  ".join(diffs))


# ============================================================================================== RNG and metrics
def capture_rng_state() -> dict[str, Any]:
    """The global RNG states (torch CPU, every CUDA device, numpy's legacy global, Python's ``random``)."""
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(legacy=False),  # noqa: NPY002 (the global RNG libraries use)
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`capture_rng_state` captured (after a :func:`load_checkpoint` round trip too)."""
    torch.set_rng_state(state["torch"].cpu())
    np.random.set_state(state["numpy"])  # noqa: NPY002
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def trim_jsonl(path: str | Path, max_step: int, step_key: str = "global_step") -> int:
    """Atomically drop lines of a metrics JSONL file logged after ``max_step`` (and a torn last line).

    Call it on resume with the checkpoint's global step, so the resumed run's metrics continue the same curve.
    Lines without ``step_key`` are kept. Returns the number of lines kept. (For TensorBoard, open the
    ``SummaryWriter`` with ``purge_step=max_step + 1``.)
    """
    path = Path(path)
    if not path.exists():
        return 0
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # the line a kill tore
        if not isinstance(record, dict) or record.get(step_key, max_step) <= max_step:
            kept.append(line)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text("".join(line + "\n" for line in kept))
    os.replace(tmp, path)
    return len(kept)


# ============================================================================================== nested states
def map_tensors(function: Callable[[torch.Tensor], Any], state: Any) -> Any:
    """A copy of a nested state (dicts, lists, tuples) with ``function`` applied to every tensor."""
    if isinstance(state, torch.Tensor):
        return function(state)
    if isinstance(state, dict):
        return {k: map_tensors(function, v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(map_tensors(function, v) for v in state)
    return state


def clone_state(state: Any) -> Any:
    """A deep copy of a nested state with every tensor detached and cloned (what ``state_dict`` methods return)."""
    return map_tensors(lambda tensor: tensor.detach().clone(), state)


def to_cpu(state: Any) -> Any:
    """A nested state with every tensor detached and moved to the CPU (to gather it across processes)."""
    return map_tensors(lambda tensor: tensor.detach().cpu(), state)


# ============================================================================================== LoRA export
def export_lora_diffusers(
    unet: torch.nn.Module, folder: str | Path, adapter_name: str | None = None, *, dtype: torch.dtype | None = None
) -> Path:
    """Save a peft LoRA adapter of a diffusers UNet in the diffusers LoRA format (safetensors), atomically.

    ``StableDiffusionPipeline.from_pretrained(base).load_lora_weights(folder)`` then loads it. ``adapter_name``:
    which adapter (default: the active one). ``dtype``: cast the weights (e.g. ``torch.float16``); default: as
    trained. Returns ``folder / "pytorch_lora_weights.safetensors"``.
    """
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    unet = getattr(unet, "_orig_mod", unet)  # torch.compile wrapper
    configs = getattr(unet, "peft_config", None)
    if not configs:
        raise ValueError("the UNet has no peft LoRA adapter to export")
    if adapter_name is None:
        active = getattr(unet, "active_adapters", None)
        names = active() if callable(active) else active
        adapter_name = (names or list(configs))[0]
    if adapter_name not in configs:
        raise ValueError(f"the UNet has no adapter {adapter_name!r}; it has {sorted(configs)}")
    lora_config = configs[adapter_name]
    weights = get_peft_model_state_dict(unet, adapter_name=adapter_name)
    weights = {k: v.detach().to("cpu", dtype or v.dtype).contiguous() for k, v in weights.items()}
    if not weights:
        raise ValueError(f"adapter {adapter_name!r} has no LoRA weights")
    unet_layers = convert_state_dict_to_diffusers(weights)

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{os.getpid()}-lora-", dir=folder.parent))
    try:
        kwargs: dict[str, Any] = {}
        metadata = _lora_metadata(lora_config)
        if metadata is not None:
            kwargs["unet_lora_adapter_metadata"] = metadata
        StableDiffusionPipeline.save_lora_weights(tmp, unet_lora_layers=unet_layers, safe_serialization=True, **kwargs)
        if folder.exists():
            _discard(folder)
        os.rename(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder / "pytorch_lora_weights.safetensors"


def _lora_metadata(lora_config: Any) -> dict[str, Any] | None:
    """The adapter's LoraConfig for diffusers' ``*_lora_adapter_metadata`` (so lora_alpha != r loads right)."""
    import inspect

    from diffusers import StableDiffusionPipeline

    if "unet_lora_adapter_metadata" not in inspect.signature(StableDiffusionPipeline.save_lora_weights).parameters:
        return None  # older diffusers: alpha is inferred as r
    config = lora_config.to_dict()
    for key, value in list(config.items()):
        if isinstance(value, set):
            config[key] = sorted(value)
    return config


__all__ = [
    "CHECKPOINTS_DIR",
    "CheckpointWarning",
    "FORMAT_VERSION",
    "capture_rng_state",
    "check_compatible",
    "checkpoint_info",
    "checkpoints_dir",
    "clone_state",
    "export_lora_diffusers",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "map_tensors",
    "newest_intact_checkpoint",
    "restore_rng_state",
    "save_checkpoint",
    "set_aside",
    "to_cpu",
    "trim_jsonl",
    "verify_checkpoint",
]
