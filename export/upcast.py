"""A half-precision model exported through fp32 tools without an fp32 copy of the whole model."""

from __future__ import annotations

import contextlib

import torch
from torch import nn


@contextlib.contextmanager
def upcast(module: nn.Module, dtype: torch.dtype = torch.float32):
    """``module``'s floating-point weights in ``dtype`` inside the block; afterwards the very tensors it held
    before are put back. A model loaded in bf16 (SD3.5-Large: 16 GB, 32 GB in fp32), its weights memory-mapped
    from safetensors, is then exported piece by piece: one chunk's fp32 copy exists at a time, never the
    model's, and the weights stay file-backed (casting back with ``.to`` would copy every chunk into anonymous
    memory: measured, SD3.5-Large's int8 export passed 20 GB that way)."""
    params, buffers, seen = [], [], set()
    for mod in module.modules():
        for p in mod.parameters(recurse=False):
            if p.is_floating_point() and p.dtype != dtype and id(p) not in seen:
                seen.add(id(p))
                params.append((p, p.data))
                p.data = p.data.to(dtype)
        for name, b in mod.named_buffers(recurse=False):
            if b is not None and b.is_floating_point() and b.dtype != dtype:
                buffers.append((mod, name, b))
                mod._buffers[name] = b.to(dtype)
    try:
        yield module
    finally:
        for p, data in params:
            p.data = data
        for mod, name, b in buffers:
            mod._buffers[name] = b
