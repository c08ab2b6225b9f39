"""Latency of a loaded ``FlashPipeline`` (any backend): each component's session, the encode phase, end to end
for 1, 2 and 4 steps, and the teacher setting (40 steps, CFG 4.5) on the same sessions.

Only the public API is used: ``pipe.sessions[name].run(feeds)``, ``pipe.encode/denoise/decode/generate``,
and a ``FlashPipeline`` rebuilt over the same sessions with another sampler (``SamplerConfig.from_shift``).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

import numpy as np

from ..pipeline import FlashPipeline
from ..sampler import SamplerConfig, gaussian_noise
from .measure import summarize, time_runs

E2E_STEPS = (1, 2, 4)
TEACHER_STEPS, TEACHER_GUIDANCE = 40, 4.5  # SD3.5-Medium's recommended setting, the paper's baseline
DEFAULT_SHIFT = 3.0  # SD3's scheduler shift, for bundles made with explicit sigmas (no shift recorded)
Say = Callable[[str], None]


def with_steps(pipe: FlashPipeline, steps: int, guidance: float | None = None, rule: str | None = None) -> FlashPipeline:
    """The same sessions with an ``steps``-step sampler from the bundle's shift (its own schedule when nothing
    changes); ``guidance``/``rule`` replace the bundle's (the teacher setting: Euler with CFG)."""
    s = pipe.spec.sampler
    guidance = s.guidance_scale if guidance is None else guidance
    rule = s.rule if rule is None else rule
    if (steps, guidance, rule) == (s.steps, s.guidance_scale, s.rule):
        return pipe
    config = SamplerConfig.from_shift(steps, s.shift if s.shift is not None else DEFAULT_SHIFT, rule=rule,
                                      timestep_scale=s.timestep_scale, guidance_scale=guidance)
    return FlashPipeline(replace(pipe.spec, sampler=config), pipe.sessions, pipe.tokenizers, pipe.info)


def component_feeds(pipe: FlashPipeline, prompt: str) -> dict[str, dict[str, np.ndarray]]:
    """Real inputs for every component: the prompt's tokens, its conditioning, seeded noise."""
    spec = pipe.spec
    feeds = {c: {"input_ids": pipe.tokenizers[c](prompt)} for c in spec.text_encoders}
    hidden, pooled = pipe.encode(prompt)
    latent = gaussian_noise(0, spec.latent.shape)
    feeds["transformer"] = {"latent": latent, "timestep": spec.sampler.timesteps[:1].copy(),
                            "encoder_hidden_states": hidden, "pooled_projections": pooled}
    feeds["vae_decoder"] = {"latent": latent}
    return feeds


def measure_components(pipe: FlashPipeline, prompt: str, repeats: int, say: Say, warmup: int = 1) -> dict:
    feeds = component_feeds(pipe, prompt)
    out = {}
    for name in pipe.spec.components:
        say(f"  component {name}: {repeats} run(s)")
        session = pipe.sessions[name]
        if name == "vae_decoder":  # the whole latent's decode: every tile of a tiled bundle
            out[name] = time_runs(lambda: pipe.run_decoder(session, feeds[name]["latent"]), repeats, warmup)
        else:
            out[name] = time_runs(lambda: session.run(feeds[name]), repeats, warmup)
    out["encode"] = time_runs(lambda: pipe.encode(prompt), repeats, warmup)  # all text encoders + conditioning
    return out


def measure_e2e(pipe: FlashPipeline, prompt: str, repeats: int, say: Say, steps=E2E_STEPS,
                warmup: int = 1) -> dict:
    """prompt -> image for each step count; per-phase seconds of every measured run are kept."""
    out = {}
    for n in sorted(set(steps) | {pipe.spec.sampler.steps}):
        p = with_steps(pipe, n)
        say(f"  end to end, {n} step(s): {repeats} run(s)")
        phases = []

        def run():
            p.generate(prompt, seed=0)
            phases.append(dict(p.timings))

        out[str(n)] = time_runs(run, repeats, warmup)
        out[str(n)]["phases"] = phases[warmup:]  # the first ones were the warm-up
        out[str(n)]["sigmas"] = list(p.spec.sampler.sigmas)
    return out


def teacher_generate(pipe: FlashPipeline, prompt: str, seed: int = 0, steps: int = TEACHER_STEPS,
                     guidance: float = TEACHER_GUIDANCE) -> np.ndarray:
    """The teacher setting on ``pipe``'s own sessions: the pipeline's sampler with ``steps`` Euler steps and
    classifier-free guidance (two transformer calls per step)."""
    return with_steps(pipe, steps, guidance, rule="euler").generate(prompt, seed)


def measure_teacher(pipe: FlashPipeline, prompt: str, repeats: int, components: dict, student_e2e: float,
                    mode: str, say: Say) -> dict:
    """Teacher-setting time, measured (``mode="measure"``) and estimated from the component medians:
    2 encodes + 2 x 40 transformer calls + 1 decode. ``speedup`` = teacher / student end to end."""
    est = (2 * components["encode"]["median"] + 2 * TEACHER_STEPS * components["transformer"]["median"]
           + components["vae_decoder"]["median"])
    out = {"steps": TEACHER_STEPS, "guidance_scale": TEACHER_GUIDANCE, "t5": pipe.spec.text.t5 == "encoder",
           "estimated_s": est, "measured": None}
    if mode == "measure":
        say(f"  teacher setting ({TEACHER_STEPS} steps, CFG {TEACHER_GUIDANCE}): {repeats} run(s)")
        out["measured"] = time_runs(lambda: teacher_generate(pipe, prompt), repeats, warmup=0)
    teacher_s = out["measured"]["median"] if out["measured"] else est
    out.update(basis="measured" if out["measured"] else "estimated", teacher_s=teacher_s,
               student_s=student_e2e, speedup=teacher_s / student_e2e)
    return out


def measure_pipeline(pipe: FlashPipeline, prompt: str, repeats: int, say: Say, teacher: str = "measure",
                     e2e_steps=E2E_STEPS, warmup: int = 1) -> dict:
    """``warmup`` unmeasured runs before each timing: at real size ONNX Runtime's first two runs of a session are
    slower (measured for the SD3.5-Medium int8 step on a 2-core Xeon: 5.1 and 6.9 s, then 3.3 s)."""
    components = measure_components(pipe, prompt, repeats, say, warmup)
    e2e = measure_e2e(pipe, prompt, repeats, say, e2e_steps, warmup)
    own = str(pipe.spec.sampler.steps)
    text = sum(components[c]["median"] for c in pipe.spec.text_encoders)
    return {"components": components, "text_encoders_s": text, "e2e": e2e, "bundle_steps": int(own),
            "teacher": measure_teacher(pipe, prompt, repeats, components, e2e[own]["median"], teacher, say)}


def time_call(fn: Callable[[], object]) -> tuple[object, dict]:
    """One measured call (a cold load): its result and ``summarize`` of its single time."""
    import time

    t0 = time.perf_counter()
    result = fn()
    return result, summarize([time.perf_counter() - t0])
