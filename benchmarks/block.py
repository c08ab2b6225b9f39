"""One SD3.5-Medium-sized transformer block as an exportable component: the unit of per-step cost at real
scale. Every target's performance work and the ``sd35m-block`` scenario measure this same module.

diffusers' ``JointTransformerBlock`` with SD3.5-Medium's sizes (hidden 1536 = 24 heads x 64, rms qk-norm,
MMDiT-X dual attention), random weights from a fixed seed. SD3.5-Medium runs 24 of these per step (the first
13 with dual attention), so one block's time x 24 approximates a step's transformer cost.
"""

from __future__ import annotations

from flash_edge.spec import ComponentSpec, TensorSpec

HIDDEN, HEADS, HEAD_DIM = 1536, 24, 64
TEXT_TOKENS = 333  # 77 CLIP + 256 T5 slots (diffusers' default); 77 when the T5 slot is dropped
IMAGE_TOKENS = {512: 1024, 1024: 4096}  # (side / 8 / 2)^2
SEED = 0


def block_spec(image_tokens: int = 1024, text_tokens: int = TEXT_TOKENS) -> ComponentSpec:
    return ComponentSpec("transformer_block", (
        TensorSpec("hidden_states", (1, image_tokens, HIDDEN)),
        TensorSpec("encoder_hidden_states", (1, text_tokens, HIDDEN)),
        TensorSpec("temb", (1, HIDDEN)),
    ), (TensorSpec("hidden_states_out", (1, image_tokens, HIDDEN)),
        TensorSpec("encoder_hidden_states_out", (1, text_tokens, HIDDEN))))


def block_module(dual_attention: bool = True):
    """The block in eval mode, wrapped to the spec's contract (positional inputs, outputs in spec order)."""
    import torch
    from diffusers.models.attention import JointTransformerBlock

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(SEED)
            self.block = JointTransformerBlock(HIDDEN, HEADS, HEAD_DIM, context_pre_only=False, qk_norm="rms_norm",
                                               use_dual_attention=dual_attention)

        def forward(self, hidden_states, encoder_hidden_states, temb):
            context, hidden = self.block(hidden_states, encoder_hidden_states, temb)
            return hidden, context

    return Block().eval().requires_grad_(False)


def flops(image_tokens: int = 1024, text_tokens: int = TEXT_TOKENS, dual_attention: bool = True) -> int:
    """Multiply-adds x 2 of the block's matrix products (linear layers and attention), counted from the sizes."""
    n, m, d = image_tokens, text_tokens, HIDDEN
    linear = 2 * (n + m) * d * (3 * d + d + 2 * 4 * d)  # qkv, out projection, 4x MLP (up and down), both streams
    attention = 2 * 2 * (n + m) ** 2 * d  # QK^T and AV over the joint sequence
    if dual_attention:  # a second, image-only attention with its own qkv and out projection
        linear += 2 * n * d * 4 * d
        attention += 2 * 2 * n**2 * d
    modulation = 2 * 2 * d * (6 + 6 * dual_attention + 6) * d  # adaLN from temb (tiny)
    return linear + attention + modulation
