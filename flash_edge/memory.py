"""Memory policies: which components are resident during which stage of a generation.

A generation has three stages: encode (the text encoders), denoise (the transformer, every step) and decode
(the VAE decoder). A component's weights are needed only in its stage.

* ``fast``: every component is opened when the bundle is loaded and stays open; the lowest latency per image
  and the highest peak (every component at once).
* ``balanced``: components are opened at first use; the text encoders are released after each encoding, the
  transformer and the decoder stay. For a stream of images on a laptop.
* ``low``: each component is opened just before its stage and released right after it (what
  apple/ml-stable-diffusion calls ``reduceMemory``), so at most one stage's weights are resident. Backends
  are also opened with their low-memory settings (``low_memory=True``: ONNX Runtime without its memory arena
  or memory patterns, and without pre-packed weights unless the weights are in a mapped external data file;
  ``runtimes/onnx.py``). For phones. Costs a load of every component per image.
* ``stream``: ``low``, and a component exported in chunks (``--chunks``) is streamed: each chunk is opened
  just before it runs and released right after, at every step (``runtimes/chunked.StreamedChunks``), so one
  chunk's weights are resident, not the transformer's. For the smallest phones. Costs a load of every chunk
  per step (measured at real size in ``benchmarks/results/sd35m-full``).

Releasing a session frees its memory to the C heap; on glibc the heap keeps much of it (measured: 0.4 GB of a
0.6 GB transformer chunk stayed resident after its session was gone), so a release ends with
``malloc_trim(0)``, which hands the free heap pages back to the OS.

Every policy gives the same image: only when a session exists changes, never what it computes.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import gc
from collections.abc import Callable, Mapping
from typing import Iterator

from .errors import InvalidInput
from .spec import TEXT_ENCODERS

POLICIES = ("fast", "balanced", "low", "stream")
RELEASED_AFTER_STAGE = {"fast": frozenset(), "balanced": frozenset(TEXT_ENCODERS),
                        "low": frozenset((*TEXT_ENCODERS, "transformer", "vae_decoder"))}
RELEASED_AFTER_STAGE["stream"] = RELEASED_AFTER_STAGE["low"]


def backend_options(policy: str) -> dict:
    """The backend options a policy sets: ``low_memory`` (each backend's low-memory session settings) under
    ``low`` and ``stream``, and ``stream_chunks`` under ``stream``."""
    return {"low_memory": True, **({"stream_chunks": True} if policy == "stream" else {})} \
        if policy in ("low", "stream") else {}


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    """glibc's ``malloc_trim``, or None where the C library has none (macOS, musl, Windows)."""
    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), "malloc_trim", None)
    except OSError:
        return None


def return_freed_memory() -> bool:
    """Give the C heap's free pages back to the OS; True where the C library can (glibc)."""
    gc.collect()
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


def check_policy(policy: str) -> str:
    if policy not in POLICIES:
        raise InvalidInput(f"unknown memory policy {policy!r}; choose one of {', '.join(POLICIES)}")
    return policy


class Components(Mapping):
    """The pipeline's sessions under a memory policy: a mapping name -> ``Session`` that opens a session on
    first access (``openers[name]()``) and, through ``with stage(names):``, releases what the policy releases
    after it."""

    def __init__(self, openers: dict[str, Callable[[], object]], policy: str = "fast"):
        self.policy = check_policy(policy)
        self._openers = dict(openers)
        self._open: dict[str, object] = {}
        self.loads: dict[str, int] = {name: 0 for name in openers}  # how often each was opened
        self._depth: dict[str, int] = {}  # open stages per component (stages nest)
        if policy == "fast":
            for name in openers:
                self[name]

    @classmethod
    def resident(cls, sessions: dict) -> "Components":
        """Sessions that already exist (in-memory reference modules): always open, never released."""
        return cls({name: (lambda s=s: s) for name, s in sessions.items()}, "fast")

    def __getitem__(self, name: str):
        if name not in self._open:
            if name not in self._openers:
                raise KeyError(name)
            self._open[name] = self._openers[name]()
            self.loads[name] += 1
        return self._open[name]

    def __contains__(self, name) -> bool:  # Mapping's default would open the session to find out
        return name in self._openers

    def __iter__(self) -> Iterator[str]:
        return iter(self._openers)

    def __len__(self) -> int:
        return len(self._openers)

    @property
    def open_names(self) -> list[str]:
        """The components whose sessions are alive now."""
        return list(self._open)

    def release(self, names) -> None:
        """Drop the sessions of ``names`` (their runtime frees the weights once nothing else holds them)."""
        dropped = [self._open.pop(n) for n in names if n in self._open]
        if dropped:
            del dropped
            return_freed_memory()

    @contextlib.contextmanager
    def stage(self, names) -> Iterator[None]:
        """A stage that uses ``names``: on leaving it (even by an error), release those the policy releases.
        Stages nest: a component is released when the outermost stage that names it ends (a batch's denoise
        stage spans every image's own)."""
        names = list(names)
        for n in names:
            self._depth[n] = self._depth.get(n, 0) + 1
        try:
            yield
        finally:
            for n in names:
                self._depth[n] -= 1
            self.release([n for n in names if n in RELEASED_AFTER_STAGE[self.policy] and not self._depth[n]])
