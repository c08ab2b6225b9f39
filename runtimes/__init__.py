"""Backends that run bundle artifacts, a registry, and the automatic per-device choice.

Importing this package (or running an ONNX or Core ML bundle) never imports torch.
"""

from __future__ import annotations

import importlib

from ..errors import BackendUnavailable, InvalidInput
from .base import Backend, Session
from .device import Device, detect, preference

# name -> "module:class"; a new target adds one line here and one file beside this one.
REGISTRY = {
    "torch": "flash_edge.runtimes.torch:TorchBackend",
    "executorch": "flash_edge.runtimes.executorch:ExecuTorchBackend",
    "coreml": "flash_edge.runtimes.coreml:CoreMLBackend",
    "onnx": "flash_edge.runtimes.onnx:OnnxBackend",
    "openvino": "flash_edge.runtimes.openvino:OpenVinoBackend",  # ONNX artifacts on Intel CPUs; by name only
}

__all__ = ["Backend", "Session", "Device", "REGISTRY", "backend_class", "choose_backend", "detect", "parse_choice"]


def backend_class(name: str) -> type[Backend]:
    if name not in REGISTRY:
        raise InvalidInput(f"unknown backend {name!r}; choose one of: auto, {', '.join(REGISTRY)}")
    module, cls = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), cls)


def parse_choice(text: str) -> dict:
    """A command line's backend choice as ``FlashPipeline.from_bundle`` keywords: ``NAME`` (every component),
    ``COMPONENT=NAME,...`` (those components; the others ``auto``) or ``NAME,COMPONENT=NAME,...`` (a default
    and exceptions), e.g. ``executorch,vae_decoder=openvino``. Names are checked when the bundle is opened."""
    from ..spec import COMPONENTS

    default, per = "auto", {}
    for i, part in enumerate(p.strip() for p in text.split(",")):
        name, eq, chosen = part.partition("=")
        if not eq and part and i == 0:  # a bare name only first: the default
            default = part
        elif eq and name in COMPONENTS and chosen and name not in per:
            per[name] = chosen
        else:
            raise InvalidInput(f"bad backend choice {text!r} at {part!r}: give a backend (auto, "
                               f"{', '.join(REGISTRY)}), COMPONENT=BACKEND pairs, or both, comma-separated "
                               f"(components: {', '.join(COMPONENTS)}; each once, the default first)")
    return {"backend": default, **({"backends": per} if per else {})}


def choose_backend(target: str, requested: str = "auto", device: Device | None = None) -> type[Backend]:
    """The backend class to run an artifact of ``target`` with: ``requested``, or the device's best."""
    if requested != "auto":
        cls = backend_class(requested)
        if target not in cls.formats:
            raise InvalidInput(f"backend {requested!r} cannot run {target} artifacts; this bundle needs a backend "
                               f"for {target} (re-export with --target {requested}, or use --backend auto)")
        cls.require()
        return cls
    reasons = []
    for name in preference(device or detect()):
        if name not in REGISTRY:
            continue
        cls = backend_class(name)
        if target in cls.formats:
            reason = cls.unavailable_reason()
            if reason is None:
                return cls
            reasons.append(f"{name}: {reason}")
    raise BackendUnavailable(f"no backend here can run {target} artifacts" + (f" ({'; '.join(reasons)})" if reasons else ""))
