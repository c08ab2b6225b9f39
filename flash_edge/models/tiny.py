"""The built-in default model ``tiny``: the SD3.5-Medium architecture at a size that runs in milliseconds.

Same classes and features as SD3.5-Medium (MMDiT-X dual-attention layers, qk rms-norm, 16-channel VAE with
scaling and shift factors, CLIP-L/CLIP-G-style text encoders with projection, no T5), random weights from a
fixed seed. It is written as a real diffusers folder (``StableDiffusion3Pipeline.save_pretrained``) into the
cache and loaded back through the same loader users' folders go through.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from .tokenizer_files import save_clip_tokenizer, shipped_vocab_and_merges

RECIPE = "tiny-v1"  # bump when the recipe below changes, so stale caches are not reused
SEED = 20250925
RESOLUTION = 128  # default image side: transformer sample_size (16) x VAE factor (8)
CLIP_L = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, projection_dim=32,
              hidden_act="quick_gelu")
CLIP_G = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, projection_dim=64,
              hidden_act="gelu")
TRANSFORMER = dict(sample_size=RESOLUTION // 8, patch_size=2, in_channels=16, out_channels=16, num_layers=4,
                   attention_head_dim=16, num_attention_heads=4, joint_attention_dim=128, caption_projection_dim=64,
                   pooled_projection_dim=CLIP_L["projection_dim"] + CLIP_G["projection_dim"], pos_embed_max_size=32,
                   dual_attention_layers=(0, 1), qk_norm="rms_norm")
VAE = dict(in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(16, 32, 32, 32), layers_per_block=1,
           down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=8,
           sample_size=RESOLUTION, scaling_factor=1.5305, shift_factor=0.0609, use_quant_conv=False,
           use_post_quant_conv=False)
T5 = dict(d_model=128, d_kv=16, d_ff=256, num_layers=2, num_heads=4, relative_attention_num_buckets=8,
          feed_forward_proj="gated-gelu")  # d_model = joint_attention_dim, as in SD3 (4096)
SHIFT = 3.0


def cache_root() -> Path:
    return Path(os.environ.get("FLASH_EDGE_HOME") or Path.home() / ".cache" / "flash-edge")


def _t5_tokenizer(directory: Path):
    """A T5-style tokenizer (``</s>`` appended, ``<pad>`` = 0) over the same tiny word list."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab, _ = shipped_vocab_and_merges()
    words = ["<pad>", "</s>", "<unk>"] + sorted({w.removesuffix("</w>") for w in vocab if w.isalpha()})
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
                                   model_max_length=512)
    fast.save_pretrained(str(directory))
    return fast


def build_tiny(directory: str | Path, t5: bool = False) -> Path:
    """Create the tiny model deterministically and save it as a diffusers folder at ``directory``."""
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    directory = Path(directory)
    with tempfile.TemporaryDirectory() as tmp:
        tok_l = save_clip_tokenizer(Path(tmp) / "l")
        tok_g = save_clip_tokenizer(Path(tmp) / "g", pad_token="!")
        common = dict(vocab_size=len(tok_l), max_position_embeddings=77, bos_token_id=tok_l.bos_token_id,
                      eos_token_id=tok_l.eos_token_id)
        torch.manual_seed(SEED)
        parts = dict(
            text_encoder=CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_L, **common, pad_token_id=tok_l.pad_token_id)),
            text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_G, **common, pad_token_id=tok_g.pad_token_id)),
            transformer=SD3Transformer2DModel(**TRANSFORMER),
            vae=AutoencoderKL(**VAE),
            scheduler=FlowMatchEulerDiscreteScheduler(shift=SHIFT),
            tokenizer=tok_l, tokenizer_2=tok_g, text_encoder_3=None, tokenizer_3=None)
        if t5:
            tok_t5 = _t5_tokenizer(Path(tmp) / "t5")
            parts.update(tokenizer_3=tok_t5, text_encoder_3=T5EncoderModel(T5Config(
                **T5, vocab_size=len(tok_t5), pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)))
        pipe = StableDiffusion3Pipeline(**parts)
        pipe.save_pretrained(str(directory), safe_serialization=True)
        for sub, src in (("tokenizer", "l"), ("tokenizer_2", "g")):  # vocab.json + merges.txt, as real folders have
            for name in ("vocab.json", "merges.txt"):
                shutil.copyfile(Path(tmp) / src / name, directory / sub / name)
    return directory


def tiny_folder(t5: bool = False) -> Path:
    """The cached diffusers folder of the built-in model, built atomically on first use."""
    target = cache_root() / (RECIPE + ("-t5" if t5 else ""))
    if (target / "model_index.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        build_tiny(tmp, t5=t5)
        try:
            os.replace(tmp, target)
        except OSError:  # another process won the race; its folder is identical
            if not (target / "model_index.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
