"""The Core ML backend: runs ``coreml``-target artifacts (``.mlpackage`` or compiled ``.mlmodelc``) through
coremltools' ``MLModel`` on macOS, numpy in and out, never torch. A transformer exported with ``--chunks K``
is K models run one after another (``runtimes/chunked.py``), so the pipeline sees one component.

Compute units: the backend option ``compute_units`` (ALL, CPU_AND_NE, CPU_AND_GPU, CPU_ONLY) or, if not
given, the hint the exporter wrote into the manifest. A bundle exported with ``--compile`` carries each model
compiled (``.mlmodelc``) too: that is what gets loaded, so Core ML skips its first-load compile.
"""

from __future__ import annotations

import importlib.util
import platform
from pathlib import Path

import numpy as np

from ..errors import BundleError, InvalidInput, first_line
from ..spec import ComponentSpec
from .base import Backend, Session

COMPUTE_UNITS = ("ALL", "CPU_AND_NE", "CPU_AND_GPU", "CPU_ONLY")


def _load(path: Path, compute_units: str):
    import coremltools as ct

    if not path.exists():
        raise BundleError(f"Core ML model {path} is missing")
    units = getattr(ct.ComputeUnit, compute_units)
    try:
        if path.suffix == ".mlmodelc":
            return ct.models.CompiledMLModel(str(path), compute_units=units)
        return ct.models.MLModel(str(path), compute_units=units)
    except Exception as e:  # noqa: BLE001 - Core ML's load errors are long; keep the first line
        raise BundleError(f"Core ML cannot load {path}: {first_line(e)}") from None


class CoreMLSession(Session):
    """One Core ML model; inputs cast to the types Core ML declared (int64 -> int32)."""

    def __init__(self, spec: ComponentSpec, path: Path, compute_units: str):
        super().__init__(spec)
        self.model = _load(path, compute_units)

    def _run(self, inputs):
        feeds = {t.name: (a.astype(np.int32) if t.dtype == "int64" else a) for t, a in zip(self.spec.inputs, inputs)}
        out = self.model.predict(feeds)
        return [np.asarray(out[t.name], dtype=np.float32).reshape(t.shape) for t in self.spec.outputs]


class CoreMLBackend(Backend):
    name = "coreml"
    formats = ("coreml",)

    @classmethod
    def unavailable_reason(cls):
        if platform.system() != "Darwin":
            return (f"Core ML runs only on macOS (this is {platform.system()} {platform.machine()}); run a "
                    f"coreml bundle on a Mac, or export an onnx/executorch/torch bundle for this machine")
        if importlib.util.find_spec("coremltools") is None:
            return "needs coremltools: pip install 'flash-edge[coreml]' (or pip install coremltools)"
        return None

    def open(self, root, component, entry):
        self.require()
        units = self.options.get("compute_units") or entry.options.get("compute_units") or "CPU_AND_NE"
        if units not in COMPUTE_UNITS:
            raise InvalidInput(f"compute_units must be one of {', '.join(COMPUTE_UNITS)}, got {units!r}")
        return self.chained(entry, component, lambda spec, program: CoreMLSession(
            spec, Path(root) / program.get("compiled", program["path"]), units))
