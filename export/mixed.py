"""Bundles whose components come from more than one target (``flash-export --component-target``).

Each component entry of a manifest names its own ``target``, and the runtime picks a backend per component, so
a bundle may hold, say, an ExecuTorch int8 transformer and text encoders beside an ONNX fp32 VAE decoder: the
transformer runs on XNNPACK's int8 kernels, the decoder on whichever ONNX runtime the app has (ONNX Runtime, or
OpenVINO's bf16 on CPUs with AVX-512 BF16/AMX, where it decodes 2.5-6x faster than fp32). The main target's
options (``--recipe``, ``--int8-weights``, ...) apply to its own components; an other target's components are
exported with that target's defaults and checked against its own parity floors.

Core ML is left out both ways: its bundles are whole ``.mlpackage`` sets for Apple devices, and off macOS its
parity gate reads the weights back into PyTorch for every component at once.
"""

from __future__ import annotations

from ..errors import InvalidInput
from ..spec import COMPONENTS

EXCLUDED = ("coreml",)


def parse_component_targets(values) -> dict[str, tuple[str, str | None]]:
    """``["vae_decoder=onnx:fp32", ...]`` (the CLI's repeated ``--component-target``) or ``{"vae_decoder":
    "onnx:fp32"}`` (the API's) -> {component: (target, precision or None for the target's default)}; a malformed
    or repeated entry is a one-line error."""
    if isinstance(values, dict):
        values = [f"{k}={v}" for k, v in values.items()]
    out: dict[str, tuple[str, str | None]] = {}
    for value in values or ():
        name, eq, rest = str(value).partition("=")
        target, _, precision = rest.partition(":")
        if not eq or name not in COMPONENTS or not target or name in out:
            raise InvalidInput(f"bad --component-target {value!r}: give COMPONENT=TARGET[:PRECISION] once per "
                               f"component, e.g. vae_decoder=onnx:fp32 (components: {', '.join(COMPONENTS)})")
        out[name] = (target, precision or None)
    return out


def other_exporters(main, component_targets: dict) -> dict:
    """{component: exporter} for the components ``component_targets`` gives to a target other than ``main``'s
    (the ``--target`` exporter). Fails before any work on the main target named again, Core ML on either side,
    or a bad target or precision."""
    from . import get_exporter

    out = {}
    for name, (target, precision) in component_targets.items():
        if target == main.target:
            raise InvalidInput(f"--component-target {name}={target}: that is --target itself; name another "
                               f"target (one target's components share its --precision and options)")
        if main.target in EXCLUDED or target in EXCLUDED:
            raise InvalidInput(f"--component-target {name}={target}: Core ML bundles are not mixed with other "
                               f"targets (export a Core ML bundle whole)")
        out[name] = get_exporter(target, precision)  # an unknown target or precision fails here
    return out


def component_exporters(main, others: dict, components) -> dict:
    """{component: exporter} for every component of the bundle: ``others``' where it names one, else ``main``.
    A component in ``others`` that the bundle will not have (T5 without ``--t5``) is a one-line error."""
    unknown = sorted(set(others) - set(components))
    if unknown:
        raise InvalidInput(f"--component-target names {', '.join(unknown)}, which this bundle will not have (it "
                           f"has {', '.join(components)})")
    return {name: others.get(name, main) for name in components}


def distinct(main, exporters: dict) -> list:
    """``main`` and the other exporters of a bundle, each once, in component order."""
    out = [main]
    for e in exporters.values():
        if all(e is not x for x in out):
            out.append(e)
    return out
