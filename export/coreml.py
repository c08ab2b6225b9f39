"""The ``coreml`` target: one mlprogram ``.mlpackage`` per component (the transformer optionally in K chunks),
fp16 compute, weights fp16 or k-means palettized to 8/6/4 bits (``coreml_palettize.py``).

Conversion route per component (coremltools 9.0, torch 2.13; pinned in tests/test_coreml.py so an upgrade
that changes either is noticed):
- transformer, VAE decoder: ``torch.export`` -> ``run_decompositions()`` -> ``ct.convert`` (the route
  coremltools develops; jit.trace of these failed with numpy 2.4 on "only 0-dimensional arrays can be
  converted to Python scalars", and works with the numpy 2.3.5 pinned here).
- CLIP / T5 text encoders: ``torch.jit.trace`` -> ``ct.convert``. Through torch.export the CLIP text model
  fails: "Unsupported fx node alias" (with the alias nodes stripped by hand it converts under torch 2.13;
  an earlier probe then hit ``where.ScalarOther``, so the trace route stays until coremltools takes ``alias``).

Linux has no Core ML runtime, so the parity gate there runs a PyTorch copy of each component whose weights
are read back (LUTs expanded) from the written ``.mlpackage`` files, computing in fp16 as Core ML's
``compute_precision=FLOAT16`` does; on macOS it runs the bundle through ``runtimes/coreml.py``.
"""

from __future__ import annotations

import copy
import platform
from pathlib import Path

from ..errors import ExportError, first_line
from ..spec import STAYS_FLOAT
from .base import CHUNKS_OPTION, Exporter, Program
from .coreml_palettize import BITS, Policy, decompressed_weights, load_into
from .coreml_sweep import quality_sweep, sweep_wanted

DEPLOYMENT_TARGETS = ("iOS17", "iOS18")
COMPUTE_UNITS = ("ALL", "CPU_AND_NE", "CPU_AND_GPU", "CPU_ONLY")
ROUTES = {"text_encoder": "trace", "text_encoder_2": "trace", "text_encoder_3": "trace"}  # others: "export"


