"""The bundle: a directory that holds everything an app needs to generate, and nothing else.

    bundle/
      manifest.json          format version, generation constants, components, hashes, parity, tools
      tokenizer/ tokenizer_2/ [tokenizer_3/]   tokenizer.json (+ vocab.json, merges.txt for CLIP)
      text_encoder/ text_encoder_2/ transformer/ vae_decoder/ [text_encoder_3/]   one artifact each

Writing is atomic and never loses data (``atomic.py``). Opening treats the bundle as hostile input: the
manifest is validated whole (``manifest.py``), every path is held inside the bundle (``confine.py``), every
file is listed with its size and sha256 (checked; ``verify=False`` skips only the hashes), and a file the
manifest does not list is refused. Nothing in a bundle is imported, unpickled or executed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from . import __version__, contract
from .atomic import BUNDLE_FORMAT
from .confine import inside, stray_entries
from .errors import BundleError
from .jsonsafe import json_safe
from .manifest import CODE_SUFFIXES, validate
from .spec import ComponentSpec, GenerationSpec, TensorSpec

FORMAT = BUNDLE_FORMAT
FORMAT_VERSION = contract.VERSION  # what this version writes
READS = (1, FORMAT_VERSION)  # format 1: the same rules, without the app contract's keys in the manifest
MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 64 << 20
IGNORED = frozenset({".DS_Store"})  # Finder's folder notes: never read, tolerated anywhere in a bundle


@dataclass
class ComponentEntry:
    """One component's artifact as the manifest records it."""

    target: str  # artifact format: torch | onnx | coreml | executorch
    precision: str
    path: str  # the file or folder a backend opens, relative to the bundle
    files: list[str]  # every file of this artifact (hashed in the manifest's "files")
    inputs: list[dict]
    outputs: list[dict]
    options: dict = field(default_factory=dict)  # target-specific facts (class name, method, EP hint, ...)

    @property
    def programs(self) -> list[dict]:
        """The entry's own options and each chunk's (``options.chunks``): every program's facts."""
        return programs(self.options)

    def spec(self, name: str) -> ComponentSpec:
        return ComponentSpec(name, tuple(TensorSpec.from_dict(t) for t in self.inputs),
                             tuple(TensorSpec.from_dict(t) for t in self.outputs))

    def to_dict(self) -> dict:
        return dict(target=self.target, precision=self.precision, path=self.path, files=self.files,
                    inputs=self.inputs, outputs=self.outputs, options=self.options)


