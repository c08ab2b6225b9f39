"""mini-GenEval: does a picture show what its prompt says? Read from the pixels alone (numpy + scipy).

1. Background = the median colour of the border pixels; foreground = pixels far from it (RGB distance).
2. Objects = 4-connected foreground components (holes filled) of at least ``min_area`` of the image.
3. Each object's colour = the named palette colour nearest to its median pixel; its shape = the ideal shape
   (square, inscribed circle, upward triangle, diamond), drawn into the object's bounding box, that overlaps
   the object's mask best (intersection over union). The bounding-box fill ratio and the centroid's height in
   the box are reported too (1.0 / 0.79 / 0.5 / 0.5 and 0.5 / 0.5 / 0.67 / 0.5 for the four ideal shapes).
4. Each claim of the prompt (``flash_edge.distill.dataset.parse_prompt``) is checked:

   * single ``a red circle on the left``: colour (an object of that colour), shape (the largest such object
     has that shape), position (its centroid is in that part of the image);
   * two ``a red circle above a blue square``: colour x2, shape x2, two-object (both (colour, shape) pairs
     found), position (the relation holds between the two objects);
   * count ``two red circles``: colour, shape (every object of that colour), count (exactly n of them).

Per-category accuracy is the share of that category's claims that hold; overall is the share of prompts
whose claims all hold (GenEval's strict per-image rule).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..distill.dataset import PALETTE, Claims, parse_prompt
from ..errors import InvalidInput

CATEGORIES = ("colour", "shape", "position", "count", "two-object")
FOREGROUND_DISTANCE = 70.0  # RGB distance from the background that counts as an object pixel
MIN_AREA = 0.005  # smallest object, as a fraction of the image area
POSITION_MARGIN = 0.1  # a relation needs centroids at least this far apart (fraction of the side)


@dataclass(frozen=True)
class Detected:
    colour: str
    shape: str
    area: int
    cx: float  # centroid, as fractions of the width / height
    cy: float
    fill: float
    centroid_height: float
    iou: float  # overlap with the ideal shape it was classified as


def _as_uint8_hwc(image) -> np.ndarray:
    a = np.asarray(image)
    if a.ndim == 4 and a.shape[0] == 1:
        a = a[0]
    if a.ndim == 3 and a.shape[0] == 3 and a.shape[-1] != 3:
        a = a.transpose(1, 2, 0)
    if a.ndim != 3 or a.shape[-1] != 3:
        raise InvalidInput(f"expected an RGB image (H, W, 3) or (3, H, W), got shape {a.shape}")
    if a.dtype != np.uint8:
        a = np.clip(np.asarray(a, np.float64) * 255.0, 0, 255).round().astype(np.uint8)  # float images in [0, 1]
    return a


TEMPLATE_SUPERSAMPLE = 4
BOX_GROWTH = (0.0, 0.5, 1.0)  # pixels added on each side of the box the templates are fitted into


def templates(y0: float, y1: float, x0: float, x1: float, height: int, width: int) -> dict[str, np.ndarray]:
    """The ideal shapes filling the box [y0, y1] x [x0, x1] (pixel-edge coordinates), as anti-aliased
    coverage maps of ``height`` x ``width`` pixels."""
    k = TEMPLATE_SUPERSAMPLE
    ys = (np.arange(height * k) + 0.5) / k
    xs = (np.arange(width * k) + 0.5) / k
    v, u = np.meshgrid((ys - y0) / (y1 - y0) * 2 - 1, (xs - x0) / (x1 - x0) * 2 - 1, indexing="ij")
    inside = (np.abs(u) <= 1) & (np.abs(v) <= 1)
    shapes = {"circle": u * u + v * v <= 1.0, "square": inside,
              "triangle": inside & (np.abs(u) <= (v + 1) / 2), "diamond": np.abs(u) + np.abs(v) <= 1.0}
    return {n: m.reshape(height, k, width, k).mean(axis=(1, 3)) for n, m in shapes.items()}


def classify_shape(coverage: np.ndarray, box: tuple[int, int, int, int]) -> tuple[str, float]:
    """(shape name, soft IoU) of the ideal shape that best matches an object's coverage map.

    ``box`` (y0, y1, x0, x1): the object's half-covered pixels' bounding box in the map's coordinates.
    Anti-aliased tips (a diamond's corners) fall under half coverage, so each template is also tried in a
    box grown by half a pixel and a pixel on each side."""
    best, best_iou = "", -1.0
    for g in BOX_GROWTH:
        ts = templates(box[0] - g, box[1] + g, box[2] - g, box[3] + g, *coverage.shape)
        for name, t in ts.items():
            iou = float(np.minimum(coverage, t).sum() / max(np.maximum(coverage, t).sum(), 1e-9))
            if iou > best_iou:
                best, best_iou = name, iou
    return best, best_iou


def detect(image) -> list[Detected]:
    """The objects in an image (uint8 HWC, or float in [0, 1] HWC / CHW / 1CHW), largest first."""
    from scipy import ndimage

    img = _as_uint8_hwc(image).astype(np.float64)
    h, w, _ = img.shape
    border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
    background = np.median(border, axis=0)
    distance = np.linalg.norm(img - background, axis=-1)
    labels, _ = ndimage.label(distance > FOREGROUND_DISTANCE)
    names = list(PALETTE)
    palette = np.array([PALETTE[c] for c in names], dtype=np.float64)
    found = []
    for k, sl in enumerate(ndimage.find_objects(labels), start=1):
        mask = ndimage.binary_fill_holes(labels[sl] == k)
        area = int(mask.sum())
        if area < MIN_AREA * h * w:
            continue
        pixels, dist = img[sl][mask], distance[sl][mask]
        rgb = np.median(pixels[dist >= np.median(dist)], axis=0)  # the object's core colour
        colour = names[int(np.argmin(np.linalg.norm(palette - rgb, axis=1)))]
        # Coverage (0..1) of the object over the background, in its box grown by 2 px, other objects masked out.
        r0, r1 = max(sl[0].start - 2, 0), min(sl[0].stop + 2, h)
        c0, c1 = max(sl[1].start - 2, 0), min(sl[1].stop + 2, w)
        own = ndimage.binary_dilation(labels[r0:r1, c0:c1] == k, iterations=2)
        ref = rgb - background
        cov = np.clip((img[r0:r1, c0:c1] - background) @ ref / max(ref @ ref, 1e-9), 0, 1) * own
        half = cov >= 0.5
        if not half.any():
            continue
        ys, xs = np.nonzero(half)
        shape, iou = classify_shape(cov, (ys.min(), ys.max() + 1, xs.min(), xs.max() + 1))
        bh, bw = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
        found.append(Detected(colour, shape, area, (c0 + xs.mean() + 0.5) / w, (r0 + ys.mean() + 0.5) / h,
                              float(half.sum() / (bh * bw)), float((ys.mean() - ys.min() + 0.5) / bh), iou))
    return sorted(found, key=lambda d: -d.area)


def _in_place(d: Detected, place: str) -> bool:
    return {"left": d.cx < 0.4, "right": d.cx > 0.6, "top": d.cy < 0.4, "bottom": d.cy > 0.6,
            "center": 0.35 < d.cx < 0.65 and 0.35 < d.cy < 0.65}[place]


def _relation(a: Detected, b: Detected, relation: str) -> bool:
    m = POSITION_MARGIN
    return {"above": b.cy - a.cy > m, "below": a.cy - b.cy > m, "left": b.cx - a.cx > m,
            "right": a.cx - b.cx > m}[relation]


def _find(objs: list[Detected], colour: str, shape: str | None = None, exclude=None) -> Detected | None:
    for d in objs:
        if d.colour == colour and (shape is None or d.shape == shape) and d is not exclude:
            return d
    return None


def check(claims: Claims, objs: list[Detected]) -> list[tuple[str, bool]]:
    """(category, holds) for each claim of the prompt, given the detected objects."""
    if claims.kind == "single":
        (c, s), = claims.objects
        t = _find(objs, c)
        return [("colour", t is not None), ("shape", t is not None and t.shape == s),
                ("position", t is not None and _in_place(t, claims.place))]
    if claims.kind == "two":
        (c1, s1), (c2, s2) = claims.objects
        t1, t2 = _find(objs, c1), _find(objs, c2)
        m1 = _find(objs, c1, s1)
        m2 = _find(objs, c2, s2, exclude=m1)
        a, b = (m1, m2) if m1 is not None and m2 is not None else (t1, t2)  # prefer the exact matches
        return [("colour", t1 is not None), ("colour", t2 is not None),
                ("shape", m1 is not None), ("shape", m2 is not None),
                ("two-object", m1 is not None and m2 is not None),
                ("position", a is not None and b is not None and a is not b and _relation(a, b, claims.relation))]
    (c, s), = claims.objects
    same = [d for d in objs if d.colour == c]
    return [("colour", bool(same)), ("shape", bool(same) and all(d.shape == s for d in same)),
            ("count", len(same) == claims.count)]


@dataclass
class Score:
    per_category: dict[str, float]  # share of that category's claims that hold (absent: no such claim)
    overall: float  # share of prompts whose every claim holds
    n: int
    per_prompt: list[bool]

    def as_dict(self) -> dict:
        return {"overall": self.overall, "n": self.n, **self.per_category}


def score(images, prompts: list[str]) -> Score:
    """Score images (each uint8 HWC or float [0, 1]) against their prompts."""
    images = list(images)
    if len(images) != len(prompts):
        raise InvalidInput(f"{len(images)} images but {len(prompts)} prompts")
    if not images:
        raise InvalidInput("nothing to score: no images")
    tally = {c: [] for c in CATEGORIES}
    per_prompt = []
    for image, prompt in zip(images, prompts):
        results = check(parse_prompt(prompt), detect(image))
        for cat, ok in results:
            tally[cat].append(ok)
        per_prompt.append(all(ok for _, ok in results))
    return Score({c: float(np.mean(v)) for c, v in tally.items() if v}, float(np.mean(per_prompt)), len(prompts),
                 per_prompt)
