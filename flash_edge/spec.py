"""What goes in and out of each component, and the constants of a generation: torch-free dataclasses
that the exporters, the bundle manifest, the backends and the pipeline all read.

Component contract (batch 1, static shapes; names are the ONNX/Core ML/ExecuTorch I/O names):

=================  ===============================================  ===========================================
component          inputs                                           outputs
=================  ===============================================  ===========================================
text_encoder       input_ids int64 [1, 77]                          hidden_states [1, 77, 768], pooled [1, 768]
text_encoder_2     input_ids int64 [1, 77]                          hidden_states [1, 77, 1280], pooled [1, 1280]
text_encoder_3     input_ids int64 [1, 256]  (T5, optional)         hidden_states [1, 256, 4096]
transformer        latent [1, 16, h, w], timestep [1],              velocity [1, 16, h, w]
                   encoder_hidden_states [1, 333, 4096],
                   pooled_projections [1, 2048]
vae_decoder        latent [1, 16, h, w]  (scaling and shift folded)  image [1, 3, H, W] in [0, 1]
=================  ===============================================  ===========================================
(sizes are SD3.5-Medium's at 512^2 without T5; the real numbers come from the model.)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from . import contract
from .conditioning import TextLayout
from .errors import BundleError
from .sampler import SamplerConfig

DTYPES = ("float32", "int64")


@dataclass(frozen=True)
class Component:
    """One row of the component table: where a component comes from and how the targets treat it."""

    name: str
    part: str  # the diffusers folder (and SD3Model attribute) it is taken from
    torch_class: str  # the diffusers/transformers class it loads into
    tokenizer: str | None = None  # its tokenizer folder, for a text encoder
    stays_float: bool = False  # the targets' quantized precisions leave it in float unless asked (the VAE decoder)


COMPONENTS = {c.name: c for c in (
    Component("text_encoder", "text_encoder", "transformers.CLIPTextModelWithProjection", "tokenizer"),
    Component("text_encoder_2", "text_encoder_2", "transformers.CLIPTextModelWithProjection", "tokenizer_2"),
    Component("text_encoder_3", "text_encoder_3", "transformers.T5EncoderModel", "tokenizer_3"),
    Component("transformer", "transformer", "diffusers.SD3Transformer2DModel"),
    Component("vae_decoder", "vae", "diffusers.AutoencoderKL", stays_float=True),
)}
TEXT_ENCODERS = tuple(n for n, c in COMPONENTS.items() if c.tokenizer)
TOKENIZER_DIRS = {n: c.tokenizer for n, c in COMPONENTS.items() if c.tokenizer}
STAYS_FLOAT = tuple(n for n, c in COMPONENTS.items() if c.stays_float)
# The class each component loads into: the torch target's manifest names it, and a bundle naming any other class
# is refused (a manifest never chooses code to import).
TORCH_CLASSES = {n: c.torch_class for n, c in COMPONENTS.items()}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"
    low: float | None = None  # dummy-input range: uniform in [low, high) (ints: integers); else N(0, 1)
    high: float | None = None
    zero_rows: int = 0  # dummy input: the last N rows (axis 1) are zeros, as T5's slots without T5 are

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_dict(cls, d: dict) -> "TensorSpec":
        return cls(d["name"], tuple(d["shape"]), d["dtype"])

    def dummy(self, rng: np.random.Generator) -> np.ndarray:
        if self.dtype == "int64":
            return rng.integers(int(self.low or 0), int(self.high or 2), size=self.shape, dtype=np.int64)
        if self.low is not None:
            return rng.uniform(self.low, self.high, size=self.shape).astype(np.float32)
        x = rng.standard_normal(self.shape).astype(np.float32)
        if self.zero_rows:
            x[:, x.shape[1] - self.zero_rows:] = 0.0
        return x


@dataclass(frozen=True)
class ComponentSpec:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def dummy_inputs(self, seed: int = 0) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(seed)
        return {t.name: t.dummy(rng) for t in self.inputs}

    def io_dict(self) -> dict:
        return {"inputs": [t.to_dict() for t in self.inputs], "outputs": [t.to_dict() for t in self.outputs]}


def check_chain(whole: ComponentSpec, chunks: list[ComponentSpec]) -> None:
    """Chunks run in order must each read only the component's inputs and earlier chunks' outputs, and
    together write the component's outputs; else a ``BundleError`` (the chunk list is broken)."""
    known = set(whole.input_names)
    for s in chunks:
        missing = [n for n in s.input_names if n not in known]
        if missing:
            raise BundleError(f"{s.name} takes {missing}, which neither the component's inputs nor an earlier "
                              f"chunk provide: the manifest's chunk list is broken")
        known.update(s.output_names)
    absent = [n for n in whole.output_names if n not in known]
    if absent:
        raise BundleError(f"no chunk of {whole.name} writes its output(s) {absent}")