def programs(options) -> list[dict]:
    """A component entry's ``options`` and its chunks' (the one layout every target writes), skipping what is
    not an object (an entry's options come from an untrusted manifest)."""
    if not isinstance(options, dict):
        return []
    chunks = options.get("chunks")
    return [options, *(c for c in chunks if isinstance(c, dict))] if isinstance(chunks, list) else [options]


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass
class Bundle:
    path: Path
    manifest: dict  # validated whole by ``open`` (``manifest.validate``)

    @property
    def spec(self) -> GenerationSpec:
        return GenerationSpec.from_dict(self.manifest["generation"])

    @property
    def components(self) -> dict[str, ComponentEntry]:
        return {k: ComponentEntry(**v) for k, v in self.manifest["components"].items()}

    def file(self, rel: str) -> Path:
        """``rel`` (a path the manifest names) under the bundle, held inside it (``confine.inside``)."""
        return inside(self.path, rel, rel)

    @classmethod
    def open(cls, path: str | Path, verify: bool = True) -> "Bundle":
        """Read and validate a bundle: the manifest whole (types, keys, ranges, paths), then every file it
        lists (inside the bundle, size, and with ``verify`` its sha256), and no file it does not list."""
        path = Path(path)
        mf = path / MANIFEST
        if not path.is_dir():
            raise BundleError(f"bundle {path} does not exist or is not a directory")
        if not mf.is_file():
            raise BundleError(f"{path} is not a flash-edge bundle: it has no {MANIFEST}")
        inside(path, MANIFEST, MANIFEST)
        if mf.stat().st_size > MAX_MANIFEST_BYTES:
            raise BundleError(f"{mf} is larger than {MAX_MANIFEST_BYTES >> 20} MB: not a flash-edge manifest")
        try:
            manifest = json.loads(mf.read_bytes().decode("utf-8"))
        except (ValueError, UnicodeDecodeError, RecursionError) as e:
            raise BundleError(f"{mf} is not valid JSON ({type(e).__name__}: {str(e)[:200]}): the bundle is corrupt, "
                              f"export it again") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise BundleError(f"{mf} is not a flash-edge manifest (format is {str(manifest.get('format'))[:80]!r})"
                              if isinstance(manifest, dict) else f"{mf} is not a flash-edge manifest")
        version = manifest.get("format_version")
        if not isinstance(version, int) or isinstance(version, bool) or version not in READS:
            raise BundleError(
                f"bundle {path} has format version {str(version)[:20]} (written by flash-edge "
                f"{str(manifest.get('sdk_version', '?'))[:20]}); this flash-edge {__version__} reads versions "
                f"{' and '.join(map(str, READS))}: export the bundle again with this version")
        try:
            validate(manifest)
        except BundleError as e:
            raise BundleError(f"{mf}: {e}") from None
        bundle = cls(path, manifest)
        bundle.check_files(hashes=verify)
        return bundle

    def check_files(self, hashes: bool = True) -> None:
        """Every listed file is inside the bundle with its size (and sha256); every path a component names
        is inside; nothing else is there (``IGNORED`` names aside)."""
        files = self.manifest["files"]
        for rel, meta in files.items():
            f = inside(self.path, rel, f"files[{rel!r}]")
            if not f.is_file():
                raise BundleError(f"bundle file {f} is missing")
            size = f.stat().st_size
            if size != meta["size"]:
                raise BundleError(f"bundle file {f} has {size} bytes, the manifest says {meta['size']}: "
                                  f"it is truncated or was changed")
            if hashes and sha256_file(f) != meta["sha256"]:
                raise BundleError(f"bundle file {f} does not match its sha256 in the manifest: it is corrupt "
                                  f"or was changed after export")
        for name, entry in self.components.items():
            for key, rel in (("path", entry.path), *((k, p[k]) for p in entry.programs for k in ("path", "compiled")
                                                     if isinstance(p.get(k), str))):
                inside(self.path, rel, f"components.{name} {key}")
        stray = stray_entries(self.path, set(files) | {MANIFEST}, IGNORED, limit=5)
        if stray:
            raise BundleError(f"bundle {self.path} holds what its manifest does not list: {', '.join(stray)}; a "
                              f"bundle carries only the files its manifest lists (remove them, or export again)")


def write_manifest(directory: Path, generation: GenerationSpec, components: dict[str, ComponentEntry],
                   hash_files: bool = True, **extra) -> dict:
    """Hash every file in ``directory`` and write manifest.json; returns the manifest.

    ``hash_files=False`` writes a provisional manifest (sizes, no hashes: all-zero digests) that the parity
    gate opens with ``verify=False`` before the final one is written. Code files are refused: a bundle never
    carries anything to import or unpickle.
    """
    files = {}
    listed = sorted(p for p in directory.rglob("*") if p.is_file() and p.relative_to(directory).as_posix() != MANIFEST)
    code = [f.relative_to(directory).as_posix() for f in listed if f.suffix.lower() in CODE_SUFFIXES]
    if code:
        raise BundleError(f"refusing to write code files into a bundle: {code}")
    for f in listed:
        rel = f.relative_to(directory).as_posix()
        files[rel] = {"size": f.stat().st_size, "sha256": sha256_file(f) if hash_files else "0" * 64}
    present = set(files)
    for name, entry in components.items():
        missing = [r for r in entry.files if r not in present]
        if missing:
            raise BundleError(f"component {name} names files that were not written: {missing}")
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "sdk_version": __version__,
                "generation": generation.to_dict(),
                "components": {k: v.to_dict() for k, v in components.items()},
                **extra, "files": files}
    (directory / MANIFEST).write_text(json.dumps(json_safe(manifest), indent=2) + "\n", encoding="utf-8")
    return manifest
