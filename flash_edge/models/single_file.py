"""Load an SD3-family single-file checkpoint: the original key layout of Stability's reference code and ComfyUI.

    model.diffusion_model.*            the MMDiT (also accepted without the prefix: a transformer-only file)
    first_stage_model.*                the VAE
    text_encoders.clip_l.*             CLIP-L   } optional inside the file; else the separate files SD3.5
    text_encoders.clip_g.*             CLIP-G   } ships (text_encoders/clip_l.safetensors, clip_g.safetensors,
    text_encoders.t5xxl.*              T5-XXL   }  t5xxl_fp16.safetensors), else the config folder's weights

The weights go through diffusers' own single-file conversion (``from_single_file`` for the transformer and the
VAE; ``single_file_utils.create_diffusers_{clip,t5}_model...`` for the text encoders, which also apply SD3's
rule that CLIP-L's pooled output is used unprojected: an identity ``text_projection``).

A single file does not say everything: head counts, activations, the VAE's scaling and shift, the tokenizers
and the scheduler are not in its tensors. They come from a **config folder**: a diffusers SD3 folder of the
same architecture (``model_index.json``, ``*/config.json``, ``tokenizer*/``, ``scheduler/``; weights not
needed). It is the checkpoint's own folder when that holds ``model_index.json`` (Stability's Hugging Face
repos ship both), or given explicitly (``config=``, ``--config``). Before any weight is read, the checkpoint's
tensor shapes are converted on the meta device and checked against the config's model, so a checkpoint and a
config of different architectures fail with the names of the weights that differ, never a half-loaded model.
"""

from __future__ import annotations

from pathlib import Path

from ..configs import check_config as check_model_config
from ..errors import ModelLoadError, first_line
from ..spec import COMPONENTS

TRANSFORMER, VAE = "model.diffusion_model.", "first_stage_model."
TEXT = {"text_encoder": "text_encoders.clip_l.", "text_encoder_2": "text_encoders.clip_g.",
        "text_encoder_3": "text_encoders.t5xxl."}
TEXT_NAMES = {"text_encoder": "CLIP-L (clip_l)", "text_encoder_2": "CLIP-G (clip_g)",
              "text_encoder_3": "T5-XXL (t5xxl)"}
SEPARATE_FILES = {"text_encoder": ("clip_l.safetensors",), "text_encoder_2": ("clip_g.safetensors",),
                  "text_encoder_3": ("t5xxl_fp16.safetensors", "t5xxl.safetensors", "t5xxl_bf16.safetensors",
                                     "t5xxl_fp32.safetensors")}
SEPARATE_KEYS = {"text_encoder": "text_model.embeddings.position_embedding.weight",
                 "text_encoder_2": "text_model.embeddings.position_embedding.weight",
                 "text_encoder_3": "encoder.final_layer_norm.weight"}
# keys of a transformer-only file without the model.diffusion_model. prefix (ComfyUI's diffusion_models/)
BARE_TRANSFORMER = ("joint_blocks.", "x_embedder.", "t_embedder.", "y_embedder.", "context_embedder.",
                    "final_layer.")
ESSENTIAL = ("pos_embed", "x_embedder.proj.weight", "t_embedder.mlp.0.weight", "y_embedder.mlp.0.weight",
             "context_embedder.weight", "joint_blocks.0.x_block.attn.qkv.weight", "final_layer.linear.weight")
BENIGN_EXTRAS = ("position_ids", "logit_scale")  # in some CLIP files; no weight of the model
CONFIG_PARTS = ("transformer", "vae", "text_encoder", "text_encoder_2")


def is_single_file(source) -> bool:
    return str(source).endswith(".safetensors")


def _show(keys, n: int = 5) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:n]) + (f" (and {len(keys) - n} more)" if len(keys) > n else "")


class Checkpoint:
    """The keys and shapes of a safetensors file, read from its header (no weights are loaded)."""

    def __init__(self, path: Path):
        from safetensors import safe_open

        self.path = path
        try:
            with safe_open(str(path), framework="pt") as f:
                self.shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        except Exception as e:  # safetensors raises SafetensorError/OSError with terse messages
            raise ModelLoadError(f"corrupt safetensors file {path}: {e}") from None

    def keys(self, prefix: str) -> list[str]:
        return [k for k in self.shapes if k.startswith(prefix)]

    def meta(self, keys, rename=lambda k: k) -> dict:
        import torch

        return {rename(k): torch.empty(self.shapes[k], device="meta") for k in keys}

    def load(self, keys, rename=lambda k: k) -> dict:
        from safetensors import safe_open

        with safe_open(str(self.path), framework="pt") as f:
            return {rename(k): f.get_tensor(k) for k in keys}