@dataclass(frozen=True)
class LatentSpec:
    channels: int
    height: int
    width: int
    scaling_factor: float
    shift_factor: float
    vae_scale_factor: int  # pixels per latent cell (8)
    patch_size: int  # latent cells per transformer token side (2)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (1, self.channels, self.height, self.width)

    @property
    def tokens(self) -> int:
        """The transformer's image tokens (latent patches)."""
        return (self.height // self.patch_size) * (self.width // self.patch_size)


@dataclass(frozen=True)
class DecodeSpec:
    """Tiled VAE decode (``flash_edge/tiling.py``): square tiles of ``tile`` latent cells overlapping by
    ``overlap``; the decoder is exported at the tile's shape. ``tile == 0``: the whole latent at once."""

    tile: int = 0
    overlap: int = 0

    @property
    def tiled(self) -> bool:
        return self.tile > 0


@dataclass(frozen=True)
class TokenizerSpec:
    path: str  # folder inside the bundle, holding tokenizer.json
    max_length: int
    pad_id: int
    vocab_size: int
    # the ids the tokenizer puts before (CLIP: BOS) and after (EOS) every prompt's; None in format 1 bundles
    special_prefix: tuple[int, ...] | None = None
    special_suffix: tuple[int, ...] | None = None

    @property
    def specials(self) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
        return None if self.special_prefix is None else (self.special_prefix, self.special_suffix or ())

    def to_dict(self) -> dict:
        d = {"path": self.path, "max_length": self.max_length, "pad_id": self.pad_id, "vocab_size": self.vocab_size}
        if self.special_prefix is not None:
            d.update(special_prefix=list(self.special_prefix), special_suffix=list(self.special_suffix or ()),
                     truncation=contract.TRUNCATION, padding=contract.PADDING)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TokenizerSpec":
        specials = {k: tuple(d[k]) for k in ("special_prefix", "special_suffix") if k in d}
        return cls(path=d["path"], max_length=d["max_length"], pad_id=d["pad_id"], vocab_size=d["vocab_size"],
                   **specials)


@dataclass(frozen=True)
class GenerationSpec:
    """Every constant a generation needs; the non-artifact half of a bundle manifest."""

    height: int
    width: int
    latent: LatentSpec
    sampler: SamplerConfig
    text: TextLayout
    tokenizers: dict[str, TokenizerSpec] = field(default_factory=dict)  # keyed by text-encoder component
    decode: DecodeSpec = DecodeSpec()

    @property
    def text_encoders(self) -> tuple[str, ...]:
        return TEXT_ENCODERS if self.text.t5 == "encoder" else TEXT_ENCODERS[:2]

    @property
    def components(self) -> tuple[str, ...]:
        return self.text_encoders + ("transformer", "vae_decoder")

    def component_specs(self) -> dict[str, ComponentSpec]:
        return {name: self.component_spec(name) for name in self.components}

    def component_spec(self, name: str) -> ComponentSpec:
        t, lat = self.text, self.latent
        if name in ("text_encoder", "text_encoder_2"):
            i = 0 if name == "text_encoder" else 1
            tok = self.tokenizers[name]
            return ComponentSpec(name, (TensorSpec("input_ids", (1, t.clip_tokens), "int64", 0, tok.vocab_size),),
                                 (TensorSpec("hidden_states", (1, t.clip_tokens, t.clip_hidden_dims[i])),
                                  TensorSpec("pooled", (1, t.pooled_dims[i]))))
        if name == "text_encoder_3":
            tok = self.tokenizers[name]
            return ComponentSpec(name, (TensorSpec("input_ids", (1, t.t5_tokens), "int64", 0, tok.vocab_size),),
                                 (TensorSpec("hidden_states", (1, t.t5_tokens, t.joint_attention_dim)),))
        if name == "transformer":
            return ComponentSpec(name, (
                TensorSpec("latent", lat.shape),
                TensorSpec("timestep", (1,), "float32", 0.0, self.sampler.timestep_scale),
                TensorSpec("encoder_hidden_states", (1, t.sequence_length, t.joint_attention_dim),
                           zero_rows=t.t5_tokens if t.t5 == "zeros" else 0),
                TensorSpec("pooled_projections", (1, t.pooled_dim)),
            ), (TensorSpec("velocity", lat.shape),))
        if name == "vae_decoder":
            if self.decode.tiled:  # one tile per run
                cells, pixels = self.decode.tile, self.decode.tile * lat.vae_scale_factor
                return ComponentSpec(name, (TensorSpec("latent", (1, lat.channels, cells, cells)),),
                                     (TensorSpec("image", (1, 3, pixels, pixels)),))
            return ComponentSpec(name, (TensorSpec("latent", lat.shape),),
                                 (TensorSpec("image", (1, 3, self.height, self.width)),))
        raise KeyError(f"unknown component {name!r}")

    def to_dict(self) -> dict:
        """The manifest's ``generation`` (format 2: with the app contract's keys, ``flash_edge/contract.py``)."""
        return {"image": {"height": self.height, "width": self.width, "uint8": contract.UINT8},
                "latent": {**asdict(self.latent), "decoder_applies_scaling": True},
                "sampler": {**self.sampler.to_dict(), "initial_noise": contract.INITIAL_NOISE,
                            "update": contract.UPDATES[self.sampler.rule], "guidance": contract.GUIDANCE},
                "text": self.text.to_dict(),
                "conditioning": contract.conditioning(self.text, "text_encoder_3" in self.text_encoders),
                "tokenizers": {k: v.to_dict() for k, v in self.tokenizers.items()},
                **({"decode": asdict(self.decode)} if self.decode.tiled else {})}  # absent: untiled

    @classmethod
    def from_dict(cls, d: dict) -> "GenerationSpec":
        """From a validated manifest's ``generation`` (format 1 or 2; the contract's keys are derived, not read)."""
        latent = {k: v for k, v in d["latent"].items() if k != "decoder_applies_scaling"}
        return cls(height=d["image"]["height"], width=d["image"]["width"], latent=LatentSpec(**latent),
                   sampler=SamplerConfig.from_dict(d["sampler"]), text=TextLayout.from_dict(d["text"]),
                   tokenizers={k: TokenizerSpec.from_dict(v) for k, v in d["tokenizers"].items()},
                   decode=DecodeSpec(**d.get("decode", {})))
