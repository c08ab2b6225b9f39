"""The ``executorch`` target: one ``.pte`` program per component, for the ExecuTorch runtime (Android, iOS,
Linux). The stages are executorch's own, each inspectable:

    torch.export -> [quantize: PT2E XNNPACKQuantizer | torchao 8da4w] -> attention rewrite
        -> to_edge_transform_and_lower(partitioner) -> to_executorch -> component/model.pte [+ model.ptd]

Precisions: ``fp32``; ``int8`` (default: transformer and text encoders int8, the VAE decoder fp32, see
``executorch_quantize``); ``8da4w`` (transformer int4 weights, text encoders int8, VAE decoder fp32). Each
component's artifact records its own precision, what the delegate took (share of ops, ops left to the
portable kernels) and everything an app needs to call it through the ExecuTorch ``Module`` API.

Attention: the ``attention`` option picks how SDPA is lowered (``executorch_lowering.sdpa_decompositions``).

Weights over 2 GiB: a .pte is a flatbuffer (32-bit offsets) plus appended segments; ExecuTorch's answer for
big models is program-data separation, the weights in a ``.ptd`` named-data file beside the ``.pte``
(``external_weights="auto"`` switches it on for components whose weights exceed 2 GiB; ``always`` forces it).
"""

from __future__ import annotations

import importlib
import importlib.util
import platform
from pathlib import Path

from ..errors import BackendUnavailable, ExportError, InvalidInput, first_line
from .base import CHUNKS_OPTION, Exporter, Program
from .executorch_lowering import constant_folding, delegation_summary, sdpa_decompositions
from .executorch_quantize import RECIPE_DESCRIPTION, RECIPE_PRECISION, example_args, quantize, recipe_for

PTE, PTD_TAG = "model.pte", "model"  # the data file is named after its tag: model.ptd
EXTERNAL_WEIGHTS_AUTO_BYTES = 2 * 1024**3
EXTERNAL_WEIGHTS = ("auto", "always", "never")
ATTENTION = ("bmm", "softmax", "library")

# delegate -> (partitioner "module:class", runtime backend name, what it needs besides the module)
DELEGATES = {
    "xnnpack": ("executorch.backends.xnnpack.partition.xnnpack_partitioner:XnnpackPartitioner", "XnnpackBackend",
                None),
    "coreml": ("executorch.backends.apple.coreml.partition:CoreMLPartitioner", "CoreMLBackend", "coremltools"),
    "mps": ("executorch.backends.apple.mps.partition:MPSPartitioner", "MPSBackend", "macOS"),
    "qnn": ("executorch.backends.qualcomm.partition.qnn_partitioner:QnnPartitioner", "QnnBackend", "QNN_SDK_ROOT"),
    "vulkan": ("executorch.backends.vulkan.partitioner.vulkan_partitioner:VulkanPartitioner", "VulkanBackend",
               None),
}
DELEGATE_NOTES = {
    "qnn": "the Qualcomm AI Engine Direct SDK (set QNN_SDK_ROOT) and a target SoC; not wired in this version",
    "mps": "macOS with an executorch build that has the MPS backend",
}

# Parity floors (dB vs the fp32 PyTorch reference) by what the artifact holds: measurements in README "Parity floors".
FLOORS_DB = {"fp32": 35.0, "int8": 38.0, "8da4w": 30.0}
# 8da4w's image: the int4 transformer's error grows over the 4 steps; the gate prompt (two objects, which tiny
# rarely draws) is its worst case measured on the current tiny, 24.4 dB (24.4-43.4 over six prompts x two seeds).
IMAGE_FLOORS_DB = {"fp32": 35.0, "int8": 38.0, "8da4w": 22.0}

_DTYPE_JAVA = {"float32": ("Float", "float[]"), "int64": ("Long", "long[]")}


def delegate_unavailable_reason(delegate: str) -> str | None:
    if delegate not in DELEGATES:
        return f"unknown delegate {delegate!r}; choose one of {', '.join(DELEGATES)}"
    path, _, needs = DELEGATES[delegate]
    if needs == "macOS" and platform.system() != "Darwin":
        return f"the {delegate} delegate needs {DELEGATE_NOTES[delegate]}; use --delegate xnnpack here"
    if needs == "QNN_SDK_ROOT":
        return f"the {delegate} delegate needs {DELEGATE_NOTES[delegate]}; use --delegate xnnpack here"
    if needs and importlib.util.find_spec(needs) is None:
        return f"the {delegate} delegate needs the {needs} package: pip install {needs}"
    module, _ = path.split(":")
    try:
        if importlib.util.find_spec(module) is None:
            return f"this executorch build has no {delegate} partitioner ({module})"
    except ModuleNotFoundError:
        return f"this executorch build has no {delegate} partitioner ({module})"
    return None


