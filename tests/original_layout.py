"""Test helper: write a diffusers-format SD3 model as a single-file checkpoint in the *original* key layout
(Stability's reference code / ComfyUI: ``model.diffusion_model.*``, ``first_stage_model.*``,
``text_encoders.{clip_l,clip_g,t5xxl}.transformer.*``).

diffusers 0.42 only converts original -> diffusers (``diffusers.loaders.single_file_utils``); this is the inverse
of its ``convert_sd3_transformer_checkpoint_to_diffusers`` and ``convert_ldm_vae_checkpoint``, written from
them. ``test_single_file.py`` proves the two are inverse (forward(inverse(sd)) == sd, key for key, bit for bit),
so a mistake here cannot hide a mistake in the loader.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

TRANSFORMER_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIXES = {"text_encoder": "text_encoders.clip_l.transformer.",
                 "text_encoder_2": "text_encoders.clip_g.transformer.",
                 "text_encoder_3": "text_encoders.t5xxl.transformer."}
SEPARATE_NAMES = {"text_encoder": "clip_l.safetensors", "text_encoder_2": "clip_g.safetensors",
                  "text_encoder_3": "t5xxl_fp16.safetensors"}


def _swap_halves(w: torch.Tensor) -> torch.Tensor:
    """diffusers' ``swap_scale_shift`` is its own inverse (two equal halves swapped)."""
    a, b = w.chunk(2, dim=0)
    return torch.cat([b, a], dim=0)


def transformer_to_original(sd: dict[str, torch.Tensor], num_layers: int) -> dict[str, torch.Tensor]:
    sd, out = dict(sd), {}
    simple = {"pos_embed.pos_embed": "pos_embed", "pos_embed.proj": "x_embedder.proj",
              "time_text_embed.timestep_embedder.linear_1": "t_embedder.mlp.0",
              "time_text_embed.timestep_embedder.linear_2": "t_embedder.mlp.2",
              "time_text_embed.text_embedder.linear_1": "y_embedder.mlp.0",
              "time_text_embed.text_embedder.linear_2": "y_embedder.mlp.2",
              "context_embedder": "context_embedder", "proj_out": "final_layer.linear"}
    for new, old in simple.items():
        for suffix in ("", ".weight", ".bias"):
            if new + suffix in sd:
                out[old + suffix] = sd.pop(new + suffix)
    for suffix in ("weight", "bias"):
        out[f"final_layer.adaLN_modulation.1.{suffix}"] = _swap_halves(sd.pop(f"norm_out.linear.{suffix}"))
    for i in range(num_layers):
        b, j = f"transformer_blocks.{i}.", f"joint_blocks.{i}."
        last = i == num_layers - 1
        for suffix in ("weight", "bias"):
            out[f"{j}x_block.attn.qkv.{suffix}"] = torch.cat([sd.pop(f"{b}attn.to_{x}.{suffix}") for x in "qkv"])
            out[f"{j}context_block.attn.qkv.{suffix}"] = torch.cat(
                [sd.pop(f"{b}attn.add_{x}_proj.{suffix}") for x in "qkv"])
            if f"{b}attn2.to_q.{suffix}" in sd:
                out[f"{j}x_block.attn2.qkv.{suffix}"] = torch.cat([sd.pop(f"{b}attn2.to_{x}.{suffix}") for x in "qkv"])
                out[f"{j}x_block.attn2.proj.{suffix}"] = sd.pop(f"{b}attn2.to_out.0.{suffix}")
            out[f"{j}x_block.attn.proj.{suffix}"] = sd.pop(f"{b}attn.to_out.0.{suffix}")
            out[f"{j}x_block.adaLN_modulation.1.{suffix}"] = sd.pop(f"{b}norm1.linear.{suffix}")
            ctx = sd.pop(f"{b}norm1_context.linear.{suffix}")
            out[f"{j}context_block.adaLN_modulation.1.{suffix}"] = _swap_halves(ctx) if last else ctx
            out[f"{j}x_block.mlp.fc1.{suffix}"] = sd.pop(f"{b}ff.net.0.proj.{suffix}")
            out[f"{j}x_block.mlp.fc2.{suffix}"] = sd.pop(f"{b}ff.net.2.{suffix}")
            if not last:
                out[f"{j}context_block.attn.proj.{suffix}"] = sd.pop(f"{b}attn.to_add_out.{suffix}")
                out[f"{j}context_block.mlp.fc1.{suffix}"] = sd.pop(f"{b}ff_context.net.0.proj.{suffix}")
                out[f"{j}context_block.mlp.fc2.{suffix}"] = sd.pop(f"{b}ff_context.net.2.{suffix}")
        for new, old in (("norm_q", "x_block.attn.ln_q"), ("norm_k", "x_block.attn.ln_k"),
                         ("norm_added_q", "context_block.attn.ln_q"), ("norm_added_k", "context_block.attn.ln_k")):
            if f"{b}attn.{new}.weight" in sd:
                out[f"{j}{old}.weight"] = sd.pop(f"{b}attn.{new}.weight")
        for new, old in (("norm_q", "x_block.attn2.ln_q"), ("norm_k", "x_block.attn2.ln_k")):
            if f"{b}attn2.{new}.weight" in sd:
                out[f"{j}{old}.weight"] = sd.pop(f"{b}attn2.{new}.weight")
    if sd:
        raise KeyError(f"transformer keys with no original name: {sorted(sd)[:5]}")
    return out


