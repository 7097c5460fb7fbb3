"""The exact gold scorer of the Shapes world: parse each sentence, check the pixels.

An image is analysed once (:func:`analyse`): every pixel gets the nearest palette colour; the connected
regions of each object colour with at least ``MIN_AREA`` pixels are *blobs*, each with a centroid (its grid
cell), a size (``large`` if its bounding box is at least 9 px across) and a shape (the circle / square /
triangle template of the same bounding box with the best IoU).

Each sentence then gets a score in ``[0, 1]``:

* **object** ``A [small|large] <colour> <shape> [<position>].`` -- 0 if no blob of that colour exists;
  otherwise ``(1 + number of the named attributes that hold) / (1 + number of named attributes)``, the
  attributes being shape, size (if named) and position (if named), checked on the largest blob of the colour.
* **background** ``A <colour> background.`` -- 1 if the most frequent palette colour is that background.
* **count** ``There are <n> objects|<shape>s.`` -- 1 if the number of blobs (of that shape) is ``n``.
* **relation** ``The <colour> <shape> is left of|right of|above|below the <colour> <shape>.`` -- the mean of
  [first colour present, second colour present, the relation holds between their centroids].

The prompt's score is the mean over its sentences. A sentence outside this grammar raises ``ValueError``.

``shapes-gold-dense`` (a training reward) is the same with partial credit for shape (:func:`shape_credit`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from scipy import ndimage

from diffusion_gym.images import to_uint8_hwc
from diffusion_gym.prompts import split_sentences
from diffusion_gym.shapes.scenes import (
    BACKGROUND_COLOURS,
    IMAGE_SIZE,
    NUMBER_WORDS,
    OBJECT_COLOURS,
    POSITION_PHRASES,
    SHAPES,
    shape_mask,
)

MIN_AREA = 6  # pixels; smaller regions are noise
MAX_COLOUR_DISTANCE = 90.0  # RGB distance beyond which a pixel belongs to no palette colour
LARGE_MIN_EXTENT = 9  # bounding-box side (px) from which an object counts as large (small: 7-8, large: 10-11)
RELATION_MARGIN = 3.0  # px; "left of" needs x_a < x_b - margin
SHAPE_CREDIT_MARGIN = 0.1  # shapes-gold-dense: the IoU margin at which the shape credit reaches 0 or 1

_PALETTE_NAMES: tuple[str, ...] = tuple(OBJECT_COLOURS) + tuple(BACKGROUND_COLOURS)
_PALETTE = np.array([*OBJECT_COLOURS.values(), *BACKGROUND_COLOURS.values()], dtype=np.float32)  # (P, 3)
_NUM_OBJECT_COLOURS = len(OBJECT_COLOURS)
_PHRASE_TO_CELL = {phrase: cell for cell, phrase in POSITION_PHRASES.items()}


# --------------------------------------------------------------------------------------------- sentences
@dataclass(frozen=True)
class ObjectSentence:
    colour: str
    shape: str
    size: str | None
    cell: tuple[int, int] | None


@dataclass(frozen=True)
class BackgroundSentence:
    colour: str


@dataclass(frozen=True)
class CountSentence:
    number: int
    shape: str | None  # None counts all objects


@dataclass(frozen=True)
class RelationSentence:
    colour_a: str
    shape_a: str
    relation: str  # "left of" | "right of" | "above" | "below"
    colour_b: str
    shape_b: str


Sentence = ObjectSentence | BackgroundSentence | CountSentence | RelationSentence

_COLOUR = "(" + "|".join(OBJECT_COLOURS) + ")"
_SHAPE = "(" + "|".join(SHAPES) + ")"
_POSITION = "(" + "|".join(sorted(POSITION_PHRASES.values(), key=len, reverse=True)) + ")"
_BACKGROUND = "(" + "|".join(BACKGROUND_COLOURS) + ")"
_NUMBER = "(" + "|".join(NUMBER_WORDS) + "|[0-9])"
_OBJECT_RE = re.compile(rf"an? (?:(small|large) )?{_COLOUR} {_SHAPE}(?: {_POSITION})?")
_BACKGROUND_RE = re.compile(rf"(?:an? |the )?{_BACKGROUND} background|the background is {_BACKGROUND}")
_COUNT_RE = re.compile(rf"there (?:is|are) {_NUMBER} (objects?|circles?|squares?|triangles?)")
_RELATION_RE = re.compile(rf"the {_COLOUR} {_SHAPE} is (left of|right of|above|below) the {_COLOUR} {_SHAPE}")


def _normalise(sentence: str) -> str:
    text = " ".join(sentence.lower().replace("center", "centre").replace("grey", "gray").split())
    return text.rstrip(".!").strip()


def parse_sentence(sentence: str) -> Sentence:
    """Parse one sentence of the Shapes grammar; raise ``ValueError`` naming it if it is not one."""
    text = _normalise(sentence)
    if match := _OBJECT_RE.fullmatch(text):
        size, colour, shape, position = match.groups()
        return ObjectSentence(colour, shape, size, _PHRASE_TO_CELL[position] if position else None)
    if match := _BACKGROUND_RE.fullmatch(text):
        return BackgroundSentence(match.group(1) or match.group(2))
    if match := _COUNT_RE.fullmatch(text):
        number_word, noun = match.groups()
        number = int(number_word) if number_word.isdigit() else NUMBER_WORDS.index(number_word)
        noun = noun.rstrip("s")
        return CountSentence(number, None if noun == "object" else noun)
    if match := _RELATION_RE.fullmatch(text):
        return RelationSentence(*match.groups())
    raise ValueError(f"the Shapes gold scorer cannot parse the sentence {sentence.strip()!r}")


@lru_cache(maxsize=4096)
def parse_prompt(prompt: str) -> tuple[Sentence, ...]:
    """Parse every sentence of a prompt (cached); raises ``ValueError`` for an unknown sentence."""
    sentences = tuple(parse_sentence(s) for s in split_sentences(prompt))
    if not sentences:
        raise ValueError(f"the prompt {prompt!r} has no sentence")
    return sentences


# --------------------------------------------------------------------------------------------- analysis
@dataclass(frozen=True)
class Blob:
    colour: str
    area: int
    centroid: tuple[float, float]  # (x, y) in pixels (pixel centres at i + 0.5)
    cell: tuple[int, int]  # (row, col)
    size: str
    shape: str
    shape_ious: tuple[tuple[str, float], ...]  # (shape, IoU of its best-fitting template) for every shape

    def shape_margin(self, shape: str) -> float:
        """IoU of ``shape``'s template minus the best IoU of the other shapes' (> 0: ``shape`` is the one drawn)."""
        ious = dict(self.shape_ious)
        return ious[shape] - max(iou for name, iou in ious.items() if name != shape)


@dataclass(frozen=True)
class ImageAnalysis:
    blobs: tuple[Blob, ...]
    dominant: str  # the most frequent palette colour

    def largest(self, colour: str) -> Blob | None:
        candidates = [b for b in self.blobs if b.colour == colour]
        return max(candidates, key=lambda b: b.area) if candidates else None


def _shape_ious(mask: np.ndarray) -> tuple[tuple[str, float], ...]:
    """For each shape, the IoU of its template fitted to a blob's bounding box (the better of its two sides)."""
    ys, xs = np.nonzero(mask)
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    ious = []
    for shape in SHAPES:
        best = 0.0
        for half in {(x1 - x0) / 2, (y1 - y0) / 2}:
            template = shape_mask(shape, cx, cy, half, mask.shape[0])
            best = max(best, float((template & mask).sum() / max((template | mask).sum(), 1)))
        ious.append((shape, best))
    return tuple(ious)


