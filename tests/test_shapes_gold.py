"""The exact gold scorer of the Shapes world, validated on ground truth and sentence by sentence."""

import numpy as np
import pytest
import torch

from diffusion_gym.rewards import make_reward
from diffusion_gym.shapes.gold import (
    gold_per_sentence,
    gold_score,
    object_attribute_accuracy,
    parse_sentence,
    shape_confusion,
)
from diffusion_gym.shapes.scenes import Scene, ShapeObject, caption, full_caption, render, sample_scene

RED_CIRCLE_LEFT = ShapeObject("circle", "red", "large", (1, 0), (5.5, 16.0))
BLUE_SQUARE_TOP_RIGHT = ShapeObject("square", "blue", "small", (0, 2), (26.5, 5.5))
GREEN_TRIANGLE_BOTTOM = ShapeObject("triangle", "green", "large", (2, 1), (16.0, 26.5))
SCENE = Scene("gray", (RED_CIRCLE_LEFT, BLUE_SQUARE_TOP_RIGHT, GREEN_TRIANGLE_BOTTOM))


def _score(sentence: str, scene: Scene = SCENE) -> float:
    return gold_per_sentence(render(scene)[None], [sentence])[0][0]


def _random_scenes(n: int, seed: int):
    rng = np.random.default_rng(seed)
    scenes = [sample_scene(rng) for _ in range(n)]
    return scenes, [caption(s, rng) for s in scenes], np.stack([render(s) for s in scenes])


def test_ground_truth_scores_at_least_098_and_shuffled_captions_score_low():
    scenes, captions, images = _random_scenes(300, seed=3)
    assert gold_score(images, captions).mean() >= 0.98
    assert gold_score(images, [full_caption(s) for s in scenes]).mean() >= 0.98
    shuffled = captions[1:] + captions[:1]
    floor = float(gold_score(images, shuffled).mean())
    assert floor < 0.35, floor  # measured: about 0.21


def test_float_tensor_input_and_resizing():
    _, captions, images = _random_scenes(8, seed=4)
    tensor = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255  # (B, 3, 32, 32)
    assert torch.allclose(gold_score(tensor, captions), gold_score(images, captions))
    upscaled = torch.nn.functional.interpolate(tensor, scale_factor=2, mode="nearest")
    assert gold_score(upscaled, captions).mean() >= 0.98


def test_object_sentences():
    assert _score("A large red circle on the left.") == 1.0
    assert _score("A red circle.") == 1.0
    assert _score("A red square on the left.") == pytest.approx(2 / 3)  # colour + position, wrong shape
    assert _score("A small red circle on the right.") == pytest.approx(2 / 4)  # wrong size and position
    assert _score("A yellow circle on the left.") == 0.0  # no yellow object at all
    assert _score("A small blue square at the top right.") == 1.0
    assert _score("A large green triangle at the bottom.") == 1.0
    assert _score("A green circle at the bottom.") == pytest.approx(2 / 3)


def test_object_attribute_accuracy_by_hand():
    image = render(SCENE)[None]  # (1, 32, 32, 3)
    prompt = (
        "A large red circle on the right."  # colour, shape, size right; position wrong
        " A blue circle at the top right."  # colour, position right; shape wrong; no size named
        " A yellow square."  # colour absent
        " A gray background."  # not an object sentence
    )
    accuracy = object_attribute_accuracy(image, [prompt])
    assert accuracy["colour_present"] == pytest.approx(2 / 3)
    assert accuracy["shape"] == pytest.approx(1 / 2)
    assert accuracy["size"] == 1.0  # only the red circle names a size
    assert accuracy["position"] == pytest.approx(1 / 2)
    assert np.isnan(object_attribute_accuracy(image, ["A gray background."])["shape"])
    with pytest.raises(ValueError, match="got 1 images but 2 prompts"):
        object_attribute_accuracy(image, [prompt, prompt])
    with pytest.raises(ValueError, match="got 1 images but 2 prompts"):
        gold_score(image, [prompt, prompt])


def test_shape_confusion_by_hand():
    image = render(SCENE)[None]  # (1, 32, 32, 3): a red circle, a blue square, a green triangle
    prompt = (
        "A large red circle on the right."  # circle drawn as a circle
        " A blue circle at the top right."  # circle named, a square drawn
        " A green square."  # square named, a triangle drawn
        " A yellow square."  # colour absent: not counted
        " A gray background."  # not an object sentence
    )
    confusion = shape_confusion(np.concatenate([image, image]), [prompt, "A red triangle."])
    assert confusion == {
        "circle": {"circle": 1, "square": 1, "triangle": 0},
        "square": {"circle": 0, "square": 0, "triangle": 1},
        "triangle": {"circle": 1, "square": 0, "triangle": 0},
    }
    with pytest.raises(ValueError, match="got 1 images but 2 prompts"):
        shape_confusion(image, [prompt, prompt])


