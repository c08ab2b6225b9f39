"""The app contract: what an app computes itself around the bundle's models, written into the manifest from
format version 2 on (README "App contract"), so that a client in Swift, Kotlin or C++ needs nothing but the
README and the manifest.

Every key here is derived from the generation spec (and, for the special tokens, from the tokenizer the model
ships): ``GenerationSpec.to_dict`` writes them and the manifest validator refuses a bundle whose keys differ from
what its own numbers imply, so a manifest cannot say one thing to an app and another to the Python runtime.
Format 1 bundles (no such keys) are still read: they were written under the same rules.
"""

from __future__ import annotations

from .conditioning import TextLayout

VERSION = 2  # the bundle format version that carries these keys

# Prompt -> ids: the tokenizer's own ids for the prompt, cut to max_length - len(prefix) - len(suffix) keeping the
# first ones, between the special prefix (CLIP: BOS) and suffix (EOS), then padded on the right with pad_id.
TRUNCATION = "keep_first"
PADDING = "right"

# Decoder output (float32 in [0, 1], NCHW) -> 8-bit RGB, as diffusers' numpy_to_pil: clamp, x255 in float32,
# round half to even (not floor, not half up).
UINT8 = "round_half_even(clamp(x, 0, 1) * 255) in float32"

# The latent update per step i (0-based) from sigma_i to sigma_{i+1}, in float32, in this order of operations;
# noise(seed, stream) is the manifest's noise generator. The initial latent is noise(seed, stream=0).
INITIAL_NOISE = "noise(seed, stream=0)"
UPDATES = {
    "euler": "x = x + (sigmas[i+1] - sigmas[i]) * v",
    "renoise": "x0 = x - sigmas[i] * v; x = (1 - sigmas[i+1]) * x0 + sigmas[i+1] * noise(seed, stream=i+1) "
               "(= x0 at the last step, where sigmas[i+1] = 0)",
}
# One transformer call per step when guidance_scale <= 1 (every distilled student); above 1 (teachers), two.
GUIDANCE = "v = vu + guidance_scale * (vc - vu), vc from the prompt, vu from the negative prompt (default empty)"


def conditioning(text: TextLayout, t5: bool) -> dict:
    """Where each text-encoder output goes in the transformer's two conditioning inputs: a tensor of ``shape``
    filled with zeros, then each block copied in (rows/columns as [start, stop)), batch index 0."""
    (dl, dg), (pl, pg), n = text.clip_hidden_dims, text.pooled_dims, text.clip_tokens
    hidden = [{"source": "text_encoder.hidden_states", "rows": [0, n], "columns": [0, dl]},
              {"source": "text_encoder_2.hidden_states", "rows": [0, n], "columns": [dl, dl + dg]}]
    if t5:
        hidden.append({"source": "text_encoder_3.hidden_states", "rows": [n, n + text.t5_tokens],
                       "columns": [0, text.joint_attention_dim]})
    return {"encoder_hidden_states": {"shape": [1, text.sequence_length, text.joint_attention_dim], "fill": 0.0,
                                      "blocks": hidden},
            "pooled_projections": {"shape": [1, text.pooled_dim], "fill": 0.0,
                                   "blocks": [{"source": "text_encoder.pooled", "columns": [0, pl]},
                                              {"source": "text_encoder_2.pooled", "columns": [pl, pl + pg]}]}}


def special_tokens(encode) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(prefix, suffix): the ids a tokenizer adds around every prompt, found from ``encode(text) -> ids``
    (unpadded, untruncated) of an empty and a one-word prompt."""
    empty, word = list(encode("")), list(encode("a"))
    cut = 0
    while cut < len(empty) and cut < len(word) and empty[cut] == word[cut]:
        cut += 1
    return tuple(empty[:cut]), tuple(empty[cut:])
