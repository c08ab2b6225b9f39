"""The published SD3.5 configurations (diffusers'/transformers' own classes), and builders for them: what the
real-scale benchmarks and tests build with random weights, since real SD3.5 weights are not reachable here."""

from __future__ import annotations

# diffusers SD3Transformer2DModel configurations (SD3.5-Medium: /work/shared/notes/paper.md; Large: the model card)
TRANSFORMERS = {
    "sd35-medium": dict(sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=24,
                        attention_head_dim=64, num_attention_heads=24, joint_attention_dim=4096,
                        caption_projection_dim=1536, pooled_projection_dim=2048, pos_embed_max_size=384,
                        dual_attention_layers=tuple(range(13)), qk_norm="rms_norm"),
    "sd35-large": dict(sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=38,
                       attention_head_dim=64, num_attention_heads=38, joint_attention_dim=4096,
                       caption_projection_dim=2432, pooled_projection_dim=2048, pos_embed_max_size=192,
                       dual_attention_layers=(), qk_norm="rms_norm"),
}
CLIP_L = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, projection_dim=768,
              hidden_act="quick_gelu", vocab_size=49408, max_position_embeddings=77)
CLIP_G = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
              projection_dim=1280, hidden_act="gelu", vocab_size=49408, max_position_embeddings=77)
T5_XXL = dict(d_model=4096, d_ff=10240, num_layers=24, num_heads=64, d_kv=64, vocab_size=32128,
              feed_forward_proj="gated-gelu", relative_attention_num_buckets=32)  # google/t5-v1_1-xxl
VAE = dict(in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
           down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32,
           sample_size=1024, scaling_factor=1.5305, shift_factor=0.0609, use_quant_conv=False,
           use_post_quant_conv=False)


def build_transformer(arch: str):
    from diffusers import SD3Transformer2DModel

    return SD3Transformer2DModel(**TRANSFORMERS[arch])


def build_text_encoder(name: str):
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    if name == "t5xxl":
        return T5EncoderModel(T5Config(**T5_XXL))
    return CLIPTextModelWithProjection(CLIPTextConfig(**(CLIP_L if name == "clip_l" else CLIP_G)))


def build_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(**VAE)
