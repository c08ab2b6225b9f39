"""A component exported in chunks (``--chunks K``, ``export/chunks.py``) run as one session.

The manifest lists the chunks under the component's ``options.chunks``, each with its path and its own
inputs and outputs. A backend opens one session per chunk; ``ChunkedSession`` runs them in order, each
reading what the component's inputs and the earlier chunks provided (the carried hidden states, and
``temb`` from chunk 0), so the pipeline sees one component with the manifest's I/O.

Streamed (the ``stream`` memory policy): ``StreamedChunks`` opens each chunk just before it runs and releases
it right after, on every run, so one chunk's weights are resident at a time, for one load per chunk per step.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from ..memory import return_freed_memory
from ..spec import ComponentSpec, TensorSpec, check_chain
from .base import Session


def chunk_specs(entry, component: str) -> list[ComponentSpec]:
    """The I/O spec of each chunk of ``entry`` (empty when it is not chunked), checked for a complete chain."""
    chunks = entry.options.get("chunks") or []
    specs = [ComponentSpec(f"{component}.chunk{i}", tuple(TensorSpec.from_dict(t) for t in c["inputs"]),
                           tuple(TensorSpec.from_dict(t) for t in c["outputs"])) for i, c in enumerate(chunks)]
    if specs:
        check_chain(entry.spec(component), specs)
    return specs


def open_chained(entry, component: str, open_one, stream: bool = False) -> Session:
    """The component's session: ``open_one(spec, program)`` once for an unchunked entry, or per chunk, chained
    (``stream``: per chunk and per run, see ``StreamedChunks``). ``program`` is where one program's facts are:
    the chunk's manifest dict, or for an unchunked entry its options with its ``path`` and ``files`` (so
    ``program["path"]``, ``program.get("data_file")`` and the like read the same either way)."""
    specs = chunk_specs(entry, component)
    if not specs:
        return open_one(entry.spec(component), {**entry.options, "path": entry.path, "files": entry.files})
    openers = [functools.partial(open_one, s, c) for s, c in zip(specs, entry.options["chunks"])]
    if stream:
        return StreamedChunks(entry.spec(component), openers)
    return ChunkedSession(entry.spec(component), [o() for o in openers])


class ChunkedSession(Session):
    """Sessions run one after another; each chunk's outputs join the state the later chunks read."""

    def __init__(self, spec: ComponentSpec, parts: list[Session]):
        super().__init__(spec)
        self.parts = parts

    @property
    def count(self) -> int:
        return len(self.parts)

    def _part(self, i: int) -> Session:
        return self.parts[i]

    def _done(self, i: int) -> None:
        """Chunk ``i`` has run (kept here; released when streamed)."""

    def _run(self, inputs):
        state = dict(zip(self.spec.input_names, inputs))
        for i in range(self.count):
            try:
                part = self._part(i)
                state.update(part.run({n: state[n] for n in part.spec.input_names}))
            finally:
                part = None
                self._done(i)
        return [state[n] for n in self.spec.output_names]


class StreamedChunks(ChunkedSession):
    """Chunks opened one at a time: chunk ``i`` is opened just before it runs and released right after (its
    heap handed back to the OS), on every run. ``loads[i]`` counts how often chunk ``i`` was opened; ``alive``
    is the chunk open now (None between runs)."""

    def __init__(self, spec: ComponentSpec, openers: list[Callable[[], Session]]):
        super().__init__(spec, [])  # no chunk is open between runs
        self.openers, self.loads, self.alive = openers, [0] * len(openers), None

    @property
    def count(self) -> int:
        return len(self.openers)

    def _part(self, i: int) -> Session:
        self.alive = self.openers[i]()
        self.loads[i] += 1
        return self.alive

    def _done(self, i: int) -> None:
        if self.alive is not None:
            self.alive = None
            return_freed_memory()
