"""A component exported in chunks (``--chunks K``, ``export/chunks.py``) run as one session.

The manifest lists the chunks under the component's ``options.chunks``, each with its path and its own
inputs and outputs. A backend opens one session per chunk; ``ChunkedSession`` runs them in order, each
reading what the component's inputs and the earlier chunks provided (the carried hidden states, and
``temb`` from chunk 0), so the pipeline sees one component with the manifest's I/O.
"""

from __future__ import annotations

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


def open_chained(entry, component: str, open_one) -> Session:
    """The component's session: ``open_one(spec, program)`` once for an unchunked entry, or per chunk, chained.
    ``program`` is where one program's facts are: the chunk's manifest dict, or for an unchunked entry its
    options with its ``path`` and ``files`` (so ``program["path"]``, ``program.get("data_file")`` and the like
    read the same either way)."""
    specs = chunk_specs(entry, component)
    if not specs:
        return open_one(entry.spec(component), {**entry.options, "path": entry.path, "files": entry.files})
    return ChunkedSession(entry.spec(component), [open_one(s, c) for s, c in zip(specs, entry.options["chunks"])])


class ChunkedSession(Session):
    """Sessions run one after another; each chunk's outputs join the state the later chunks read."""

    def __init__(self, spec: ComponentSpec, parts: list[Session]):
        super().__init__(spec)
        self.parts = parts

    def _run(self, inputs):
        state = dict(zip(self.spec.input_names, inputs))
        for part in self.parts:
            state.update(part.run({n: state[n] for n in part.spec.input_names}))
        return [state[n] for n in self.spec.output_names]
