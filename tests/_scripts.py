"""Load the repository's scripts (``benchmarks/*.py``) as modules: they are scripts, not an importable package."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parent.parent


def load_script(relative_path: str) -> ModuleType:
    """The script at ``REPO / relative_path`` imported as a module named after its path (once per process)."""
    name = "script_" + relative_path.removesuffix(".py").replace("/", "_")
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / relative_path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]
