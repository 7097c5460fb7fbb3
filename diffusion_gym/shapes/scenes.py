"""Procedural Shapes scenes: 1-3 coloured shapes on a plain background, rendered at 32x32, with captions.

A scene is a background colour plus up to three objects. Each object has a shape, a colour, a size and a
cell of a 3x3 grid (its position). Colours are distinct within a scene, and so are cells, so that every
sentence of a caption ("The red circle is above the blue square.") names its objects unambiguously.

Captions are multi-sentence, one fact per sentence::

    A large red circle on the left. A small blue square at the top right. A gray background.

Sentence kinds (see :mod:`diffusion_gym.shapes.gold` for their grammar and scoring): object, background,
count ("There are three objects."), relation ("The red circle is left of the blue square.").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IMAGE_SIZE = 32

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
SIZES: tuple[str, ...] = ("small", "large")
# Well-separated RGB colours for objects, and the background colours (disjoint from the object colours).
OBJECT_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 50),
    "blue": (40, 70, 230),
    "yellow": (235, 215, 40),
    "purple": (160, 60, 220),
    "cyan": (40, 205, 215),
}
BACKGROUND_COLOURS: dict[str, tuple[int, int, int]] = {
    "black": (20, 20, 20),
    "gray": (128, 128, 128),
    "white": (235, 235, 235),
    "brown": (120, 75, 45),
}
# Half extent of an object in pixels, by size word; a large object is 10-11 px across, a small one 7-8.
HALF_SIZE: dict[str, float] = {"small": 3.5, "large": 5.0}
# Centre (in pixels) of each row / column of the 3x3 grid; cell boundaries are at 32/3 and 64/3.
CELL_CENTRES: tuple[float, float, float] = (5.5, 16.0, 26.5)
CELL_JITTER: dict[str, float] = {"small": 0.75, "large": 0.0}

# Position phrases by (row, col).
POSITION_PHRASES: dict[tuple[int, int], str] = {
    (0, 0): "at the top left",
    (0, 1): "at the top",
    (0, 2): "at the top right",
    (1, 0): "on the left",
    (1, 1): "in the centre",
    (1, 2): "on the right",
    (2, 0): "at the bottom left",
    (2, 1): "at the bottom",
    (2, 2): "at the bottom right",
}
NUMBER_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five")
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")


@dataclass(frozen=True)
class ShapeObject:
    """One object of a scene."""

    shape: str
    colour: str
    size: str
    cell: tuple[int, int]  # (row, col) of the 3x3 grid
    centre: tuple[float, float]  # (x, y) in pixels


@dataclass(frozen=True)
class Scene:
    """A background colour and 1-3 objects (distinct colours, distinct cells)."""

    background: str
    objects: tuple[ShapeObject, ...]

    def key(self) -> tuple:
        """A canonical identity of the scene's content (ignores sub-cell jitter and object order)."""
        items = sorted((o.colour, o.shape, o.size, o.cell) for o in self.objects)
        return (self.background, tuple(items))


def sample_scene(rng: np.random.Generator, num_objects: int | None = None) -> Scene:
    """Draw a random scene; ``num_objects`` defaults to uniform on {1, 2, 3}."""
    k = int(rng.integers(1, 4)) if num_objects is None else num_objects
    colours = rng.choice(len(OBJECT_COLOURS), size=k, replace=False)
    cells = rng.choice(9, size=k, replace=False)
    names = list(OBJECT_COLOURS)
    objects = []
    for colour_index, cell_index in zip(colours, cells, strict=True):
        size = SIZES[int(rng.integers(len(SIZES)))]
        cell, centre = _place(int(cell_index), size, rng)
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        objects.append(ShapeObject(shape, names[int(colour_index)], size, cell, centre))
    background = list(BACKGROUND_COLOURS)[int(rng.integers(len(BACKGROUND_COLOURS)))]
    return Scene(background, tuple(objects))


def _place(cell_index: int, size: str, rng: np.random.Generator) -> tuple[tuple[int, int], tuple[float, float]]:
    """The ``(row, col)`` of grid cell ``cell_index`` (0-8, row-major) and a jittered centre ``(x, y)`` in it."""
    row, col = divmod(cell_index, 3)
    jitter = CELL_JITTER[size]
    x = CELL_CENTRES[col] + float(rng.uniform(-jitter, jitter))
    y = CELL_CENTRES[row] + float(rng.uniform(-jitter, jitter))
    return (row, col), (x, y)


def with_random_cells(scene: Scene, rng: np.random.Generator) -> Scene:
    """The scene with its objects moved to random distinct cells, everything else kept.

    What a model that draws every object right but ignores position words would draw (a cell can stay put,
    as by chance): its gold score is the ceiling of such a model (``shapes.offline.evaluate``).
    """
    cells = rng.choice(9, size=len(scene.objects), replace=False)
    objects = []
    for obj, cell_index in zip(scene.objects, cells, strict=True):
        cell, centre = _place(int(cell_index), obj.size, rng)
        objects.append(ShapeObject(obj.shape, obj.colour, obj.size, cell, centre))
    return Scene(scene.background, tuple(objects))


