"""FLOPs of one SD3-family transformer call, counted from its diffusers config (``SD3Transformer2DModel``).

2 FLOPs per multiply-add of every matrix product: the patch embedding, the timestep/pooled embedders, the
context embedder, per block the adaLN modulation, the q/k/v/out projections of both streams, the joint
attention products (QK^T and AV over image + text tokens), the MMDiT-X image-only second attention, both
4x MLPs, and the output layer. Element-wise work (norms, activations, softmax) is not counted: it is a few
percent of the total and not what a GEMM peak bounds. ``benchmarks/block.py`` counts one block the same way.

A block is ``context_pre_only`` when it is the last one: its text stream has no output projection and no
MLP, and its text modulation is 2 x hidden wide instead of 6. Dual-attention blocks modulate with 9 x hidden.
"""

from __future__ import annotations


def _mm(rows: int, inputs: int, outputs: int) -> int:
    return 2 * rows * inputs * outputs


def block_flops(image_tokens: int, text_tokens: int, hidden: int, dual_attention: bool = False,
                context_pre_only: bool = False) -> int:
    """One ``JointTransformerBlock``."""
    n, m, d = image_tokens, text_tokens, hidden
    f = _mm(1, d, (9 if dual_attention else 6) * d) + _mm(1, d, (2 if context_pre_only else 6) * d)  # adaLN
    f += _mm(n, d, 4 * d)  # image q, k, v, out
    f += _mm(m, d, 3 * d) + (0 if context_pre_only else _mm(m, d, d))  # text q, k, v (, out)
    f += 2 * 2 * (n + m) ** 2 * d  # joint attention: QK^T and AV, all heads
    if dual_attention:
        f += _mm(n, d, 4 * d) + 2 * 2 * n * n * d  # image-only attention: q, k, v, out + its products
    f += _mm(n, d, 4 * d) + _mm(n, 4 * d, d)  # image MLP
    if not context_pre_only:
        f += _mm(m, d, 4 * d) + _mm(m, 4 * d, d)  # text MLP
    return f


CONFIG_KEYS = ("num_attention_heads", "attention_head_dim", "patch_size", "num_layers", "in_channels",
               "pooled_projection_dim", "joint_attention_dim", "caption_projection_dim")  # integers it reads


def transformer_flops(config: dict, image_tokens: int, text_tokens: int) -> int:
    """One forward of ``SD3Transformer2DModel(**config)`` on ``image_tokens`` patches and ``text_tokens``."""
    d = config["num_attention_heads"] * config["attention_head_dim"]
    p, layers = config["patch_size"], config["num_layers"]
    dual = {i for i in (config.get("dual_attention_layers") or ()) if type(i) is int}
    f = _mm(image_tokens, config["in_channels"] * p * p, d)  # patch embedding (a p x p stride-p conv)
    f += _mm(1, 256, d) + _mm(1, d, d)  # timestep embedder (256 sinusoidal channels)
    f += _mm(1, config["pooled_projection_dim"], d) + _mm(1, d, d)  # pooled text embedder
    f += _mm(text_tokens, config["joint_attention_dim"], config["caption_projection_dim"])  # context embedder
    for i in range(layers):
        f += block_flops(image_tokens, text_tokens, d, dual_attention=i in dual, context_pre_only=i == layers - 1)
    f += _mm(1, d, 2 * d) + _mm(image_tokens, d, p * p * config.get("out_channels", config["in_channels"]))
    return f


def image_tokens(latent_height: int, latent_width: int, patch_size: int) -> int:
    return (latent_height // patch_size) * (latent_width // patch_size)
