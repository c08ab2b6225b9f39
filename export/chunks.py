"""The SD3 transformer as K consecutive programs of about equal weight (``--chunks K``), for every target.

Why: iOS kills apps that map one very large model and the ANE compiler rejects very large programs
(apple/ml-stable-diffusion splits its UNet for the same reasons); and exporting or quantizing a 2.5B-parameter
transformer in one piece needs several copies of its weights in memory at once (ONNX Runtime's int8 quantizer
holds ~3x the fp32 model), while K pieces need that for 1/K of it. Each chunk reuses diffusers' own submodules
of ``SD3Transformer2DModel``:

    chunk 0:    latent, timestep, encoder_hidden_states, pooled_projections
                -> pos_embed, time_text_embed, context_embedder, blocks[0:b1]
                -> hidden_states_0, context_0, temb
    chunk i:    hidden_states_{i-1}, context_{i-1}, temb -> blocks[bi:bi+1] -> hidden_states_i, context_i
    chunk K-1:  hidden_states_{K-2}, context_{K-2}, temb -> blocks[..] -> norm_out, proj_out, unpatchify -> velocity

``temb`` comes out of chunk 0 only; the runtime keeps it and feeds it to every later chunk
(``runtimes/chunked.py``). The carried tensors are numbered by the chunk that wrote them because Core ML
refuses a program whose input and output share a name ("Var names [...] is used both as function's input and
output"). In the manifest a chunked component's ``options.chunks`` lists each chunk's path, files and I/O.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import InvalidInput
from ..spec import ComponentSpec, TensorSpec

CHUNK_LIMIT_BYTES = 2**31 - 256 * 2**20  # "auto": each piece's fp32 weights under protobuf's 2 GB, with room


def _weight(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def chunks_for(wrapper, bytes_per_weight: int, limit_bytes: int) -> int:
    """The fewest chunks whose weights (at ``bytes_per_weight``) each stay under ``limit_bytes``, assuming an
    even split; 1 for anything that is not an SD3 transformer wrapper."""
    transformer = getattr(wrapper, "model", None)
    if not hasattr(transformer, "transformer_blocks"):
        return 1
    total = _weight(transformer) * bytes_per_weight
    return max(1, min(len(transformer.transformer_blocks), -(-total // limit_bytes)))


def chunk_count(name: str, wrapper, requested: str | int, auto: bool) -> int:
    """How many pieces component ``name`` is exported in: the transformer in ``requested`` (``--chunks``) pieces,
    or with ``"auto"``, where the target wants it (``auto``), in pieces under 2 GB of fp32 weights each (the
    conversions and quantizers hold several copies of what they convert); every other component whole."""
    if name != "transformer":
        return 1
    if requested != "auto":
        return requested
    return chunks_for(wrapper, 4, CHUNK_LIMIT_BYTES) if auto else 1


def split_points(transformer, chunks: int) -> list[tuple[int, int]]:
    """Block ranges [a, b) per chunk, cut where the cumulative weight (embedders counted with chunk 0,
    the output layers with the last) is nearest to k/K of the total."""
    blocks = transformer.transformer_blocks
    if not isinstance(chunks, int) or not 1 <= chunks <= len(blocks):
        raise InvalidInput(f"--chunks must be from 1 to the transformer's {len(blocks)} blocks, got {chunks!r}")
    head = sum(_weight(getattr(transformer, n)) for n in ("pos_embed", "time_text_embed", "context_embedder"))
    tail = _weight(transformer.norm_out) + _weight(transformer.proj_out)
    sizes = [_weight(b) for b in blocks]
    total = head + sum(sizes) + tail
    cum, ends = head, []
    for i, s in enumerate(sizes):
        cum += s
        ends.append(cum)  # weight up to and including block i
    cuts, start = [], 0
    for k in range(1, chunks):
        goal = total * k / chunks
        # the last block of chunk k-1: nearest cumulative weight to the goal, leaving a block for each later chunk
        lo, hi = start, len(blocks) - (chunks - k) - 1
        best = min(range(lo, hi + 1), key=lambda i: abs(ends[i] - goal))
        cuts.append(best + 1)
        start = best + 1
    bounds = [0, *cuts, len(blocks)]
    return [(bounds[i], bounds[i + 1]) for i in range(chunks)]


class TransformerChunk(nn.Module):
    """Blocks [a, b) of an ``SD3Transformer2DModel`` (first chunk: with the embedders; last: with the output)."""

    def __init__(self, transformer, start: int, end: int, first: bool, last: bool, latent_hw: tuple[int, int],
                 context_tokens: int | None = None):
        super().__init__()
        self.first, self.last, self.latent_hw = first, last, latent_hw
        self.context_tokens = context_tokens  # the first chunk reads only these (``flash_edge.folding``)
        self.patch_size, self.out_channels = transformer.config.patch_size, transformer.out_channels
        if first:
            self.pos_embed, self.time_text_embed = transformer.pos_embed, transformer.time_text_embed
            self.context_embedder = transformer.context_embedder
        self.blocks = nn.ModuleList(transformer.transformer_blocks[start:end])
        if last:
            self.norm_out, self.proj_out = transformer.norm_out, transformer.proj_out

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def forward(self, *inputs):
        dt = self.dtype
        if self.first:
            latent, timestep, encoder_hidden_states, pooled = (x.to(dt) for x in inputs)
            if self.context_tokens is not None:
                encoder_hidden_states = encoder_hidden_states[:, :self.context_tokens]
            hidden_states = self.pos_embed(latent).contiguous()
            temb = self.time_text_embed(timestep, pooled)
            encoder_hidden_states = self.context_embedder(encoder_hidden_states)
        else:
            hidden_states, encoder_hidden_states, temb = (x.to(dt) for x in inputs)
        for block in self.blocks:
            encoder_hidden_states, hidden_states = block(hidden_states=hidden_states,
                                                         encoder_hidden_states=encoder_hidden_states, temb=temb)
        if not self.last:
            out = (hidden_states, encoder_hidden_states) + ((temb,) if self.first else ())
            return tuple(o.float() for o in out)
        hidden_states = self.proj_out(self.norm_out(hidden_states, temb))
        p, c = self.patch_size, self.out_channels
        h, w = self.latent_hw[0] // p, self.latent_hw[1] // p
        x = hidden_states.reshape(1, h, w, p, p, c)
        x = torch.einsum("nhwpqc->nchpwq", x).reshape(1, c, h * p, w * p)
        return (x.float(),)


def chunk_modules(wrapper, spec: ComponentSpec, chunks: int) -> list[tuple[TransformerChunk, ComponentSpec]]:
    """Split the ``components.Transformer`` wrapper into chunk modules with their I/O specs."""
    transformer = wrapper.model
    latent = spec.inputs[0]
    n_img = (latent.shape[2] // transformer.config.patch_size) * (latent.shape[3] // transformer.config.patch_size)
    n_txt = wrapper.context_tokens or spec.inputs[2].shape[1]
    d = transformer.config.num_attention_heads * transformer.config.attention_head_dim
    def carried(i: int) -> tuple[TensorSpec, TensorSpec]:  # what chunk i hands to chunk i + 1
        return TensorSpec(f"hidden_states_{i}", (1, n_img, d)), TensorSpec(f"context_{i}", (1, n_txt, d))

    temb = TensorSpec("temb", (1, d))
    out = []
    ranges = split_points(transformer, chunks)
    for i, (a, b) in enumerate(ranges):
        first, last = i == 0, i == len(ranges) - 1
        module = TransformerChunk(transformer, a, b, first, last, tuple(latent.shape[2:]),
                                  wrapper.context_tokens).eval()
        inputs = spec.inputs if first else (*carried(i - 1), temb)
        outputs = spec.outputs if last else (carried(i) + ((temb,) if first else ()))
        out.append((module, ComponentSpec(f"{spec.name}.chunk{i}", tuple(inputs), tuple(outputs))))
    return out


def pieces(name: str, wrapper, spec: ComponentSpec, chunks: int) -> list[tuple[nn.Module, ComponentSpec]]:
    """What an exporter converts for component ``name``: the transformer in ``chunks`` pieces, or the
    component whole."""
    if name == "transformer" and chunks > 1:
        return chunk_modules(wrapper, spec, chunks)
    return [(wrapper, spec)]
