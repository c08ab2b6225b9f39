"""The model family the recipe trains: SD3.5-Medium's classes at a size a CPU trains.

``SD3Transformer2DModel`` with MMDiT-X dual-attention layers and qk rms-norm, a 16-channel ``AutoencoderKL``
(8x, as SD3's), two ``CLIPTextModelWithProjection`` encoders over the shipped tokenizer, no T5 (the paper's
text-encoder restructuring). Saved and loaded as a diffusers folder, so a trained student goes through the
SDK's own loader (``flash_edge.models.load_model``) like any SD3 folder.

Text conditioning follows ``flash_edge.conditioning`` (CLIP-L | CLIP-G penultimate states zero-padded to
``joint_attention_dim``, then ``t5_tokens`` zero tokens; pooled = both projections). ``t5_tokens`` defaults
to 0: the model is trained (and must be run) without the T5 slot.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..models.loading import DEFAULTS_FILE
from ..models.tokenizer_files import save_clip_tokenizer


@dataclass
class FamilyConfig:
    size: int = 64  # image side in pixels
    clip_l: dict = field(default_factory=lambda: dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                      num_attention_heads=2, projection_dim=32, hidden_act="quick_gelu"))
    clip_g: dict = field(default_factory=lambda: dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                                      num_attention_heads=4, projection_dim=64, hidden_act="gelu"))
    transformer: dict = field(default_factory=lambda: dict(
        patch_size=2, num_layers=6, attention_head_dim=32, num_attention_heads=4, joint_attention_dim=128,
        caption_projection_dim=128, pos_embed_max_size=16, dual_attention_layers=(0, 1, 2), qk_norm="rms_norm"))
    vae: dict = field(default_factory=lambda: dict(block_out_channels=(32, 64, 64, 64), layers_per_block=1,
                                                   norm_num_groups=16))
    shift: float = 3.0
    t5_tokens: int = 0

    @property
    def vae_factor(self) -> int:
        return 2 ** (len(self.vae["block_out_channels"]) - 1)

    @property
    def latent_size(self) -> int:
        return self.size // self.vae_factor

    def to_dict(self) -> dict:
        return asdict(self)


def tiny_test_config(size: int = 32) -> FamilyConfig:
    """The smallest family member: for tests (a forward pass in milliseconds)."""
    return FamilyConfig(
        size=size,
        clip_l=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, projection_dim=16,
                    hidden_act="quick_gelu"),
        clip_g=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, projection_dim=16,
                    hidden_act="gelu"),
        transformer=dict(patch_size=2, num_layers=2, attention_head_dim=8, num_attention_heads=2, joint_attention_dim=48,
                         caption_projection_dim=16, pos_embed_max_size=8, dual_attention_layers=(0,), qk_norm="rms_norm"),
        vae=dict(block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=4))


class Family:
    """The parts (transformer, VAE, text encoders, tokenizers) and the text conditioning."""

    def __init__(self, config: FamilyConfig, transformer, vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2):
        self.config, self.transformer, self.vae = config, transformer, vae
        self.text_encoder, self.text_encoder_2 = text_encoder, text_encoder_2
        self.tokenizer, self.tokenizer_2 = tokenizer, tokenizer_2
        self._ids: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    # ------------------------------------------------------------------ construction
    @classmethod
    def build(cls, config: FamilyConfig | None = None, seed: int = 0) -> "Family":
        from diffusers import AutoencoderKL, SD3Transformer2DModel
        from transformers import CLIPTextConfig, CLIPTextModelWithProjection

        config = config or FamilyConfig()
        with tempfile.TemporaryDirectory() as tmp:
            tok_l = save_clip_tokenizer(Path(tmp) / "l")
            tok_g = save_clip_tokenizer(Path(tmp) / "g", pad_token="!")
        common = dict(vocab_size=len(tok_l), max_position_embeddings=77, bos_token_id=tok_l.bos_token_id,
                      eos_token_id=tok_l.eos_token_id)
        torch.manual_seed(seed)
        te_l = CLIPTextModelWithProjection(CLIPTextConfig(**config.clip_l, **common, pad_token_id=tok_l.pad_token_id))
        te_g = CLIPTextModelWithProjection(CLIPTextConfig(**config.clip_g, **common, pad_token_id=tok_g.pad_token_id))
        tcfg = dict(config.transformer)
        transformer = SD3Transformer2DModel(
            sample_size=config.latent_size, in_channels=16, out_channels=16,
            pooled_projection_dim=config.clip_l["projection_dim"] + config.clip_g["projection_dim"], **tcfg)
        n = len(config.vae["block_out_channels"])
        vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=16, down_block_types=("DownEncoderBlock2D",) * n,
                            up_block_types=("UpDecoderBlock2D",) * n, sample_size=config.size, scaling_factor=1.0,
                            shift_factor=0.0, use_quant_conv=False, use_post_quant_conv=False, **config.vae)
        return cls(config, transformer, vae, te_l, te_g, tok_l, tok_g)

    def save(self, directory: str | Path, transformer=None) -> Path:
        """Write a diffusers folder (safetensors) with ``transformer`` (default: this family's)."""
        import json

        from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

        directory = Path(directory)
        pipe = StableDiffusion3Pipeline(
            transformer=transformer or self.transformer, vae=self.vae, text_encoder=self.text_encoder,
            text_encoder_2=self.text_encoder_2, tokenizer=self.tokenizer, tokenizer_2=self.tokenizer_2,
            text_encoder_3=None, tokenizer_3=None, scheduler=FlowMatchEulerDiscreteScheduler(shift=self.config.shift))
        pipe.save_pretrained(str(directory), safe_serialization=True)
        with tempfile.TemporaryDirectory() as tmp:  # vocab.json + merges.txt too, as real SD3 folders have
            for sub, pad in (("tokenizer", None), ("tokenizer_2", "!")):
                save_clip_tokenizer(Path(tmp) / sub, **({"pad_token": pad} if pad else {}))
                for name in ("vocab.json", "merges.txt"):
                    shutil.copyfile(Path(tmp) / sub / name, directory / sub / name)
        (directory / "family.json").write_text(json.dumps(self.config.to_dict(), indent=1) + "\n")
        # How the SDK must run it: with the T5 slot it was trained with.
        (directory / DEFAULTS_FILE).write_text(json.dumps({"t5_tokens": self.config.t5_tokens}) + "\n")
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> "Family":
        import json

        from diffusers import AutoencoderKL, SD3Transformer2DModel
        from transformers import CLIPTextModelWithProjection, CLIPTokenizer

        d = Path(directory)
        cfg = FamilyConfig(**json.loads((d / "family.json").read_text()))
        f32 = torch.float32  # training and evaluation run in fp32, whatever the folder stores (shipped: fp16)
        return cls(cfg, SD3Transformer2DModel.from_pretrained(d / "transformer", torch_dtype=f32),
                   AutoencoderKL.from_pretrained(d / "vae", torch_dtype=f32),
                   CLIPTextModelWithProjection.from_pretrained(d / "text_encoder", dtype=f32),
                   CLIPTextModelWithProjection.from_pretrained(d / "text_encoder_2", dtype=f32),
                   CLIPTokenizer.from_pretrained(d / "tokenizer"), CLIPTokenizer.from_pretrained(d / "tokenizer_2"))

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    def to(self, device) -> "Family":
        for m in (self.transformer, self.vae, self.text_encoder, self.text_encoder_2):
            m.to(device)
        return self

    # ------------------------------------------------------------------ conditioning
    def token_ids(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        out = []
        for p in prompts:
            if p not in self._ids:
                self._ids[p] = tuple(torch.tensor(t(p, padding="max_length", max_length=77, truncation=True).input_ids)
                                     for t in (self.tokenizer, self.tokenizer_2))
            out.append(self._ids[p])
        return torch.stack([a for a, _ in out]), torch.stack([b for _, b in out])

    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """prompts -> (encoder_hidden_states (B, 77 + t5_tokens, joint_dim), pooled (B, pooled_dim)), with grad
        if the text encoders are trainable."""
        ids_l, ids_g = self.token_ids(prompts)
        dev = next(self.text_encoder.parameters()).device
        ol = self.text_encoder(ids_l.to(dev), output_hidden_states=True)
        og = self.text_encoder_2(ids_g.to(dev), output_hidden_states=True)
        clip = torch.cat([ol.hidden_states[-2], og.hidden_states[-2]], dim=-1)
        joint = self.transformer.config.joint_attention_dim
        clip = torch.nn.functional.pad(clip, (0, joint - clip.shape[-1]))
        if self.config.t5_tokens:
            clip = torch.cat([clip, clip.new_zeros(clip.shape[0], self.config.t5_tokens, joint)], dim=1)
        return clip, torch.cat([ol.text_embeds, og.text_embeds], dim=-1)

    # ------------------------------------------------------------------ latents
    def to_latents(self, images: torch.Tensor, sample: bool = False) -> torch.Tensor:
        """Images in [-1, 1] -> scaled latents, as SD3 trains: (z - shift_factor) * scaling_factor."""
        dist = self.vae.encode(images).latent_dist
        z = dist.sample() if sample else dist.mode()
        c = self.vae.config
        return (z - c.shift_factor) * c.scaling_factor

    def to_images(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> images in [0, 1]."""
        c = self.vae.config
        return (self.vae.decode(latents / c.scaling_factor + c.shift_factor).sample / 2 + 0.5).clamp(0, 1)

    def velocity(self, transformer, latents, sigmas, cond) -> torch.Tensor:
        """The transformer's flow velocity at noise level(s) ``sigmas`` (timestep = sigma * 1000)."""
        t = sigmas.reshape(-1).expand(latents.shape[0]) * 1000.0
        return transformer(hidden_states=latents, timestep=t, encoder_hidden_states=cond[0],
                           pooled_projections=cond[1], return_dict=False)[0]
