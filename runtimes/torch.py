"""The PyTorch backend: runs ``torch``-target artifacts (safetensors + config, loaded into the diffusers/
transformers classes) and, in memory, the reference pipeline. The reference every other backend is held to.
"""

from __future__ import annotations

import importlib.util

from ..errors import BundleError
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
        import importlib

        import torch

        from ..components import wrap

        lib, cls_name = entry.options["class"].split(".")
        cls = getattr(importlib.import_module(lib), cls_name)
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[entry.precision]
        kwargs = {"torch_dtype": dtype} if lib == "diffusers" else {"dtype": dtype}
        try:
            module = cls.from_pretrained(str(root / entry.path), use_safetensors=True, local_files_only=True,
                                         **kwargs)
        except (OSError, ValueError, RuntimeError) as e:
            raise BundleError(f"cannot load {root / entry.path} as {cls_name}: {str(e).splitlines()[0]}") from None
        threads = self.options.get("threads")
        if threads:
            torch.set_num_threads(int(threads))
        return TorchSession(entry.spec(component), wrap(component, module.eval().requires_grad_(False)))


def reference_sessions(wrappers: dict, specs: dict) -> dict[str, TorchSession]:
    """Sessions over in-memory wrapped modules (the reference pipeline, ``--model`` generation)."""
    return {name: TorchSession(specs[name], module) for name, module in wrappers.items()}

