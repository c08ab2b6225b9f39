"""``run_bench``: every measurement for a list of bundles and their baselines, as one results dict.

Order: machine and GEMM peak; then per distinct source model the fp32 PyTorch reference (latency, the
reference images, diffusers' pipeline), freed before the bundles load; then per bundle its latency,
images and quality, and its cold load and memory in a fresh process. Every backend is reached through
``FlashPipeline.from_bundle`` and the runtimes registry, so a new target needs nothing here.
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from ..bundle import Bundle
from ..errors import BackendUnavailable, FlashError, InvalidInput
from ..pipeline import FlashPipeline
from . import baselines, flops, latency, measure, probe, quality, size

SCHEMA = "flash-bench/1"
Say = Callable[[str], None]


@dataclass
class Options:
    bundles: list[str]
    repeats: int = 3
    height: int | None = None
    width: int | None = None
    backend: str = "auto"
    model: str | None = None  # the source model of the bundles, when the manifest's path is not here
    teacher: str = "measure"  # or "estimate" (from component medians: real-scale runs)
    diffusers: bool = True
    memory: bool = True  # the fresh-process memory probe
    memory_policy: str = "fast"  # flash_edge.memory: what is resident when, in the benchmark and the probe
    prompts: tuple[str, ...] = quality.PROMPTS
    command: str = ""
    extra: dict = field(default_factory=dict)


def _open(path: str, opts: Options) -> tuple[Bundle, float]:
    t0 = time.perf_counter()
    bundle = Bundle.open(path, verify=True)
    verify_s = time.perf_counter() - t0
    spec = bundle.spec
    for side, want, have in (("height", opts.height, spec.height), ("width", opts.width, spec.width)):
        if want is not None and want != have:
            raise InvalidInput(f"bundle {path} generates {spec.width}x{spec.height}, not the --{side} {want} asked "
                               f"for: export it at that size, or leave --height/--width out")
    return bundle, verify_s


def _flop_stats(bundle: Bundle, lat: dict, gemm: dict) -> dict | None:
    config = bundle.manifest.get("model", {}).get("transformer")
    if not config:
        return None
    spec = bundle.spec
    n = flops.image_tokens(spec.latent.height, spec.latent.width, spec.latent.patch_size)
    per_call = flops.transformer_flops(config, n, spec.text.sequence_length)
    rate = per_call / lat["components"]["transformer"]["median"]
    return {"transformer_call_flops": per_call, "image_tokens": n, "text_tokens": spec.text.sequence_length,
            "achieved_flops_per_s": rate, "fraction_of_gemm_peak": rate / gemm["peak_flops_per_s"]}


def _label(bundle: Bundle, others: list[Bundle]) -> str:
    name = bundle.path.name
    return name if sum(b.path.name == name for b in others) == 1 else str(bundle.path)


def _ratios(lat: dict, ref: dict | None) -> dict:
    if not ref or "latency" not in ref:
        return {}
    own, rl = str(lat["bundle_steps"]), ref["latency"]
    out = {"step_vs_reference": rl["components"]["transformer"]["median"] / lat["components"]["transformer"]["median"],
           "decode_vs_reference": rl["components"]["vae_decoder"]["median"] / lat["components"]["vae_decoder"]["median"],
           "e2e_vs_reference": rl["e2e"][own]["median"] / lat["e2e"][own]["median"]}
    if ref.get("diffusers") and "e2e" in ref["diffusers"]:
        out["e2e_vs_diffusers"] = ref["diffusers"]["e2e"]["median"] / lat["e2e"][own]["median"]
    return out


def _reference(bundle: Bundle, source: str, opts: Options, gemm: dict, say: Say) -> dict:
    say(f"PyTorch fp32 reference from {source}")
    pipe, load = latency.time_call(lambda: baselines.reference_pipeline(bundle, source))
    ref = {"label": "PyTorch fp32 reference (in memory)", "source": source, "load": load,
           "backends": pipe.info.get("backends")}
    ref["latency"] = latency.measure_pipeline(pipe, opts.prompts[0], opts.repeats, say, opts.teacher)
    ref["flops"] = _flop_stats(bundle, ref["latency"], gemm)
    say(f"  reference images for {len(opts.prompts)} prompts")
    ref["images"] = quality.generate_all(pipe, opts.prompts)
    del pipe
    gc.collect()
    if opts.diffusers:
        try:
            ref["diffusers"] = baselines.diffusers_baseline(source, bundle, opts.prompts[0], opts.repeats,
                                                            ref["images"][0], say)
        except ImportError as e:
            ref["diffusers"] = {"error": f"diffusers is not installed: {e}"}
        gc.collect()
    return ref


def run_bench(opts: Options, say: Say = lambda msg: None) -> dict:
    if opts.repeats < 1:
        raise InvalidInput(f"--repeats must be at least 1, got {opts.repeats}")
    if not opts.bundles:
        raise InvalidInput("name at least one --bundle to measure")
    if len(opts.prompts) < 1:
        raise InvalidInput("at least one prompt is needed")
    if opts.teacher not in ("measure", "estimate"):
        raise InvalidInput(f"teacher mode must be 'measure' or 'estimate', got {opts.teacher!r}")
    started = datetime.now(timezone.utc)
    load_start = measure.machine_info()["load_average"]
    opened = [_open(p, opts) for p in opts.bundles]  # every bad path fails here, before any work
    bundles = [b for b, _ in opened]
    say("measuring the float32 GEMM peak")
    gemm = measure.gemm_peak()

    references, ref_errors, keys = {}, {}, []
    for bundle in bundles:
        try:
            source = baselines.reference_source(bundle, opts.model)
        except FlashError as e:
            keys.append(None)
            ref_errors[str(bundle.path)] = str(e)
            continue
        key = baselines.reference_key(bundle, source)
        keys.append(key)
        if key not in references:
            references[key] = _reference(bundle, source, opts, gemm, say)

    rows, not_run = [], []
    for (bundle, verify_s), key in zip(opened, keys):
        label = _label(bundle, bundles)
        say(f"bundle {label}")
        try:
            pipe, load = latency.time_call(
                lambda: FlashPipeline.from_bundle(bundle.path, backend=opts.backend, verify=False,
                                                  memory=opts.memory_policy))
        except BackendUnavailable as e:  # e.g. Core ML off macOS: report what can be measured, and why not the rest
            say(f"  not run here: {e}")
            not_run.append({"label": label, "path": str(bundle.path), "target": bundle.manifest.get("target"),
                            "precision": bundle.manifest.get("precision"), "reason": str(e),
                            "size": size.artifact_sizes(bundle), "parity": bundle.manifest.get("parity")})
            continue
        row = {"label": label, "path": str(bundle.path), "model": bundle.manifest.get("model", {}).get("name"),
               "target": bundle.manifest.get("target"), "precision": bundle.manifest.get("precision"),
               "backends": pipe.info.get("backends"), "height": bundle.spec.height, "width": bundle.spec.width,
               "steps": bundle.spec.sampler.steps, "t5": bundle.spec.text.t5, "verify_s": verify_s,
               "load_in_process": load, "memory_policy": opts.memory_policy}
        row["latency"] = latency.measure_pipeline(pipe, opts.prompts[0], opts.repeats, say, opts.teacher)
        say(f"  images for {len(opts.prompts)} prompts")
        images = quality.generate_all(pipe, opts.prompts)
        del pipe
        gc.collect()
        ref = references.get(key)
        row["reference"] = key
        row["quality"] = quality.compare(ref["images"], images) if ref else {"error": ref_errors[str(bundle.path)]}
        row["size"] = size.artifact_sizes(bundle)
        row["flops"] = _flop_stats(bundle, row["latency"], gemm)
        row["ratios"] = _ratios(row["latency"], ref)
        if opts.memory:
            say("  cold load and peak memory in a fresh process")
            row["memory"] = probe.run_probe(str(bundle.path), opts.backend, memory=opts.memory_policy)
        rows.append(row)

    from ..runtimes import REGISTRY, backend_class

    registered = {name: backend_class(name).unavailable_reason() or "available" for name in REGISTRY}
    baseline_rows = [{k: v for k, v in r.items() if k != "images"} | {"key": k} for k, r in references.items()]
    machine = measure.machine_info()
    return {"schema": SCHEMA, "command": opts.command, "started": started.isoformat(timespec="seconds"),
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": machine, "machine_label": measure.machine_label(machine), "gemm": gemm,
            "settings": {"repeats": opts.repeats, "warmup": 1, "backend": opts.backend, "teacher": opts.teacher,
                         "memory_policy": opts.memory_policy,
                         "e2e_steps": list(latency.E2E_STEPS), "prompts": list(opts.prompts),
                         "teacher_steps": latency.TEACHER_STEPS, "teacher_guidance": latency.TEACHER_GUIDANCE,
                         "load_average_start": load_start,
                         **opts.extra},
            "backends_registered": registered, "baselines": baseline_rows, "bundles": rows, "not_run": not_run}
