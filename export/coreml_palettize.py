"""Which weights of a component the Core ML target palettizes, and how (k-means LUTs, coremltools.optimize).

Each weight is put in one category by its PyTorch parameter name (diffusers/transformers naming), and the
policy says per precision which categories get a look-up table. Everything not chosen stays fp16.

Measured on the built-in model (full-pipeline image PSNR vs fp32, 4 steps, see the README's Core ML
section): palettizing the adaLN modulation layers costs little extra quality; keeping them fp16 would leave
~35 % of an SD3.5-Medium block in fp16 (15 of its 43 d^2 weights), and the w6 package could not reach 42 % of
the fp16 one. Embeddings, norms, the final layer (proj_out, text_projection) stay fp16: they are < 1 % of the
weights, and the final layer writes the velocity the sampler integrates directly. The VAE decoder is never
palettized (its convs are where image detail comes from, and it is 2 % of an SD3.5-M bundle's weights).

The weights are found in the converted MIL program by name: coremltools names a weight const after the
parameter (``p_`` + dotted name with ``_`` for ``.`` from torch.export; the same without ``p_`` from
jit.trace), with ``_to_fp16`` and, once compressed, ``_palettized`` appended. The same names take the
decompressed weights back into a PyTorch copy of the module (the Linux parity gate).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import ExportError
from ..spec import STAYS_FLOAT  # components that stay fp16 at every precision

BITS = {"w8": 8, "w6": 6, "w4": 4}
GROUP_SIZE = 16  # output channels per LUT with per-grouped-channel palettization (iOS18+)
MIN_ELEMENTS = 1024  # smaller weights keep fp16: a 2^bits-entry LUT would be a large share of them

# category -> pattern on the PyTorch parameter name; first match wins (adaLN before the generic norm rule).
CATEGORIES = (
    ("adaln", r"\.norm1(_context)?\.linear\.|\.norm_out\.linear\."),
    ("conditioning", r"time_text_embed|context_embedder"),  # the linear layers that embed timestep and text
    ("embedding", r"pos_embed|token_embedding|position_embedding|embed_tokens|(^|\.)shared\.|relative_attention_bias"),
    ("final", r"(^|\.)proj_out\.|text_projection"),
    ("norm", r"norm"),  # qk rms-norm, layer norms (after adaln: "norm1.linear" is modulation, not a norm)
    ("attention", r"\.(attn2?|self_attn|SelfAttention)\."),
    ("mlp", r"\.(ff|ff_context|mlp|DenseReluDense)\."),
)
PALETTIZED = ("attention", "mlp", "adaln", "conditioning")  # categories with a LUT at w8/w6/w4; the others stay fp16


def category(param_name: str) -> str:
    for cat, pattern in CATEGORIES:
        if re.search(pattern, param_name):
            return cat
    return "other"


def _flat(name: str) -> str:
    return name.replace(".", "_")


def const_to_param(module) -> dict[str, str]:
    """MIL const name (every spelling coremltools uses) -> PyTorch parameter name of ``module``."""
    out: dict[str, str] = {}
    for pname, _ in module.named_parameters():
        for prefix in ("p_", ""):
            for suffix in ("_to_fp16", "_to_fp16_palettized", ""):
                key = prefix + _flat(pname) + suffix
                if key in out and out[key] != pname:
                    raise ExportError(f"parameters {out[key]} and {pname} flatten to the same Core ML name {key}")
                out[key] = pname
    return out


@dataclass(frozen=True)
class Policy:
    precision: str
    grouped: bool  # per-grouped-channel LUTs (needs iOS18); else one LUT per tensor (iOS17)

    @property
    def bits(self) -> int | None:
        return BITS.get(self.precision)

    def describe(self) -> dict:
        """Per-category choices, as the manifest records them."""
        if self.bits is None:
            return {c: "fp16" for c, _ in CATEGORIES} | {"vae_decoder": "fp16"}
        lut = (f"{self.bits}-bit kmeans LUT " + (f"per {GROUP_SIZE} output channels" if self.grouped else "per tensor")
               + f" (weights >= {MIN_ELEMENTS} elements)")
        return {c: (lut if c in PALETTIZED else "fp16") for c, _ in CATEGORIES} | {"vae_decoder": "fp16"}

    def chosen(self, component: str, module) -> dict[str, str]:
        """PyTorch parameter name -> category, for the weights this policy palettizes in ``module``."""
        if self.bits is None or component in STAYS_FLOAT:
            return {}
        return {n: category(n) for n, p in module.named_parameters()
                if p.dim() >= 2 and p.numel() >= MIN_ELEMENTS and category(n) in PALETTIZED}

    def config(self, mlmodel, component: str, module):
        """The coremltools OptimizationConfig naming each chosen weight const, or None (nothing to do)."""
        import coremltools.optimize.coreml as cto

        chosen = self.chosen(component, module)
        if not chosen:
            return None
        kw = dict(granularity="per_grouped_channel", group_size=GROUP_SIZE) if self.grouped else {}
        # coremltools compresses a const only if it has *more than* weight_threshold elements; the policy's
        # rule is "at least MIN_ELEMENTS" (a 32x32 CLIP-L projection of the tiny model is exactly 1024)
        op_config = cto.OpPalettizerConfig(mode="kmeans", nbits=self.bits, weight_threshold=MIN_ELEMENTS - 1, **kw)
        to_param, names = const_to_param(module), {}
        for const in mil_weight_names(mlmodel):
            if to_param.get(const) in chosen:
                names[const] = op_config
        missing = set(chosen) - {to_param[c] for c in names}
        if missing:
            raise ExportError(f"{component}: no Core ML weight const found for {sorted(missing)[:3]} "
                              f"(coremltools renamed them?); cannot palettize them")
        return cto.OptimizationConfig(op_name_configs=names)

    def apply(self, mlmodel, component: str, module):
        import coremltools.optimize.coreml as cto

        config = self.config(mlmodel, component, module)
        return mlmodel if config is None else cto.palettize_weights(mlmodel, config)

    def weights(self, mlmodel, component: str, module) -> dict:
        """The weights ``apply`` would give, expanded (const name -> array), without writing a model."""
        config = self.config(mlmodel, component, module)
        return decompressed_weights(mlmodel) if config is None else palettized_weights(mlmodel, config)


def mil_weight_names(mlmodel) -> list[str]:
    prog = mlmodel._mil_program
    return [op.name for op in prog.functions["main"].operations if op.op_type == "const"]


def _weights_after(mlmodel, passes) -> dict[str, "object"]:
    from coremltools.converters.mil.mil.passes.pass_registry import PASS_REGISTRY
    from coremltools.models.utils import _apply_graph_pass
    from coremltools.optimize.coreml._quantization_passes import WeightDecompressor

    # dead-code elimination drops the LUT/index consts the decompression leaves unused, as saving does
    passes = [*passes, WeightDecompressor(op_selector=lambda op: True), PASS_REGISTRY["common::dead_code_elimination"]]
    prog = _apply_graph_pass(mlmodel, passes, return_pymil_prog=True)
    return {op.name: op.outputs[0].val for op in prog.functions["main"].operations
            if op.op_type == "const" and op.outputs[0].val is not None}


def decompressed_weights(mlmodel) -> dict[str, "object"]:
    """Const name -> float array of every const of a (possibly palettized) model, LUTs expanded: coremltools'
    own decompression pass (behind ``cto.decompress_weights``), stopped at the MIL program."""
    return _weights_after(mlmodel, [])


def palettized_weights(mlmodel, config) -> dict[str, "object"]:
    """What ``cto.palettize_weights(mlmodel, config)`` would store, expanded, without writing a model (the
    same coremltools pass; used to measure other precisions cheaply)."""
    from coremltools.converters.mil.mil.passes.graph_pass import PassOption
    from coremltools.converters.mil.mil.passes.pass_registry import PASS_REGISTRY

    palettizer = PASS_REGISTRY["compression::palettize_weights"]
    palettizer.set_options([PassOption("config", config), PassOption("joint_compression", False)])
    return _weights_after(mlmodel, [palettizer])


def load_into(module, weights: dict) -> list[str]:
    """Copy Core ML weights (const name -> array, see ``decompressed_weights``) into ``module``'s
    parameters; returns the names of the parameters set."""
    import torch

    names = const_to_param(module)
    params = dict(module.named_parameters())
    done = []
    for const, val in weights.items():
        pname = names.get(const)
        if pname is None:
            continue
        p = params[pname]
        with torch.no_grad():
            p.copy_(torch.as_tensor(val, dtype=p.dtype).reshape(p.shape))
        done.append(pname)
    return done