def split_layout(ckpt: Checkpoint) -> dict[str, list[str]]:
    """Component -> its keys in the file; refuses keys outside the original SD3 layout, naming them."""
    parts = {"transformer": ckpt.keys(TRANSFORMER), "vae": ckpt.keys(VAE)}
    parts.update({c: ckpt.keys(p) for c, p in TEXT.items()})
    if not parts["transformer"] and any(k.startswith("joint_blocks.") for k in ckpt.shapes):
        parts["transformer"] = [k for k in ckpt.shapes if k.startswith(BARE_TRANSFORMER) or k == "pos_embed"]
    known = {k for keys in parts.values() for k in keys}
    unknown = [k for k in ckpt.shapes if k not in known]
    if unknown:
        hint = ""
        if any(k.startswith(("transformer_blocks.", "text_model.", "encoder.", "decoder.")) for k in unknown):
            hint = ("; it looks like one diffusers/transformers component's weights: load the diffusers folder "
                    "it belongs to instead")
        raise ModelLoadError(
            f"{ckpt.path} is not an SD3 checkpoint in the original single-file layout: {len(unknown)} of "
            f"{len(ckpt.shapes)} keys match none of {TRANSFORMER}*, {VAE}*, "
            f"text_encoders.{{clip_l,clip_g,t5xxl}}.*: {_show(unknown)}{hint}")
    strip = TRANSFORMER if parts["transformer"] and parts["transformer"][0].startswith(TRANSFORMER) else ""
    missing = [k for k in ESSENTIAL if strip + k not in ckpt.shapes]
    if missing:
        raise ModelLoadError(f"{ckpt.path} holds no SD3 MMDiT transformer: missing {_show(strip + k for k in missing)}")
    return parts


def find_config(path: Path, config) -> Path:
    if config is not None:
        return Path(config).expanduser()
    if (path.parent / "model_index.json").is_file():
        return path.parent
    raise ModelLoadError(
        f"{path} is a single-file checkpoint: flash-edge also needs the diffusers config folder of its architecture "
        f"(model_index.json, transformer/ vae/ text_encoder*/ config.json, tokenizer*/, scheduler/; weights not "
        f"needed) beside it, as in Stability's Hugging Face repos, or named with --config DIR")


def check_config(config: Path, t5: bool) -> dict:
    from .loading import _read_json

    what = f"config folder {config} (for a single-file checkpoint)"
    if not config.is_dir():
        raise ModelLoadError(f"{what} does not exist or is not a folder")
    index = _read_json(config / "model_index.json", f"{what} is not a diffusers model folder")
    if "StableDiffusion3" not in index.get("_class_name", ""):
        raise ModelLoadError(f"{what} holds a {index.get('_class_name') or 'unknown'} pipeline, not SD3")
    parts = CONFIG_PARTS + (("text_encoder_3",) if t5 else ())
    missing = [f"{p}/config.json" for p in parts if not (config / p / "config.json").is_file()]
    missing += [f"{t}/" for t in ("tokenizer", "tokenizer_2") + (("tokenizer_3",) if t5 else ())
                if not (config / t).is_dir()]
    missing += [] if (config / "scheduler" / "scheduler_config.json").is_file() else ["scheduler/scheduler_config.json"]
    if missing:
        hint = " (pass --no-t5 to run without T5)" if any("_3" in m for m in missing) else ""
        raise ModelLoadError(f"{what} is incomplete: missing {', '.join(missing)}{hint}")
    for p in parts:
        check_model_config(config / p / "config.json", ModelLoadError)
    return _read_json(config / "scheduler" / "scheduler_config.json", what)


