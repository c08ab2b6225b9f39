"""A procedural text-to-image dataset: 1-3 simple shapes in named colours at named places, with prompts.

Every sample is a pure function of ``(seed, index, size)``: a numpy generator seeded with both draws the
scene, PIL draws it at 4x and downsamples (anti-aliased edges, as a real picture has). Three prompt kinds,
from a small grammar whose words are all single tokens of the shipped tokenizer
(``flash_edge/models/tokenizer_files.py``):

* single: ``a red circle on the left`` (places: on the left / on the right / at the top / at the bottom /
  in the center)
* two:    ``a blue square above a yellow triangle`` (relations: above / below / to the left of / to the
  right of), two different colours
* count:  ``two green diamonds`` / ``three red circles``

:func:`parse_prompt` turns a prompt back into its claims; the mini-GenEval scorer
(``flash_edge/eval/geneval.py``) reads only the prompt and the pixels, never the scene.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from ..errors import InvalidInput

# Object colours: well apart in RGB, none neutral (backgrounds are neutral).
PALETTE = {
    "red": (215, 30, 30),
    "green": (35, 165, 55),
    "blue": (35, 75, 225),
    "yellow": (240, 215, 20),
    "purple": (135, 45, 185),
    "orange": (250, 130, 10),
}
BACKGROUNDS = {"white": (250, 250, 250), "gray": (190, 190, 190), "black": (30, 30, 30)}
SHAPES = ("circle", "square", "triangle", "diamond")
PLACES = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom",
          "center": "in the center"}
RELATIONS = {"above": "above", "below": "below", "left": "to the left of", "right": "to the right of"}
NUMBERS = {2: "two", 3: "three"}
KINDS = ("single", "two", "count")
SUPERSAMPLE = 4
COLOUR_JITTER = 10


@dataclass(frozen=True)
class Shape:
    colour: str
    shape: str
    cx: float  # centre, in fractions of the image side
    cy: float
    r: float  # half extent, in fractions of the image side


@dataclass(frozen=True)
class Claims:
    """What a prompt asserts. ``kind`` single: one object at ``place``; two: ``objects[0] relation objects[1]``;
    count: ``count`` objects of ``objects[0]``'s colour and shape."""

    kind: str
    objects: tuple[tuple[str, str], ...]  # (colour, shape) pairs
    place: str | None = None
    relation: str | None = None
    count: int | None = None


@dataclass
class Sample:
    image: np.ndarray  # (H, W, 3) uint8
    prompt: str
    shapes: list[Shape] = field(default_factory=list)
    background: str = "white"


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _plural(shape: str) -> str:
    return shape + "s"


def prompt_for(claims: Claims) -> str:
    (c, s), *rest = claims.objects
    if claims.kind == "single":
        return f"{_article(c)} {c} {s} {PLACES[claims.place]}"
    if claims.kind == "two":
        c2, s2 = rest[0]
        return f"{_article(c)} {c} {s} {RELATIONS[claims.relation]} {_article(c2)} {c2} {s2}"
    return f"{NUMBERS[claims.count]} {c} {_plural(s)}"


_C = "|".join(PALETTE)
_S = "|".join(SHAPES)
_SINGLE = re.compile(rf"^an? ({_C}) ({_S}) ({'|'.join(PLACES.values())})$")
_TWO = re.compile(rf"^an? ({_C}) ({_S}) ({'|'.join(RELATIONS.values())}) an? ({_C}) ({_S})$")
_COUNT = re.compile(rf"^({'|'.join(NUMBERS.values())}) ({_C}) ({'|'.join(_plural(s) for s in SHAPES)})$")


def parse_prompt(prompt: str) -> Claims:
    """Prompt of the grammar -> its claims; anything else is an ``InvalidInput`` naming the grammar."""
    text = " ".join(str(prompt).lower().split())
    if m := _SINGLE.match(text):
        place = {v: k for k, v in PLACES.items()}[m[3]]
        return Claims("single", ((m[1], m[2]),), place=place)
    if m := _TWO.match(text):
        rel = {v: k for k, v in RELATIONS.items()}[m[3]]
        return Claims("two", ((m[1], m[2]), (m[4], m[5])), relation=rel)
    if m := _COUNT.match(text):
        n = {v: k for k, v in NUMBERS.items()}[m[1]]
        return Claims("count", ((m[2], m[3][:-1]),), count=n)
    raise InvalidInput(f"prompt {prompt!r} is not in the shapes grammar (e.g. 'a red circle on the left', "
                       f"'a blue square above a yellow triangle', 'two green diamonds')")


# ----------------------------------------------------------------------------- scene sampling
def _place_centre(rng: np.random.Generator, place: str) -> tuple[float, float]:
    lo, mid, hi = (0.2, 0.3), (0.42, 0.58), (0.7, 0.8)
    x, y = {"left": (lo, mid), "right": (hi, mid), "top": (mid, lo), "bottom": (mid, hi),
            "center": ((0.45, 0.55), (0.45, 0.55))}[place]
    return float(rng.uniform(*x)), float(rng.uniform(*y))


def _relation_centres(rng: np.random.Generator, relation: str) -> tuple[tuple[float, float], tuple[float, float]]:
    near, far, across = (0.2, 0.3), (0.7, 0.8), (0.35, 0.65)
    a = (float(rng.uniform(*across)), float(rng.uniform(*near)))  # first object above the second
    b = (float(rng.uniform(*across)), float(rng.uniform(*far)))
    if relation == "below":
        a, b = b, a
    elif relation in ("left", "right"):
        a, b = (a[1], a[0]), (b[1], b[0])
        if relation == "right":
            a, b = b, a
    return a, b


