"""Real scale with random weights: the SD3.5-Medium transformer (2.5B) exported at full size on this machine,
and the parameters/bytes of every SD3.5 part counted from the real configurations on the meta device.

Real SD3.5 weights are not reachable here, so the real *architectures* stand in: diffusers'/transformers' own
classes built from the published configurations, with random weights from a fixed seed.

  nice -n 10 .venv/bin/python -m benchmarks.real_scale count                # meta device: seconds, no memory
  nice -n 10 .venv/bin/python -m benchmarks.real_scale clip-rss             # CLIP-L + CLIP-G built for real
  nice -n 10 .venv/bin/python -m benchmarks.real_scale export --target torch --precision bf16 --size 512

``export`` builds the transformer directly in the export precision (``torch.set_default_dtype``: no fp32 copy
ever exists), runs it once as the reference on the component spec's dummy inputs, exports it with the target's
exporter (``Exporter.export_component``, the same call ``flash-export`` makes), frees the model, opens the
artifact with the target's backend (``Backend.open``) and runs the same inputs: the parity in dB. Each phase's
wall time and peak RSS (VmHWM, reset between phases through /proc/self/clear_refs) and the artifact's size on
disk are written as JSON (``--json``), merged into benchmarks/results/real-scale.json under the target's key.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

from .configs import T5_XXL, TRANSFORMERS, build_text_encoder, build_transformer, build_vae  # published configs

GIB = 1024**3
RESULTS = Path(__file__).parent / "results" / "real-scale.json"


# ----------------------------------------------------------------------------- memory
def _status_gib(key: str) -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":")) / 1024**2


def rss_gib() -> float:
    return _status_gib("VmRSS")


def peak_gib() -> float:
    return _status_gib("VmHWM")


class AnonPeak:
    """Peak anonymous RSS (``RssAnon``: memory the process owns) sampled every 50 ms while the block runs.
    VmHWM also counts file-backed pages, such as weights memory-mapped from safetensors, which the kernel can
    drop under pressure; both are reported."""

    def __enter__(self):
        import threading

        self.peak, self._stop = _status_gib("RssAnon"), threading.Event()

        def sample():
            while not self._stop.wait(0.05):
                self.peak = max(self.peak, _status_gib("RssAnon"))

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _status_gib("RssAnon"))


def reset_peak() -> None:
    """Reset VmHWM to the current RSS (Linux: writing 5 to clear_refs)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


class Phases:
    def __init__(self):
        self.records: dict[str, dict] = {}

    def run(self, name: str, fn):
        import gc

        gc.collect()
        reset_peak()
        t0 = time.perf_counter()
        with AnonPeak() as anon:
            out = fn()
        self.records[name] = {"seconds": round(time.perf_counter() - t0, 2), "peak_rss_gib": round(peak_gib(), 2),
                              "peak_anon_gib": round(anon.peak, 2), "rss_after_gib": round(rss_gib(), 2)}
        print(f"  {name}: {self.records[name]}", file=sys.stderr, flush=True)
        return out


# ----------------------------------------------------------------------------- counting on the meta device
def _meta(build):
    import torch

    with torch.device("meta"):
        return build()


def sizes(module) -> dict:
    """Parameters and the bytes of the saved state dict (persistent buffers too: the transformer's pos_embed)."""
    params = sum(p.numel() for p in module.parameters())  # tied weights (T5's embedding) once
    param_names = {n for n, _ in module.named_parameters(remove_duplicate=False)}
    state = params + sum(t.numel() for k, t in module.state_dict().items() if k not in param_names)
    return {"parameters": params, "state_numbers": state, "bytes_fp16": 2 * state, "bytes_fp32": 4 * state}


def count() -> dict:
    parts = {"transformer_" + a: lambda a=a: build_transformer(a) for a in TRANSFORMERS}
    parts.update({n: lambda n=n: build_text_encoder(n) for n in ("clip_l", "clip_g", "t5xxl")})
    parts["vae"] = build_vae
    out = {}
    for name, build in parts.items():
        m = _meta(build)
        out[name] = sizes(m)
        if name == "vae":
            out["vae_decoder"] = sizes(m.decoder)
        print(f"  {name}: {out[name]['parameters'] / 1e9:.3f}B parameters", file=sys.stderr)
    return {"counted_on": "meta device (no memory; exact counts from the configurations)", "parts": out}


