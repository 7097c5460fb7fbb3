"""benchmarks/run.py sets OMP_WAIT_POLICY=PASSIVE before torch loads its OpenMP runtime, unless the user chose a
wait policy (OMP_WAIT_POLICY or GOMP_SPINCOUNT). Why: docs/experiments/2026-12-07-cpu-under-load.md."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from _scripts import REPO

# Loads run.py in a fresh interpreter and records the two variables at the moment ``torch`` is first imported (what
# the OpenMP runtime would read); the import is then stopped, so that torch never loads (the test stays fast).
_AT_TORCH_IMPORT = """
import importlib.abc, importlib.util, json, os, sys

class TorchImported(Exception):
    pass

class Watch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch":
            print(json.dumps({key: os.environ.get(key) for key in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}))
            raise TorchImported
        return None

sys.meta_path.insert(0, Watch())
spec = importlib.util.spec_from_file_location("run_script", sys.argv[1])
module = importlib.util.module_from_spec(spec)
sys.modules["run_script"] = module
try:
    spec.loader.exec_module(module)
except TorchImported:
    sys.exit(0)
sys.exit("run.py never imported torch")
"""


def _environment_at_torch_import(**user: str) -> dict[str, str | None]:
    env = {key: value for key, value in os.environ.items() if key not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(user)
    env["PYTHONPATH"] = str(REPO)
    done = subprocess.run(
        [sys.executable, "-c", _AT_TORCH_IMPORT, str(REPO / "benchmarks" / "run.py")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    ("user", "expected"),
    [
        ({}, {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": None}),  # unset: sleep, do not spin
        ({"OMP_WAIT_POLICY": "active"}, {"OMP_WAIT_POLICY": "active", "GOMP_SPINCOUNT": None}),
        ({"OMP_WAIT_POLICY": ""}, {"OMP_WAIT_POLICY": "", "GOMP_SPINCOUNT": None}),  # set, if empty: the user's
        ({"GOMP_SPINCOUNT": "1000"}, {"OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": "1000"}),  # a spin count given
    ],
)
def test_run_sets_a_passive_wait_policy_before_torch_loads_unless_the_user_chose_one(user, expected):
    assert _environment_at_torch_import(**user) == expected
