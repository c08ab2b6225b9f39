"""SD3 text conditioning, in numpy, exactly as diffusers' ``StableDiffusion3Pipeline.encode_prompt``.

* CLIP-L and CLIP-G penultimate hidden states are concatenated on the feature axis (768 + 1280),
  zero-padded to the transformer's ``joint_attention_dim`` (4096) and concatenated on the sequence axis
  with the T5 states: 77 + 256 tokens by default.
* Without T5 (the paper's text-encoder restructuring, the default for device bundles) diffusers feeds
  zeros of T5's shape. ``t5_tokens=0`` drops those zero tokens altogether (77 tokens): about a fifth less
  transformer work at 512^2, exact only for a model trained that way.
* The pooled vector is both CLIP pooled projections concatenated (768 + 1280 = 2048).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .errors import InvalidInput

T5_MODES = ("zeros", "encoder")  # T5 states: zeros of T5's shape (T5 dropped), or the T5 encoder's output


@dataclass(frozen=True)
class TextLayout:
    """The shape of the text conditioning; stored verbatim in a bundle's manifest."""

    clip_tokens: int  # 77
    t5_tokens: int  # 256 in diffusers' default; 0 drops the T5 slot altogether
    joint_attention_dim: int  # width of encoder_hidden_states (4096)
    clip_hidden_dims: tuple[int, int]  # (768, 1280): penultimate widths of CLIP-L and CLIP-G
    pooled_dims: tuple[int, int]  # (768, 1280): projection widths
    t5: str = "zeros"

    def __post_init__(self) -> None:
        if self.t5 not in T5_MODES:
            raise InvalidInput(f"unknown T5 mode {self.t5!r}; choose one of {', '.join(T5_MODES)}")
        if self.t5 == "encoder" and self.t5_tokens <= 0:
            raise InvalidInput("a bundle with the T5 encoder needs t5_tokens > 0")
        if sum(self.clip_hidden_dims) > self.joint_attention_dim:
            raise InvalidInput(
                f"CLIP widths {self.clip_hidden_dims} exceed joint_attention_dim {self.joint_attention_dim}")

    @property
    def sequence_length(self) -> int:
        return self.clip_tokens + self.t5_tokens

    @property
    def pooled_dim(self) -> int:
        return sum(self.pooled_dims)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(clip_hidden_dims=list(self.clip_hidden_dims), pooled_dims=list(self.pooled_dims),
                 sequence_length=self.sequence_length, pooled_dim=self.pooled_dim)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TextLayout":
        return cls(clip_tokens=d["clip_tokens"], t5_tokens=d["t5_tokens"],
                   joint_attention_dim=d["joint_attention_dim"], clip_hidden_dims=tuple(d["clip_hidden_dims"]),
                   pooled_dims=tuple(d["pooled_dims"]), t5=d["t5"])


def _expect(name: str, a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    a = np.asarray(a, dtype=np.float32)
    if a.shape != shape:
        raise InvalidInput(f"{name} has shape {a.shape}, expected {shape}")
    return a


def build_conditioning(layout: TextLayout, clip_l: tuple[np.ndarray, np.ndarray], clip_g: tuple[np.ndarray, np.ndarray],
                       t5_hidden: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(hidden, pooled) pairs of both CLIPs (+ T5 states) -> (encoder_hidden_states, pooled_projections)."""
    (dl, dg), (pl, pg), n = layout.clip_hidden_dims, layout.pooled_dims, layout.clip_tokens
    hl = _expect("CLIP-L hidden states", clip_l[0], (1, n, dl))
    hg = _expect("CLIP-G hidden states", clip_g[0], (1, n, dg))
    pooled = np.concatenate([_expect("CLIP-L pooled", clip_l[1], (1, pl)),
                             _expect("CLIP-G pooled", clip_g[1], (1, pg))], axis=-1)
    clip = np.zeros((1, n, layout.joint_attention_dim), dtype=np.float32)
    clip[..., :dl] = hl
    clip[..., dl:dl + dg] = hg
    if layout.t5 == "encoder":
        if t5_hidden is None:
            raise InvalidInput("this layout uses the T5 encoder but no T5 states were given")
        t5 = _expect("T5 hidden states", t5_hidden, (1, layout.t5_tokens, layout.joint_attention_dim))
    else:
        t5 = np.zeros((1, layout.t5_tokens, layout.joint_attention_dim), dtype=np.float32)
    return np.concatenate([clip, t5], axis=1), pooled
