"""What this CPU can do, read from the OS (no torch): the vector-extension flags that decide which int8 and
bf16 kernels a runtime picks. Linux only (``/proc/cpuinfo``); elsewhere the answer is "unknown"."""

from __future__ import annotations

import platform
from pathlib import Path

# the flags that change which kernels run: int8 dot products (VNNI), AMX tiles, bf16/fp16 arithmetic
KERNEL_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16", "amx_tile",
                "amx_int8", "amx_bf16", "fma")
X86 = ("x86_64", "amd64", "i386", "i686")


def flags() -> list[str] | None:
    """``KERNEL_FLAGS`` this CPU has, in that order; None where the OS does not say (not Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("flags"):
            have = set(line.split(":", 1)[1].split())
            return [f for f in KERNEL_FLAGS if f in have]
    return None


def x86_without_vnni() -> bool:
    """True only when this is known to be an x86 CPU without int8 dot products (AVX2 only, Skylake-era AVX-512
    before Cascade Lake / Ice Lake, AMD before Zen 4): there, ONNX Runtime's u8 x s8 kernels (``vpmaddubsw``)
    saturate their int16 pair sums. False on VNNI CPUs, on ARM and where the flags are unknown."""
    if platform.machine().lower() not in X86:
        return False
    have = flags()
    return have is not None and not {"avx512_vnni", "avx_vnni"} & set(have)
