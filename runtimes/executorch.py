"""The ExecuTorch backend: runs ``executorch``-target ``.pte`` programs through the ``executorch.runtime``
Python API (the same programs an Android/iOS app loads with ExecuTorch's ``Module``). The runtime takes and
returns torch tensors; numpy is converted at this boundary (zero-copy on the way in).

Threads: ExecuTorch's CPU thread pool (used by XNNPACK and the optimized kernels) is process-wide and sized
to the performance cores at first use; the ``threads`` option resizes it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ..errors import BackendUnavailable, BundleError, first_line
from .base import Backend, Session


def set_threads(threads: int) -> int:
    """Resize ExecuTorch's process-wide CPU thread pool; returns the size now in effect."""
    from executorch.extension.pybindings import portable_lib

    if int(threads) != portable_lib._threadpool_get_thread_count():
        portable_lib._unsafe_reset_threadpool(int(threads))
    return portable_lib._threadpool_get_thread_count()


class ExecuTorchSession(Session):
    def __init__(self, spec, program, method):
        super().__init__(spec)
        self.program, self.method = program, method  # the program must outlive the method

    def _run(self, inputs):
        import torch

        outputs = self.method.execute([torch.from_numpy(a) for a in inputs])
        return [o.numpy() for o in outputs]


class ExecuTorchBackend(Backend):
    name = "executorch"
    formats = ("executorch",)

    @classmethod
    def unavailable_reason(cls):
        if importlib.util.find_spec("executorch") is None or importlib.util.find_spec("torch") is None:
            return "needs the executorch package (and torch): pip install 'flash-edge[executorch]'"
        return None

    def open(self, root, component, entry):
        from ..quiet import quiet

        self.require()
        with quiet(native=True, hf_libraries=False):  # torchao's import notices, the runtime's cpuinfo lines on fd 2
            return self._open(root, component, entry)

    def _open(self, root, component, entry):
        from executorch.runtime import Runtime

        runtime = Runtime.get()
        needed = entry.options.get("runtime_backend", "XnnpackBackend")
        if not runtime.backend_registry.is_available(needed):
            raise BackendUnavailable(f"{component} was lowered for {needed}, which this executorch runtime does not "
                                     f"have (it has {', '.join(runtime.backend_registry.registered_backend_names)})")
        if self.options.get("threads"):
            set_threads(int(self.options["threads"]))
        method = entry.options.get("module_api", {}).get("method", "forward")
        return self.chained(entry, component, lambda spec, program: _session(
            runtime, Path(root), spec, program["path"], program.get("data_file"), method))


def _session(runtime, root: Path, spec, path: str, data: str | None, method: str) -> ExecuTorchSession:
    pte = root / path
    for f in (pte, *((root / data,) if data else ())):
        if not f.is_file():
            raise BundleError(f"{spec.name}: {f} is missing")
    try:
        program = runtime.load_program(pte, data_path=root / data if data else None)
        loaded = program.load_method(method)
    except Exception as e:  # noqa: BLE001 - the runtime's load errors share no base class
        raise BundleError(f"executorch cannot load {pte}: {first_line(e)}"
                          + (" (is its .ptd weight file the one exported with it?)" if data else "")) from None
    return ExecuTorchSession(spec, program, loaded)
