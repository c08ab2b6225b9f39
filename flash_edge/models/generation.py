"""A loaded model + the user's choices -> the ``GenerationSpec`` (every constant a bundle records)."""

from __future__ import annotations

from ..contract import special_tokens
from ..conditioning import TextLayout
from ..errors import InvalidInput
from ..sampler import MAX_SAMPLER_STEPS, SamplerConfig, check_steps
from ..spec import DecodeSpec, GenerationSpec, LatentSpec, TokenizerSpec
from .loading import SD3Model

DEFAULT_STEPS = 4
DEFAULT_T5_TOKENS = 256  # diffusers' max_sequence_length


def default_t5_tokens(model: SD3Model) -> int:
    """The model's own choice (its folder's ``flash_edge.json``), else diffusers' 256. A model trained without
    the T5 slot (t5_tokens 0) that is loaded with a T5 encoder gets 256: T5 states need slots."""
    chosen = model.defaults.get("t5_tokens", DEFAULT_T5_TOKENS)
    return DEFAULT_T5_TOKENS if chosen == 0 and model.text_encoder_3 is not None else chosen


def range_warnings(model: SD3Model, spec: GenerationSpec) -> list[str]:
    """One line per setting outside what the model's folder says it was trained for (``flash_edge.json``'s
    ``steps`` and ``size``): another size gives a broken picture (the built-in 64x64 model at 256x256 draws a
    grid of dots), another step count a weaker one. Folders that say nothing get no warning."""
    d, out = model.defaults, []
    steps, size = d.get("steps"), d.get("size")
    s = spec.sampler
    if steps is not None and s.steps != steps and s.guidance_scale <= 1.0:
        out.append(f"{model.name} was distilled for {steps} steps; at {s.steps} it may draw a weaker picture")
    if size is not None and (spec.height, spec.width) != (size, size):
        out.append(f"{model.name} was trained at {size}x{size}; at {spec.width}x{spec.height} expect a broken "
                   f"picture")
    return out


def warn_out_of_range(model: SD3Model, spec: GenerationSpec) -> list[str]:
    """``range_warnings`` as ``OutOfRangeWarning``s (the CLI prints each as one line); returns them."""
    import warnings

    from ..errors import OutOfRangeWarning

    lines = range_warnings(model, spec)
    for line in lines:
        warnings.warn(line, OutOfRangeWarning, stacklevel=3)
    return lines


def check_size(model: SD3Model, height: int, width: int) -> None:
    tcfg, vae_factor = model.transformer.config, 2 ** (len(model.vae.config.block_out_channels) - 1)
    unit = vae_factor * tcfg.patch_size
    limit = tcfg.pos_embed_max_size * unit if tcfg.pos_embed_max_size else None
    for side, value in (("height", height), ("width", width)):
        if not isinstance(value, int) or value <= 0 or value % unit:
            raise InvalidInput(f"{side} must be a positive multiple of {unit} (VAE factor {vae_factor} x patch "
                               f"{tcfg.patch_size}), got {value!r}")
        if limit and value > limit:
            raise InvalidInput(f"{side} {value} exceeds what this model's position embedding covers "
                               f"({tcfg.pos_embed_max_size} patches = {limit} px)")


def decode_spec(tile: int | None, overlap: int | None, factor: int, cells: tuple[int, int]) -> DecodeSpec:
    """Tiled decode from pixel sizes (``--decode-tile``/``--decode-overlap``; overlap default: a quarter of the
    tile, as diffusers' tiled decode) to latent cells; ``tile`` None: untiled."""
    if tile is None:
        if overlap is not None:
            raise InvalidInput("--decode-overlap needs --decode-tile")
        return DecodeSpec()
    overlap = tile // 4 // factor * factor if overlap is None else overlap
    for name, value in (("decode tile", tile), ("decode overlap", overlap)):
        if not isinstance(value, int) or value < 0 or value % factor:
            raise InvalidInput(f"{name} must be a multiple of the VAE factor {factor} in pixels, got {value!r}")
    t, o = tile // factor, overlap // factor
    if not 0 < t <= min(cells) or t == max(cells):
        raise InvalidInput(f"decode tile {tile} px must be smaller than the image ({cells[0] * factor}x"
                           f"{cells[1] * factor}) and no larger than its short side")
    if o > t // 2:
        raise InvalidInput(f"decode overlap {overlap} px must be at most half the tile ({tile} px)")
    return DecodeSpec(tile=t, overlap=o)


