"""The artefact score (``flash_edge/eval/artefacts.py``) on real dataset pictures: clean pictures are not
flagged, faint halos drawn around their shapes are, and the shipped model is not."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flash_edge.distill.dataset import ShapesDataset
from flash_edge.distill.evaluate import EVAL_SEED
from flash_edge.eval.artefacts import RING_FLAG, artefact_score, deviations


@pytest.fixture(scope="module")
def real():
    x, _ = ShapesDataset(60, seed=EVAL_SEED, size=64).arrays()
    return ((x.transpose(0, 2, 3, 1) + 1) * 127.5).round().clip(0, 255).astype(np.uint8)


def with_halos(images, strength=(0.1, 0.25), seed=0):
    """Rings 2-5 px around every shape, blended towards the background's complement (what a halo looks like)."""
    from scipy import ndimage

    rng, out = np.random.default_rng(seed), []
    for x in images:
        f = x.astype(np.float64)
        bg = np.median(np.concatenate([f[0], f[-1], f[:, 0], f[:, -1]]), axis=0)
        obj = ndimage.binary_fill_holes(np.linalg.norm(f - bg, axis=-1) > 70)
        ring = ndimage.binary_dilation(obj, iterations=5) & ~ndimage.binary_dilation(obj, iterations=2)
        a = rng.uniform(*strength)
        f[ring] = (1 - a) * f[ring] + a * (255 - bg)
        out.append(f.round().astype(np.uint8))
    return out


def test_clean_pictures_score_flat_and_halos_are_flagged(real):
    clean = artefact_score(real)
    assert clean["ring"] < 0.1 and clean["far"] < 0.1 and not clean["flagged"]  # measured 0.01 / 0.00
    halos = artefact_score(with_halos(real))
    assert halos["ring"] > 1.5 * RING_FLAG and halos["flagged"]  # measured 29.3
    assert abs(halos["far"] - clean["far"]) < 0.1  # the halo is near the shapes, not in the far background
    blank = np.full((64, 64, 3), 250, np.uint8)
    assert deviations(blank) == (0.0, 0.0)  # no object: nothing around it


def test_the_shipped_model_is_not_flagged():
    from flash_edge.distill.evaluate import evaluate
    from flash_edge.distill.models import Family
    from flash_edge.models.tiny import SHIPPED

    torch.manual_seed(0)
    family = Family.load(SHIPPED)
    _, images, _ = evaluate(family, family.transformer, 4, n=100)
    score = artefact_score(images)
    assert not score["flagged"], score
