"""The Shapes world: a miniature Stable Diffusion trained on compositional scenes of coloured shapes.

Importing this package registers (cheaply; models load only when a reward is built):

* rewards ``shapes-gold`` (the mean of the per-sentence gold scores), ``shapes-gold-per-sentence`` (the
  minimum over sentences: 1 only when every sentence holds) and ``shapes-clip`` (the learned CLIP proxy);
* prompt sets ``shapes-standard``, ``shapes-long``, ``shapes-train``, ``shapes-heldout``, ``shapes-objects``,
  ``shapes-multi``;
* the bench's tasks ``long``, ``multi``, ``heldout``, ``proxy``, ``standard`` (:mod:`diffusion_gym.shapes.tasks`).

The trained pipeline lives in ``diffusion_gym/assets/shapes/pipeline`` (see :data:`PIPELINE_DIR`).
"""

from __future__ import annotations

from pathlib import Path

from diffusion_gym.prompts import register_prompt_set
from diffusion_gym.rewards.registry import register_reward
from diffusion_gym.shapes.gold import GoldReward, gold_per_sentence, gold_score, parse_prompt
from diffusion_gym.shapes.prompt_sets import (
    LONG_PROMPT,
    PROMPT_SETS_VERSION,
    STANDARD_PROMPT,
    heldout_prompts,
    multi_prompts,
    object_prompts,
    train_prompts,
)
from diffusion_gym.shapes.scenes import Scene, ShapeObject, caption, render, sample_scene

ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets" / "shapes"
PIPELINE_DIR = ASSETS_DIR / "pipeline"
PROXY_DIR = ASSETS_DIR / "proxy_clip"


def _clip_factory(device):
    from diffusion_gym.shapes.proxy import ShapesClipReward

    return ShapesClipReward.from_pretrained(PROXY_DIR, device=device)


def _register_gold_reward(name: str, description: str, reduce: str, dense_shapes: bool = False) -> None:
    """Register a :class:`GoldReward` (``reduce`` over sentences): it reads the prompt and scores in [0, 1]."""
    register_reward(
        name,
        lambda device: GoldReward(reduce, dense_shapes=dense_shapes),
        description=description,
        uses_prompt=True,
        value_range=(0.0, 1.0),
        check_prompt=parse_prompt,  # the gold scorer parses the prompt's grammar
    )


_register_gold_reward(
    "shapes-gold", "Shapes world: exact pixel check of every sentence of the prompt, mean over sentences", "mean"
)
_register_gold_reward(
    "shapes-gold-per-sentence",
    "Shapes world: minimum over sentences of the gold score (1 only if every sentence holds)",
    "min",
)
_register_gold_reward(
    "shapes-gold-dense",
    "Shapes world: shapes-gold with partial credit for shape (the template IoU margin), for training",
    "mean",
    dense_shapes=True,
)

register_reward(
    "shapes-clip",
    _clip_factory,
    description="Shapes world: CLIPScore (100 * cosine) of a tiny CLIP trained contrastively on scenes",
    uses_prompt=True,
    value_range=(-100.0, 100.0),
)

register_prompt_set("shapes-standard", lambda: [STANDARD_PROMPT])
register_prompt_set("shapes-long", lambda: [LONG_PROMPT])
register_prompt_set("shapes-train", lambda: list(train_prompts()))
register_prompt_set("shapes-heldout", lambda: list(heldout_prompts()))
register_prompt_set("shapes-objects", lambda: list(object_prompts()))
register_prompt_set("shapes-multi", lambda: list(multi_prompts()))

import diffusion_gym.shapes.tasks  # noqa: E402, F401  (registers the world's bench tasks)
from diffusion_gym.reports import register_world_report  # noqa: E402
from diffusion_gym.shapes.report import shapes_report  # noqa: E402

register_world_report("shapes", shapes_report)  # diffusion-gym evaluate's facts drawn right

__all__ = [
    "ASSETS_DIR",
    "LONG_PROMPT",
    "PIPELINE_DIR",
    "PROMPT_SETS_VERSION",
    "PROXY_DIR",
    "STANDARD_PROMPT",
    "GoldReward",
    "Scene",
    "ShapeObject",
    "caption",
    "gold_per_sentence",
    "gold_score",
    "heldout_prompts",
    "parse_prompt",
    "render",
    "sample_scene",
    "object_prompts",
    "train_prompts",
]
