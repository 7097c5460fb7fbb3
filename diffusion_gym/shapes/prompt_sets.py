"""The fixed, versioned prompt sets of the Shapes world.

* ``shapes-standard``: one prompt of 3 sentences (two objects and a setting), after HERD's standard prompt.
* ``shapes-long``: one prompt of 5 sentences (three objects, a count, a setting), after HERD's long prompt.
* ``shapes-train``: 256 prompts for RL fine-tuning (1-3 objects).
* ``shapes-heldout``: 120 evaluation prompts (40 each with 1, 2 and 3 objects).
* ``shapes-objects``: the 18 one-sentence prompts ``A <colour> <shape>.``: every colour-shape binding alone, each
  seen many times in a short run (none is a held-out prompt).
* ``shapes-multi``: 8 prompts of 4-5 sentences (2-3 objects with size and position, a count, the background),
  trained together by the bench's ``multi`` task; chosen among :func:`multi_candidate_prompts` so that the base
  model's gold differs between them (:data:`MULTI_PROMPT_INDICES`, measured by
  ``benchmarks/probes/multi_base_gold.py``).

Every set is generated from a fixed seed by :mod:`diffusion_gym.shapes.scenes`; bump ``PROMPT_SETS_VERSION``
whenever the generator or the seeds change. The scenes behind the held-out, standard and long prompts are
excluded from the diffusion model's training data (:func:`excluded_scenes`), and the training prompts are
disjoint from the held-out ones.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from diffusion_gym.shapes.scenes import OBJECT_COLOURS, SHAPES, Scene, ShapeObject, caption, full_caption, sample_scene

PROMPT_SETS_VERSION = 1
HELDOUT_SEED = 1001
TRAIN_SEED = 2002
HELDOUT_PER_COUNT = 40
NUM_TRAIN_PROMPTS = 256
MULTI_CANDIDATE_SEED = 3003
# shapes-multi: these of multi_candidate_prompts(24), measured base gold on 16 samples each (10 DDIM steps)
# 0.703, 0.800, 0.863, 0.879, 0.909, 0.945, 0.959, 0.980: from hard to easy, 2 and 3 objects alternately
# (docs/experiments/2026-12-07-bench.md, data/2026-12-07-multi-base-gold.json)
MULTI_PROMPT_INDICES = (21, 7, 9, 20, 15, 10, 17, 16)

STANDARD_SCENE = Scene(
    "gray",
    (
        ShapeObject("circle", "red", "large", (1, 0), (5.5, 16.0)),
        ShapeObject("triangle", "blue", "small", (0, 2), (26.5, 5.5)),
    ),
)
STANDARD_PROMPT = "A large red circle on the left. A small blue triangle at the top right. A gray background."

LONG_SCENE = Scene(
    "black",
    (
        ShapeObject("square", "yellow", "large", (0, 0), (5.5, 5.5)),
        ShapeObject("circle", "purple", "small", (1, 1), (16.0, 16.0)),
        ShapeObject("triangle", "green", "large", (2, 2), (26.5, 26.5)),
    ),
)
LONG_PROMPT = full_caption(LONG_SCENE)  # 5 sentences


@lru_cache(maxsize=1)
def heldout_scenes_and_prompts() -> tuple[tuple[Scene, ...], tuple[str, ...]]:
    """The held-out scenes and their captions (``HELDOUT_PER_COUNT`` each with 1, 2, 3 objects)."""
    rng = np.random.default_rng(HELDOUT_SEED)
    scenes: list[Scene] = []
    prompts: list[str] = []
    seen = {STANDARD_SCENE.key(), LONG_SCENE.key()}
    for k in (1, 2, 3):
        while sum(len(s.objects) == k for s in scenes) < HELDOUT_PER_COUNT:
            scene = sample_scene(rng, k)
            prompt = caption(scene, rng)
            if scene.key() in seen or prompt in prompts:
                continue
            seen.add(scene.key())
            scenes.append(scene)
            prompts.append(prompt)
    return tuple(scenes), tuple(prompts)


@lru_cache(maxsize=1)
def excluded_scenes() -> tuple[frozenset, frozenset]:
    """``(scene keys, prompts)`` that the diffusion model's training data must never contain."""
    scenes, prompts = heldout_scenes_and_prompts()
    keys = frozenset([s.key() for s in scenes] + [STANDARD_SCENE.key(), LONG_SCENE.key()])
    return keys, frozenset([*prompts, STANDARD_PROMPT, LONG_PROMPT])


def is_excluded(scene: Scene, prompt: str) -> bool:
    keys, prompts = excluded_scenes()
    return scene.key() in keys or prompt in prompts


@lru_cache(maxsize=1)
def train_prompts() -> tuple[str, ...]:
    """``NUM_TRAIN_PROMPTS`` prompts for RL fine-tuning, disjoint from the held-out set."""
    rng = np.random.default_rng(TRAIN_SEED)
    prompts: list[str] = []
    while len(prompts) < NUM_TRAIN_PROMPTS:
        scene = sample_scene(rng)
        prompt = caption(scene, rng)
        if not is_excluded(scene, prompt) and prompt not in prompts:
            prompts.append(prompt)
    return tuple(prompts)


def heldout_prompts() -> tuple[str, ...]:
    return heldout_scenes_and_prompts()[1]


def object_prompts() -> tuple[str, ...]:
    """``A <colour> <shape>.`` for every object colour and shape (colour-major order)."""
    return tuple(f"A {colour} {shape}." for colour in OBJECT_COLOURS for shape in SHAPES)


@lru_cache(maxsize=4)
def multi_candidate_prompts(count: int = 24) -> tuple[str, ...]:
    """``count`` long captions (:func:`full_caption`: 4-5 sentences) of scenes of 2 and 3 objects (alternately),
    drawn from ``MULTI_CANDIDATE_SEED``: the candidates of ``shapes-multi``. None is a training, held-out, standard
    or long prompt, and the first ``k`` of ``count`` candidates are the same for every ``count >= k``."""
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    rng = np.random.default_rng(MULTI_CANDIDATE_SEED)
    training = set(train_prompts())
    prompts: list[str] = []
    while len(prompts) < count:
        scene = sample_scene(rng, 2 + len(prompts) % 2)
        prompt = full_caption(scene)
        if is_excluded(scene, prompt) or prompt in training or prompt in prompts:
            continue
        prompts.append(prompt)
    return tuple(prompts)


def multi_prompts() -> tuple[str, ...]:
    """``shapes-multi``: the candidates :data:`MULTI_PROMPT_INDICES`, hardest (lowest base gold) first."""
    candidates = multi_candidate_prompts(24)
    return tuple(candidates[i] for i in MULTI_PROMPT_INDICES)
