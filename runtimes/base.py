"""The backend contract: load one component's artifact from a bundle; run numpy in, numpy out.

A backend reads artifacts of one or more targets (``formats``) and says whether it can run here
(``unavailable_reason``). Sessions check their inputs against the component's spec before calling the
backend's library, so a wrong shape is a clear error, not a traceback from deep inside a runtime; a runtime's
own failure and an output whose shape disagrees with the manifest are one-line ``BundleError``s.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from ..errors import BackendUnavailable, BundleError, FlashError, InvalidInput, first_line
from ..spec import ComponentSpec

if TYPE_CHECKING:
    from ..bundle import ComponentEntry

_NP_DTYPES = {"float32": np.float32, "int64": np.int64}


def thread_count(threads) -> int:
    """A backend's ``threads`` option as a positive int; anything else is a one-line ``InvalidInput``."""
    try:
        count = int(threads)
    except (TypeError, ValueError):
        raise InvalidInput(f"threads must be a positive integer, got {threads!r}") from None
    if count < 1:
        raise InvalidInput(f"threads must be a positive integer, got {threads}")
    return count


class Session(ABC):
    """One loaded component."""

    def __init__(self, spec: ComponentSpec):
        self.spec = spec

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = self.spec.input_names
        if set(feeds) != set(names):
            raise InvalidInput(f"{self.spec.name} takes inputs {names}, got {sorted(feeds)}")
        arrays = []
        for t in self.spec.inputs:
            a = np.ascontiguousarray(feeds[t.name], dtype=_NP_DTYPES[t.dtype])
            if a.shape != tuple(t.shape):
                raise InvalidInput(f"{self.spec.name} input {t.name} has shape {a.shape}, expected {tuple(t.shape)}")
            arrays.append(a)
        try:
            outputs = self._run(arrays)
        except FlashError:
            raise
        except Exception as e:  # noqa: BLE001 - a runtime's own failure on an artifact the checks let through
            raise BundleError(f"{self.spec.name} failed to run ({type(e).__name__}: {first_line(e)}): the "
                              f"artifact does not match its manifest or is broken") from None
        if len(outputs) != len(self.spec.outputs):
            raise BundleError(f"{self.spec.name} returned {len(outputs)} outputs, the manifest says "
                              f"{len(self.spec.outputs)}")
        result = {}
        for t, o in zip(self.spec.outputs, outputs):
            o = np.asarray(o, dtype=np.float32)
            if o.shape != tuple(t.shape):
                raise BundleError(f"{self.spec.name} returned {t.name} of shape {o.shape}, the manifest says "
                                  f"{tuple(t.shape)}")
            result[t.name] = o
        return result

    @abstractmethod
    def _run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """Inputs in spec order (validated); outputs in spec order."""


class Backend(ABC):
    name: ClassVar[str]
    formats: ClassVar[tuple[str, ...]]  # bundle targets whose artifacts this backend runs

    def __init__(self, **options):
        self.options = options

    @classmethod
    @abstractmethod
    def unavailable_reason(cls) -> str | None:
        """None if the backend can run on this machine, else a one-line reason (with the fix)."""

    @classmethod
    def require(cls) -> None:
        """Raise ``BackendUnavailable`` with the reason if this backend cannot run here."""
        reason = cls.unavailable_reason()
        if reason:
            raise BackendUnavailable(f"backend {cls.name!r} is not available here: {reason}")

    def load(self, bundle, component: str) -> Session:
        """Load ``component`` of ``bundle`` (a ``flash_edge.bundle.Bundle``)."""
        return self.open(bundle.path, component, bundle.components[component])

    def chained(self, entry: ComponentEntry, component: str, open_one) -> Session:
        """``open_chained`` under this backend's options: chunks streamed when ``stream_chunks`` is set."""
        from .chunked import open_chained  # chunked.py builds on this module's Session

        return open_chained(entry, component, open_one, stream=bool(self.options.get("stream_chunks")))

    @abstractmethod
    def open(self, root: Path, component: str, entry: ComponentEntry) -> Session:
        """Load one artifact described by ``entry`` (paths relative to ``root``). Works on any artifact an
        exporter wrote, in a bundle or not (benchmarks open single transformer blocks this way)."""
