"""What this machine is, and which backend to prefer on it.

Order of preference, first available wins (per component, among backends that read its artifact):
macOS arm64 -> Core ML; Android -> ExecuTorch; an NVIDIA GPU -> ONNX Runtime (CUDA EP);
otherwise ONNX Runtime (CPU), then ExecuTorch, then torch.
"""

from __future__ import annotations

import os
import platform
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Device:
    system: str  # Darwin | Linux | Windows | Android
    machine: str  # arm64 | x86_64 | ...
    cuda: bool

    @property
    def apple_silicon(self) -> bool:
        return self.system == "Darwin" and self.machine in ("arm64", "aarch64")


def detect() -> Device:
    system = platform.system()
    if hasattr(sys, "getandroidapilevel") or "ANDROID_ROOT" in os.environ:
        system = "Android"
    cuda = bool(shutil.which("nvidia-smi")) or Path("/proc/driver/nvidia/version").exists()
    return Device(system=system, machine=platform.machine().lower(), cuda=cuda)


def preference(device: Device) -> list[str]:
    if device.apple_silicon:
        return ["coreml", "onnx", "executorch", "torch"]
    if device.system == "Android":
        return ["executorch", "onnx", "torch"]
    return ["onnx", "executorch", "torch", "coreml"]
