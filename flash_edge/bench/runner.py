"""``run_bench``: every measurement for a list of bundles and their baselines, as one results dict.

Order: machine and GEMM peak; then per distinct source model the fp32 PyTorch reference (latency, the
reference images, diffusers' pipeline), freed before the bundles load; then per bundle its latency,
images and quality, and its cold load and memory in a fresh process. Every backend is reached through
``FlashPipeline.from_bundle`` and the runtimes registry, so a new target needs nothing here.
"""

from __future__ import annotations

import gc
import time

import numpy as np
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from ..bundle import Bundle
from ..errors import BackendUnavailable, FlashError, InvalidInput
from ..pipeline import FlashPipeline
from ..runtimes import parse_choice
from . import baselines, flops, latency, measure, probe, quality, size

SCHEMA = "flash-bench/1"
Say = Callable[[str], None]


@dataclass
class Options:
    bundles: list[str]
    repeats: int = 3
    warmup: int = 1  # unmeasured runs before each timing (real-size ONNX Runtime sessions settle after two)
    height: int | None = None
    width: int | None = None
    backend: str | tuple[str, ...] = "auto"  # one for every bundle, or one per bundle in order
    model: str | None = None  # the source model of the bundles, when the manifest's path is not here
    teacher: str = "measure"  # or "estimate" (from component medians: real-scale runs)
    diffusers: bool = True
    memory: bool = True  # the fresh-process memory probe
    memory_policies: tuple[str, ...] = ("fast",)  # flash_edge.memory: each bundle is measured under each
    prompts: tuple[str, ...] | None = None  # None: quality.default_prompts for the bundles' model
    threads: int | None = None  # CPU threads for every backend (None: each backend's default)
    e2e_steps: tuple[int, ...] = latency.E2E_STEPS  # end-to-end step counts (each bundle's own is always added)
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
    """FLOP/s from the transformer config the manifest records (bounded by its validator), if it has one."""
    config = bundle.manifest.get("model", {}).get("transformer")
    if not config or not all(type(config.get(k)) is int for k in flops.CONFIG_KEYS):
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
    pairs = {"step_vs_reference": (rl["components"]["transformer"], lat["components"]["transformer"]),
             "decode_vs_reference": (rl["components"]["vae_decoder"], lat["components"]["vae_decoder"]),
             "e2e_vs_reference": (rl["e2e"][own], lat["e2e"][own])}
    if ref.get("diffusers") and "e2e" in ref["diffusers"]:
        pairs["e2e_vs_diffusers"] = (ref["diffusers"]["e2e"], lat["e2e"][own])
    out = {k: a["median"] / b["median"] for k, (a, b) in pairs.items()}
    # a ratio no further from 1 than the two runs' spreads is reported as within noise (report: "~")
    out["within_noise"] = [k for k, (a, b) in pairs.items() if measure.within_noise(out[k], a, b)]
    return out


def _reference(bundle: Bundle, source: str, opts: Options, gemm: dict, say: Say) -> dict:
    say(f"PyTorch fp32 reference from {source}")
    pipe, load = latency.time_call(lambda: baselines.reference_pipeline(bundle, source))
    ref = {"label": "PyTorch fp32 reference (in memory)", "source": source, "load": load,
           "backends": pipe.info.get("backends")}
    ref["latency"] = latency.measure_pipeline(pipe, opts.prompts[0], opts.repeats, say, opts.teacher,
                                              opts.e2e_steps, opts.warmup)
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


def _bundle_backends(opts: Options) -> list[str]:
    """The backend choice each bundle runs on (``opts.backend`` for all, or one per bundle), each one's syntax
    checked before any work (``runtimes.parse_choice``: a name, or per-component pairs)."""
    chosen = (opts.backend,) if isinstance(opts.backend, str) else tuple(opts.backend)
    if len(chosen) == 1:
        chosen = chosen * len(opts.bundles)
    if len(chosen) != len(opts.bundles):
        raise InvalidInput(f"give one --backend for every bundle or one per --bundle: got {len(opts.backend)} "
                           f"backends for {len(opts.bundles)} bundles")
    for text in chosen:
        parse_choice(text)
    return list(chosen)


