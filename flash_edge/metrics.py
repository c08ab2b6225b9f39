"""Numeric agreement between a reference and a candidate output (numpy only)."""

from __future__ import annotations

import math

import numpy as np


def psnr(reference: np.ndarray, candidate: np.ndarray, data_range: float | None = None) -> float:
    """Peak signal-to-noise ratio in dB; ``data_range`` defaults to the reference's peak-to-peak.

    An exact match gives ``inf``.
    """
    ref = np.asarray(reference, dtype=np.float64)
    cand = np.asarray(candidate, dtype=np.float64)
    if ref.shape != cand.shape:
        raise ValueError(f"shape mismatch: {ref.shape} vs {cand.shape}")
    mse = float(np.mean((ref - cand) ** 2))
    if mse == 0.0:
        return math.inf
    rng = float(np.ptp(ref)) if data_range is None else float(data_range)
    return 10.0 * math.log10(max(rng, 1e-12) ** 2 / mse)


def max_abs_diff(reference: np.ndarray, candidate: np.ndarray) -> float:
    return float(np.max(np.abs(np.asarray(reference, np.float64) - np.asarray(candidate, np.float64))))