def shape_mask(shape: str, cx: float, cy: float, half: float, size: int = IMAGE_SIZE) -> np.ndarray:
    """Boolean ``(size, size)`` mask of an upright shape centred at ``(cx, cy)`` with half extent ``half``.

    Pixels are tested at their centres ``(i + 0.5)``; the triangle points up with its base at the bottom.
    """
    coords = np.arange(size, dtype=np.float64) + 0.5
    x = coords[None, :]  # (1, W)
    y = coords[:, None]  # (H, 1)
    if shape == "circle":
        return (x - cx) ** 2 + (y - cy) ** 2 <= (half + 0.25) ** 2
    if shape == "square":
        return (np.abs(x - cx) <= half) & (np.abs(y - cy) <= half)
    if shape == "triangle":
        depth = y - (cy - half)  # 0 at the apex, 2 * half at the base
        return (depth >= 0) & (depth <= 2 * half) & (np.abs(x - cx) <= 0.5 * depth + 0.25)
    raise ValueError(f"unknown shape {shape!r}")


def render(scene: Scene, size: int = IMAGE_SIZE) -> np.ndarray:
    """Render a scene as a ``(size, size, 3)`` uint8 RGB array (hard edges, no anti-aliasing)."""
    image = np.empty((size, size, 3), dtype=np.uint8)
    image[:] = BACKGROUND_COLOURS[scene.background]
    scale = size / IMAGE_SIZE
    for obj in scene.objects:
        mask = shape_mask(obj.shape, obj.centre[0] * scale, obj.centre[1] * scale, HALF_SIZE[obj.size] * scale, size)
        image[mask] = OBJECT_COLOURS[obj.colour]
    return image


def object_sentence(obj: ShapeObject, with_size: bool = True, with_position: bool = True) -> str:
    words = ["A"] + ([obj.size] if with_size else []) + [obj.colour, obj.shape]
    if with_position:
        words.append(POSITION_PHRASES[obj.cell])
    return " ".join(words) + "."


def background_sentence(scene: Scene) -> str:
    return f"A {scene.background} background."


def count_sentence(scene: Scene, shape: str | None = None) -> str:
    n = len(scene.objects) if shape is None else sum(o.shape == shape for o in scene.objects)
    noun = "object" if shape is None else shape
    if n == 1:
        return f"There is one {noun}."
    return f"There are {NUMBER_WORDS[n]} {noun}s."


def relation_sentence(a: ShapeObject, b: ShapeObject, rng: np.random.Generator) -> str | None:
    """A true spatial relation between two objects (by grid cell), or None if they share a row and column."""
    options = []
    if a.cell[1] < b.cell[1]:
        options.append("left of")
    if a.cell[1] > b.cell[1]:
        options.append("right of")
    if a.cell[0] < b.cell[0]:
        options.append("above")
    if a.cell[0] > b.cell[0]:
        options.append("below")
    if not options:
        return None
    relation = options[int(rng.integers(len(options)))]
    return f"The {a.colour} {a.shape} is {relation} the {b.colour} {b.shape}."


def caption(scene: Scene, rng: np.random.Generator) -> str:
    """A random true caption of the scene: object sentences, optional relation and count, background last.

    Object sentences name the position with probability 0.75; otherwise (for 2+ objects) a relation
    sentence describes the layout. Size words appear with probability 0.6, a count sentence with
    probability 0.25.
    """
    with_position = bool(rng.random() < 0.75) or len(scene.objects) == 1
    order = rng.permutation(len(scene.objects))
    objects = [scene.objects[i] for i in order]
    sentences = [object_sentence(o, bool(rng.random() < 0.6), with_position) for o in objects]
    if len(objects) >= 2 and (not with_position or rng.random() < 0.15):
        pair = rng.choice(len(objects), size=2, replace=False)
        relation = relation_sentence(objects[int(pair[0])], objects[int(pair[1])], rng)
        if relation is not None:
            sentences.append(relation)
    if rng.random() < 0.25:
        shape = None if rng.random() < 0.6 else objects[int(rng.integers(len(objects)))].shape
        sentences.append(count_sentence(scene, shape))
    sentences.append(background_sentence(scene))
    return " ".join(sentences)


def full_caption(scene: Scene) -> str:
    """The deterministic long caption: every object with size and position, the count, the background."""
    sentences = [object_sentence(o) for o in scene.objects]
    sentences.append(count_sentence(scene))
    sentences.append(background_sentence(scene))
    return " ".join(sentences)