def _bundle_row(bundle: Bundle, verify_s: float, key, label: str, policy: str, first: dict | None, opts: Options,
                references: dict, ref_errors: dict, gemm: dict, say: Say, backend: str) -> dict:
    """One bundle under one memory policy (``BackendUnavailable`` if its backend cannot run here)."""
    several = len(opts.memory_policies) > 1
    say(f"bundle {label}" + (f", memory policy {policy}" if several else ""))
    pipe, load = latency.time_call(
        lambda: FlashPipeline.from_bundle(bundle.path, **parse_choice(backend), verify=False, memory=policy,
                                          **({"threads": opts.threads} if opts.threads else {})))
    row = {"label": f"{label} [{policy}]" if several else label, "path": str(bundle.path),
           "model": bundle.manifest.get("model", {}).get("name"),
           "target": bundle.manifest.get("target"), "precision": bundle.manifest.get("precision"),
           "backends": pipe.info.get("backends"), "height": bundle.spec.height, "width": bundle.spec.width,
           "steps": bundle.spec.sampler.steps, "t5": bundle.spec.text.t5, "verify_s": verify_s,
           "load_in_process": load, "memory_policy": policy}
    if "openvino" in row["backends"].values():  # its compute precision depends on the CPU
        from ..runtimes.openvino import describe

        row["openvino"] = describe()
    row["latency"] = latency.measure_pipeline(pipe, opts.prompts[0], opts.repeats, say, opts.teacher,
                                              opts.e2e_steps, opts.warmup)
    ref = references.get(key)
    row["reference"] = key
    if first is None:
        say(f"  images for {len(opts.prompts)} prompts")
        images = quality.generate_all(pipe, opts.prompts)
        row["quality"] = quality.compare(ref["images"], images) if ref else {"error": ref_errors[str(bundle.path)]}
        row["_image0"] = images[0]
    else:  # a policy changes when sessions exist, not what they compute: check one picture, keep the scores
        same = bool(np.array_equal(quality.generate_all(pipe, opts.prompts[:1])[0], first["_image0"]))
        row["quality"] = {**first["quality"], "same_images_as": first["memory_policy"], "verified_prompts": 1,
                          "bit_exact": same}
        if not same:
            say(f"  WARNING: memory policy {policy} drew another picture than {first['memory_policy']}")
    del pipe
    gc.collect()
    row["size"] = size.artifact_sizes(bundle)
    row["flops"] = _flop_stats(bundle, row["latency"], gemm)
    row["ratios"] = _ratios(row["latency"], ref)
    if first is not None:
        own, base = str(row["latency"]["bundle_steps"]), first["latency"]
        row["ratios"]["e2e_vs_" + first["memory_policy"]] = base["e2e"][own]["median"] / row["latency"]["e2e"][own]["median"]
    if opts.memory:
        say("  cold load and peak memory in a fresh process")
        row["memory"] = probe.run_probe(str(bundle.path), backend, memory=policy, threads=opts.threads)
    return row


def run_bench(opts: Options, say: Say = lambda msg: None) -> dict:
    if opts.repeats < 1:
        raise InvalidInput(f"--repeats must be at least 1, got {opts.repeats}")
    if opts.warmup < 0:
        raise InvalidInput(f"--warmup must be 0 or more, got {opts.warmup}")
    if not opts.bundles:
        raise InvalidInput("name at least one --bundle to measure")
    backends = _bundle_backends(opts)
    if opts.prompts is not None and len(opts.prompts) < 1:
        raise InvalidInput("at least one prompt is needed")
    if opts.threads is not None and opts.threads < 1:
        raise InvalidInput(f"threads must be a positive integer, got {opts.threads}")
    if opts.teacher not in ("measure", "estimate"):
        raise InvalidInput(f"teacher mode must be 'measure' or 'estimate', got {opts.teacher!r}")
    started = datetime.now(timezone.utc)
    load_start = measure.machine_info()["load_average"]
    opened = [_open(p, opts) for p in opts.bundles]  # every bad path fails here, before any work
    bundles = [b for b, _ in opened]
    if opts.threads:  # the PyTorch reference and the torch backend share torch's pool
        import torch

        torch.set_num_threads(opts.threads)
    if opts.prompts is None:
        opts = replace(opts, prompts=quality.default_prompts(b.manifest.get("model", {}).get("name") for b in bundles))
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
    for (bundle, verify_s), key, backend in zip(opened, keys, backends):
        label = _label(bundle, bundles) + (f" ({backend})" if len(set(backends)) > 1 else "")
        first = None  # the first policy's row: later policies must draw the same pictures
        for policy in opts.memory_policies:
            try:
                row = _bundle_row(bundle, verify_s, key, label, policy, first, opts, references, ref_errors, gemm, say,
                                  backend)
            except BackendUnavailable as e:  # e.g. Core ML off macOS: report what can be measured, and why not
                say(f"  not run here: {e}")
                not_run.append({"label": label, "path": str(bundle.path), "target": bundle.manifest.get("target"),
                                "precision": bundle.manifest.get("precision"), "reason": str(e),
                                "size": size.artifact_sizes(bundle), "parity": bundle.manifest.get("parity")})
                break
            rows.append(row)
            first = first or row

    from ..runtimes import REGISTRY, backend_class

    registered = {name: backend_class(name).unavailable_reason() or "available" for name in REGISTRY}
    baseline_rows = [{k: v for k, v in r.items() if k != "images"} | {"key": k} for k, r in references.items()]
    machine = measure.machine_info()
    return {"schema": SCHEMA, "command": opts.command, "started": started.isoformat(timespec="seconds"),
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": machine, "machine_label": measure.machine_label(machine), "gemm": gemm,
            "settings": {"repeats": opts.repeats, "warmup": opts.warmup,
                         "backend": backends[0] if len(set(backends)) == 1 else backends,
                         "teacher": opts.teacher,
                         "threads": opts.threads,
                         "memory_policies": list(opts.memory_policies),
                         "e2e_steps": list(opts.e2e_steps), "prompts": list(opts.prompts),
                         "teacher_steps": latency.TEACHER_STEPS, "teacher_guidance": latency.TEACHER_GUIDANCE,
                         "load_average_start": load_start,
                         **opts.extra},
            "backends_registered": registered, "baselines": baseline_rows,
            "bundles": [{k: v for k, v in r.items() if k != "_image0"} for r in rows], "not_run": not_run}