class CoreMLExporter(Exporter):
    target = "coreml"
    precisions = ("fp16", "w8", "w6", "w4")
    default_precision = "w6"
    backend = "coreml"
    packages = ("coremltools", "torch", "diffusers", "transformers")
    extra = "coreml"
    cli_options = {
        **CHUNKS_OPTION,
        "--deployment-target": dict(choices=DEPLOYMENT_TARGETS, default="iOS17", help="minimum OS (default iOS17; "
                                    "iOS18 allows one LUT per 16 output channels instead of one per tensor)"),
        "--compute-units": dict(choices=COMPUTE_UNITS, default="CPU_AND_NE", help="compute units the bundle is "
                                "meant for, recorded in the manifest as the runtime's default (default CPU_AND_NE)"),
        "--quality-sweep": dict(choices=("auto", "on", "off"), default="auto", help="also measure the image PSNR "
                                "of w8/w6/w4 and record it in the manifest (auto: on for small models)"),
        "--compile": dict(action="store_true", default=False, help="macOS only: also write each model compiled "
                          "(.mlmodelc), so an app does not compile it on the device at first launch"),
    }

    def __init__(self, precision=None, **options):
        super().__init__(precision, **options)  # unknown names and the declared choices are refused there
        self.deployment_target = self.options["deployment_target"]
        self.compute_units = self.options["compute_units"]
        self.sweep = self.options["quality_sweep"]
        self.compile = bool(self.options["compile"])
        from ..errors import InvalidInput

        if self.compile and platform.system() != "Darwin":
            raise InvalidInput(f"--compile needs macOS (Core ML's compiler, coremlcompiler, ships only there; this "
                               f"is {platform.system()}): export without it, or compile the .mlpackage files on a Mac")
        if self.deployment_target not in DEPLOYMENT_TARGETS or self.compute_units not in COMPUTE_UNITS:
            raise InvalidInput(f"deployment target must be one of {DEPLOYMENT_TARGETS} and compute units one of "
                               f"{COMPUTE_UNITS}")
        self.policy = Policy(self.precision, grouped=self.deployment_target != "iOS17")
        self.parts: dict[str, list[tuple]] = {}  # component -> [(module, spec, fp16 MLModel, relative path)]
        self.wrappers, self.specs, self.root = {}, {}, None

    # ----------------------------------------------------------------- gate floors
    def parity_floor_db(self, component, precision):
        # the measurements behind these: README "Parity floors"
        if precision == "fp16":
            return 35.0
        if component in STAYS_FLOAT:
            return 35.0  # never palettized
        floors = {"image": {"w8": 50.0, "w6": 35.0, "w4": 18.0}, "*": {"w8": 38.0, "w6": 29.0, "w4": 15.0}}
        return floors["image" if component == "image" else "*"][precision]

    # ----------------------------------------------------------------- conversion
    def _convert(self, name: str, module, spec):
        import coremltools as ct
        import numpy as np
        import torch

        example = tuple(torch.from_numpy(v) for v in spec.dummy_inputs(seed=0).values())
        route = ROUTES.get(name.split(".")[0], "export")
        try:
            with torch.no_grad():
                if route == "export":
                    source = torch.export.export(module, example).run_decompositions({})
                else:
                    source = torch.jit.trace(module, example, check_trace=False)
            ml = ct.convert(source, convert_to="mlprogram", compute_precision=ct.precision.FLOAT16,
                            minimum_deployment_target=getattr(ct.target, self.deployment_target),
                            inputs=[ct.TensorType(name=t.name, shape=t.shape,
                                                  dtype=np.int32 if t.dtype == "int64" else np.float32)
                                    for t in spec.inputs],
                            outputs=[ct.TensorType(name=t.name, dtype=np.float32) for t in spec.outputs])
        except Exception as e:  # noqa: BLE001 - any converter failure becomes one clear line
            raise ExportError(f"{name}: coremltools {ct.__version__} could not convert it via "
                              f"{'torch.export' if route == 'export' else 'torch.jit.trace'}: {first_line(e)}") from None
        return ml, route

    # auto chunks: ct.convert holds the fp32 weights, their fp16 copy and the traced program at once, and iOS maps
    # each program's weights whole

    def begin_component(self, name, module, spec, parts):
        self.wrappers[name], self.specs[name], self.parts[name] = module, spec, []

    def export_program(self, name, index, module, spec, root, folder) -> Program:
        self.root = root
        fp16, route = self._convert(spec.name, module, spec)
        final = self.policy.apply(fp16, name, module)
        counts: dict[str, int] = {}
        for cat in self.policy.chosen(name, module).values():
            counts[cat] = counts.get(cat, 0) + 1
        rel = (folder / f"{spec.name.replace('.', '_')}.mlpackage").relative_to(root).as_posix()
        final.save(str(root / rel))
        self.parts[name].append((module, spec, fp16, rel))
        return Program(path=rel, precision=self.precision, facts=self._compiled(root, rel),
                       shared={"route": route, "palettized_weights": counts})

    def component_options(self, name, programs):
        routes = {p.shared["route"] for p in programs}
        counts: dict[str, int] = {}
        for p in programs:
            for cat, n in p.shared["palettized_weights"].items():
                counts[cat] = counts.get(cat, 0) + n
        spec = self.specs[name]
        return {"deployment_target": self.deployment_target, "compute_units": self.compute_units,
                "conversion": "torch.export" if routes == {"export"} else "torch.jit.trace",
                "palettized_weights": counts, "weights": "fp16" if not counts else f"{BITS[self.precision]}-bit LUT",
                "coreml_inputs": {t.name: ("int32" if t.dtype == "int64" else "float32") for t in spec.inputs}}

    def _compiled(self, root: Path, rel: str) -> dict:
        """With --compile: the package compiled beside it (``x.mlpackage`` -> ``x.mlmodelc``)."""
        if not self.compile:
            return {}
        from coremltools.models.utils import compile_model

        compiled = rel.removesuffix(".mlpackage") + ".mlmodelc"
        try:
            compile_model(str(root / rel), str(root / compiled))
        except Exception as e:  # noqa: BLE001
            raise ExportError(f"Core ML could not compile {rel}: {first_line(e)}") from None
        return {"compiled": compiled}

    # ----------------------------------------------------------------- Linux parity: PyTorch with Core ML weights
    def _torch_copy(self, name: str, weights: list[dict]):
        """A copy of the wrapped component holding Core ML weights (one const-name -> array dict per piece)."""
        from .chunks import pieces

        wrapper = copy.deepcopy(self.wrappers[name])
        for (piece, _), w in zip(pieces(name, wrapper, self.specs[name], self.chunk_count(name, wrapper)), weights):
            load_into(piece, w)
        return wrapper.half()  # Core ML computes in fp16 (compute_precision=FLOAT16); the wrappers cast I/O

    def torch_pipeline(self, bundle_dir: Path, weights: dict[str, list], label: str):
        from ..bundle import Bundle
        from ..pipeline import FlashPipeline
        from ..runtimes.torch import TorchSession
        from ..tokenization import PromptTokenizer

        bundle = Bundle.open(bundle_dir, verify=False)
        spec = bundle.spec
        sessions = {c: TorchSession(self.specs[c], self._torch_copy(c, weights[c])) for c in spec.components}
        tokenizers = {c: PromptTokenizer.from_file(bundle.file(t.path) / "tokenizer.json", t.max_length, t.pad_id,
                                                    specials=t.specials)
                      for c, t in spec.tokenizers.items()}
        return FlashPipeline(spec, sessions, tokenizers, info={"backends": {c: label for c in spec.components}})

    def candidate_pipeline(self, bundle_dir: Path, backends: dict | None = None, options: dict | None = None):
        if platform.system() == "Darwin":  # never mixed (export/mixed.py): backends and options stay empty
            return super().candidate_pipeline(bundle_dir)
        import coremltools as ct

        weights = {c: [decompressed_weights(ct.models.MLModel(str(Path(bundle_dir) / rel), skip_model_load=True))
                       for *_, rel in parts] for c, parts in self.parts.items()}
        return self.torch_pipeline(bundle_dir, weights, "torch (weights read back from the .mlpackage, fp16 compute)")

    # ----------------------------------------------------------------- manifest
    def extra_phase(self) -> str:
        return "palettization quality sweep: the gate image at each bit width, PyTorch fp16" if sweep_wanted(self) else ""

    def manifest_extra(self) -> dict:
        extra = {"deployment_target": self.deployment_target, "compute_units": self.compute_units,
                 "chunks": len(self.parts.get("transformer", ())) or 1, "palettization": self.policy.describe(),
                 "lut_granularity": "per_grouped_channel" if self.policy.grouped else "per_tensor",
                 "io_note": "int64 token ids are int32 in the Core ML models (Core ML has no int64 inputs)"}
        if sweep_wanted(self):
            extra["quality"] = {"measured": "image PSNR (dB, range 1) vs the fp32 PyTorch reference, prompt and "
                                "seed of the parity gate, PyTorch with the palettized weights in fp16",
                                **quality_sweep(self)}
        return extra
