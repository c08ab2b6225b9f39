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
    try:
        image.save(tmp, format="PNG", pnginfo=info)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def check_png_path(path: str | Path, force: bool) -> Path:
    """Refuse, before any work, a PNG destination that cannot be written: not ``.png``, a folder, an existing
    file without ``force``, a parent that is a file, or a folder this user cannot write into."""
    import os
    import tempfile

    from .errors import InvalidInput

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise InvalidInput(f"--out must name a .png file, got {path}")
    if path.is_dir():
        raise InvalidInput(f"--out {path} is a folder; name the .png file to write")
    if path.exists() and not force:
        raise InvalidInput(f"{path} already exists; pass --force to replace it")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent  # the nearest existing ancestor: save_png creates the rest
    if not folder.is_dir():
        raise InvalidInput(f"cannot write {path}: {folder} is a file, not a folder")
    try:
        if folder == path.parent:
            with tempfile.NamedTemporaryFile(dir=folder, prefix=f".{path.name}.", suffix=".probe"):
                pass
        elif not os.access(folder, os.W_OK | os.X_OK):
            raise PermissionError(13, "Permission denied")
    except OSError as e:
        raise InvalidInput(f"cannot write {path}: {folder} is not writable ({e.strerror})") from None
    return path
