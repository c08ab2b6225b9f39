"""An artefact score beside prompt adherence: how far the background strays from flat, next to the shapes (halos)
and away from them (blotches, noise).

The shapes dataset draws objects on a plain background, so every pixel that is neither an object nor its
anti-aliased edge should have the background colour. ``deviations`` measures the mean RGB distance (0..441) from
the background colour (the border's median, as mini-GenEval takes it) in two regions: the **ring**, ``EDGE`` ..
``RING`` px around the objects (pixels farther than ``OBJECT_DISTANCE`` from the background, holes filled), where
a halo sits; and the **far** background beyond it. A set of pictures is **flagged** when its mean ring deviation
exceeds ``RING_FLAG`` or its mean far deviation ``FAR_FLAG``.

The thresholds come from measurements on 200 held-out dataset images: the images themselves score ring 0.01 /
far 0.00; their round trip through the shipped VAE 5.3 / 2.2 (7.4 / 3.5 through the recipe's decoder), the floor
of any model decoding with it (``benchmarks/results/decoder-finetune.md``); the shipped 4-step student's 100
evaluation pictures 8.1 / 3.3; faint rings (10-25% strength, 2-5 px around every shape) drawn onto dataset
pictures 29 / 0 (``tests/test_artefacts.py``). A halo strong enough to pass ``OBJECT_DISTANCE`` joins its shape
instead, and then the shape check of mini-GenEval (IoU with the ideal shape) is what catches it.
"""

from __future__ import annotations

import numpy as np

from .geneval import _as_uint8_hwc

OBJECT_DISTANCE = 70.0  # RGB distance from the background that marks an object pixel (as mini-GenEval)
EDGE = 1  # pixels around objects left out (the anti-aliased edge belongs to the object)
RING = 5  # the band out to this many pixels is where halos sit
RING_FLAG, FAR_FLAG = 15.0, 10.0  # mean deviations (RGB distance) above which a set of pictures is flagged


def deviations(image) -> tuple[float, float]:
    """(ring, far): mean RGB distance from the background colour in the band around the objects and beyond."""
    from scipy import ndimage

    img = _as_uint8_hwc(image).astype(np.float64)
    border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
    distance = np.linalg.norm(img - np.median(border, axis=0), axis=-1)
    objects = ndimage.binary_fill_holes(distance > OBJECT_DISTANCE)
    if objects.any():
        edge = ndimage.binary_dilation(objects, iterations=EDGE)
        ring = ndimage.binary_dilation(objects, iterations=RING) & ~edge
    else:
        edge = ring = objects
    far = ~edge & ~ring
    mean = lambda m: float(distance[m].mean()) if m.any() else 0.0  # noqa: E731
    return mean(ring), mean(far)


def artefact_score(images) -> dict:
    """Mean ring and far deviations over ``images`` and whether the set is flagged."""
    d = np.array([deviations(im) for im in images], dtype=np.float64).reshape(-1, 2)
    ring, far = float(d[:, 0].mean()), float(d[:, 1].mean())
    return {"ring": ring, "far": far, "flagged": bool(ring > RING_FLAG or far > FAR_FLAG), "n": len(d)}
