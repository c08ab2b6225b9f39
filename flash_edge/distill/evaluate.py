"""mini-GenEval of a model of the family: fixed held-out prompts, fixed seeds, the SDK's starting noise."""

from __future__ import annotations

import numpy as np

from ..eval.geneval import Score, score
from .dataset import ShapesDataset
from .flow import generate
from .models import Family

EVAL_SEED = 999_999  # the prompt set's dataset seed: never used for training


def eval_prompts(n: int = 200, seed: int = EVAL_SEED, size: int = 64) -> list[str]:
    ds = ShapesDataset(n, seed=seed, size=size)
    return [ds[i].prompt for i in range(n)]


def evaluate(family: Family, transformer, steps: int, guidance: float = 1.0, n: int = 200,
             seed: int = EVAL_SEED, sigmas=None) -> tuple[Score, np.ndarray, list[str]]:
    """(score, pictures (n, H, W, 3) uint8, prompts) for ``transformer`` at ``steps`` Euler steps."""
    prompts = eval_prompts(n, seed, family.config.size)
    images = generate(family, transformer, prompts, list(range(n)), steps, guidance, sigmas=sigmas)
    return score(list(images), prompts), images, prompts
