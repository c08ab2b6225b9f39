"""Exporters: one per target. ``export_bundle`` is the entry point; ``REGISTRY`` maps targets to classes."""

from __future__ import annotations

import importlib

from ..errors import InvalidInput
from .base import Artifact, Exporter

# target -> "module:class"; a new target adds one line here and one file beside this one.
REGISTRY = {
    "torch": "flash_edge.export.torch:TorchExporter",
    "executorch": "flash_edge.export.executorch:ExecuTorchExporter",
    "coreml": "flash_edge.export.coreml:CoreMLExporter",
    "onnx": "flash_edge.export.onnx:OnnxExporter",
}
# targets the SDK knows but whose exporter has not landed in this version
PLANNED = ()


def exporter_class(target: str) -> type[Exporter]:
    if target not in REGISTRY:
        if target in PLANNED:
            raise InvalidInput(f"target {target!r} is not available in this version of flash-edge yet; "
                               f"available: {', '.join(REGISTRY)}")
        raise InvalidInput(f"unknown target {target!r}; choose one of {', '.join(REGISTRY)}")
    module, cls = REGISTRY[target].split(":")
    return getattr(importlib.import_module(module), cls)


def get_exporter(target: str, precision: str | None = None, **options) -> Exporter:
    return exporter_class(target)(precision, **options)


def export_bundle(*args, **kwargs):
    from .build import export_bundle as _export_bundle

    return _export_bundle(*args, **kwargs)


__all__ = ["Artifact", "Exporter", "REGISTRY", "exporter_class", "get_exporter", "export_bundle"]