def check_against_config(model, converted: dict, what: str, config_file: Path, ignore=(), summary="") -> None:
    """Converted (meta) checkpoint vs the (meta) model built from the config: same keys, same shapes."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in converted.items() if not k.endswith(BENIGN_EXTRAS)}
    missing = [k for k in expected if k not in got and k not in ignore]
    unexpected = [k for k in got if k not in expected]
    shapes = [f"{k} {got[k]} vs {expected[k]}" for k in expected if k in got and got[k] != expected[k]]
    problems = [f"{label} {_show(keys, 3)}" for label, keys in
                (("missing weights", missing), ("unexpected weights", unexpected),
                 ("shapes differ (checkpoint vs config)", shapes)) if keys]
    if problems:
        raise ModelLoadError(f"{what} does not match {config_file}{summary}: " + "; ".join(problems)
                             + " (the config folder must be of the checkpoint's architecture)")


def _materialized(module, what: str):
    left = [n for n, p in list(module.named_parameters()) + list(module.named_buffers()) if p.device.type == "meta"]
    if left:
        raise ModelLoadError(f"{what}: weights not in the checkpoint: {_show(left)}")
    return module.eval().requires_grad_(False)


def load_transformer(ckpt: Checkpoint, keys, config: Path, dtype):
    from accelerate import init_empty_weights
    from diffusers import SD3Transformer2DModel
    from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers

    cfg_file = config / "transformer" / "config.json"
    with init_empty_weights():
        empty = SD3Transformer2DModel.from_config(SD3Transformer2DModel.load_config(str(config / "transformer")))
    try:
        converted = convert_sd3_transformer_checkpoint_to_diffusers(ckpt.meta(keys))
    except KeyError as e:
        raise ModelLoadError(f"the transformer in {ckpt.path} is incomplete: no weight {e}") from None
    cfg, depth = empty.config, len({k.split("joint_blocks.")[1].split(".")[0] for k in keys if "joint_blocks." in k})
    hidden = converted["pos_embed.proj.weight"].shape[0]
    summary = (f" (checkpoint: {depth} layers, hidden {hidden}; config: {cfg.num_layers} layers, hidden "
               f"{cfg.num_attention_heads * cfg.attention_head_dim})")
    check_against_config(empty, converted, f"the transformer in {ckpt.path}", cfg_file, summary=summary)
    try:
        module = SD3Transformer2DModel.from_single_file(ckpt.load(keys), config=str(config), subfolder="transformer",
                                                        local_files_only=True, torch_dtype=dtype)
    except (ValueError, KeyError, RuntimeError, OSError) as e:
        raise ModelLoadError(f"cannot load the transformer of {ckpt.path}: {first_line(e)}") from None
    return _materialized(module, f"the transformer of {ckpt.path}")


def load_vae(ckpt: Checkpoint, keys, config: Path, dtype):
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    vae_config = AutoencoderKL.load_config(str(config / "vae"))
    with init_empty_weights():
        empty = AutoencoderKL.from_config(vae_config)
    converted = convert_ldm_vae_checkpoint(ckpt.meta(keys), vae_config)
    check_against_config(empty, converted, f"the VAE in {ckpt.path}", config / "vae" / "config.json")
    try:
        module = AutoencoderKL.from_single_file(ckpt.load(keys), config=str(config), subfolder="vae",
                                                local_files_only=True, torch_dtype=dtype)
    except (ValueError, KeyError, RuntimeError, OSError) as e:
        raise ModelLoadError(f"cannot load the VAE of {ckpt.path}: {first_line(e)}") from None
    return _materialized(module, f"the VAE of {ckpt.path}")


def load_text_encoder(component: str, ckpt: Checkpoint, keys, rename, config: Path, dtype):
    """One text encoder from ``keys`` of ``ckpt``, renamed into the single-file layout by ``rename``."""
    import torch
    from accelerate import init_empty_weights
    from diffusers.loaders import single_file_utils as sfu
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    t5 = component == "text_encoder_3"
    cls, cfg_cls = (T5EncoderModel, T5Config) if t5 else (CLIPTextModelWithProjection, CLIPTextConfig)
    with init_empty_weights():
        empty = cls(cfg_cls.from_pretrained(str(config / component), local_files_only=True))
    keys = [k for k in keys if not k.endswith(BENIGN_EXTRAS)]
    meta = ckpt.meta(keys, rename)
    prefix = TEXT[component] + "transformer."
    converted = (sfu.convert_sd3_t5_checkpoint_to_diffusers(meta) if t5
                 else sfu.convert_ldm_clip_checkpoint(meta, prefix))
    ignore = ("text_projection.weight",) if component == "text_encoder" else ()  # diffusers sets it to identity
    if t5:  # tied to shared.weight
        ignore = ("encoder.embed_tokens.weight",) if "shared.weight" in converted else ("shared.weight",)
    check_against_config(empty, converted, f"{TEXT_NAMES[component]} in {ckpt.path}",
                         config / component / "config.json", ignore)
    weights = ckpt.load(keys, rename)
    try:
        if t5:
            module = sfu.create_diffusers_t5_model_from_checkpoint(cls, weights, config=str(config), subfolder=component,
                                                                   torch_dtype=dtype, local_files_only=True)
            shared, embed = module.shared, module.encoder.embed_tokens  # tied; a file may name only one
            if shared.weight.device.type == "meta":
                shared.weight = embed.weight
            elif embed.weight.device.type == "meta":
                embed.weight = shared.weight
        else:
            module = sfu.create_diffusers_clip_model_from_ldm(cls, weights, config=str(config), subfolder=component,
                                                              torch_dtype=dtype, local_files_only=True)
    except (ValueError, KeyError, RuntimeError, OSError) as e:
        raise ModelLoadError(f"cannot load {TEXT_NAMES[component]} from {ckpt.path}: {first_line(e)}") from None
    return _materialized(module.to(dtype or torch.float32), f"{TEXT_NAMES[component]} from {ckpt.path}")


def find_separate(component: str, path: Path, text_dir) -> Path | None:
    dirs = [Path(text_dir).expanduser()] if text_dir else [path.parent / "text_encoders", path.parent]
    for d in dirs:
        for name in SEPARATE_FILES[component]:
            if (d / name).is_file():
                return d / name
    return None


def text_encoder(component: str, ckpt: Checkpoint, keys, path: Path, config: Path, text_dir, dtype):
    """From the checkpoint, else a separate file, else the config folder's own weights, else a clear error."""
    from .loading import load_part

    if keys:
        return load_text_encoder(component, ckpt, keys, lambda k: k, config, dtype)
    separate = find_separate(component, path, text_dir)
    if separate:
        sep = Checkpoint(separate)
        prefix = TEXT[component] + "transformer."
        if SEPARATE_KEYS[component] in sep.shapes:  # transformers layout, no prefix: as Stability ships them
            return load_text_encoder(component, sep, list(sep.shapes), lambda k: prefix + k, config, dtype)
        inside = sep.keys(TEXT[component])
        if inside:
            return load_text_encoder(component, sep, inside, lambda k: k, config, dtype)
        raise ModelLoadError(f"{separate} is not a {TEXT_NAMES[component]} file: no {SEPARATE_KEYS[component]} "
                             f"(keys: {_show(sep.shapes)})")
    if any((config / component).glob("*.safetensors")):
        return load_part(config, component, dtype)
    where = f"{Path(text_dir).expanduser()}" if text_dir else f"{path.parent / 'text_encoders'} or {path.parent}"
    hint = " (or pass --no-t5)" if component == "text_encoder_3" else ""
    raise ModelLoadError(
        f"{path} has no {TEXT_NAMES[component]} text encoder (no {TEXT[component]}* keys), and there is no "
        f"{' / '.join(SEPARATE_FILES[component][:2])} in {where} nor weights in {config / component}: "
        f"put the separate file beside the checkpoint{hint}")


