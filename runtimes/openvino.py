"""The OpenVINO backend: runs a bundle's ONNX artifacts with OpenVINO's CPU plugin, numpy in and out. Never
imports torch.

It reads the same files as the ``onnx`` backend (a bundle needs no export of its own) and is chosen by name only:
``FlashPipeline.from_bundle(path, backend="openvino")``, or for one component, ``backends={"vae_decoder":
"openvino"}``. It exists for x86 CPUs with AMX or AVX-512 BF16, where OpenVINO computes in bf16: on an EPYC with
AVX-512 BF16 (no AMX) the SD3.5 VAE decoder took 6.5 s against PyTorch fp32's 16.5 s
(``benchmarks/results/sd35m-vae-openvino.md``; the transformer runs 28% faster in int8 there); on a 2-core Xeon with
AMX the decoder took 1.8 s against ONNX Runtime's 8.5 s on the same fp32 file, the SD3.5-Medium step 2.2-2.3 s
against ONNX Runtime s8 int8's 3.6 s, and the whole 4-step 512^2 image 4.72-4.79x PyTorch fp32
(``benchmarks/results/sd35m-full-openvino*``). Give it an fp32 bundle (or an fp32 component of a mixed one): int8
bundles hold ONNX Runtime's dynamic-quantization graph, which OpenVINO runs as plain ops (slower than ONNX Runtime),
and the fp16 bundle was slower (13.2 s against 11.2 s per image) at the same peak.

Options:

- ``inference_precision``: ``bf16`` | ``f16`` | ``f32``; default OpenVINO's own choice for the CPU (bf16 where
  it has AMX or AVX-512 BF16, f32 elsewhere), recorded in each session's ``inference_precision``.
- ``threads``: inference threads (default: OpenVINO's, one per physical core).
- ``cache_dir``: a folder for OpenVINO's compiled-model cache (``CACHE_DIR``), one subfolder per model file
  state (path, size, modification time), OpenVINO version and options: a later open reads the compiled model
  back instead of parsing and transforming the ONNX graph. On the CPU the cache keeps the file's fp32 weights
  (12 GB for SD3.5-Medium) and converts them at every open, so it does not make ``low`` cheap (measured: 19.8 s
  per image against 11.2 s under ``fast``). Off by default: it writes files and is the caller's folder to trust.

Other options (meant for other backends in a mixed pipeline, or the memory policy's ``low_memory``, which
needs nothing here: a released component's compiled model is freed) are ignored. OpenVINO itself refuses an
ONNX file whose external-data locations leave the model's folder (tested).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

from ..errors import BundleError, InvalidInput
from .base import Backend, Session, thread_count

PRECISIONS = ("bf16", "f16", "f32")


def compile_options(inference_precision=None, threads=None) -> dict:
    """OpenVINO ``compile_model`` properties for these options; a bad value is a one-line ``InvalidInput``."""
    config = {"PERFORMANCE_HINT": "LATENCY"}
    if inference_precision is not None:
        if inference_precision not in PRECISIONS:
            raise InvalidInput(f"inference_precision must be one of {', '.join(PRECISIONS)}, "
                               f"got {inference_precision!r}")
        config["INFERENCE_PRECISION_HINT"] = inference_precision
    if threads is not None:
        config["INFERENCE_NUM_THREADS"] = thread_count(threads)
    return config


def describe(inference_precision=None) -> dict:
    """OpenVINO's version and the precision the CPU plugin computes in under this option (its default where
    None), for benchmark records."""
    import openvino as ov

    default = ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT").get_type_name()
    return {"version": ov.get_version(), "inference_precision": inference_precision or default}


def cache_folder(cache_dir, files: list[Path], config: dict) -> Path:
    """``cache_dir``'s subfolder for one model: keyed by its files' path, size and modification time, OpenVINO's
    version and the compile options, so a changed file or setting never reads a stale compiled model."""
    import openvino as ov

    state = [[str(f.resolve()), st.st_size, st.st_mtime_ns] for f in files for st in [f.stat()]]
    key = json.dumps([state, ov.get_version(), sorted(config.items())], default=str)
    return Path(cache_dir) / hashlib.sha256(key.encode()).hexdigest()[:24]


class OpenVinoSession(Session):
    def __init__(self, spec, compiled):
        super().__init__(spec)
        self.compiled = compiled
        # a tensor may carry several names (fp16 exports add a Cast's): match the manifest's among them
        ports = {}
        for declared, wanted in ((compiled.inputs, spec.input_names), (compiled.outputs, spec.output_names)):
            found = {n: p for n in wanted for p in declared if n in p.get_names()}
            if len(found) != len(wanted) or len(declared) != len(wanted):
                names = {k: [p.get_any_name() for p in v] for k, v in (("inputs", compiled.inputs),
                                                                        ("outputs", compiled.outputs))}
                raise BundleError(f"ONNX model of {spec.name} has inputs {names['inputs']} and outputs "
                                  f"{names['outputs']}; the manifest says {spec.input_names} -> {spec.output_names}")
            ports.update(found)
        for t in (*spec.inputs, *spec.outputs):
            shape = ports[t.name].get_partial_shape()
            if shape.rank.get_length() != len(t.shape) or any(
                    d.is_static and d.get_length() != e for d, e in zip(shape, t.shape)):
                raise BundleError(f"ONNX model of {spec.name} declares {t.name} as {shape}; the manifest says "
                                  f"{list(t.shape)}")
        self.inputs = [ports[n] for n in spec.input_names]
        self.outputs = [ports[n] for n in spec.output_names]
        self.request = compiled.create_infer_request()
        self.inference_precision = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()  # bf16, f32

    def _run(self, inputs):
        result = self.request.infer(dict(zip(self.inputs, inputs)))
        return [result[port].copy() for port in self.outputs]  # the request reuses its output buffers


class OpenVinoBackend(Backend):
    name = "openvino"
    formats = ("onnx",)

    @classmethod
    def unavailable_reason(cls):
        if importlib.util.find_spec("openvino") is None:
            return "needs openvino: pip install openvino"
        return None

    def open(self, root, component, entry):
        import openvino as ov

        root = Path(root)
        config = compile_options(self.options.get("inference_precision"), self.options.get("threads"))
        core = ov.Core()

        def one(spec, program: dict) -> OpenVinoSession:
            path = root / program["path"]
            for f in program["files"]:
                if not (root / f).is_file():
                    raise BundleError(f"file {f} of ONNX model {path} is missing")
            options = dict(config)
            if self.options.get("cache_dir"):
                folder = cache_folder(self.options["cache_dir"], [root / f for f in program["files"]], config)
                try:
                    folder.mkdir(parents=True, exist_ok=True)
                except OSError as e:
                    raise InvalidInput(f"cannot use cache_dir {self.options['cache_dir']}: {e.strerror}") from None
                options["CACHE_DIR"] = str(folder)
            try:
                compiled = core.compile_model(str(path), "CPU", options)
            except Exception as e:  # noqa: BLE001 - OpenVINO's errors are RuntimeErrors with multi-line text
                detail = " ".join(str(e).split())[-300:]
                raise BundleError(f"OpenVINO cannot load ONNX model {path} (truncated, corrupt, or its external "
                                  f"data is missing, short or outside its folder): {detail}") from None
            return OpenVinoSession(spec, compiled)

        return self.chained(entry, component, one)

