"""The PyTorch backend: runs ``torch``-target artifacts (safetensors + config, loaded into the diffusers/
transformers classes) and, in memory, the reference pipeline. The reference every other backend is held to.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ..errors import BundleError
from ..spec import TORCH_CLASSES
from .base import Backend, Session


class TorchSession(Session):
    def __init__(self, spec, module):
        super().__init__(spec)
        self.module = module

    def _run(self, inputs):
        import torch

        with torch.inference_mode():
            out = self.module(*(torch.from_numpy(a) for a in inputs))
        return [o.detach().float().numpy() for o in out]


class TorchBackend(Backend):
    name = "torch"
    formats = ("torch",)

    @classmethod
    def unavailable_reason(cls):
        missing = [m for m in ("torch", "diffusers", "transformers") if importlib.util.find_spec(m) is None]
        return f"needs {', '.join(missing)}: pip install 'flash-edge[torch]'" if missing else None

    def open(self, root, component, entry):
        from ..quiet import quiet

        with quiet():  # diffusers' torchao notice on import, transformers' "Loading weights" bars
            return self._open(root, component, entry)

    def _open(self, root, component, entry):
        import torch

        from ..components import wrap
        from ..models.loading import from_pretrained

        dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
        if entry.precision not in dtypes:
            raise BundleError(f"{component}: torch artifacts are {', '.join(dtypes)}, not {entry.precision[:40]!r}")
        if entry.options.get("class") != TORCH_CLASSES.get(component):  # Bundle.open checked it; other callers
            raise BundleError(f"{component}: a torch artifact loads into {TORCH_CLASSES.get(component)}, not "
                              f"{str(entry.options.get('class'))[:80]!r}")
        module = from_pretrained(TORCH_CLASSES[component], Path(root) / entry.path, dtypes[entry.precision],
                                 BundleError)
        threads = self.options.get("threads")
        if threads:
            torch.set_num_threads(int(threads))
        return TorchSession(entry.spec(component), wrap(component, module.eval().requires_grad_(False)))


def reference_sessions(wrappers: dict, specs: dict) -> dict[str, TorchSession]:
    """Sessions over in-memory wrapped modules (the reference pipeline, ``--model`` generation)."""
    return {name: TorchSession(specs[name], module) for name, module in wrappers.items()}