def clip_rss() -> dict:
    """CLIP-L + CLIP-G built for real in bf16: measured RSS. T5-XXL is not built (9.5 GB bf16): counted only."""
    import torch

    torch.manual_seed(0)
    before = rss_gib()
    torch.set_default_dtype(torch.bfloat16)
    try:
        mods = [build_text_encoder(n).eval() for n in ("clip_l", "clip_g")]
    finally:
        torch.set_default_dtype(torch.float32)
    after = rss_gib()
    t5 = sizes(_meta(lambda: build_text_encoder("t5xxl")))
    clip = sum(sizes(m)["bytes_fp16"] for m in mods)
    return {"clip_l_plus_clip_g_bf16_rss_gib_measured": round(after - before, 2),
            "clip_l_plus_clip_g_bf16_gib_counted": round(clip / GIB, 2),
            "clip_parameters": sum(sizes(m)["parameters"] for m in mods),
            "t5xxl_parameters": t5["parameters"],
            "t5xxl_bf16_gib_counted": round(t5["bytes_fp16"] / GIB, 2),
            "t5xxl_fp32_gib_counted": round(t5["bytes_fp32"] / GIB, 2),
            "note": "T5-XXL is counted on the meta device, not measured: building it (9.8 GB bf16) does not fit "
                    "beside the other jobs on this shared machine"}


# ----------------------------------------------------------------------------- random weights on disk
WEIGHTS_NOTE = ("random weights (seed 0) written as a diffusers/transformers folder by a child process, then loaded "
                "by the SDK's own loader (flash_edge.models.loading.load_part: from_pretrained, low_cpu_mem_usage, "
                "safetensors memory-mapped): the measured process holds what a user's process would")
DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def build_part(part: str):
    return build_transformer(part.removeprefix("transformer-")) if part.startswith("transformer-") \
        else build_text_encoder(part)


def write_part(part: str, dtype: str, folder: Path) -> dict:
    """Build ``part`` with random weights in ``dtype`` and save it as a folder (``write``: the child process)."""
    import torch

    t0 = time.perf_counter()
    torch.manual_seed(0)
    torch.set_default_dtype(getattr(torch, DTYPES[dtype]))  # created in the dtype: no fp32 copy ever exists
    try:
        model = build_part(part)
    finally:
        torch.set_default_dtype(torch.float32)
    model.save_pretrained(str(folder), safe_serialization=True)
    files = {f.name: f.stat().st_size for f in sorted(Path(folder).iterdir())}
    return {"part": part, "dtype": dtype, "seconds": round(time.perf_counter() - t0, 2),
            "peak_rss_gib": round(peak_gib(), 2), "files": files}


def random_folder(part: str, dtype, folder: Path) -> dict:
    """Random weights for ``part`` as a folder on disk, written by a child process: a user's weights arrive as
    files, and the memory it takes to invent them is not the SDK's."""
    import subprocess

    import torch

    name = next(k for k, v in DTYPES.items() if getattr(torch, v) == dtype) if not isinstance(dtype, str) else dtype
    cmd = [sys.executable, "-m", "benchmarks.real_scale", "write", "--part", part, "--dtype", name, "--out", str(folder)]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).parent.parent)
    if done.returncode:
        raise RuntimeError(f"writing random {part} weights failed ({done.returncode}): {done.stderr[-1500:]}")
    record = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"  random weights: {record}", file=sys.stderr, flush=True)
    return record


