"""``FlashPipeline``: tokenize -> encode -> the fixed few-step sampler -> decode -> image.

One pipeline for every backend: it only sees ``Session`` objects (numpy in, numpy out) and the
constants of a ``GenerationSpec``, so the sampler, the conditioning and the image are the same code
whether the components run in PyTorch, ONNX Runtime, Core ML or ExecuTorch.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np

from .bundle import Bundle
from .conditioning import build_conditioning
from .errors import GenerationError, InvalidInput
from .image import to_pil
from .memory import Components, backend_options, check_policy
from .sampler import check_seed, sample
from .spec import GenerationSpec
from .tiling import decode_tiled
from .tokenization import PromptTokenizer, check_prompt

StepCallback = Callable[[int, int], None]


class FlashPipeline:
    def __init__(self, spec: GenerationSpec, sessions: dict | Components, tokenizers: dict[str, PromptTokenizer],
                 info: dict | None = None):
        """``sessions``: name -> ``Session`` (kept open), or a ``Components`` that opens and releases them under
        a memory policy (``memory.py``)."""
        missing = [c for c in spec.components if c not in sessions]
        if missing:
            raise InvalidInput(f"no session for component(s) {missing}")
        if not isinstance(sessions, Components):
            sessions = Components.resident(sessions)
        self.spec, self.sessions, self.tokenizers = spec, sessions, tokenizers
        self.info = dict(info or {})
        self.timings: dict[str, float] = {}
        self.last_latent: np.ndarray | None = None  # the latest generate()'s final latent (before decoding)

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_bundle(cls, path: str | Path, backend: str = "auto", backends: dict[str, str] | None = None,
                    verify: bool = True, memory: str = "fast", **options) -> "FlashPipeline":
        """Load a bundle. ``backend`` applies to every component unless ``backends`` names one for it;
        ``memory``: ``fast`` (every component opened now and kept), ``balanced``, ``low`` or ``stream`` (see
        ``flash_edge.memory``); ``options`` go to the backends (e.g. ``threads``, ``providers``)."""
        from .runtimes import choose_backend

        check_policy(memory)
        bundle = Bundle.open(path, verify=verify)
        spec, entries = bundle.spec, bundle.components
        stray = sorted(set(backends or {}) - set(spec.components))
        if stray:
            raise InvalidInput(f"backends names {', '.join(stray)}, which bundle {path} does not have (it has "
                               f"{', '.join(spec.components)})")
        options = {**options, **backend_options(memory)}
        openers, chosen = {}, {}
        for name in spec.components:
            cls_ = choose_backend(entries[name].target, (backends or {}).get(name, backend))
            openers[name] = lambda cls_=cls_, name=name: cls_(**options).load(bundle, name)
            chosen[name] = cls_.name
        sessions = Components(openers, memory)
        tokenizers = {c: PromptTokenizer.from_file(bundle.file(f"{t.path}/tokenizer.json"), t.max_length, t.pad_id,
                                                   t.vocab_size, t.specials)
                      for c, t in spec.tokenizers.items()}
        model = bundle.manifest.get("model", {}).get("name", "?")
        return cls(spec, sessions, tokenizers,
                   info={"model": model, "bundle": str(path), "backends": chosen, "memory": memory})

    @classmethod
    def from_model(cls, source: str | Path = "tiny", *, t5: bool = False, config=None,
                   **spec_options) -> "FlashPipeline":
        """The PyTorch reference pipeline straight from a model (``"tiny"`` or a diffusers folder), no bundle.

        ``spec_options``: ``height``, ``width``, ``steps``, ``rule``, ``sigmas``, ``t5_tokens``, ``guidance_scale``.
        """
        from .models import load_model
        from .models.generation import generation_spec, warn_out_of_range

        model = load_model(source, t5=t5, config=config)
        spec = generation_spec(model, **spec_options)
        warn_out_of_range(model, spec)
        return cls.reference(model, spec)

    @classmethod
    def reference(cls, model, spec: GenerationSpec, wrappers: dict | None = None) -> "FlashPipeline":
        """The PyTorch reference over a loaded ``SD3Model`` (its wrapped modules, in memory)."""
        from .components import build_wrappers
        from .runtimes.torch import reference_sessions

        wrappers = wrappers or build_wrappers(model, spec.components)
        sessions = reference_sessions(wrappers, spec.component_specs())
        tokenizers = {c: PromptTokenizer(model.tokenizer(c).backend_tokenizer, t.max_length, t.pad_id,
                                          specials=t.specials)
                      for c, t in spec.tokenizers.items()}
        return cls(spec, sessions, tokenizers,
                   info={"model": model.name, "backends": {c: "torch" for c in spec.components}})

    # ----------------------------------------------------------------- stages
    # Each stage releases, at its end, the sessions the memory policy releases (``Components.stage``).
    def encode(self, prompt: str) -> tuple[np.ndarray, np.ndarray]:
        """prompt -> (encoder_hidden_states, pooled_projections)."""
        with self.sessions.stage(self.spec.text_encoders):
            return self._encode(prompt)

    def _encode(self, prompt: str) -> tuple[np.ndarray, np.ndarray]:
        outs = {c: self.sessions[c].run({"input_ids": self.tokenizers[c](prompt)}) for c in self.spec.text_encoders}
        clip_l = (outs["text_encoder"]["hidden_states"], outs["text_encoder"]["pooled"])
        clip_g = (outs["text_encoder_2"]["hidden_states"], outs["text_encoder_2"]["pooled"])
        t5 = outs["text_encoder_3"]["hidden_states"] if "text_encoder_3" in outs else None
        return build_conditioning(self.spec.text, clip_l, clip_g, t5)

    def denoise(self, cond: tuple[np.ndarray, np.ndarray], seed: int,
                uncond: tuple[np.ndarray, np.ndarray] | None = None, on_step: StepCallback | None = None,
                latents: np.ndarray | None = None) -> np.ndarray:
        g = self.spec.sampler.guidance_scale

        def velocity(x, t):
            transformer = self.sessions["transformer"]
            v = transformer.run({"latent": x, "timestep": t, "encoder_hidden_states": cond[0],
                                 "pooled_projections": cond[1]})["velocity"]
            if uncond is None:
                return v
            v_u = transformer.run({"latent": x, "timestep": t, "encoder_hidden_states": uncond[0],
                                   "pooled_projections": uncond[1]})["velocity"]
            return v_u + g * (v - v_u)

        with self.sessions.stage(["transformer"]):
            return sample(velocity, self.spec.sampler, self.spec.latent.shape, seed, on_step=on_step, latents=latents)

    def decode(self, latent: np.ndarray) -> np.ndarray:
        """latent -> (1, 3, H, W) float image in [0, 1]; in tiles when the bundle's decoder takes tiles."""
        with self.sessions.stage(["vae_decoder"]):
            image = self.run_decoder(self.sessions["vae_decoder"], latent)
        if not np.all(np.isfinite(image)):
            raise GenerationError("the VAE decoder returned non-finite values (NaN or inf): the model or its "
                                  "export is broken")
        return image

    def run_decoder(self, decoder, latent: np.ndarray) -> np.ndarray:
        """The decoder session over the whole latent: one run, or one per tile when the bundle's decoder takes
        tiles (``generation.decode``, ``flash_edge/tiling.py``)."""
        tiles = self.spec.decode
        if not tiles.tiled:
            return decoder.run({"latent": latent})["image"]
        return decode_tiled(lambda z: decoder.run({"latent": z})["image"], latent, tiles.tile, tiles.overlap,
                            self.spec.latent.vae_scale_factor)

    # ----------------------------------------------------------------- the whole thing
    def generate(self, prompt: str, seed: int = 0, negative_prompt: str = "", on_step: StepCallback | None = None,
                 latents: np.ndarray | None = None) -> np.ndarray:
        """prompt -> (1, 3, H, W) float image in [0, 1]; per-phase seconds land in ``self.timings``, the final
        latent in ``self.last_latent``."""
        check_prompt(prompt)
        check_prompt(negative_prompt, allow_empty=True)
        check_seed(seed)
        t0 = time.perf_counter()
        conds, uncond = self._conditions([prompt], negative_prompt)
        t1 = time.perf_counter()
        latent = self.denoise(conds[prompt], seed, uncond, on_step=on_step, latents=latents)
        t2 = time.perf_counter()
        self.last_latent = latent
        image = self.decode(latent)
        self.timings = {"encode": t1 - t0, "denoise": t2 - t1, "decode": time.perf_counter() - t2}
        return image

    def _conditions(self, prompts, negative_prompt: str):
        """Every distinct prompt's conditioning and, under CFG, the negative prompt's, in one encode stage (the
        encoders are opened once)."""
        with self.sessions.stage(self.spec.text_encoders):
            conds = {p: self._encode(p) for p in dict.fromkeys(prompts)}
            return conds, self._encode(negative_prompt) if self.spec.sampler.guidance_scale > 1 else None

    def generate_many(self, requests, negative_prompt: str = "") -> list[np.ndarray]:
        """(prompt, seed) pairs -> their images, stage by stage: every prompt is encoded, then every latent
        denoised, then every latent decoded, so each component is opened once for the whole list. Under the
        ``low`` and ``stream`` policies a generation's cost over ``fast`` is mostly opening components; here it is
        paid once per list instead of once per image. Each image is ``generate(prompt, seed)``'s, bit for bit
        (tested). ``self.timings`` holds each phase's seconds for the whole list."""
        requests = [(check_prompt(p), check_seed(s)) for p, s in requests]
        if not requests:
            raise InvalidInput("generate_many needs at least one (prompt, seed) pair")
        check_prompt(negative_prompt, allow_empty=True)
        t0 = time.perf_counter()
        conds, uncond = self._conditions([p for p, _ in requests], negative_prompt)
        t1 = time.perf_counter()
        with self.sessions.stage(["transformer"]):  # the inner stages release nothing: this one spans the list
            latents = [self.denoise(conds[p], s, uncond) for p, s in requests]
        t2 = time.perf_counter()
        with self.sessions.stage(["vae_decoder"]):
            images = [self.decode(z) for z in latents]
        self.timings = {"encode": t1 - t0, "denoise": t2 - t1, "decode": time.perf_counter() - t2}
        return images

    def __call__(self, prompt: str, seed: int = 0, **kwargs):
        """prompt -> PIL image."""
        return to_pil(self.generate(prompt, seed, **kwargs))
