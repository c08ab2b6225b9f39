"""Tiled VAE decode: the latent is decoded in overlapping square tiles by a decoder exported at the tile's shape,
and the tiles are blended into one image. Only one tile's activations exist at a time, so the decoder's peak
memory follows the tile, not the image (the idea of stable-diffusion.cpp's and diffusers' tiled decode; this
blending is flash-edge's own, in numpy, so every runtime and app computes it the same way).

The rule (normative: the README's app contract repeats it)
----------------------------------------------------------
Along each latent axis of ``size`` cells, with tile ``t`` and overlap ``o`` (cells, ``0 <= o <= t // 2``):

* tile starts are ``0, t - o, 2 (t - o), ...`` while ``start + t < size``, then ``size - t`` (so every tile has
  the same shape and the last one ends at the edge; none repeats);
* each tile's pixels get a weight per axis: ``w(x) = min(1, (x + 0.5) / (o f))`` on a side that borders an
  earlier tile, ``min(1, (T - x - 0.5) / (o f))`` on a side that borders a later one (``x`` the pixel inside
  the tile, ``T = t f`` its width in pixels, ``f`` the VAE factor), 1 elsewhere; the tile's weight is the
  product of its two axes';
* the image is the weighted sum of the decoded tiles divided by the summed weights, in float32.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start cells of the tiles along one axis (see the module's rule)."""
    if tile >= size:
        return [0]
    step = tile - overlap
    starts = list(range(0, size - tile, step))
    return starts + [size - tile]


def _ramp(pixels: int, ramp: int, before: bool, after: bool) -> np.ndarray:
    x = np.arange(pixels, dtype=np.float32) + np.float32(0.5)
    w = np.ones(pixels, dtype=np.float32)
    if ramp > 0 and before:
        w = np.minimum(w, x / np.float32(ramp))
    if ramp > 0 and after:
        w = np.minimum(w, (np.float32(pixels) - x) / np.float32(ramp))
    return w


def decode_tiled(decode: Callable[[np.ndarray], np.ndarray], latent: np.ndarray, tile: int, overlap: int,
                 factor: int) -> np.ndarray:
    """``latent`` (1, C, h, w) -> image (1, 3, h f, w f), decoding ``tile`` x ``tile`` latent tiles with
    ``decode`` (one tile latent -> its image) and blending them by the module's rule."""
    _, _, h, w = latent.shape
    ys, xs = tile_starts(h, tile, overlap), tile_starts(w, tile, overlap)
    th, tw = min(tile, h) * factor, min(tile, w) * factor
    image = weights = None
    for iy, y in enumerate(ys):
        wy = _ramp(th, overlap * factor, iy > 0, iy < len(ys) - 1)
        for ix, x in enumerate(xs):
            piece = decode(np.ascontiguousarray(latent[:, :, y:y + tile, x:x + tile]))
            if image is None:
                image = np.zeros((1, piece.shape[1], h * factor, w * factor), dtype=np.float32)
                weights = np.zeros((h * factor, w * factor), dtype=np.float32)
            wxy = wy[:, None] * _ramp(tw, overlap * factor, ix > 0, ix < len(xs) - 1)[None, :]
            region = (slice(y * factor, y * factor + th), slice(x * factor, x * factor + tw))
            image[(0, slice(None), *region)] += piece[0] * wxy
            weights[region] += wxy
    return image / weights