# ----------------------------------------------------------------------------- full-size export
def transformer_spec(arch: str, size: int, text_tokens: int = 333):
    from flash_edge.spec import ComponentSpec, TensorSpec

    cfg = TRANSFORMERS[arch]
    latent = (1, cfg["in_channels"], size // 8, size // 8)
    return ComponentSpec("transformer", (
        TensorSpec("latent", latent), TensorSpec("timestep", (1,), "float32", 0.0, 1000.0),
        TensorSpec("encoder_hidden_states", (1, text_tokens, cfg["joint_attention_dim"])),
        TensorSpec("pooled_projections", (1, cfg["pooled_projection_dim"]))), (TensorSpec("velocity", latent),))


def t5_spec(tokens: int = 256):
    from flash_edge.spec import ComponentSpec, TensorSpec

    return ComponentSpec("text_encoder_3", (TensorSpec("input_ids", (1, tokens), "int64", 0, T5_XXL["vocab_size"]),),
                         (TensorSpec("hidden_states", (1, tokens, T5_XXL["d_model"])),))


def export_full(arch: str, target: str, precision: str, size: int, work: Path, threads: int,
                options: dict | None = None, load_dtype: str | None = None) -> dict:
    """``arch``: a transformer architecture (``size``: image side in pixels) or ``t5xxl`` (``size``: tokens).
    The weights are written and loaded in ``load_dtype`` (default: the export precision if it is a float type,
    else fp32)."""
    import gc

    import numpy as np
    import torch

    from flash_edge.components import wrap
    from flash_edge.export import get_exporter
    from flash_edge.metrics import max_abs_diff, psnr
    from flash_edge.runtimes import backend_class
    from flash_edge.versions import package_versions

    torch.set_num_threads(threads)
    options = options or {}
    exporter = get_exporter(target, precision, **options)
    dtype = getattr(torch, DTYPES[load_dtype or (precision if precision in DTYPES else "fp32")])
    t5 = arch == "t5xxl"
    spec = t5_spec(size) if t5 else transformer_spec(arch, size)
    component = spec.name  # transformer | text_encoder_3: the folder name the SDK's loader reads
    feeds = spec.dummy_inputs(seed=0)
    phases = Phases()

    def load():
        from flash_edge.models.loading import load_part

        return wrap(component, load_part(work, component, dtype))

    writer = random_folder("t5xxl" if t5 else f"transformer-{arch}", dtype, work / component)
    module = phases.run("load", load)
    n_params = sum(p.numel() for p in module.parameters())

    def forward(m):
        with torch.inference_mode():
            return [o.float().numpy() for o in m(*(torch.from_numpy(feeds[n]) for n in spec.input_names))]

    reference = phases.run("reference_forward", lambda: forward(module))[0]
    root = work / "bundle"
    root.mkdir(parents=True)
    artifact = phases.run("export", lambda: exporter.export_component(component, module, spec, root))
    entry = artifact.entry(target, spec)
    del module
    gc.collect()
    backend = backend_class(exporter.backend)
    reason = backend.unavailable_reason()
    result = {"architecture": arch, "component": component,
              "config": {k: list(v) if isinstance(v, tuple) else v for k, v in (T5_XXL if t5 else TRANSFORMERS[arch]).items()},
              "parameters": n_params, "target": target, "precision": exporter.precision,
              **({"text_tokens": size} if t5 else {"size": size, "text_tokens": spec.inputs[2].shape[1]}),
              "threads": threads, "exporter_options": options, "loaded_as": str(dtype).removeprefix("torch."),
              "chunks": len(entry.options.get("chunks") or [None]),
              "artifact_facts": {k: v for k, v in entry.options.items() if k in (
                  "weights", "palettized_weights", "conversion", "recipe", "quantization", "external_weights",
                  "external_data", "pos_embed_cropped")},
              "artifact": {"path": entry.path, "files": {f: (root / f).stat().st_size for f in entry.files},
                           "bytes": sum((root / f).stat().st_size for f in entry.files)},
              "tools": package_versions(["torch", "diffusers", "transformers", "safetensors", "numpy",
                                         *exporter.packages])}
    if reason is None:
        session = phases.run("load_artifact", lambda: backend(threads=threads).open(root, component, entry))
        cand = phases.run("artifact_forward", lambda: session.run(feeds)[spec.output_names[0]])
        db = psnr(reference, cand)
        result["parity"] = {"psnr_db": round(db, 2) if np.isfinite(db) else "inf (bit-exact)",
                            "max_abs_diff": float(max_abs_diff(reference, cand)),
                            "reference_finite": bool(np.isfinite(reference).all()),
                            "floor_db": exporter.parity_floor_db(component, exporter.precision)}
    else:
        result["parity"] = {"status": "not run", "reason": reason}
    result["phases"] = phases.records
    result["peak_rss_gib"] = max([r["peak_rss_gib"] for r in phases.records.values()]
                                 + [round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 2)])
    result["peak_anon_gib"] = max(r["peak_anon_gib"] for r in phases.records.values())
    result["weights"] = WEIGHTS_NOTE
    result["random_weights_writer"] = writer
    return result


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f}"