def _classify_shape(ious: tuple[tuple[str, float], ...]) -> str:
    """The shape whose template overlaps the blob best (the first of ``SHAPES`` on a tie)."""
    return max(ious, key=lambda pair: pair[1])[0]


def analyse(image: np.ndarray) -> ImageAnalysis:
    """Segment a ``(H, W, 3)`` uint8 image into palette colours and object blobs."""
    pixels = image.astype(np.float32)
    distances = np.linalg.norm(pixels[:, :, None, :] - _PALETTE[None, None], axis=-1)  # (H, W, P)
    labels = distances.argmin(-1)  # (H, W)
    labels[distances.min(-1) > MAX_COLOUR_DISTANCE] = -1
    counts = np.bincount(labels[labels >= 0].ravel(), minlength=len(_PALETTE_NAMES))
    dominant = _PALETTE_NAMES[int(counts.argmax())]
    cell_size = image.shape[0] / 3
    blobs = []
    for index in range(_NUM_OBJECT_COLOURS):
        if counts[index] < MIN_AREA:
            continue
        components, n = ndimage.label(labels == index)
        for component in range(1, n + 1):
            mask = components == component
            area = int(mask.sum())
            if area < MIN_AREA:
                continue
            ys, xs = np.nonzero(mask)
            x, y = float(xs.mean()) + 0.5, float(ys.mean()) + 0.5
            cell = (min(int(y // cell_size), 2), min(int(x // cell_size), 2))
            extent = max(xs.max() - xs.min(), ys.max() - ys.min()) + 1
            size = "large" if extent >= LARGE_MIN_EXTENT else "small"
            ious = _shape_ious(mask)
            blobs.append(Blob(_PALETTE_NAMES[index], area, (x, y), cell, size, _classify_shape(ious), ious))
    return ImageAnalysis(tuple(blobs), dominant)


# ----------------------------------------------------------------------------------------------- scoring
def shape_credit(blob: Blob, shape: str) -> float:
    r"""``shapes-gold-dense``'s partial credit for drawing ``shape``: the template IoU margin
    :math:`m` (:meth:`Blob.shape_margin`) mapped linearly to ``[0, 1]``,
    :math:`\mathrm{clip}(1/2 + m / (2 \cdot \text{SHAPE\_CREDIT\_MARGIN}), 0, 1)`.

    Gold's shape check is the step function :math:`m > 0`; a rounded square that is nearly a circle gets about
    1/2 here instead of a coin flip between 0 and 1.
    """
    return float(np.clip(0.5 + blob.shape_margin(shape) / (2 * SHAPE_CREDIT_MARGIN), 0.0, 1.0))


def score_sentence(analysis: ImageAnalysis, sentence: Sentence, dense_shapes: bool = False) -> float:
    """The score in ``[0, 1]`` of one parsed sentence on an analysed image.

    ``dense_shapes``: an object sentence's shape check is :func:`shape_credit` instead of 0 or 1.
    """
    if isinstance(sentence, ObjectSentence):
        blob = analysis.largest(sentence.colour)
        if blob is None:
            return 0.0
        checks = [shape_credit(blob, sentence.shape) if dense_shapes else blob.shape == sentence.shape]
        if sentence.size is not None:
            checks.append(blob.size == sentence.size)
        if sentence.cell is not None:
            checks.append(blob.cell == sentence.cell)
        return (1 + sum(checks)) / (1 + len(checks))
    if isinstance(sentence, BackgroundSentence):
        return float(analysis.dominant == sentence.colour)
    if isinstance(sentence, CountSentence):
        blobs = [b for b in analysis.blobs if sentence.shape is None or b.shape == sentence.shape]
        return float(len(blobs) == sentence.number)
    if isinstance(sentence, RelationSentence):
        a, b = analysis.largest(sentence.colour_a), analysis.largest(sentence.colour_b)
        holds = False
        if a is not None and b is not None:
            (xa, ya), (xb, yb) = a.centroid, b.centroid
            holds = {
                "left of": xa < xb - RELATION_MARGIN,
                "right of": xa > xb + RELATION_MARGIN,
                "above": ya < yb - RELATION_MARGIN,
                "below": ya > yb + RELATION_MARGIN,
            }[sentence.relation]
        return ((a is not None) + (b is not None) + holds) / 3
    raise TypeError(f"not a Shapes sentence: {sentence!r}")


def to_uint8_images(images: torch.Tensor) -> np.ndarray:
    """``(B, 3, H, W)`` float in [0, 1] (any device, any size) -> ``(B, 32, 32, 3)`` uint8."""
    images = images.detach().float().cpu()
    if images.shape[-2:] != (IMAGE_SIZE, IMAGE_SIZE):
        images = torch.nn.functional.interpolate(images, size=(IMAGE_SIZE, IMAGE_SIZE), mode="area")
    return to_uint8_hwc(images)  # (B, H, W, 3)


def _uint8_images(images: torch.Tensor | np.ndarray, prompts: Sequence[str]) -> np.ndarray:
    """``(B, 32, 32, 3)`` uint8 from either input form, one image per prompt (else ``ValueError``)."""
    arrays = to_uint8_images(images) if isinstance(images, torch.Tensor) else np.asarray(images)
    if len(arrays) != len(prompts):
        raise ValueError(f"got {len(arrays)} images but {len(prompts)} prompts")
    return arrays


def gold_per_sentence(
    images: torch.Tensor | np.ndarray, prompts: Sequence[str], dense_shapes: bool = False
) -> list[list[float]]:
    """Per-sentence gold scores: ``result[i][j]`` scores sentence ``j`` of ``prompts[i]`` on ``images[i]``.

    ``images`` is a ``(B, 3, H, W)`` float tensor in ``[0, 1]`` or a ``(B, 32, 32, 3)`` uint8 array.
    ``dense_shapes``: see :func:`score_sentence`.
    """
    arrays = _uint8_images(images, prompts)
    parsed = [parse_prompt(p) for p in prompts]  # parse first: fail before any pixel work
    results = []
    for image, sentences in zip(arrays, parsed, strict=True):
        analysis = analyse(image)
        results.append([score_sentence(analysis, s, dense_shapes) for s in sentences])
    return results


def _object_sentences_and_blobs(
    images: torch.Tensor | np.ndarray, prompts: Sequence[str]
) -> Iterator[tuple[ObjectSentence, Blob | None]]:
    """Every object sentence of ``prompts`` with the largest blob of its colour in its image (None: absent)."""
    arrays = _uint8_images(images, prompts)
    for image, prompt in zip(arrays, prompts, strict=True):
        analysis = analyse(image)
        for sentence in parse_prompt(prompt):
            if isinstance(sentence, ObjectSentence):
                yield sentence, analysis.largest(sentence.colour)


def object_attribute_accuracy(images: torch.Tensor | np.ndarray, prompts: Sequence[str]) -> dict[str, float]:
    """Which facts of the object sentences the images get right: a diagnostic, not a reward.

    Over every object sentence of ``prompts``: ``colour_present`` is the fraction whose colour has a blob;
    of those, ``shape`` / ``size`` / ``position`` are the fractions whose largest blob of that colour has the
    named shape / size / cell, counted only over the sentences that name a size or a position. Chance levels
    for an image that ignores the word: shape 1/3, size 1/2, position 1/9. NaN where no sentence qualifies.
    """
    hits: dict[str, list[bool]] = {"colour_present": [], "shape": [], "size": [], "position": []}
    for sentence, blob in _object_sentences_and_blobs(images, prompts):
        hits["colour_present"].append(blob is not None)
        if blob is None:
            continue
        hits["shape"].append(blob.shape == sentence.shape)
        if sentence.size is not None:
            hits["size"].append(blob.size == sentence.size)
        if sentence.cell is not None:
            hits["position"].append(blob.cell == sentence.cell)
    return {name: float(np.mean(values)) if values else float("nan") for name, values in hits.items()}


def shape_confusion(images: torch.Tensor | np.ndarray, prompts: Sequence[str]) -> dict[str, dict[str, int]]:
    """How the named shapes were drawn: ``result[named][drawn]`` counts object sentences, a diagnostic.

    Over every object sentence of ``prompts`` whose colour has a blob, the shape named in the sentence against
    the shape of the largest blob of that colour (the one the gold score checks). Every shape of ``SHAPES`` is a
    key on both levels, with 0 where nothing was counted. The diagonal over the row sums is
    :func:`object_attribute_accuracy`'s ``shape`` per named shape.
    """
    counts = {named: dict.fromkeys(SHAPES, 0) for named in SHAPES}
    for sentence, blob in _object_sentences_and_blobs(images, prompts):
        if blob is not None:
            counts[sentence.shape][blob.shape] += 1
    return counts


def gold_score(images: torch.Tensor | np.ndarray, prompts: Sequence[str], dense_shapes: bool = False) -> torch.Tensor:
    """``(B,)`` float32: the mean over each prompt's sentences of the per-sentence gold score."""
    scores = gold_per_sentence(images, prompts, dense_shapes)
    return torch.tensor([float(np.mean(s)) for s in scores], dtype=torch.float32)


def gold_all_sentences(images: torch.Tensor | np.ndarray, prompts: Sequence[str]) -> torch.Tensor:
    """``(B,)`` float32: the minimum over sentences (1 only when every sentence is fully satisfied)."""
    return torch.tensor([float(np.min(s)) for s in gold_per_sentence(images, prompts)], dtype=torch.float32)


class GoldReward:
    """The ``shapes-gold`` reward (``reduce="mean"``), ``shapes-gold-per-sentence`` (``reduce="min"``) or
    ``shapes-gold-dense`` (``reduce="mean", dense_shapes=True``: shape checks get :func:`shape_credit`)."""

    def __init__(self, reduce: str = "mean", dense_shapes: bool = False):
        if reduce not in ("mean", "min"):
            raise ValueError(f"reduce must be 'mean' or 'min', got {reduce!r}")
        if dense_shapes and reduce != "mean":
            raise ValueError("dense_shapes is only defined for reduce='mean'")
        self.reduce = reduce
        self.dense_shapes = dense_shapes

    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        if self.reduce == "min":
            return gold_all_sentences(images, prompts)
        return gold_score(images, prompts, self.dense_shapes)
