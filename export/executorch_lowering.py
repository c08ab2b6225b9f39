"""The graph work between ``torch.export`` and ``to_executorch`` for the ``executorch`` target: how attention
is decomposed, constant folding, and what the delegate took.

Attention: torch decomposes ``scaled_dot_product_attention`` into matmuls and ``_safe_softmax``, whose
"fully masked row" guard (eq/any/logical_not/where over the whole attention matrix) XNNPACK cannot take:
each attention then leaves the delegate twice and runs four portable ops over [heads, tokens, tokens].
SD3 attention has no mask, so no row is ever fully masked and ``_safe_softmax`` equals ``softmax``.
``attention="softmax"`` keeps torch's decomposition with that one op replaced; its 4-D matmuls still become
``expand_copy`` + batch matmul, and the copy of the [heads, tokens, tokens] weights is left to the portable
kernels (at 1024^2 that is 1.9 GB per copy). ``attention="bmm"`` (default) writes unmasked SDPA as two 3-D
batch matmuls around a plain softmax, all of it delegated, no copy; a per-key additive bias (the folded zero
slots of ``flash_edge.folding``) is added to the scores; any other mask, dropout, causal or grouped heads keeps
torch's own decomposition.
"""

from __future__ import annotations

import re


def sdpa_decompositions(attention: str) -> dict:
    """torch's SDPA decompositions, with ``_safe_softmax`` -> ``softmax`` (exact when no attention mask can mask
    a whole row, as in SD3's joint attention) and, for ``bmm``, unmasked SDPA as 3-D batch matmuls."""
    import math

    import torch

    aten = torch.ops.aten
    full = torch.export.default_decompositions()
    table = {op: full[op] for op in (aten.scaled_dot_product_attention.default,
                                     aten._scaled_dot_product_attention_math.default,
                                     aten._scaled_dot_product_flash_attention_for_cpu.default) if op in full}

    def softmax(x, dim, dtype=None):
        return aten._softmax.default(x if dtype is None else x.to(dtype), dim, False)

    table[aten._safe_softmax.default] = softmax
    if attention == "bmm":
        library = table[aten.scaled_dot_product_attention.default]

        def sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
            if dropout_p or is_causal or enable_gqa or query.dim() != 4 or not _key_bias(attn_mask):
                return library(query, key, value, attn_mask, dropout_p, is_causal, scale=scale, enable_gqa=enable_gqa)
            b, h, n, d = query.shape
            m, dv = key.shape[-2], value.shape[-1]
            q = (query * (1.0 / math.sqrt(d) if scale is None else scale)).reshape(b * h, n, d)
            scores = torch.bmm(q, key.reshape(b * h, m, d).transpose(1, 2))
            if attn_mask is not None:  # one bias row for every head and query (flash_edge.folding)
                scores = scores + attn_mask.reshape(1, 1, m)
            weights = softmax(scores, -1)
            return torch.bmm(weights, value.reshape(b * h, m, dv)).reshape(b, h, n, dv)

        table[aten.scaled_dot_product_attention.default] = sdpa
    return table


def _key_bias(mask) -> bool:
    """No mask, or an additive float bias per key shared by every head and query (shape [1, 1, 1, keys]): the
    masks the ``bmm`` form takes. A finite bias masks no row, so ``softmax`` stays exact."""
    return mask is None or (mask.is_floating_point() and mask.dim() == 4 and tuple(mask.shape[:3]) == (1, 1, 1))


def constant_folding():
    """executorch's constant propagation as an edge transform (run before partitioning): folds what only
    depends on weights and buffers, e.g. the crop of SD3's position-embedding table to the exported
    resolution (the table covers 384x384 patches: 906 MB at full size, of which 512^2 needs 1/144).
    Quantization primitives are skipped by the pass, so quantized weights stay quantized."""
    from executorch.exir.pass_base import ExportedProgramPassBase, ExportedProgramPassResult
    from executorch.exir.pass_manager import ExportedProgramPassManager
    from executorch.exir.passes.constant_prop_pass import constant_prop_pass

    class ConstantFolding(ExportedProgramPassBase):
        def call(self, exported_program):
            return ExportedProgramPassResult(constant_prop_pass(exported_program), True)

    return ExportedProgramPassManager([ConstantFolding()])


def delegation_summary(edge_program) -> dict:
    """Share of the lowered graph's ops that the delegate took (executorch's own count; the ``getitem``
    nodes that unpack delegate outputs are bookkeeping, not ops, and are left out)."""
    from executorch.devtools.backend_debug import get_delegation_info

    info = get_delegation_info(edge_program.exported_program().graph_module)
    ops = {k: v for k, v in info.delegation_by_operator.items() if k != "getitem"}
    delegated = sum(v.delegated for v in ops.values())
    left = {re.sub(r"^aten_", "aten.", k): v.non_delegated for k, v in sorted(ops.items()) if v.non_delegated}
    total = delegated + sum(left.values())
    return {"delegated_subgraphs": info.num_delegated_subgraphs, "delegated_ops": delegated, "total_ops": total,
            "delegated_share": round(delegated / total, 4) if total else 0.0, "undelegated_ops": left}
