"""A component exported in chunks (``--chunks K``, ``export/chunks.py``) run as one session.

The manifest lists the chunks under the component's ``options.chunks``, each with its path and its own
inputs and outputs. A backend opens one session per chunk; ``ChunkedSession`` runs them in order, each
reading what the component's inputs and the earlier chunks provided (the carried hidden states, and
``temb`` from chunk 0), so the pipeline sees one component with the manifest's I/O.
"""

from __future__ import annotations

from ..errors import BundleError
from ..spec import ComponentSpec, TensorSpec
from .base import Session


def chunk_specs(entry, component: str) -> list[ComponentSpec]:
    """The I/O spec of each chunk of ``entry`` (empty when it is not chunked), checked for a complete chain."""
    chunks = entry.options.get("chunks") or []
    specs = [ComponentSpec(f"{component}.chunk{i}", tuple(TensorSpec.from_dict(t) for t in c["inputs"]),
                           tuple(TensorSpec.from_dict(t) for t in c["outputs"])) for i, c in enumerate(chunks)]
    if specs:
        known = set(entry.spec(component).input_names)
        for s in specs:
            missing = [n for n in s.input_names if n not in known]
            if missing:
                raise BundleError(f"{s.name} takes {missing}, which neither the component's inputs nor an earlier "
                                  f"chunk provide: the manifest's chunk list is broken")
            known.update(s.output_names)
        absent = [n for n in entry.spec(component).output_names if n not in known]
        if absent:
            raise BundleError(f"no chunk of {component} writes its output(s) {absent}")
    return specs


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