def vae_to_original(sd: dict[str, torch.Tensor], num_blocks: int) -> dict[str, torch.Tensor]:
    out = {}
    attn = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
    for key, value in sd.items():
        k = key.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
        k = re.sub(r"encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block.", k)
        k = re.sub(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", k)
        m = re.match(r"decoder\.up_blocks\.(\d+)\.(resnets|upsamplers\.0)\.(.*)", k)
        if m:  # diffusers counts up blocks from the bottom, the original from the top
            sub = "block." if m.group(2) == "resnets" else "upsample."
            k = f"decoder.up.{num_blocks - 1 - int(m.group(1))}.{sub}{m.group(3)}"
        k = re.sub(r"mid_block\.resnets\.(\d+)\.", lambda mm: f"mid.block_{int(mm.group(1)) + 1}.", k)
        m = re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.*)\.(weight|bias)", k)
        if m:
            k = f"{m.group(1)}.mid.attn_1.{attn[m.group(2)]}.{m.group(3)}"
            if value.ndim == 2:  # the original attention uses 1x1 convolutions
                value = value[:, :, None, None]
        out[k] = value
    return out


def write_single_file(model_dir: Path, out: Path, text_encoders: tuple[str, ...] = ("text_encoder", "text_encoder_2"),
                      separate: tuple[str, ...] = (), separate_dir: Path | None = None) -> Path:
    """Write ``model_dir`` (a diffusers SD3 folder) as ``out`` in the original layout.

    ``text_encoders``: which encoders go inside the file; ``separate``: which go into their own files
    (``clip_l.safetensors``, ``clip_g.safetensors``, ``t5xxl_fp16.safetensors`` in ``separate_dir``, keys
    without prefix, as Stability's SD3.5 repos ship them).
    """
    import json

    from safetensors.torch import load_file, save_file

    def weights(sub):
        sd = {}
        for f in sorted((model_dir / sub).glob("*.safetensors")):
            sd.update(load_file(str(f)))
        return sd

    tcfg = json.loads((model_dir / "transformer" / "config.json").read_text())
    vcfg = json.loads((model_dir / "vae" / "config.json").read_text())
    state = {TRANSFORMER_PREFIX + k: v for k, v in transformer_to_original(weights("transformer"),
                                                                         tcfg["num_layers"]).items()}
    state.update({VAE_PREFIX + k: v for k, v in vae_to_original(weights("vae"),
                                                                len(vcfg["block_out_channels"])).items()})
    for comp in text_encoders:
        state.update({TEXT_PREFIXES[comp] + k: v for k, v in weights(comp).items()})
    for comp in separate:
        separate_dir.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in weights(comp).items()}, str(separate_dir / SEPARATE_NAMES[comp]))
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(out))
    return out
