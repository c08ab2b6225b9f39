"""Which parts of the SD3.5 VAE decoder lose the image when quantized to int8: static QDQ (onnxruntime.quantization,
s8 per-channel weights, u8 per-tensor activations calibrated min-max on seeded latents) with one group of blocks
left float at a time, each run on OpenVINO (int8 convolutions on VNNI/AMX CPUs, the rest in its default precision),
against PyTorch eager fp32 and against the fp32 file on OpenVINO.

    nice -n 5 .venv/bin/python -m benchmarks.vae_int8_layers [--size 256] [--repeats 3]

Issue 16 asks for the fastest decoder that holds 40 dB. Whole-model int8 misses it (sd35m-vae.md); this probe asks
whether keeping a few blocks float would recover it, and what that would cost. The error is a property of the
weights: random weights (seed 0) rank the groups, they do not stand for a trained decoder.
Writes benchmarks/results/vae-int8-layers.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
# groups left float (matched against each Conv/MatMul/Gemm weight's initializer name); "" = everything int8
GROUPS = ("", "conv_in,mid_block", "mid_block,up_blocks.0", "up_blocks.1", "up_blocks.2", "up_blocks.3",
          "up_blocks.2,up_blocks.3", "up_blocks.3.resnets.2,conv_out")
CALIBRATION_SEEDS = range(1, 5)


def run(size: int, repeats: int, threads: int) -> dict:
    import onnx
    import openvino as ov
    import torch

    from flash_edge.bench.measure import time_runs
    from flash_edge.export import get_exporter
    from flash_edge.export.onnx_passes import quantize_int8
    from flash_edge.metrics import psnr
    from flash_edge.runtimes.openvino import compile_options

    from .sd35m_vae import vae_module, vae_spec

    spec = vae_spec(size)
    feeds = spec.dummy_inputs(seed=0)
    module = vae_module()
    with torch.inference_mode():
        reference = module(torch.from_numpy(feeds["latent"]))[0].numpy()
    core = ov.Core()

    def measure(path: Path) -> dict:
        compiled = core.compile_model(str(path), "CPU", compile_options(threads=threads))
        request, port = compiled.create_infer_request(), compiled.output(0)
        image = request.infer(feeds)[port].copy()  # also the warm-up
        timed = time_runs(lambda: request.infer(feeds), repeats, warmup=0)
        precision = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        return {"median_s": timed["median"], "times_s": timed["raw"], "openvino_precision": precision,
                "psnr_db": float(psnr(reference, image, data_range=1.0))}

    rows = []
    with tempfile.TemporaryDirectory(prefix="vae-int8-layers-", dir=os.environ.get("FLASH_BENCH_TMP")) as tmp:
        tmp = Path(tmp)
        artifact = get_exporter("onnx", "fp32").export_component("vae_decoder", module, spec, tmp / "fp32")
        del module
        f32 = tmp / "fp32" / artifact.path
        rows.append({"float": "everything (the fp32 file)", **measure(f32)})
        print(rows[-1], flush=True)
        graph = onnx.load(str(f32), load_external_data=False).graph
        products = [(n.name, n.input[1]) for n in graph.node if n.op_type in ("Conv", "MatMul", "Gemm")]
        calibration = [spec.dummy_inputs(seed=s) for s in CALIBRATION_SEEDS]
        for group in GROUPS:
            keys = [k for k in group.split(",") if k]
            exclude = tuple(name for name, weight in products if any(k in weight for k in keys))
            path = tmp / "int8.onnx"
            quantize_int8(f32, path, False, "qdq", ("Conv", "MatMul", "Gemm"), calibration=calibration,
                          exclude=exclude, weights="s8")
            rows.append({"float": group or "nothing", "float_products": len(exclude), "products": len(products),
                         **measure(path)})
            print(rows[-1], flush=True)
    return {"size": size, "repeats": repeats, "threads": threads, "rows": rows}


def markdown(record: dict) -> str:
    base = record["rows"][0]["median_s"]
    lines = ["# The SD3.5 VAE decoder in int8 on OpenVINO, one group of blocks left float at a time", "",
             f"`{record['command']}`; {record['machine']}; load average {record['load_avg']}; {record['date']}; "
             f"OpenVINO {record['openvino']}.", "",
             f"{record['size']}x{record['size']} image, random weights (seed 0), median of {record['repeats']} "
             f"after one warm-up, {record['threads']} threads. Static QDQ: s8 per-channel weights, u8 per-tensor "
             f"activations calibrated min-max on {len(CALIBRATION_SEEDS)} seeded latents. PSNR of the image "
             "against PyTorch eager fp32; the issue's bar is 40 dB.", "",
             "| left float | float products | decode s | vs fp32 file | PSNR dB | OpenVINO precision |",
             "|---|---|---|---|---|---|"]
    for r in record["rows"]:
        count = f"{r['float_products']}/{r['products']}" if "products" in r else "all"
        lines.append(f"| {r['float']} | {count} | {r['median_s']:.2f} | {base / r['median_s']:.2f}x | "
                     f"{r['psnr_db']:.1f} | {r['openvino_precision']} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(prog="python -m benchmarks.vae_int8_layers", description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=256, help="image side in pixels (a multiple of 8)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    import platform

    import openvino

    from flash_edge import cpu
    from flash_edge.cli.common import quiet_libraries

    from .sd35m_block import kept_findings

    quiet_libraries()
    record = run(args.size, args.repeats, args.threads)
    record.update(command="python -m benchmarks.vae_int8_layers " + " ".join(argv), load_avg=os.getloadavg(),
                  machine=f"{platform.machine()} {os.cpu_count()} cores, {'/'.join(cpu.flags() or [])}",
                  openvino=openvino.get_version(), date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "vae-int8-layers.json").write_text(json.dumps(record, indent=2) + "\n")
    md = RESULTS / "vae-int8-layers.md"
    findings = kept_findings(md)
    md.write_text(markdown(record) + "\n" + findings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
