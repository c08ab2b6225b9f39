"""The ONNX Runtime backend: one ``InferenceSession`` per component (per chunk of a chunked transformer,
chained by ``runtimes/chunked.py``), numpy in and out. Never imports torch.

Options (``FlashPipeline.from_bundle(path, backend="onnx", **options)``):

- ``providers``: execution providers in order of preference, as a list or a comma-separated string; full
  names (``CUDAExecutionProvider``) or short ones (``cuda``, ``coreml``, ``dml``/``directml``, ``cpu``).
  Default: the installed ones among CUDA, CoreML, DirectML, then CPU. One that is not installed is an error
  that lists those that are.
- ``threads``: intra-op threads (default: ONNX Runtime's, one per physical core).
- ``graph_optimization_level``: ``disable`` | ``basic`` | ``extended`` | ``all`` (default ``all``). The
  bundle holds a portable, basic-optimized graph; the EP-specific fusions happen here, at load time.
- ``io_binding``: bind inputs and outputs through an ``IOBinding`` (default: on when the first provider is
  not the CPU one, where it saves ONNX Runtime's per-run output allocation and host copies).
- ``low_memory``: no CPU memory arena, no memory patterns, initializers outside the arena (set by the ``low``
  memory policy, ``flash_edge.memory``), and no pre-packed weight copies for models whose weights sit inside
  the ``.onnx`` file. Measured on the SD3.5-Medium int8 transformer (5 chunks, 2.26 GB): with the weights inside
  the protobuf, pre-packing raised ``low``'s whole-generation peak from 2.89 to 3.27-3.30 GB (u8, AVX2 EPYC);
  with them in external data files (``flash-export --external-data always``), which ONNX Runtime maps, it costs
  nothing (2.854 GB with, 2.857 GB without, s8 on a VNNI/AMX Xeon), runs as fast, and gives ``fast``'s image
  bit for bit (without it, MLAS's unpacked kernels round differently: another image). So ``low`` pre-packs exactly the
  models with external data.
- ``prepack``: ``True``/``False`` overrides that choice (default: pre-packed, except as above). Weights are
  packed on the intra-op threads (``session.prepack.enable_parallel``): loading one 0.5 GB s8 chunk of the
  SD3.5-Medium transformer took 0.54 s instead of 0.84 s on 2 cores, with the same outputs bit for bit; ``low``
  packs every component again for each image, so this is most of its load.

Other options (meant for other backends in a mixed pipeline) are ignored.

A component whose int8 weights were exported signed (``--int8-weights s8``) warns (``DeviceWarning``) when it is
opened on an x86 CPU without VNNI, where ONNX Runtime's u8 x s8 kernels saturate and the image loses 5-25 dB.
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

from .. import cpu
from ..bundle import programs
from ..errors import BackendUnavailable, BundleError, DeviceWarning, InvalidInput
from .base import Backend, Session, thread_count

SHORT_NAMES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "coreml": "CoreMLExecutionProvider",
               "dml": "DmlExecutionProvider", "directml": "DmlExecutionProvider",
               "tensorrt": "TensorrtExecutionProvider", "rocm": "ROCMExecutionProvider",
               "openvino": "OpenVINOExecutionProvider", "qnn": "QNNExecutionProvider",
               "xnnpack": "XnnpackExecutionProvider"}
PREFERENCE = ("CUDAExecutionProvider", "CoreMLExecutionProvider", "DmlExecutionProvider", "CPUExecutionProvider")
LEVELS = ("disable", "basic", "extended", "all")
PARALLEL_PREPACK = "session.prepack.enable_parallel"  # in 1.31 (pinned); a release without it ignores the key


def available_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


def resolve_providers(requested=None) -> list[str]:
    """The provider list to give ``InferenceSession``: ``requested`` checked against what is installed."""
    available = available_providers()
    if requested is None or requested == "auto":
        return [p for p in PREFERENCE if p in available] or available
    if isinstance(requested, str):
        requested = [p for p in requested.split(",") if p.strip()]
    names = []
    for p in requested:
        if not isinstance(p, str):
            raise InvalidInput(f"providers must be names, got {p!r}")
        full = SHORT_NAMES.get(p.strip().lower(), p.strip())
        if full not in available:
            raise BackendUnavailable(f"ONNX Runtime execution provider {p.strip()!r} is not installed here; "
                                     f"available: {', '.join(available)}")
        names.append(full)
    if not names:
        raise InvalidInput("providers is empty: name at least one execution provider")
    return names


def session_options(threads=None, graph_optimization_level="all", low_memory: bool = False, prepack: bool = True):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3  # errors only: ORT's warnings are not the user's business
    if low_memory:  # no per-session arena that keeps freed blocks, no pre-planned activation pattern
        so.enable_cpu_mem_arena = False
        so.enable_mem_pattern = False
        so.add_session_config_entry("session.use_device_allocator_for_initializers", "1")
    if not isinstance(prepack, bool):
        raise InvalidInput(f"prepack must be true or false, got {prepack!r}")
    if not prepack:
        so.add_session_config_entry("session.disable_prepacking", "1")
    else:  # pack the weights on the intra-op threads: the same packed bytes (tested), in ~60% of the load time
        so.add_session_config_entry(PARALLEL_PREPACK, "1")
    if threads is not None:
        so.intra_op_num_threads = thread_count(threads)
        so.inter_op_num_threads = 1
    level = str(graph_optimization_level).lower()
    if level not in LEVELS:
        raise InvalidInput(f"graph_optimization_level must be one of {', '.join(LEVELS)}, "
                           f"got {graph_optimization_level!r}")
    so.graph_optimization_level = {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
                                   "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                                   "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                                   "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[level]
    return so


def open_session(path: Path, providers: list[str], options, data_files=()):
    """An ``InferenceSession`` over ``path``; a missing or unreadable file is a one-line ``BundleError``."""
    import onnxruntime as ort

    if not path.is_file():
        raise BundleError(f"ONNX model {path} is missing")
    for f in data_files:
        if not Path(f).is_file():
            raise BundleError(f"external data file {f} of ONNX model {path} is missing")
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as e:  # onnxruntime's pybind errors (InvalidProtobuf, Fail, ...) share no base class
        detail = " ".join(str(e).split())[:300]
        raise BundleError(f"cannot load ONNX model {path} (truncated, corrupt, or its external data is "
                          f"missing or short): {detail}") from None


class OnnxSession(Session):
    def __init__(self, spec, session, io_binding: bool = False):
        super().__init__(spec)
        self.session = session
        self.input_names = spec.input_names
        self.output_names = spec.output_names
        model_inputs = [i.name for i in session.get_inputs()]
        model_outputs = [o.name for o in session.get_outputs()]
        if sorted(model_inputs) != sorted(self.input_names) or sorted(model_outputs) != sorted(self.output_names):
            raise BundleError(f"ONNX model of {spec.name} has inputs {model_inputs} and outputs {model_outputs}; "
                              f"the manifest says {self.input_names} -> {self.output_names}")
        declared = {i.name: i.shape for i in (*session.get_inputs(), *session.get_outputs())}
        for t in (*spec.inputs, *spec.outputs):
            shape = declared[t.name]
            if len(shape) != len(t.shape) or any(isinstance(d, int) and d != e for d, e in zip(shape, t.shape)):
                raise BundleError(f"ONNX model of {spec.name} declares {t.name} as {shape}; the manifest says "
                                  f"{list(t.shape)}")
        self.io_binding = io_binding
        self.providers = session.get_providers()

    def _run(self, inputs):
        if not self.io_binding:
            return self.session.run(self.output_names, dict(zip(self.input_names, inputs)))
        binding = self.session.io_binding()
        for name, array in zip(self.input_names, inputs):
            binding.bind_cpu_input(name, array)
        for name in self.output_names:
            binding.bind_output(name, "cpu")  # the EP writes once into host memory ORT allocates
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()


def signed_int8_weights(options) -> bool:
    """Whether an artifact's manifest options say its int8 weights are signed (the exporter's
    ``quantization.weights``, per component or per chunk, reads ``s8 per-channel``)."""
    return any(isinstance(r.get("quantization"), dict) and str(r["quantization"].get("weights", "")).startswith("s8")
               for r in programs(options))


_WARNED: set = set()  # (bundle folder, component) already warned about: the low policy re-opens per image


def warn_signed_weights(component: str, entry, root=None) -> None:
    """``DeviceWarning`` for signed int8 weights on an x86 CPU without VNNI (see the module's notes), once per
    bundle and component in a process."""
    key = (str(root), component)
    if key in _WARNED:
        return
    if entry.precision == "int8" and signed_int8_weights(entry.options) and cpu.x86_without_vnni():
        _WARNED.add(key)
        warnings.warn(f"{component}: this bundle's int8 weights are signed (exported with --int8-weights s8); "
                      "on this x86 CPU without VNNI ONNX Runtime's int8 kernels saturate and the image loses "
                      "5-25 dB; export with --int8-weights u8 (the default) for such CPUs", DeviceWarning,
                      stacklevel=3)


class OnnxBackend(Backend):
    name = "onnx"
    formats = ("onnx",)

    @classmethod
    def unavailable_reason(cls):
        if importlib.util.find_spec("onnxruntime") is None:
            return "needs onnxruntime: pip install onnxruntime (or onnxruntime-gpu for CUDA)"
        return None

    def providers(self) -> list[str]:
        return resolve_providers(self.options.get("providers"))

    def open(self, root, component, entry):
        root = Path(root)
        providers = self.providers()
        if providers[0] == "CPUExecutionProvider":
            warn_signed_weights(component, entry, root)
        low_memory = bool(self.options.get("low_memory"))
        io_binding = self.options.get("io_binding")
        if io_binding is None:
            io_binding = providers[0] != "CPUExecutionProvider"

        def one(spec, program: dict) -> OnnxSession:
            data = [root / f for f in program["files"] if f != program["path"]]
            prepack = self.options.get("prepack")
            if prepack is None:  # low: only weights in a data file (mapped: packing costs no extra peak)
                prepack = not low_memory or bool(data)
            options = session_options(self.options.get("threads"),
                                      self.options.get("graph_optimization_level", "all"), low_memory, prepack)
            session = open_session(root / program["path"], providers, options, data)
            return OnnxSession(spec, session, io_binding=bool(io_binding))

        return self.chained(entry, component, one)