def test_background_sentences():
    assert _score("A gray background.") == 1.0
    assert _score("The background is grey.") == 1.0
    assert _score("A white background.") == 0.0


def test_count_sentences():
    assert _score("There are three objects.") == 1.0
    assert _score("There are two objects.") == 0.0
    assert _score("There is one circle.") == 1.0
    assert _score("There are two triangles.") == 0.0


def test_relation_sentences():
    assert _score("The red circle is left of the blue square.") == 1.0
    assert _score("The blue square is above the green triangle.") == 1.0
    assert _score("The green triangle is above the blue square.") == pytest.approx(2 / 3)
    assert _score("The red circle is left of the yellow square.") == pytest.approx(1 / 3)


def test_unknown_sentences_raise_a_clear_error():
    with pytest.raises(ValueError, match="A dog on a beach"):
        parse_sentence("A dog on a beach.")
    with pytest.raises(ValueError, match="professional photo"):
        gold_score(render(SCENE)[None], ["A red circle. Dramatic atmosphere, professional photo."])


def test_registered_rewards():
    scenes, captions, images = _random_scenes(6, seed=5)
    tensor = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    gold = make_reward("shapes-gold")(tensor, captions)
    assert gold.shape == (6,) and gold.dtype == torch.float32 and gold.min() >= 0.98
    wrong = [captions[-1]] + captions[:-1]
    per_sentence = make_reward("shapes-gold-per-sentence")(tensor, wrong)
    mean = make_reward("shapes-gold")(tensor, wrong)
    assert per_sentence.shape == (6,) and bool((per_sentence <= mean).all())
    matrix = gold_per_sentence(tensor, wrong)
    assert [min(row) for row in matrix] == pytest.approx(per_sentence.tolist())


def test_shape_credit_hand_computed():
    from diffusion_gym.shapes.gold import Blob, GoldReward, shape_credit

    ious = (("circle", 0.80), ("square", 0.75), ("triangle", 0.40))
    blob = Blob("red", 50, (16.0, 16.0), (1, 1), "large", "circle", ious)
    # margin m = IoU(named) - best other IoU; credit = clip(0.5 + m / (2 * 0.1), 0, 1)
    assert blob.shape_margin("circle") == pytest.approx(0.05)
    assert shape_credit(blob, "circle") == pytest.approx(0.75)
    assert shape_credit(blob, "square") == pytest.approx(0.25)  # m = -0.05
    assert shape_credit(blob, "triangle") == 0.0  # m = -0.40, clipped
    with pytest.raises(ValueError, match="dense_shapes is only defined for reduce='mean'"):
        GoldReward("min", dense_shapes=True)


def test_dense_gold_agrees_with_gold_on_clean_shapes_and_grades_a_rounded_square():
    scenes, captions, images = _random_scenes(100, seed=5)
    dense = gold_score(images, captions, dense_shapes=True)
    assert torch.allclose(dense, gold_score(images, captions), atol=0.05)  # rendered templates: clear margins
    assert make_reward("shapes-gold-dense")(torch.from_numpy(images).permute(0, 3, 1, 2) / 255, captions).mean() > 0.95
    # a 10 x 10 square missing its 4 corner pixels: template IoUs circle 0.917, square 0.96 (margin 0.043)
    image = render(Scene("gray", ()))
    mask = np.zeros((32, 32), dtype=bool)
    mask[11:21, 11:21] = True
    mask[[11, 11, 20, 20], [11, 20, 11, 20]] = False
    image[mask] = render(Scene("gray", (RED_CIRCLE_LEFT,)))[16, 5]  # the palette's red
    hard = [gold_per_sentence(image[None], [f"A red {shape}."])[0][0] for shape in ("circle", "square")]
    dense = [
        gold_per_sentence(image[None], [f"A red {shape}."], dense_shapes=True)[0][0] for shape in ("circle", "square")
    ]
    assert hard == [0.5, 1.0]  # the hard check gives all the shape credit to the square
    # dense: credits c = 0.5 - 0.043 / 0.2 and 1 - c, scored (1 + c) / 2 and (2 - c) / 2
    credit = 0.5 - (0.96 - 11 / 12) / 0.2
    assert dense == pytest.approx([(1 + credit) / 2, (2 - credit) / 2])
