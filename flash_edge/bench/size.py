"""Artifact size per component and in total, and the bits per parameter that achieves.

Parameter counts come from the bundle manifest (``model.parameters``, counted at export from the torch
modules). The ``vae_decoder`` component is counted against the whole VAE's parameters (the manifest's
``vae``), which include the encoder: a target that stores only the decoder shows fewer bits per parameter
than it spends per decoder weight. The transformer's figure is exact and is the one the summary quotes.
"""

from __future__ import annotations

from ..bundle import Bundle
from ..spec import COMPONENTS



def artifact_sizes(bundle: Bundle) -> dict:
    files = bundle.manifest.get("files", {})

    def size(rel: str) -> int:
        return int(files[rel]["size"]) if rel in files else bundle.file(rel).stat().st_size

    params = bundle.manifest.get("model", {}).get("parameters", {})
    components = {}
    for name, entry in bundle.components.items():
        nbytes = sum(size(f) for f in entry.files)
        count = params.get(COMPONENTS[name].part if name in COMPONENTS else name)  # counted per model part
        components[name] = {"bytes": nbytes, "parameters": count, "precision": entry.precision,
                            "bits_per_parameter": 8 * nbytes / count if count else None}
    total = sum(c["bytes"] for c in components.values())
    counted = [c for c in components.values() if c["parameters"]]
    all_files = sum(size(rel) for rel in files) if files else total
    return {"components": components, "artifacts_bytes": total, "bundle_bytes": all_files,
            "bits_per_parameter": (8 * sum(c["bytes"] for c in counted) / sum(c["parameters"] for c in counted)
                                   if counted else None)}
