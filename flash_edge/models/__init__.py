"""Loading SD3-family models into diffusers/transformers classes (needs torch)."""

import os

# flash-edge never downloads weights: every load is from a local folder.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from .loading import SD3Model, load_model  # noqa: E402

__all__ = ["SD3Model", "load_model"]
