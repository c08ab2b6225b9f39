"""The ``torch`` target: the components' weights as safetensors plus their configs, loaded back into the
same diffusers/transformers classes. It makes the whole export -> bundle -> runtime path run before any
device target, and it is what the other targets are compared with.
"""

from __future__ import annotations

import copy
from pathlib import Path

from .base import Exporter, Program

_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


class TorchExporter(Exporter):
    target = "torch"
    precisions = ("fp32", "bf16", "fp16")
    default_precision = "fp32"
    backend = "torch"
    packages = ("torch", "diffusers", "transformers", "safetensors")
    folds = False  # its runtime runs diffusers' own processors

    def parity_floor_db(self, component, precision):
        # fp32 reloads the same weights: the result is bit-exact (inf dB); 60 dB leaves room for BLAS
        # thread-order noise only. Half precisions keep 8-11 mantissa bits: ~35 dB is the ONNX/Core ML bar.
        return 60.0 if precision == "fp32" else 30.0

    def export_program(self, name, index, module, spec, root: Path, folder: Path) -> Program:
        import torch

        source = module.model
        dtype = getattr(torch, _DTYPES[self.precision])
        if module.dtype != dtype:  # cast a copy: the module stays the parity reference
            source = copy.deepcopy(source).to(dtype)  # (already in that dtype: no copy, at 2.5B that is 5 GB)
        source.save_pretrained(str(folder), safe_serialization=True)
        lib = "diffusers" if type(source).__module__.startswith("diffusers") else "transformers"
        return Program(path=name, precision=self.precision, facts={"class": f"{lib}.{type(source).__name__}"})
