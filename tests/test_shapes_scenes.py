"""The Shapes world's scene generator, captions and prompt sets."""

import numpy as np
import pytest

from diffusion_gym.prompts import resolve_prompts, split_sentences
from diffusion_gym.shapes.gold import gold_score, parse_prompt
from diffusion_gym.shapes.prompt_sets import (
    LONG_PROMPT,
    STANDARD_PROMPT,
    heldout_scenes_and_prompts,
    is_excluded,
    train_prompts,
)
from diffusion_gym.shapes.scenes import (
    IMAGE_SIZE,
    caption,
    full_caption,
    render,
    sample_scene,
    with_random_cells,
)


def _draw(seed: int, n: int = 50):
    rng = np.random.default_rng(seed)
    scenes = [sample_scene(rng) for _ in range(n)]
    return scenes, [caption(s, rng) for s in scenes], np.stack([render(s) for s in scenes])


def test_generator_is_deterministic_under_a_seed():
    scenes_a, captions_a, images_a = _draw(7)
    scenes_b, captions_b, images_b = _draw(7)
    assert scenes_a == scenes_b and captions_a == captions_b
    assert np.array_equal(images_a, images_b)
    _, captions_c, images_c = _draw(8)
    assert captions_c != captions_a and not np.array_equal(images_c, images_a)


def test_scenes_are_well_formed():
    scenes, captions, images = _draw(0, 200)
    assert images.shape == (200, IMAGE_SIZE, IMAGE_SIZE, 3) and images.dtype == np.uint8
    for scene, text in zip(scenes, captions, strict=True):
        assert 1 <= len(scene.objects) <= 3
        assert len({o.colour for o in scene.objects}) == len(scene.objects)
        assert len({o.cell for o in scene.objects}) == len(scene.objects)
        sentences = split_sentences(text)
        assert len(sentences) >= len(scene.objects) + 1
        assert sentences[-1].endswith("background.")
        assert len(parse_prompt(text)) == len(sentences)


def test_random_cells_move_only_the_objects_and_cost_exactly_the_position_words():
    scenes, _, _ = _draw(3, 100)
    rng = np.random.default_rng(0)
    for scene in scenes:
        moved = with_random_cells(scene, rng)
        assert moved.background == scene.background
        kept = [(o.shape, o.colour, o.size) for o in moved.objects]
        assert kept == [(o.shape, o.colour, o.size) for o in scene.objects]
        assert len({o.cell for o in moved.objects}) == len(moved.objects)
        for obj in moved.objects:  # the centre lies in the object's cell
            assert (int(obj.centre[1] * 3 // IMAGE_SIZE), int(obj.centre[0] * 3 // IMAGE_SIZE)) == obj.cell
        # A one-object scene scores 1 on its full caption iff the object stayed in its cell; otherwise only the
        # position word fails: (1 + shape + size) / 4 on the object sentence, count and background right.
        if len(scene.objects) == 1:
            score = float(gold_score(render(moved)[None], [full_caption(scene)])[0])
            stayed = moved.objects[0].cell == scene.objects[0].cell
            assert score == pytest.approx(1.0 if stayed else (3 / 4 + 1 + 1) / 3)


def test_prompt_sets_are_fixed_disjoint_and_parseable():
    assert resolve_prompts("shapes-standard") == [STANDARD_PROMPT]
    assert resolve_prompts("shapes-long") == [LONG_PROMPT]
    assert len(split_sentences(STANDARD_PROMPT)) == 3
    assert len(split_sentences(LONG_PROMPT)) >= 4
    train, heldout = resolve_prompts("shapes-train"), resolve_prompts("shapes-heldout")
    assert len(train) == len(set(train)) == 256
    assert len(heldout) == len(set(heldout)) == 120
    assert not set(train) & set(heldout)
    assert {STANDARD_PROMPT, LONG_PROMPT}.isdisjoint(train)
    assert train[:3] == list(train_prompts()[:3])  # cached and stable
    for prompt in train + heldout:
        parse_prompt(prompt)
    scenes, prompts = heldout_scenes_and_prompts()
    assert [len(s.objects) for s in scenes].count(1) == 40
    assert all(is_excluded(s, p) for s, p in zip(scenes, prompts, strict=True))
    objects = resolve_prompts("shapes-objects")
    assert len(objects) == len(set(objects)) == 18 and objects[:2] == ["A red circle.", "A red square."]
    assert not set(objects) & set(heldout)
    for prompt in objects:
        (sentence,) = parse_prompt(prompt)
        assert sentence.size is None and sentence.cell is None  # colour and shape only


def test_vae_loss_weights_cover_each_object_and_its_edge_ring():
    """A 2x2 object on a plain background: weight FOREGROUND_WEIGHT on it and on its 4-neighbour ring, 1 elsewhere,
    so that both sides of every edge count the same (no bias toward bloated objects)."""
    from diffusion_gym.shapes.offline.train import FOREGROUND_WEIGHT, _pixel_weights

    image = np.full((1, IMAGE_SIZE, IMAGE_SIZE, 3), 128, dtype=np.uint8)
    image[0, 10:12, 20:22] = (220, 40, 40)
    weights = _pixel_weights(image)
    assert weights.shape == (1, 1, IMAGE_SIZE, IMAGE_SIZE)
    heavy = {tuple(p) for p in np.argwhere(weights[0, 0].numpy() == FOREGROUND_WEIGHT)}
    expected = {(r, c) for r in range(10, 12) for c in range(20, 22)}  # the object
    expected |= {(9, 20), (9, 21), (12, 20), (12, 21), (10, 19), (11, 19), (10, 22), (11, 22)}  # its ring
    assert heavy == expected
    assert (weights == 1).sum() == IMAGE_SIZE * IMAGE_SIZE - len(expected)
