"""The exporter contract. One subclass per target (``export/<target>.py``), one registry line.

An exporter turns one wrapped component (a ``torch.nn.Module`` honouring its ``ComponentSpec``) into an
artifact inside the bundle's temporary directory. It never special-cases a model: what differs between
components is in the spec, what differs between targets is in the exporter.

The base class owns the chunking (``export/chunks.py``, the export side of ``runtimes/chunked.open_chained``):
``export_component`` splits the component into pieces, a target converts one piece into one ``Program`` in the
folder it is given (``<component>/`` or ``<component>/chunk{i}/``), and the base class lists the files and
writes one layout for every target. Unchunked, the entry's ``options`` are the component's options plus the
program's own facts; chunked, ``options.chunks`` lists one ``{path, files, inputs, outputs, **facts}`` per
program in run order, and ``options`` holds the component's options.
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
class Program:
    """One program a target wrote: the whole component, or one chunk of it."""

    path: str  # its main file or package, relative to the bundle root
    precision: str
    facts: dict = field(default_factory=dict)  # this program's own manifest facts (per chunk when chunked)
    shared: dict = field(default_factory=dict)  # facts about the component as a whole (see component_options)


def chunk_entry(program: Program, files: list[str], spec: ComponentSpec) -> dict:
    """One ``options.chunks`` item: the layout every target writes and every runtime reads."""
    return {"path": program.path, "files": files, **spec.io_dict(), **program.facts}


def files_under(root: Path, folder: Path) -> list[str]:
    """Every file below ``folder``, relative to the bundle root, sorted."""
    return sorted(p.relative_to(root).as_posix() for p in folder.rglob("*") if p.is_file())


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
    # Whether the transformer is exported with T5's zero slots folded into one token (``flash_edge.folding``):
    # every target whose artifact is a traced graph; not the ``torch`` target, which saves diffusers' weights.
    folds: ClassVar[bool] = True

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
        if "chunks" in self.options:
            self.options["chunks"] = parse_chunks(self.options["chunks"])
        self.exported: dict[str, Artifact] = {}  # component -> what export_component wrote, for manifest_extra
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

    # ----------------------------------------------------------------- chunks (one loop for every target)
    def auto_chunks(self, name: str) -> bool:
        """Whether ``--chunks auto`` splits component ``name`` past 2 GB of fp32 weights (targets whose
        conversion or quantizer holds several copies of what it converts say yes)."""
        return True

    def chunk_count(self, name: str, module) -> int:
        """How many programs component ``name`` is exported in (1 for targets without ``--chunks``)."""
        if "chunks" not in self.options:
            return 1
        from .chunks import chunk_count

        return chunk_count(name, module, self.options["chunks"], auto=self.auto_chunks(name))

    def export_component(self, name: str, module, spec: ComponentSpec, root: Path) -> Artifact:
        """Write ``name``'s artifact under ``root`` (the bundle's temporary directory): one program, or one
        per chunk, in the layout the module docstring describes."""
        from .chunks import pieces

        root = Path(root)
        parts = pieces(name, module, spec, self.chunk_count(name, module))
        self.begin_component(name, module, spec, parts)
        folders = [root / name] if len(parts) == 1 else [root / name / f"chunk{i}" for i in range(len(parts))]
        written = []
        for i, ((piece, piece_spec), folder) in enumerate(zip(parts, folders)):
            folder.mkdir(parents=True, exist_ok=True)
            program = self.export_program(name, i, piece, piece_spec, root, folder)
            written.append((program, files_under(root, folder), piece_spec))
        options = self.component_options(name, [p for p, _, _ in written])
        if len(written) == 1:
            program, files, _ = written[0]
            artifact = Artifact(path=program.path, files=files, precision=program.precision,
                                options={**options, **program.facts})
        else:
            artifact = Artifact(path=name, files=[f for _, files, _ in written for f in files],
                                precision=written[0][0].precision,
                                options={**options, "chunks": [chunk_entry(*w) for w in written]})
        self.exported[name] = artifact
        return artifact

    def begin_component(self, name: str, module, spec: ComponentSpec, parts: list) -> None:
        """Called with all of a component's ``(piece, piece_spec)`` before the first is exported (e.g. to
        calibrate every chunk on the hidden states the chunks before it produce)."""

    @abstractmethod
    def export_program(self, name: str, index: int, module, spec: ComponentSpec, root: Path,
                       folder: Path) -> Program:
        """Convert ``module`` (component ``name`` whole, or its chunk ``index`` with ``spec``) into files under
        ``folder`` (inside the bundle's temporary directory ``root``)."""

    def component_options(self, name: str, programs: list[Program]) -> dict:
        """The component's manifest options from its programs' ``shared`` facts (by default the first's;
        targets override it to sum or combine them over chunks)."""
        return dict(programs[0].shared)

    def extra_phase(self) -> str:
        """What ``manifest_extra`` spends its time on, for the progress line ("" when it takes no time)."""
        return ""

    def manifest_extra(self) -> dict:
        """Bundle-level facts this target adds to the manifest under its own key (after all components
        were exported), e.g. the execution providers an fp16 ONNX bundle is meant for."""
        return {}

    def candidate_pipeline(self, bundle_dir: Path, backends: dict | None = None, options: dict | None = None):
        """The pipeline the parity gate compares with the reference: by default the bundle run through this
        target's own backend, under the ``low`` memory policy, so the gate holds the reference plus one stage
        (beside the PyTorch reference, SD3.5-Medium at 1024^2 under ``fast`` passed 24 GB and was killed).
        Every policy draws ``fast``'s image (tested), so the gate checks what ``fast`` runs. ``backends`` and
        ``options``: the other targets' backends and gate options in a mixed bundle. Targets whose runtime cannot
        run here may override it."""
        from ..pipeline import FlashPipeline

        return FlashPipeline.from_bundle(bundle_dir, backend=self.backend, backends=backends, verify=False,
                                         memory="low", **{**(options or {}), **self.candidate_options()})

    def candidate_options(self) -> dict:
        """Backend options for the gate's candidate (the ONNX target keeps pre-packing under ``low``)."""
        return {}
