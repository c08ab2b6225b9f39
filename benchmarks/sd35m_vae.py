"""Scenario ``sd35m-vae``: the SD3.5 VAE decoder (the real 16-channel architecture, random weights from a fixed
seed) at 512^2 on every way this SDK can run it here, against PyTorch eager fp32: which decoder is fastest while
its image stays >= 40 dB PSNR from fp32 (issue 16: the decode is a third of a real-size generation).

  nice -n 10 .venv/bin/python -m benchmarks.sd35m_vae [--size 512] [--repeats 3] [--cases onnx:fp32 ...]

Cases (``target:precision[:variant]``): PyTorch eager fp32 and bf16 (the baseline, and what a bf16 CPU path
gives); ONNX Runtime fp32, fp16, int8 dynamic (ConvInteger/MatMulInteger) and int8 static QDQ (calibrated on
seeded latents), each the exporter's own ``--quantize-vae``; ExecuTorch/XNNPACK fp32, int8 static (PT2E,
calibrated) and int8 dynamic; the ONNX fp32 file on OpenVINO, in its default precision (bf16 on AVX-512 BF16 and
AMX CPUs) and in f32, and the static QDQ int8 file on OpenVINO. Each case runs in a fresh child process
(``sd35m_block.spawn``), reached only through the public contracts (``exporter.export_component("vae_decoder",
...)``, ``Backend.open``), with its peak RSS from the OS. Random weights: quantization error on trained weights
differs, so a PSNR here ranks the variants; it does not replace the parity gate of a real bundle. Writes
benchmarks/results/sd35m-vae.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

from .sd35m_block import EAGER, harness_arguments, spawn, write_results

# case -> (target, precision, exporter options, note[, backend[, backend options]]): the backend defaults to the
# target's own
CASES = {
    f"{EAGER}:fp32": (EAGER, "fp32", {}, "the baseline"),
    f"{EAGER}:bf16": (EAGER, "bf16", {}, "weights and activations bf16 (oneDNN)"),
    "onnx:fp32": ("onnx", "fp32", {}, "what bundles ship"),
    "onnx:fp16": ("onnx", "fp16", {}, "CPU EP runs fp16 through casts"),
    "onnx:int8": ("onnx", "int8", {"quantize_vae": True}, "--quantize-vae, dynamic"),
    "onnx:int8:qdq": ("onnx", "int8", {"quantize_vae": True, "int8_mode": "qdq"}, "--quantize-vae --int8-mode qdq"),
    "executorch:fp32": ("executorch", "fp32", {}, "XNNPACK, what bundles ship"),
    "executorch:int8:static": ("executorch", "int8", {"recipe": "int8-static"}, "PT2E static, calibrated"),
    "executorch:int8:dynamic": ("executorch", "int8", {"recipe": "int8-dynamic"}, "PT2E dynamic"),
    "openvino:fp32": ("onnx", "fp32", {}, "the onnx:fp32 file on OpenVINO, its default precision", "openvino"),
    "openvino:int8:qdq": ("onnx", "int8", {"quantize_vae": True, "int8_mode": "qdq", "int8_weights": "s8"},
                          "the onnx:int8:qdq file (s8 weights) on OpenVINO: int8 convolutions", "openvino"),
    "openvino:fp32:f32": ("onnx", "fp32", {}, "the onnx:fp32 file on OpenVINO computing in f32", "openvino",
                          {"inference_precision": "f32"}),
}
FLOOR_DB = 40.0  # issue 16: keep the fastest decoder that holds this


def vae_spec(size: int):
    from flash_edge.spec import ComponentSpec, TensorSpec

    side = size // 8
    return ComponentSpec("vae_decoder", (TensorSpec("latent", (1, 16, side, side)),),
                         (TensorSpec("image", (1, 3, size, size)),))


def vae_module():
    import torch

    from flash_edge.components import wrap

    from .configs import build_vae

    torch.manual_seed(0)
    return wrap("vae_decoder", build_vae().eval().requires_grad_(False))


# ----------------------------------------------------------------------------- one case, in a child process
def run_case(case: str, size: int, repeats: int) -> dict:
    import numpy as np
    import torch

    from flash_edge.bench.measure import PeakRSS, lifetime_peak_rss, time_runs
    from flash_edge.metrics import psnr

    target, precision, options, note, *run_with = CASES[case]
    spec = vae_spec(size)
    feeds = spec.dummy_inputs(seed=0)
    rec = {"case": case, "target": target, "precision": precision, "options": options, "note": note,
           "size": size, "phases": {}}
    module = vae_module()
    latent = torch.from_numpy(feeds["latent"])
    with torch.inference_mode():
        reference = module(latent)[0].numpy()
    if target == EAGER:
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
        module.model.to(dtype)

        def run():
            with torch.inference_mode():
                return module(latent)[0].float().numpy()
        rec["backend"] = f"torch {torch.__version__} eager"
    else:
        from flash_edge.export import get_exporter
        from flash_edge.runtimes import backend_class

        exporter = get_exporter(target, precision, **options)
        tmp = Path(tempfile.mkdtemp(prefix=f"vae-{case.replace(':', '-')}-"))
        with PeakRSS() as export:
            artifact = exporter.export_component("vae_decoder", module, spec, tmp)
        rec["phases"]["export"] = export.record()
        rec["bytes"] = sum((tmp / f).stat().st_size for f in artifact.files)
        rec["artifact_precision"] = artifact.precision
        del module
        name = run_with[0] if run_with else exporter.backend
        backend_options = run_with[1] if len(run_with) > 1 else {}
        with PeakRSS() as load:
            session = backend_class(name)(**backend_options).open(tmp, "vae_decoder", artifact.entry(target, spec))
        rec["phases"]["open"] = load.record()
        rec["backend"] = name
        if getattr(session, "inference_precision", None):  # OpenVINO: what the plugin computes in
            rec["backend"] = f"{name} ({session.inference_precision})"

        def run():
            return np.asarray(session.run(feeds)["image"])
    with PeakRSS() as timed:
        rec["seconds"] = time_runs(run, repeats)
    rec["phases"]["run"] = timed.record()
    rec["psnr_db"] = psnr(reference, run(), data_range=1.0)
    rec["peak_rss"] = lifetime_peak_rss()
    return rec


# ----------------------------------------------------------------------------- report
def markdown(results: dict) -> str:
    rows = results["cases"]
    base = next((r for r in rows if r["case"] == f"{EAGER}:fp32" and "seconds" in r), None)
    lines = ["# sd35m-vae: the SD3.5 VAE decoder at real size", "",
             f"Machine: {results['machine_label']}; CPU flags {', '.join(results['machine'].get('cpu_flags', []))}; "
             f"load average at start {results['load_average_start']}, at the end "
             f"{results['machine'].get('load_average')}. Absolute times are for this machine; quote the ratios.", "",
             f"Command: `{results['command']}`", "",
             f"{results['size']}x{results['size']} image from a [1, 16, {results['size'] // 8}, "
             f"{results['size'] // 8}] latent; random weights (seed 0); median of {results['repeats']} run(s) after "
             f"1 warm-up, each case in a fresh process. PSNR of the image (range 1) against PyTorch eager fp32; "
             f"the bar is {FLOOR_DB:.0f} dB.", "",
             "| case | backend | decode s | speed-up vs eager fp32 | PSNR dB | holds 40 dB | file MB | peak RSS GB | note |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "seconds" not in r:
            lines.append(f"| {r['case']} | | | | | | | | {r.get('error', '?').replace('|', '/')} |")
            continue
        med = r["seconds"]["median"]
        ratio = f"{base['seconds']['median'] / med:.2f}x" if base else ""
        db = float(r["psnr_db"])
        lines.append(f"| {r['case']} | {r['backend']} | {med:.2f} | {ratio} | {db:.1f} | "
                     f"{'yes' if db >= FLOOR_DB else 'no'} | {r.get('bytes', 0) / 1e6:.0f} | "
                     f"{r['peak_rss'] / 1e9:.2f} | {r['note']} |")
    kept = [r for r in rows if "seconds" in r and float(r["psnr_db"]) >= FLOOR_DB and r["target"] != EAGER]
    if kept:
        best = min(kept, key=lambda r: r["seconds"]["median"])
        lines += ["", f"Fastest exported decoder that holds {FLOOR_DB:.0f} dB: **{best['case']}**, "
                  f"{best['seconds']['median']:.2f} s."]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(prog="python -m benchmarks.sd35m_vae", description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=512, help="image side in pixels (a multiple of 8)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    harness_arguments(p, cap_gb=12.0, timeout=1800.0, out="sd35m-vae")
    args = p.parse_args(argv)
    from flash_edge.cli.common import quiet_libraries

    quiet_libraries()
    if args.case:  # child
        Path(args.json).write_text(json.dumps(run_case(args.case, args.size, args.repeats), default=float))
        return 0
    from flash_edge.bench.measure import machine_info

    machine = machine_info()
    results = {"command": shlex.join(["python", "-m", "benchmarks.sd35m_vae", *argv]), "size": args.size,
               "load_average_start": machine["load_average"], "repeats": args.repeats, "cases": []}
    for case in args.cases:
        print(f"[{time.strftime('%H:%M:%S')}] {case}", file=sys.stderr, flush=True)
        rec = spawn(case, {"case": case, "target": CASES[case][0], "precision": CASES[case][1]}, args.repeats,
                    args.cap_gb * 2**30, args.timeout, module="benchmarks.sd35m_vae", extra=("--size", str(args.size)))
        print(f"    {rec.get('seconds', {}).get('median', rec.get('error'))} s, {rec.get('psnr_db', '')} dB",
              file=sys.stderr, flush=True)
        results["cases"].append(rec)
    write_results(results, args.out, markdown)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TQDM_DISABLE", "1")
    sys.exit(main())