def _scatter(rng: np.random.Generator, n: int, r: float) -> list[tuple[float, float]]:
    """``n`` centres with at least ``2r + 0.08`` between any two (rejection sampling, bounded)."""
    for _ in range(1000):
        pts = rng.uniform(r + 0.06, 1 - r - 0.06, size=(n, 2))
        d = np.linalg.norm(pts[:, None] - pts[None], axis=-1) + np.eye(n) * 9
        if d.min() > 2 * r + 0.08:
            return [(float(x), float(y)) for x, y in pts]
    raise RuntimeError("could not place the objects")  # unreachable for n <= 3 and r <= 0.12


def _pick(rng: np.random.Generator, options) -> str:
    options = list(options)
    return options[int(rng.integers(len(options)))]


def sample_claims(rng: np.random.Generator, kind: str | None = None) -> Claims:
    kind = kind or KINDS[int(rng.choice(len(KINDS), p=[0.4, 0.4, 0.2]))]
    if kind == "single":
        return Claims("single", ((_pick(rng, PALETTE), _pick(rng, SHAPES)),), place=_pick(rng, PLACES))
    if kind == "two":
        c1, c2 = (list(PALETTE)[int(i)] for i in rng.choice(len(PALETTE), size=2, replace=False))
        return Claims("two", ((c1, _pick(rng, SHAPES)), (c2, _pick(rng, SHAPES))), relation=_pick(rng, RELATIONS))
    return Claims("count", ((_pick(rng, PALETTE), _pick(rng, SHAPES)),), count=int(_pick(rng, NUMBERS)))


def layout(rng: np.random.Generator, claims: Claims) -> list[Shape]:
    if claims.kind == "single":
        (c, s), = claims.objects
        return [Shape(c, s, *_place_centre(rng, claims.place), r=float(rng.uniform(0.11, 0.16)))]
    if claims.kind == "two":
        centres = _relation_centres(rng, claims.relation)
        return [Shape(c, s, x, y, float(rng.uniform(0.1, 0.14))) for (c, s), (x, y) in zip(claims.objects, centres)]
    (c, s), = claims.objects
    r = float(rng.uniform(0.09, 0.11))
    return [Shape(c, s, x, y, r) for x, y in _scatter(rng, claims.count, r)]


def _jitter(rng: np.random.Generator, rgb) -> tuple[int, int, int]:
    return tuple(int(np.clip(v + rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1), 0, 255)) for v in rgb)


def draw(shapes: list[Shape], size: int, background: tuple[int, int, int], colours: list[tuple[int, int, int]]) -> np.ndarray:
    from PIL import Image, ImageDraw

    big = size * SUPERSAMPLE
    im = Image.new("RGB", (big, big), background)
    d = ImageDraw.Draw(im)
    for sh, rgb in zip(shapes, colours):
        cx, cy, r = sh.cx * big, sh.cy * big, sh.r * big
        if sh.shape == "circle":
            d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=rgb)
        elif sh.shape == "square":
            d.rectangle((cx - r, cy - r, cx + r, cy + r), fill=rgb)
        elif sh.shape == "triangle":
            d.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=rgb)
        elif sh.shape == "diamond":
            d.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=rgb)
        else:
            raise InvalidInput(f"unknown shape {sh.shape!r}")
    return np.asarray(im.resize((size, size), Image.Resampling.BOX), dtype=np.uint8)


def make_sample(seed: int, index: int, size: int = 64, kind: str | None = None) -> Sample:
    """The ``index``-th sample of the dataset with ``seed``, drawn at ``size`` x ``size``."""
    if not isinstance(size, int) or size < 16:
        raise InvalidInput(f"image size must be an integer >= 16, got {size!r}")
    rng = np.random.default_rng([int(seed), int(index)])
    claims = sample_claims(rng, kind)
    shapes = layout(rng, claims)
    bg_name = _pick(rng, BACKGROUNDS)
    bg = _jitter(rng, BACKGROUNDS[bg_name])
    image = draw(shapes, size, bg, [_jitter(rng, PALETTE[s.colour]) for s in shapes])
    return Sample(image=image, prompt=prompt_for(claims), shapes=shapes, background=bg_name)


class ShapesDataset:
    """``n`` samples of the procedural dataset; ``dataset[i]`` -> :class:`Sample`. Train and held-out sets
    are two seeds (e.g. ``ShapesDataset(seed=0)`` and ``ShapesDataset(seed=1)``)."""

    def __init__(self, n: int, seed: int = 0, size: int = 64):
        self.n, self.seed, self.size = int(n), int(seed), int(size)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Sample:
        if not 0 <= i < self.n:
            raise IndexError(i)
        return make_sample(self.seed, i, self.size)

    def arrays(self, start: int = 0, stop: int | None = None) -> tuple[np.ndarray, list[str]]:
        """Images as float32 (N, 3, H, W) in [-1, 1] (the VAE's range) and their prompts."""
        items = [self[i] for i in range(start, self.n if stop is None else stop)]
        x = np.stack([s.image for s in items]).astype(np.float32).transpose(0, 3, 1, 2) / 127.5 - 1.0
        return x, [s.prompt for s in items]
