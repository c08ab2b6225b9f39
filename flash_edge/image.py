"""Decoded image arrays -> PIL images and PNG files that carry their provenance."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def to_pil(image: np.ndarray):
    """(1, 3, H, W) float in [0, 1] -> PIL RGB, rounded as diffusers' ``numpy_to_pil`` does."""
    from PIL import Image

    hwc = np.clip(np.asarray(image)[0].transpose(1, 2, 0), 0.0, 1.0)
    return Image.fromarray((hwc * 255).round().astype(np.uint8), mode="RGB")


def save_png(image, path: str | Path, metadata: dict[str, str]) -> Path:
    """Write ``image`` as PNG with ``metadata`` as tEXt chunks (prompt, seed, steps, backend, model...)."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for key, value in metadata.items():
        info.add_text(key, str(value))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    image.save(tmp, format="PNG", pnginfo=info)
    tmp.replace(path)
    return path