def sampler_from_model(model: SD3Model, steps: int | None = None, rule: str = "euler", sigmas=None,
                       guidance_scale: float = 1.0) -> SamplerConfig:
    """The sampler: explicit ``sigmas`` (a final 0 appended when missing; ``steps``, if given, must agree),
    else ``steps`` (default 4) from the model scheduler's shift."""
    cfg = model.scheduler_config
    if sigmas is not None:
        sigmas = [float(s) for s in sigmas]
        if sigmas and sigmas[-1] != 0.0:
            sigmas.append(0.0)
        if steps is not None and steps != len(sigmas) - 1:
            raise InvalidInput(f"steps {steps} disagrees with the sigmas given, which make {len(sigmas) - 1} "
                               f"step(s) ({sigmas}); give one or the other")
        return SamplerConfig(sigmas=tuple(sigmas), rule=rule, guidance_scale=guidance_scale,
                             timestep_scale=float(cfg.get("num_train_timesteps", 1000)))
    steps = model.defaults.get("steps", DEFAULT_STEPS) if steps is None else steps
    check_steps(steps, MAX_SAMPLER_STEPS)  # a bundle's few-step limit is the exporter's check
    unsupported = [k for k in ("use_dynamic_shifting", "use_karras_sigmas", "use_exponential_sigmas",
                               "use_beta_sigmas", "invert_sigmas") if cfg.get(k)] + (
        ["shift_terminal"] if cfg.get("shift_terminal") else [])
    if unsupported:
        raise InvalidInput(f"the model's scheduler uses {', '.join(unsupported)}, which flash-edge does not "
                           f"reproduce; pass explicit sigmas (--sigmas) instead")
    if rule == "euler" and cfg.get("stochastic_sampling"):
        rule = "renoise"
    return SamplerConfig.from_shift(steps, float(cfg.get("shift", 1.0)), rule=rule, guidance_scale=guidance_scale)


def generation_spec(model: SD3Model, height: int | None = None, width: int | None = None, steps: int | None = None,
                    rule: str = "euler", sigmas=None, t5_tokens: int | None = None,
                    guidance_scale: float = 1.0, decode_tile: int | None = None,
                    decode_overlap: int | None = None) -> GenerationSpec:
    tcfg, vcfg = model.transformer.config, model.vae.config
    vae_factor = 2 ** (len(vcfg.block_out_channels) - 1)
    height = tcfg.sample_size * vae_factor if height is None else height
    width = tcfg.sample_size * vae_factor if width is None else width
    check_size(model, height, width)
    t5_tokens = default_t5_tokens(model) if t5_tokens is None else t5_tokens
    if not isinstance(t5_tokens, int) or not 0 <= t5_tokens <= 512:
        raise InvalidInput(f"t5_tokens must be an integer from 0 to 512, got {t5_tokens!r}")
    t5 = model.text_encoder_3 is not None
    if t5 and t5_tokens == 0:
        raise InvalidInput("t5_tokens=0 drops the T5 slot, which needs the model loaded without T5")
    te1, te2 = model.text_encoder.config, model.text_encoder_2.config
    text = TextLayout(clip_tokens=77, t5_tokens=t5_tokens, joint_attention_dim=tcfg.joint_attention_dim,
                      clip_hidden_dims=(te1.hidden_size, te2.hidden_size),
                      pooled_dims=(te1.projection_dim, te2.projection_dim), t5="encoder" if t5 else "zeros")
    if sum(text.pooled_dims) != tcfg.pooled_projection_dim:
        raise InvalidInput(f"the CLIP projections ({text.pooled_dims}) do not add up to the transformer's "
                           f"pooled_projection_dim ({tcfg.pooled_projection_dim}): the folder mixes models")
    tokenizers = {}
    for comp in model.tokenizer_dirs:
        tok = model.tokenizer(comp)
        max_length = t5_tokens if comp == "text_encoder_3" else tok.model_max_length
        if comp != "text_encoder_3" and max_length != 77:
            raise InvalidInput(f"{model.tokenizer_dirs[comp]} has model_max_length {max_length}; SD3's CLIP "
                               f"tokenizers use 77")
        prefix, suffix = special_tokens(lambda text: tok(text, truncation=False)["input_ids"])
        tokenizers[comp] = TokenizerSpec(path=model.tokenizer_dirs[comp].name, max_length=max_length,
                                         pad_id=int(tok.pad_token_id), vocab_size=len(tok),
                                         special_prefix=tuple(map(int, prefix)), special_suffix=tuple(map(int, suffix)))
    latent = LatentSpec(channels=tcfg.in_channels, height=height // vae_factor, width=width // vae_factor,
                        scaling_factor=float(vcfg.scaling_factor), shift_factor=float(vcfg.shift_factor or 0.0),
                        vae_scale_factor=vae_factor, patch_size=tcfg.patch_size)
    return GenerationSpec(height=height, width=width, latent=latent,
                          sampler=sampler_from_model(model, steps, rule, sigmas, guidance_scale), text=text,
                          tokenizers=tokenizers,
                          decode=decode_spec(decode_tile, decode_overlap, vae_factor, (latent.height, latent.width)))
