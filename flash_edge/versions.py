"""Installed package versions, for manifests and benchmark reports (no imports of the packages themselves)."""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version


def package_versions(names) -> dict[str, str]:
    """``{name: version}`` for the distributions among ``names`` that are installed."""
    out = {}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def python_version() -> str:
    return platform.python_version()
