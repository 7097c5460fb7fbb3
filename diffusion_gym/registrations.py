"""The modules that register the built-in prompt sets, rewards and tasks, imported by name on the first lookup.

The registries (:mod:`diffusion_gym.prompts`, :mod:`diffusion_gym.rewards.registry`, :mod:`diffusion_gym.tasks`)
are generic: they import no world. A world registers its prompt sets, rewards and tasks when its module is
imported; the built-in ones are listed here by module name (as Gymnasium lists its environments' entry points),
and a registry that is asked for a name it does not hold imports them first. A world of your own registers on
import too: import it before looking its names up.
"""

from __future__ import annotations

import importlib

# module names, imported in this order on the first lookup: the generic rewards (brightness, jpeg), the full-scale
# rewards (imagereward, aesthetic, clipscore; their models load lazily) and the embedded Shapes world
BUILTIN_REGISTRATIONS: tuple[str, ...] = (
    "diffusion_gym.rewards",
    "diffusion_gym.rewards.full_scale",
    "diffusion_gym.shapes",
)

_loaded = False


def load_builtin_registrations() -> None:
    """Import the modules of :data:`BUILTIN_REGISTRATIONS` (once per process; cheap: no model is loaded)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for name in BUILTIN_REGISTRATIONS:
        importlib.import_module(name)


__all__ = ["BUILTIN_REGISTRATIONS", "load_builtin_registrations"]