def table(data: dict) -> str:
    """benchmarks/results/real-scale.md: one row per full-size export in ``data`` (real-scale.json)."""
    lines = ["# Full-size exports on a 2-core, 24 GB CPU machine (random weights, real architectures)", "",
             f"Written by `python -m benchmarks.real_scale table` from `real-scale.json` (each row's command is there). "
             "Weights are written to disk by a child process and loaded by the SDK's own loader, memory-mapped, as "
             "a user's checkpoint would be. *Export* is the exporter's wall time; *peak RSS* is the highest VmHWM "
             "of any phase (load, reference forward, export, artifact load, artifact forward; it counts "
             "memory-mapped weight pages, which the kernel can drop), *peak anon* the highest anonymous memory "
             "(what the process owns). Parity: PSNR of the artifact's output, run by the target's own runtime, "
             "against the loaded model's PyTorch output on the same inputs.", "",
             "| model | target | precision | files | size GB | share of fp32 | export s | peak RSS GiB | peak anon GiB "
             "| parity dB (floor) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for key, r in data.items():
        if not key.startswith("export/"):
            continue
        fp32 = r["parameters"] * 4
        par = r["parity"]
        parity = (f"{par['psnr_db']} ({par['floor_db']})" if "psnr_db" in par
                  else f"not run: {par['reason'].split(' (')[0].split(';')[0]}")
        what = r["architecture"] + (f", {r['size']}²" if "size" in r else f", {r['text_tokens']} tokens")
        files = len(r["artifact"]["files"])
        chunks = f" ({r['chunks']} chunks)" if r.get("chunks", 1) > 1 else ""
        lines.append(f"| {what} | {r['target']} | {r['precision']} | {files}{chunks} | {_gb(r['artifact']['bytes'])} "
                     f"| {r['artifact']['bytes'] / fp32:.1%} | {r['phases']['export']['seconds']:.0f} "
                     f"| {r['peak_rss_gib']} | {r['peak_anon_gib']} | {parity} |")
    notes = data.get("notes")
    if notes:
        lines += ["", *[f"- {n}" for n in notes]]
    return "\n".join(lines) + "\n"


def merge_results(key: str, value: dict, path: Path = RESULTS) -> None:
    data = json.loads(path.read_text()) if path.is_file() else {}
    data[key] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.real_scale", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("count", help="parameters and bytes of every SD3.5 part (meta device)")
    sub.add_parser("clip-rss", help="measured RSS of CLIP-L + CLIP-G in bf16; T5-XXL counted")
    sub.add_parser("table", help=f"write {RESULTS.with_suffix('.md').name} from {RESULTS.name}")
    w = sub.add_parser("write", help="(child process) random weights of one part saved as a folder")
    w.add_argument("--part", required=True, choices=[f"transformer-{a}" for a in TRANSFORMERS] + ["clip_l", "clip_g", "t5xxl"])
    w.add_argument("--dtype", choices=list(DTYPES), default="bf16")
    w.add_argument("--out", required=True)
    e = sub.add_parser("export", help="full-size transformer (or T5-XXL) export to one target")
    e.add_argument("--arch", choices=[*TRANSFORMERS, "t5xxl"], default="sd35-medium")
    e.add_argument("--target", default="torch")
    e.add_argument("--precision", default="bf16")
    e.add_argument("--size", type=int, help="image side in pixels (default 512); with --arch t5xxl the number of "
                   "T5 tokens (default 256, diffusers' max_sequence_length)")
    e.add_argument("--threads", type=int, default=2)
    e.add_argument("--load-dtype", choices=list(DTYPES), help="dtype the weights are written and loaded in (default: "
                   "the precision if it is fp32/bf16/fp16, else fp32); bf16 lets SD3.5-Large (32 GB in fp32) load here")
    e.add_argument("--work", help="folder for the artifact (default: a temporary folder, removed after)")
    e.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="an exporter option, as flash-export's flag without dashes (chunks=5, deployment_target=iOS18)")
    p.add_argument("--no-save", action="store_true", help=f"print only; do not merge into {RESULTS}")
    args = p.parse_args(argv)
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if args.cmd == "write":
        print(json.dumps(write_part(args.part, args.dtype, Path(args.out))))
        return 0
    if args.cmd == "table":
        RESULTS.with_suffix(".md").write_text(table(json.loads(RESULTS.read_text())))
        print(RESULTS.with_suffix(".md").read_text())
        return 0
    if args.cmd == "count":
        key, value = "counts", count()
    elif args.cmd == "clip-rss":
        key, value = "text_encoder_memory", clip_rss()
    else:
        work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="real-scale-"))
        try:
            options = dict(o.split("=", 1) for o in args.option)
            size = args.size or (256 if args.arch == "t5xxl" else 512)
            value = export_full(args.arch, args.target, args.precision, size, work, args.threads, options,
                                args.load_dtype)
        finally:
            if not args.work:
                shutil.rmtree(work, ignore_errors=True)
        value["command"] = "nice -n 5 .venv/bin/python -m benchmarks.real_scale " + " ".join(argv or sys.argv[1:])
        key = (f"export/{args.arch}/{args.target}-{args.precision}-{size}" + ("tok" if args.arch == "t5xxl" else "")
               + "".join(f"-{k}{v}" for k, v in sorted(options.items())))
    print(json.dumps(value, indent=2))
    if not args.no_save:
        merge_results(key, value)
    return 0


if __name__ == "__main__":
    sys.exit(main())