def make_partitioner(delegate: str):
    module, cls = DELEGATES[delegate][0].split(":")
    return getattr(importlib.import_module(module), cls)()


def weight_bytes(module, recipe: str | None) -> int:
    bits = {None: 32, "int8-dynamic": 8, "int8-static": 8, "8da4w": 4}[recipe]
    return sum(p.numel() for p in module.parameters()) * bits // 8


def module_api(spec, method_meta, pte: str, ptd: str | None) -> dict:
    """How an app calls this program through ExecuTorch's ``Module`` API (Java/Kotlin, Swift, C++)."""
    def tensors(specs, metas):
        out = []
        for i, (t, meta) in enumerate(zip(specs, metas)):
            et_dtype, java = _DTYPE_JAVA[t.dtype]
            if list(meta.sizes()) != list(t.shape):
                raise ExportError(f"{spec.name}: the .pte's {t.name} has shape {list(meta.sizes())}, the spec says "
                                  f"{list(t.shape)}")
            out.append({"index": i, "name": t.name, "dtype": t.dtype, "executorch_dtype": et_dtype,
                        "shape": list(t.shape), "java": f"Tensor.fromBlob({java} data, long[] {{{', '.join(map(str, t.shape))}}})"})
        return out

    inputs = tensors(spec.inputs, [method_meta.input_tensor_meta(i) for i in range(method_meta.num_inputs())])
    outputs = tensors(spec.outputs, [method_meta.output_tensor_meta(i) for i in range(method_meta.num_outputs())])
    return {"method": "forward", "program": pte, "data": ptd, "inputs": inputs, "outputs": outputs,
            "call": "Module.load(program" + (", data" if ptd else "") + ").forward(EValue.from(input_i) for each "
                    "input in index order) -> EValue[] outputs in index order (.toTensor().getDataAsFloatArray())"}


