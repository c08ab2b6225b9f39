"""JSON for numbers the standard library refuses: the one ``json_safe`` manifests and benchmark results use."""

from __future__ import annotations

import math


def json_safe(obj):
    """inf/nan are not JSON: they are written as the strings "inf" / "nan" (the parity of an exact copy is
    "inf"); dict keys become strings, tuples lists, numpy scalars Python numbers."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if hasattr(obj, "item") and getattr(obj, "ndim", None) == 0:  # numpy scalars
        return json_safe(obj.item())
    return obj
