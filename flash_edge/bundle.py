"""The bundle: a directory that holds everything an app needs to generate, and nothing else.

    bundle/
      manifest.json          format version, generation constants, components, hashes, parity, tools
      tokenizer/ tokenizer_2/ [tokenizer_3/]   tokenizer.json (+ vocab.json, merges.txt for CLIP)
      text_encoder/ text_encoder_2/ transformer/ vae_decoder/ [text_encoder_3/]   one artifact each

Writing is atomic (a temporary sibling directory renamed into place at the end), so a failed export
leaves nothing behind. Opening checks the format version and, by default, every file's size and sha256.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from . import __version__
from .errors import BundleError, InvalidInput
from .spec import ComponentSpec, GenerationSpec, TensorSpec

FORMAT = "flash-edge-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"


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

    def spec(self, name: str) -> ComponentSpec:
        return ComponentSpec(name, tuple(TensorSpec.from_dict(t) for t in self.inputs),
                             tuple(TensorSpec.from_dict(t) for t in self.outputs))

    def to_dict(self) -> dict:
        return dict(target=self.target, precision=self.precision, path=self.path, files=self.files,
                    inputs=self.inputs, outputs=self.outputs, options=self.options)


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _json_safe(obj):
    """inf/nan are not JSON: parity of an exact copy is written as the string "inf"."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


@dataclass
class Bundle:
    path: Path
    manifest: dict

    @property
    def spec(self) -> GenerationSpec:
        return GenerationSpec.from_dict(self.manifest["generation"])

    @property
    def components(self) -> dict[str, ComponentEntry]:
        return {k: ComponentEntry(**v) for k, v in self.manifest["components"].items()}

    def file(self, rel: str) -> Path:
        return self.path / rel

    @classmethod
    def open(cls, path: str | Path, verify: bool = True) -> "Bundle":
        path = Path(path)
        mf = path / MANIFEST
        if not path.is_dir():
            raise BundleError(f"bundle {path} does not exist or is not a directory")
        if not mf.is_file():
            raise BundleError(f"{path} is not a flash-edge bundle: it has no {MANIFEST}")
        try:
            manifest = json.loads(mf.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BundleError(f"{mf} is not valid JSON ({e}): the bundle is corrupt, export it again") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise BundleError(f"{mf} is not a flash-edge manifest (format is {manifest.get('format')!r})"
                              if isinstance(manifest, dict) else f"{mf} is not a flash-edge manifest")
        version = manifest.get("format_version")
        if version != FORMAT_VERSION:
            raise BundleError(
                f"bundle {path} has format version {version} (written by flash-edge "
                f"{manifest.get('sdk_version', '?')}); this flash-edge {__version__} reads version {FORMAT_VERSION}: "
                f"export the bundle again with this version")
        bundle = cls(path, manifest)
        try:
            bundle.spec, bundle.components  # noqa: B018 - parse now, so a bad manifest fails here, clearly
        except (KeyError, TypeError, ValueError) as e:
            raise BundleError(f"{mf} is incomplete or malformed ({type(e).__name__}: {e})") from None
        bundle.check_files(hashes=verify)
        return bundle

    def check_files(self, hashes: bool = True) -> None:
        for rel, meta in self.manifest.get("files", {}).items():
            f = self.path / rel
            if not f.is_file():
                raise BundleError(f"bundle file {f} is missing")
            size = f.stat().st_size
            if size != meta["size"]:
                raise BundleError(f"bundle file {f} has {size} bytes, the manifest says {meta['size']}: "
                                  f"it is truncated or was changed")
            if hashes and sha256_file(f) != meta["sha256"]:
                raise BundleError(f"bundle file {f} does not match its sha256 in the manifest: it is corrupt "
                                  f"or was changed after export")


def write_manifest(directory: Path, generation: GenerationSpec, components: dict[str, ComponentEntry],
                   hash_files: bool = True, **extra) -> dict:
    """Hash every file in ``directory`` and write manifest.json; returns the manifest.

    ``hash_files=False`` writes a provisional manifest (no file list) that the parity gate loads before
    the final one is written.
    """
    files = {}
    listed = sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST)
    for f in listed if hash_files else []:
        rel = f.relative_to(directory).as_posix()
        files[rel] = {"size": f.stat().st_size, "sha256": sha256_file(f)}
    present = {f.relative_to(directory).as_posix() for f in listed}
    for name, entry in components.items():
        missing = [r for r in entry.files if r not in present]
        if missing:
            raise BundleError(f"component {name} names files that were not written: {missing}")
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "sdk_version": __version__,
                "generation": generation.to_dict(),
                "components": {k: v.to_dict() for k, v in components.items()},
                **extra, "files": files}
    (directory / MANIFEST).write_text(json.dumps(_json_safe(manifest), indent=2) + "\n", encoding="utf-8")
    return manifest


def check_output_path(dest: str | Path, force: bool) -> Path:
    dest = Path(dest)
    if dest.exists() and not force:
        raise InvalidInput(f"{dest} already exists; pass --force to replace it")
    if dest.exists() and not dest.is_dir():
        raise InvalidInput(f"{dest} exists and is not a directory")
    return dest


@contextlib.contextmanager
def atomic_directory(dest: str | Path, force: bool = False) -> Iterator[Path]:
    """Yield an empty temporary directory beside ``dest``; on success it becomes ``dest``.

    On any failure (or Ctrl-C) the temporary directory is removed and ``dest`` is left as it was.
    """
    dest = check_output_path(dest, force)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent))
    try:
        yield tmp
        if dest.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".old", dir=dest.parent))
            os.replace(dest, old / "b")
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
