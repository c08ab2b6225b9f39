"""The baselines a bundle is compared with, run in the benchmark's own process:

* the fp32 PyTorch reference (``FlashPipeline.from_model`` over the bundle's source model, with the bundle's
  exact generation spec): the images quality is measured against, and the "eager fp32" latency;
* diffusers' ``StableDiffusion3Pipeline`` on the same weights and steps: what a user would run instead.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..bundle import Bundle
from ..errors import InvalidInput, ModelLoadError
from ..pipeline import FlashPipeline
from ..sampler import gaussian_noise
from .measure import time_runs


def reference_source(bundle: Bundle, override: str | None = None) -> str:
    """The model a bundle was exported from: ``override``, or ``"tiny"`` (built in) when the manifest names it.
    The manifest's ``model.source`` is never followed: a bundle does not choose what this process reads."""
    if override:
        return override
    model = bundle.manifest.get("model", {})
    if model.get("name") == "tiny":
        return "tiny"  # rebuilt deterministically into the cache when missing
    raise ModelLoadError(f"bundle {bundle.path} was exported from {str(model.get('source') or 'an unknown model')[:200]}"
                         f"; pass --model with that folder to measure quality and the PyTorch baseline (a path "
                         f"a bundle names is never opened)")


def reference_key(bundle: Bundle, source: str) -> str:
    """Bundles with the same key share one reference (same model, size, text layout and schedule)."""
    g = bundle.manifest["generation"]
    return json.dumps({"source": source, "image": g["image"], "text": g["text"], "sampler": g["sampler"]},
                      sort_keys=True)


def reference_pipeline(bundle: Bundle, source: str) -> FlashPipeline:
    """The fp32 PyTorch pipeline of ``source`` with exactly ``bundle``'s generation constants."""
    spec = bundle.spec
    ref = FlashPipeline.from_model(source, t5=spec.text.t5 == "encoder", height=spec.height, width=spec.width,
                                   sigmas=list(spec.sampler.sigmas), rule=spec.sampler.rule,
                                   t5_tokens=spec.text.t5_tokens, guidance_scale=spec.sampler.guidance_scale)
    if (ref.spec.latent, ref.spec.text) != (spec.latent, spec.text):
        raise InvalidInput(f"{source} does not match bundle {bundle.path} (latent or text layout differs): "
                           f"pass --model with the folder it was exported from")
    return FlashPipeline(replace(ref.spec, sampler=spec.sampler), ref.sessions, ref.tokenizers,
                         {**ref.info, "backends": {c: "torch (in memory)" for c in ref.sessions}})


def source_folder(source: str) -> Path:
    if source == "tiny":
        from ..models.tiny import tiny_folder

        return tiny_folder()
    return Path(source)


def diffusers_baseline(source: str, bundle: Bundle, prompt: str, repeats: int, reference_image: np.ndarray,
                       say) -> dict:
    """``StableDiffusion3Pipeline`` (fp32 eager) on the same weights, size, steps and initial noise."""
    import time

    import torch
    from diffusers import StableDiffusion3Pipeline

    from ..metrics import psnr

    spec = bundle.spec
    t5 = spec.text.t5 == "encoder"
    kw = {} if t5 else {"text_encoder_3": None, "tokenizer_3": None}
    t0 = time.perf_counter()
    pipe = StableDiffusion3Pipeline.from_pretrained(str(source_folder(source)), torch_dtype=torch.float32,
                                                    local_files_only=True, **kw)
    load_s = time.perf_counter() - t0
    pipe.set_progress_bar_config(disable=True)
    notes = []
    if spec.sampler.shift is None:
        notes.append("the bundle's explicit sigmas are not reproducible through diffusers' scheduler: "
                     "diffusers runs its own schedule for the same number of steps")
    if spec.sampler.rule != "euler":
        notes.append(f"diffusers runs Euler steps, the bundle {spec.sampler.rule!r} steps")
    if spec.text.t5_tokens == 0:
        notes.append("diffusers always appends 256 T5 slots; the bundle drops them (77 text tokens)")
    latents = torch.from_numpy(gaussian_noise(0, spec.latent.shape))

    def run():
        with torch.inference_mode():
            return pipe(prompt, num_inference_steps=spec.sampler.steps, guidance_scale=spec.sampler.guidance_scale,
                        height=spec.height, width=spec.width, output_type="np", latents=latents.clone(),
                        max_sequence_length=spec.text.t5_tokens).images

    say(f"  diffusers StableDiffusion3Pipeline, {spec.sampler.steps} step(s): {repeats} run(s)")
    image = run()[0].transpose(2, 0, 1)[None]
    e2e = time_runs(run, repeats, warmup=0)
    del pipe
    return {"label": "diffusers StableDiffusion3Pipeline fp32 (eager)", "load_s": load_s, "steps": spec.sampler.steps,
            "e2e": e2e, "psnr_vs_reference_db": psnr(reference_image, image, data_range=1.0), "notes": notes}