class ExecuTorchExporter(Exporter):
    target = "executorch"
    precisions = ("fp32", "int8", "8da4w")
    default_precision = "int8"
    backend = "executorch"
    packages = ("executorch", "torchao")
    extra = "executorch"
    cli_options = {
        **CHUNKS_OPTION,
        "--delegate": dict(default="xnnpack", choices=tuple(DELEGATES),
                           help="executorch backend to lower to (default xnnpack; coreml/mps/qnn/vulkan where "
                                "this machine has them)"),
        "--external-weights": dict(default="auto", choices=EXTERNAL_WEIGHTS,
                                   help="put weights in a .ptd beside each .pte: auto (components over 2 GiB of "
                                        "weights), always, never"),
    }

    # API-only options: how attention is lowered (benchmarks compare them) and one recipe for every component
    api_options = {"attention": "bmm", "recipe": None}

    def __init__(self, precision=None, **options):
        super().__init__(precision, **options)  # unknown names and the declared choices are refused there
        self.delegate = self.options["delegate"]
        self.external_weights = self.options["external_weights"]
        self.attention = self.options["attention"]
        self.recipe_override = self.options["recipe"]  # benchmarks: one recipe for one component
        if self.external_weights not in EXTERNAL_WEIGHTS:
            raise InvalidInput(f"--external-weights must be one of {', '.join(EXTERNAL_WEIGHTS)}, "
                               f"got {self.external_weights!r}")
        if self.attention not in ATTENTION:
            raise InvalidInput(f"attention must be one of {', '.join(ATTENTION)}, got {self.attention!r}")
        if self.recipe_override not in (None, "fp32", *RECIPE_DESCRIPTION):
            raise InvalidInput(f"unknown recipe {self.recipe_override!r}; known: fp32, {', '.join(RECIPE_DESCRIPTION)}")
        reason = delegate_unavailable_reason(self.delegate)
        if reason:
            raise BackendUnavailable(f"cannot export to executorch with --delegate {self.delegate}: {reason}")
        self._operators: set[str] = set()

    def parity_floor_db(self, component, precision):
        if component == "image":
            return IMAGE_FLOORS_DB[precision]
        recipe = recipe_for(component, precision, self.recipe_override)
        return FLOORS_DB[RECIPE_PRECISION[recipe]]

    # auto chunks: PT2E quantization and XNNPACK lowering hold the fp32 weights, their quantized copy and the
    # packed delegate blob at once; pieces keep that bounded (and each program small for an app)

    def export_program(self, name, index, module, spec, root, folder) -> Program:
        recipe = recipe_for(name, self.precision, self.recipe_override)
        ptd, delegation, api = self._lower(spec.name, module, spec, recipe, root, folder)
        shared = {"delegate": self.delegate, "runtime_backend": DELEGATES[self.delegate][1],
                  "quantization": RECIPE_DESCRIPTION.get(recipe, "none (fp32)"), "recipe": recipe or "fp32",
                  "attention": self.attention}
        return Program(path=api["program"], precision=RECIPE_PRECISION[recipe], shared=shared,
                       facts={"data_file": ptd, "delegation": delegation, "module_api": api})

    def component_options(self, name, programs):
        return {**programs[0].shared, "external_weights": any(p.facts["data_file"] for p in programs)}

    def _lower(self, name, module, spec, recipe, root: Path, out: Path) -> tuple[str | None, dict, dict]:
        """``module`` lowered to ``out/model.pte`` (+ ``model.ptd``): the data file (relative to ``root``, or
        None), the delegation summary and the module API."""
        import torch
        from executorch.exir import ExecutorchBackendConfig, to_edge_transform_and_lower
        from executorch.exir.passes.external_constants_pass import delegate_external_constants_pass_unlifted
        from executorch.runtime import Runtime

        external = self.external_weights == "always" or (
            self.external_weights == "auto" and weight_bytes(module, recipe) > EXTERNAL_WEIGHTS_AUTO_BYTES)
        args = example_args(spec)
        try:
            with torch.no_grad():
                program = torch.export.export(module, args, strict=False)
                quantized = quantize(module, program, spec, recipe)
                if quantized is not None:
                    program = torch.export.export(quantized, args, strict=False)
                if self.attention != "library":
                    program = program.run_decompositions(sdpa_decompositions(self.attention))
                if external:  # tag the weights the delegate will hold, so they go to the named data map
                    tagged = program.module()
                    delegate_external_constants_pass_unlifted(tagged, gen_tag_fn=lambda node: PTD_TAG)
                    program = torch.export.export(tagged, args, strict=False)
                edge = to_edge_transform_and_lower(program, transform_passes=constant_folding(),
                                                  partitioner=[make_partitioner(self.delegate)])
                delegation = delegation_summary(edge)
                et = edge.to_executorch(ExecutorchBackendConfig(
                    extract_delegate_segments=True, external_constants=(lambda node: PTD_TAG) if external else False))
        except ExportError:
            raise
        except Exception as e:  # a library failure while lowering: say which component and stage
            raise ExportError(f"executorch export of {name} ({recipe or 'fp32'}, {self.delegate}) failed: "
                              f"{type(e).__name__}: {first_line(e)}") from e
        out.mkdir(parents=True, exist_ok=True)
        folder = out.relative_to(root).as_posix()
        with open(out / PTE, "wb") as f:
            et.write_to_file(f)
        ptd = None
        if external:
            et.write_tensor_data_to_file(str(out))
            ptd = f"{folder}/{PTD_TAG}.ptd"
            if not (root / ptd).is_file():
                raise ExportError(f"{name}: executorch wrote no {PTD_TAG}.ptd although external weights were asked for")
        del et, edge, program
        meta = Runtime.get().load_program(out / PTE).metadata("forward")
        api = module_api(spec, meta, f"{folder}/{PTE}", ptd)
        self._operators.update(delegation["undelegated_ops"])
        return ptd, delegation, api

    def manifest_extra(self) -> dict:
        from importlib.metadata import version

        return {"executorch_version": version("executorch"), "delegate": self.delegate,
                "runtime_backend": DELEGATES[self.delegate][1], "method": "forward",
                "kernels_needed": sorted(self._operators),
                "app_notes": "Each component is components.<name>.path (a .pte; with options.data_file, load that "
                             ".ptd too); a chunked transformer lists its programs in options.chunks instead, run "
                             "in order, each fed the component's inputs and earlier chunks' outputs by name. Call method 'forward' with the inputs in options.module_api.inputs order "
                             "(float32 -> Tensor.fromBlob(float[]), int64 -> Tensor.fromBlob(long[])), batch 1, "
                             "static shapes; outputs come back in options.module_api.outputs order. Link the "
                             "runtime backend named here plus kernels for kernels_needed (the ops the delegate "
                             "left to the portable/optimized CPU kernels)."}

    def candidate_pipeline(self, bundle_dir: Path, backends: dict | None = None, options: dict | None = None):
        from executorch.runtime import Runtime

        backend = DELEGATES[self.delegate][1]
        if not Runtime.get().backend_registry.is_available(backend):
            raise BackendUnavailable(f"this executorch runtime has no {backend}: the {self.delegate} programs "
                                     f"cannot run on this machine")
        return super().candidate_pipeline(bundle_dir, backends, options)
