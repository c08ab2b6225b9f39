"""The exporter contract. One subclass per target (``export/<target>.py``), one registry line.

An exporter turns one wrapped component (a ``torch.nn.Module`` honouring its ``ComponentSpec``) into an
artifact inside the bundle's temporary directory and says which files it wrote. It never special-cases a
model: what differs between components is in the spec, what differs between targets is in the exporter.
"""

from __future__ import annotations

import importlib.util
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from ..bundle import ComponentEntry
from ..errors import BackendUnavailable, InvalidInput
from ..spec import ComponentSpec


# --chunks, shared by the targets that split the transformer (export/chunks.py; flash-export adds it once)
CHUNKS_OPTION = {"--chunks": dict(default="auto", help="split the transformer into K programs run one after "
                                  "another (auto: a transformer whose fp32 weights pass 2 GB is split into pieces "
                                  "under 2 GB, each converted and quantized by itself; onnx fp32/fp16 keep one file "
                                  "with external data)")}


def parse_chunks(value) -> str | int:
    """``"auto"`` or a count >= 1, from the command line or the Python API."""
    if value in (None, "auto"):
        return "auto"
    try:
        count = int(value)
    except (TypeError, ValueError):
        raise InvalidInput(f"--chunks must be auto or a whole number, got {value!r}") from None
    if count < 1:
        raise InvalidInput(f"--chunks must be at least 1, got {value!r}")
    return count


@dataclass
class Artifact:
    """What an exporter wrote for one component (paths relative to the bundle root)."""

    path: str
    files: list[str]
    precision: str
    options: dict = field(default_factory=dict)

    def entry(self, target: str, spec: ComponentSpec) -> ComponentEntry:
        return ComponentEntry(target=target, precision=self.precision, path=self.path, files=self.files,
                              options=self.options, **spec.io_dict())


class Exporter(ABC):
    target: ClassVar[str]
    precisions: ClassVar[tuple[str, ...]]
    default_precision: ClassVar[str]
    backend: ClassVar[str]  # the runtime backend that runs this target's artifacts (used by the parity gate)
    packages: ClassVar[tuple[str, ...]] = ()  # importable modules the exporter needs
    extra: ClassVar[str] = ""  # the pip extra that installs them
    # Target-specific command-line options: flag -> argparse keywords (with a "default"). flash-export adds
    # them in a group of their own and passes their values to ``__init__`` as keyword options; giving one
    # with another --target is an error. Keep the module importable without the target's packages.
    cli_options: ClassVar[dict[str, dict]] = {}
    # Options the Python API (and benchmarks) may pass that have no flag: name -> default.
    api_options: ClassVar[dict[str, object]] = {}

    @classmethod
    def option_defaults(cls) -> dict[str, object]:
        """Every option this target takes, with its default: the declared flags' and ``api_options``."""
        flags = {kw.get("dest") or flag.lstrip("-").replace("-", "_"): kw.get("default")
                 for flag, kw in cls.cli_options.items()}
        return {**flags, **cls.api_options}

    def __init__(self, precision: str | None = None, **options):
        precision = precision or self.default_precision
        if precision not in self.precisions:
            raise InvalidInput(f"target {self.target} does not support precision {precision!r}; "
                               f"choose one of {', '.join(self.precisions)}")
        self.precision = precision
        defaults = self.option_defaults()
        unknown = sorted(set(options) - set(defaults))
        if unknown:  # a misspelled option is an error, not silently the default
            raise InvalidInput(f"unknown {self.target} option(s) {unknown}; the {self.target} target takes "
                               f"{sorted(defaults)}")
        for flag, kw in self.cli_options.items():  # the declared choices hold for the API as for the CLI
            name = kw.get("dest") or flag.lstrip("-").replace("-", "_")
            value = options.get(name)
            if "choices" in kw and value is not None and value not in kw["choices"]:
                raise InvalidInput(f"{flag} must be one of {', '.join(map(str, kw['choices']))}, got {value!r}")
        self.options = {**defaults, **{k: v for k, v in options.items() if v is not None}}
        reason = self.unavailable_reason()
        if reason:
            raise BackendUnavailable(f"cannot export to {self.target}: {reason}")

    @classmethod
    def unavailable_reason(cls) -> str | None:
        missing = [m for m in cls.packages if importlib.util.find_spec(m) is None]
        if missing:
            return f"needs {', '.join(missing)}: pip install 'flash-edge[{cls.extra or cls.target}]'"
        return None

    @abstractmethod
    def parity_floor_db(self, component: str, precision: str) -> float:
        """Minimum PSNR (dB) against the fp32 PyTorch reference for this component's artifact (and, with
        component ``"image"``, for the whole pipeline's image)."""

    @abstractmethod
    def export_component(self, name: str, module, spec: ComponentSpec, root: Path) -> Artifact:
        """Write ``name``'s artifact under ``root`` (the bundle's temporary directory)."""

    def extra_phase(self) -> str:
        """What ``manifest_extra`` spends its time on, for the progress line ("" when it takes no time)."""
        return ""

    def manifest_extra(self) -> dict:
        """Bundle-level facts this target adds to the manifest under its own key (after all components
        were exported), e.g. the execution providers an fp16 ONNX bundle is meant for."""
        return {}

    def candidate_pipeline(self, bundle_dir: Path):
        """The pipeline the parity gate compares with the reference: by default the bundle run through
        this target's own backend. Targets whose runtime cannot run here may override it."""
        from ..pipeline import FlashPipeline

        return FlashPipeline.from_bundle(bundle_dir, backend=self.backend, verify=False)