def load_single_file(path, config=None, t5: bool = False, dtype=None, text_encoders=None):
    """Load an SD3-family single-file checkpoint into an ``SD3Model`` (see the module docstring).

    ``config``: the diffusers config folder (default: the checkpoint's folder); ``text_encoders``: the folder of
    separate text-encoder files (default: ``text_encoders/`` beside the checkpoint, then its own folder).
    """
    import torch

    from .loading import SD3Model, load_part, read_defaults

    path = Path(path).expanduser()
    if not path.is_file():
        raise ModelLoadError(f"checkpoint {path} does not exist" if not path.exists() else f"{path} is not a file")
    ckpt = Checkpoint(path)
    parts = split_layout(ckpt)
    config = find_config(path, config)
    scheduler = check_config(config, t5)
    dtype = dtype or torch.float32
    transformer = load_transformer(ckpt, parts["transformer"], config, dtype)
    if parts["vae"]:
        vae = load_vae(ckpt, parts["vae"], config, dtype)
    elif any((config / "vae").glob("*.safetensors")):
        vae = load_part(config, "vae", dtype)
    else:
        raise ModelLoadError(f"{path} has no VAE (no {VAE}* keys) and {config / 'vae'} has no weights either")
    encoders = {c: text_encoder(c, ckpt, parts[c], path, config, text_encoders, dtype)
                for c in ("text_encoder", "text_encoder_2") + (("text_encoder_3",) if t5 else ())}
    tok_dirs = {c: config / COMPONENTS[c].tokenizer for c in encoders}
    return SD3Model(name=path.stem, path=path, transformer=transformer, vae=vae,
                    text_encoder=encoders["text_encoder"], text_encoder_2=encoders["text_encoder_2"],
                    text_encoder_3=encoders.get("text_encoder_3"), scheduler_config=scheduler,
                    tokenizer_dirs=tok_dirs, defaults=read_defaults(config))  # the config folder's flash_edge.json
