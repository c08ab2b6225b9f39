"""Zero-slot folding: the T5 slot of a bundle without T5 run as one token instead of 256, exactly.

Without T5 (the paper's text-encoder restructuring, and flash-edge's default), SD3 still feeds the transformer
T5's 256 slots, all zeros (diffusers' ``encode_prompt``). Those 256 tokens enter identical and nothing in an MMDiT
block can tell them apart: the context embedder, AdaLN, the MLPs and the q/k norms act on each token alone, and
text gets no position embedding. So they stay identical through every block, and in joint attention N identical
keys with identical values weigh exactly as one key whose logit is raised by ln N:

    sum over the N copies of exp(s) v = exp(s + ln N) v       (and the same in the softmax's denominator)

The folded transformer keeps the CLIP tokens and one zero slot, and its joint attention adds ln N to that key's
logits (an additive mask). Its outputs are the unfolded ones up to rounding; the context tokens it hands between
chunks are the unfolded ones with the 255 repeats left out. At 512^2 (1024 image tokens) that is 1357 -> 1102
tokens per joint attention: per SD3.5-Medium block, 34% less joint-attention work, 15% less linear work, 16% fewer
FLOPs in all (``benchmarks/results/executorch-block-folded.md``).

A bundle's transformer keeps its input shape (all 256 slots; the graph reads the first), so apps and older
runtimes feed it as before. Only the exported programs fold: the PyTorch reference, the ``torch`` target and the
parity gate's reference run diffusers' own processors, so every export's gate checks the folding too.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

from .conditioning import TextLayout


@dataclass(frozen=True)
class ZeroSlots:
    """The fold of a text layout: keep ``keep`` context tokens, the last standing for ``repeat`` equal ones."""

    keep: int
    repeat: int

    def manifest(self) -> dict:
        return {"t5_slots": self.repeat, "kept": 1, "logit_bias": math.log(self.repeat)}


def zero_slots(text: TextLayout) -> ZeroSlots | None:
    """The fold for ``text``, or None where there is nothing exact to fold (T5 states, or fewer than 2 slots)."""
    if text.t5 != "zeros" or text.t5_tokens < 2:
        return None
    return ZeroSlots(keep=text.clip_tokens + 1, repeat=text.t5_tokens)


class FoldedJointAttention:
    """diffusers' ``JointAttnProcessor2_0`` (SD3's joint attention) over ``keys`` keys, the last weighed ``repeat``
    times. Written out here because diffusers' processor takes no mask; every line but the mask is its own. The
    mask is made here, before any tracing, so that exporters see a constant (made inside the graph it would be an
    op that XNNPACK does not take, and the delegate would be cut in two around it)."""

    def __init__(self, repeat: int, keys: int):
        import torch

        self.bias = torch.zeros(1, 1, 1, keys)
        self.bias[..., -1] = math.log(repeat)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, *args, **kwargs):
        import torch
        import torch.nn.functional as F

        batch, n_image = hidden_states.shape[0], hidden_states.shape[1]
        heads = attn.heads

        def project(x, q, k, v, norm_q, norm_k):
            split = [p(x).view(batch, -1, heads, attn.to_k.out_features // heads).transpose(1, 2) for p in (q, k, v)]
            if norm_q is not None:
                split[0] = norm_q(split[0])
            if norm_k is not None:
                split[1] = norm_k(split[1])
            return split

        query, key, value = project(hidden_states, attn.to_q, attn.to_k, attn.to_v, attn.norm_q, attn.norm_k)
        cq, ck, cv = project(encoder_hidden_states, attn.add_q_proj, attn.add_k_proj, attn.add_v_proj,
                             attn.norm_added_q, attn.norm_added_k)
        query, key, value = (torch.cat(pair, dim=2) for pair in ((query, cq), (key, ck), (value, cv)))
        if key.shape[2] != self.bias.shape[-1]:
            raise ValueError(f"folded attention made for {self.bias.shape[-1]} keys got {key.shape[2]}")
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=self.bias.to(query.dtype))
        out = out.transpose(1, 2).reshape(batch, -1, heads * query.shape[-1]).to(query.dtype)
        hidden_states, encoder_hidden_states = out[:, :n_image], out[:, n_image:]
        if not attn.context_pre_only:
            encoder_hidden_states = attn.to_add_out(encoder_hidden_states)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        return hidden_states, encoder_hidden_states


def joint_attentions(transformer) -> list:
    """The joint (image + text) attention of every block; MMDiT-X's second, image-only attention is left out."""
    return [block.attn for block in transformer.transformer_blocks]


@contextmanager
def folded(wrapper, fold: ZeroSlots | None, image_tokens: int):
    """Within the block, ``wrapper`` (``components.Transformer``, run on ``image_tokens`` latent patches) reads
    ``fold.keep`` context tokens and its joint attentions weigh the last ``fold.repeat`` times; on exit the model
    is as it was. ``fold`` None: unchanged."""
    from diffusers.models.attention_processor import JointAttnProcessor2_0

    if fold is None:
        yield wrapper
        return
    attentions = joint_attentions(wrapper.model)
    before = [a.processor for a in attentions]
    if any(type(p) is not JointAttnProcessor2_0 for p in before):  # a fused or custom processor: not ours to fold
        raise TypeError(f"zero-slot folding expects diffusers' JointAttnProcessor2_0, found "
                        f"{sorted({type(p).__name__ for p in before})}")
    try:
        for a in attentions:
            a.set_processor(FoldedJointAttention(fold.repeat, image_tokens + fold.keep))
        wrapper.context_tokens = fold.keep
        yield wrapper
    finally:
        for a, p in zip(attentions, before):
            a.set_processor(p)
        wrapper.context_tokens = None
