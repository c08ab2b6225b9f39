"""Measuring instruments: wall-clock repeats with median and p90, the OS's peak resident memory over a
stretch of code, the machine's GEMM peak, and a description of the machine the numbers belong to."""

from __future__ import annotations

import os
import platform
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np

from .. import cpu
from ..errors import InvalidInput
from ..versions import package_versions

VERSIONED = ("flash-edge", "numpy", "torch", "diffusers", "transformers", "onnxruntime", "onnx", "coremltools",
             "executorch", "torchao", "psutil", "matplotlib")


# ----------------------------------------------------------------------------- latency
def summarize(seconds: list[float]) -> dict:
    """Median, p90 (linear interpolation, as numpy), min, max, ``spread`` ((max - min) / median: the run-to-run
    noise a ratio is judged against) and the raw values, in seconds."""
    if not seconds:
        raise InvalidInput("no timings to summarize")
    a = np.asarray(seconds, dtype=np.float64)
    median = float(np.median(a))
    return {"median": median, "p90": float(np.percentile(a, 90)), "min": float(a.min()), "max": float(a.max()),
            "spread": float((a.max() - a.min()) / median) if median > 0 else 0.0, "n": int(a.size),
            "raw": [float(s) for s in a]}


def within_noise(ratio: float, a: dict, b: dict) -> bool:
    """Whether ``ratio`` = a / b (two ``summarize`` results) is indistinguishable from 1 given their spreads: its
    distance from 1 (in log terms) is no larger than the two runs' relative ranges together. One repeat each has
    no spread, and then nothing is called noise."""
    import math

    noise = a.get("spread", 0.0) + b.get("spread", 0.0)
    return a.get("n", 1) > 1 and b.get("n", 1) > 1 and abs(math.log(ratio)) <= noise


def time_runs(fn: Callable[[], object], repeats: int, warmup: int = 1) -> dict:
    """Call ``fn`` ``warmup`` times unmeasured, then ``repeats`` times measured; ``summarize`` of the latter."""
    if repeats < 1:
        raise InvalidInput(f"repeats must be at least 1, got {repeats}")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return summarize(times)


# ----------------------------------------------------------------------------- memory
_CLEAR_REFS, _STATUS = Path("/proc/self/clear_refs"), Path("/proc/self/status")


def current_rss() -> int:
    """Resident set size of this process now, in bytes."""
    import psutil

    return int(psutil.Process().memory_info().rss)


def _vm_hwm() -> int:
    for line in _STATUS.read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise OSError("no VmHWM in /proc/self/status")


def _kernel_peak_resettable() -> bool:
    try:
        _CLEAR_REFS.write_text("5")  # Linux >= 4.0: reset the high-water mark to the current RSS
        _vm_hwm()
        return True
    except OSError:
        return False


class PeakRSS:
    """Peak resident memory of this process over a ``with`` block, read from the OS.

    On Linux the kernel's own high-water mark (``VmHWM``) is reset on entry (``/proc/self/clear_refs``) and
    read on exit: exact, nothing is sampled. Elsewhere a thread samples ``psutil`` RSS every millisecond.
    After the block: ``peak`` and ``before`` (bytes), ``seconds``; ``method`` says which way was used.
    """

    def __init__(self, interval: float = 0.001):
        self.interval = interval
        self.method = "VmHWM" if _kernel_peak_resettable() else "psutil-sampling"
        self.peak = self.before = 0
        self.seconds = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, current_rss())
            self._stop.wait(self.interval)

    def __enter__(self) -> "PeakRSS":
        self.before = current_rss()
        self.peak = self.before
        if self.method == "VmHWM":
            _CLEAR_REFS.write_text("5")
        else:
            self._stop.clear()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self._t0
        if self.method == "VmHWM":
            self.peak = max(self.before, _vm_hwm())
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, current_rss())

    def record(self) -> dict:
        return {"seconds": self.seconds, "peak_rss": self.peak, "rss_before": self.before,
                "rss_after": current_rss()}


def lifetime_peak_rss() -> int:
    """The process's peak RSS since it started (``getrusage``), in bytes; 0 where unavailable."""
    try:
        import resource
    except ImportError:  # Windows
        return 0
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(kb if sys.platform == "darwin" else kb * 1024)  # macOS reports bytes, Linux kilobytes


# ----------------------------------------------------------------------------- compute peak
def gemm_peak(n: int = 2048, repeats: int = 5) -> dict:
    """Best float32 matrix-multiply rate of this machine, measured now (2 n^3 FLOPs per product).

    numpy's BLAS and, when importable, torch's are both measured with their default thread counts; the
    best is the machine's practical float32 peak that a transformer step is compared with.
    """
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    flops = 2.0 * n**3
    results = {"n": n, "dtype": "float32"}
    t = time_runs(lambda: a @ b, repeats)
    results["numpy"] = {"seconds": t, "flops_per_s": flops / t["min"]}
    if "torch" in sys.modules or _importable("torch"):
        import torch

        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        t = time_runs(lambda: torch.mm(ta, tb), repeats)
        results["torch"] = {"seconds": t, "flops_per_s": flops / t["min"], "threads": torch.get_num_threads()}
    best = max((k for k in ("numpy", "torch") if k in results), key=lambda k: results[k]["flops_per_s"])
    results.update(best=best, peak_flops_per_s=results[best]["flops_per_s"])
    return results


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


# ----------------------------------------------------------------------------- the machine
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    import psutil

    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    info = {
        "system": platform.system(), "release": platform.release(), "machine": platform.machine(),
        "cpu": _cpu_model(), "cpu_flags": cpu.flags() or [], "logical_cpus": psutil.cpu_count(logical=True),
        "physical_cpus": psutil.cpu_count(logical=False), "memory_bytes": int(psutil.virtual_memory().total),
        "python": platform.python_version(), "load_average": list(load) if load else None,
        "threads_env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if k in os.environ},
        "versions": package_versions(VERSIONED),
    }
    if "torch" in sys.modules:
        info["torch_threads"] = sys.modules["torch"].get_num_threads()
    return info


def machine_label(info: dict) -> str:
    """One line that says which machine absolute times belong to."""
    gib = info["memory_bytes"] / 2**30
    return (f"{info['cpu']}, {info['logical_cpus']} logical CPUs, {gib:.0f} GiB, {info['system']} "
            f"{info['machine']}, Python {info['python']}")
