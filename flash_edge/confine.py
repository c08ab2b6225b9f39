"""Paths that an untrusted bundle names, held inside the bundle.

A path in a manifest must be relative, normalised POSIX (``a/b.onnx``: no ``..``, ``.``, empty parts,
backslashes, drive letters or NUL) and must resolve, symlinks included, inside the bundle's folder. The
syntax is checked before the file system is touched, and a path that leaves the bundle gets the same message
whether or not its target exists, so a crafted manifest cannot probe the machine's files.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from .errors import BundleError

MAX_PATH_CHARS = 512


def relative_path(value, key: str) -> str:
    """``value`` if it is a normalised relative POSIX path, else a ``BundleError`` naming ``key``."""
    if not isinstance(value, str) or not value:
        raise BundleError(f"manifest key {key} must be a non-empty relative path, got {_short(value)}")
    bad = (len(value) > MAX_PATH_CHARS or "\\" in value or "\x00" in value or value.startswith("/")
           or (len(value) > 1 and value[1] == ":"))
    parts = value.split("/")
    if bad or any(p in ("", ".", "..") for p in parts) or PurePosixPath(value).as_posix() != value:
        raise BundleError(f"manifest key {key} must be a normalised path relative to the bundle "
                          f"(no '..', '.', leading '/', backslash or drive), got {_short(value)}")
    return value


def inside(root: Path, rel: str, key: str) -> Path:
    """``root / rel`` after checking ``rel`` (``relative_path``) and that it resolves inside ``root``."""
    relative_path(rel, key)
    base = Path(os.path.realpath(root))
    target = Path(os.path.realpath(base / rel))
    if target != base and base not in target.parents:
        raise BundleError(f"manifest key {key}: {rel!r} leads outside the bundle (through a symbolic link)")
    return root / rel


def stray_entries(root: Path, listed: set[str], ignore: frozenset[str], limit: int) -> list[str]:
    """Files under ``root`` that ``listed`` does not name (``ignore``: names skipped anywhere), and symbolic
    links that lead outside ``root``; at most ``limit`` of them. Does not follow links while walking."""
    base = Path(os.path.realpath(root))
    found: list[str] = []
    for folder, dirs, files in os.walk(root, followlinks=False):
        here = Path(folder)
        for name in sorted(dirs + files):
            path = here / name
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                target = Path(os.path.realpath(path))
                if target != base and base not in target.parents:
                    found.append(f"{rel} (a symbolic link that leads outside the bundle)")
                    continue
            if name in files and name not in ignore and rel not in listed:
                found.append(rel)
            if len(found) >= limit:
                return found
    return found


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
