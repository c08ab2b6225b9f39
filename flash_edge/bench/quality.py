"""Image quality against the fp32 PyTorch reference: PSNR and SSIM over a fixed list of prompts.

The prompts are fixed (and use words the built-in ``tiny`` tokenizer knows, so the tiny model sees real
tokens); prompt i is generated with seed i, by the reference and by every bundle.

SSIM is the standard one of Wang, Bovik, Sheikh & Simoncelli (2004): an 11 x 11 Gaussian window with
sigma 1.5, K1 = 0.01, K2 = 0.03, population (co)variances, averaged over the pixels the window covers
fully and over the colour channels (what scikit-image's ``structural_similarity(..., gaussian_weights=True,
sigma=1.5, use_sample_covariance=False, channel_axis=0)`` computes). No installed library provides it, so it
is written here with numpy: a separable convolution.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import InvalidInput
from ..metrics import psnr

PROMPTS = (
    "a red circle above a blue square",
    "a photo of a cat sitting in a green field",
    "a mountain landscape with snow and a river at evening",
    "two yellow stars in the night sky over the sea",
    "a portrait of a woman with a gold ring, detailed painting",
    "a small house next to a tree in winter, simple drawing",
    "colorful abstract shapes on white paper",
    "a dog running on the street in the city, realistic photo",
)

# The built-in tiny model's domain (the shapes grammar, flash_edge/distill/dataset.py): its default prompt set,
# since pictures outside what a model can draw measure little about an export's fidelity.
SHAPES_PROMPTS = (
    "a red circle above a blue square",
    "a green triangle on the left",
    "two yellow diamonds",
    "a purple square at the top",
    "an orange circle to the right of a blue triangle",
    "three red squares",
    "a blue diamond in the center",
    "a yellow circle below a green square",
)


def default_prompts(model_names) -> tuple[str, ...]:
    """The shapes prompts when every bundle was exported from the built-in ``tiny``, else the general set."""
    names = set(model_names)
    return SHAPES_PROMPTS if names == {"tiny"} else PROMPTS


SSIM_SIGMA, SSIM_RADIUS, SSIM_K1, SSIM_K2 = 1.5, 5, 0.01, 0.03


def _gaussian_window(sigma: float = SSIM_SIGMA, radius: int = SSIM_RADIUS) -> np.ndarray:
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    w = np.exp(-0.5 * (x / sigma) ** 2)
    return w / w.sum()


def _filter_valid(a: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Separable 'valid' convolution of the last two axes of ``a`` with the 1-D window ``w``."""
    k = w.size
    rows = sum(w[i] * a[..., i:a.shape[-2] - k + 1 + i, :] for i in range(k))
    return sum(w[i] * rows[..., :, i:a.shape[-1] - k + 1 + i] for i in range(k))


def ssim(reference: np.ndarray, candidate: np.ndarray, data_range: float = 1.0) -> float:
    """Mean SSIM of two images shaped (..., C, H, W) (e.g. the pipeline's (1, 3, H, W) in [0, 1])."""
    x = np.asarray(reference, dtype=np.float64)
    y = np.asarray(candidate, dtype=np.float64)
    if x.shape != y.shape:
        raise InvalidInput(f"SSIM needs images of one shape, got {x.shape} and {y.shape}")
    side = 2 * SSIM_RADIUS + 1
    if x.ndim < 2 or min(x.shape[-2:]) < side:
        raise InvalidInput(f"SSIM needs images of at least {side} x {side} pixels, got {x.shape}")
    w = _gaussian_window()
    mx, my = _filter_valid(x, w), _filter_valid(y, w)
    vx = _filter_valid(x * x, w) - mx * mx
    vy = _filter_valid(y * y, w) - my * my
    cxy = _filter_valid(x * y, w) - mx * my
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return float(s.mean())


def compare(reference: list[np.ndarray], candidate: list[np.ndarray]) -> dict:
    """Per-prompt and aggregate PSNR (dB, range 1; ``inf`` when identical) and SSIM."""
    if len(reference) != len(candidate):
        raise InvalidInput(f"{len(reference)} reference images but {len(candidate)} candidates")
    psnrs = [psnr(r, c, data_range=1.0) for r, c in zip(reference, candidate)]
    ssims = [ssim(r, c) for r, c in zip(reference, candidate)]
    finite = [p for p in psnrs if math.isfinite(p)]
    # The mean PSNR of a set is taken over its pooled MSE, so one exact image does not make it infinite.
    mse = float(np.mean([np.mean((np.asarray(r, np.float64) - np.asarray(c, np.float64)) ** 2)
                         for r, c in zip(reference, candidate)]))
    return {"prompts": len(psnrs), "psnr_db": psnrs, "ssim": ssims,
            "psnr_db_pooled": math.inf if mse == 0 else 10 * math.log10(1.0 / mse),
            "psnr_db_min": min(psnrs), "psnr_db_finite_min": min(finite) if finite else None,
            "ssim_mean": float(np.mean(ssims)), "ssim_min": float(np.min(ssims))}


def generate_all(pipe, prompts=PROMPTS, on_image=None) -> list[np.ndarray]:
    """Prompt i with seed i through ``pipe`` (a ``FlashPipeline``); (1, 3, H, W) float images."""
    images = []
    for i, prompt in enumerate(prompts):
        images.append(pipe.generate(prompt, seed=i))
        if on_image:
            on_image(i + 1, len(prompts))
    return images
