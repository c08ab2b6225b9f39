"""OpenVINO's precisions on one real-size SD3.5-Medium transformer chunk: how much of what it computes holds.

    nice -n 5 .venv/bin/python -m benchmarks.openvino_chunk --model /work/sd35m/model --chunks 0 2

The transformer of a diffusers folder at 512^2, T5 slots folded as bundles fold them, cut into the 5 chunks an
int8 ONNX bundle has (``export/chunks.py``). Each chunk's inputs are what the chunks before it compute in
PyTorch fp32 from the gate's seeded dummy inputs, at the 4-step sampler's second timestep (857.7); its PyTorch
outputs are the reference. The chunk is exported as the ONNX target writes an fp32 chunk, and a weight-only int8
copy is made with NNCF (``compress_weights``, INT8_SYM: s8 ``DequantizeLinear`` weights, which OpenVINO's CPU
plugin multiplies in int8 with activations quantized at run time in groups). Both files then run on OpenVINO in
f32 and in bf16, and the fp32 file on ONNX Runtime as the anchor. Median of ``--repeats`` after one warm-up,
2 threads. Needs ``pip install nncf`` (not a dependency of flash-edge). Writes
benchmarks/results/openvino-chunk.json and .md.
"""

from __future__ import annotations

import argparse
import gc
import shlex
import sys
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.onnx_block import compress_weights, ort_session
from benchmarks.sd35m_block import RESULTS, kept_findings, write_results

TIMESTEP = 857.7  # sigma 0.8577 x 1000: the 4-step sampler's second step
CHUNKS = 5  # what --precision int8 cuts SD3.5-Medium's transformer into at 512^2
THREADS = 2
CASES = (  # (file, inference precision, activation group size of int8 weights; 0 = no run-time quantization)
    ("fp32", "onnxruntime", 0), ("fp32", "f32", 0), ("fp32", "bf16", 0),
    ("int8 weights", "f32", 256), ("int8 weights", "bf16", 256))


def load(model_dir: str):
    """The transformer wrapper, its component spec, and the folding of T5's zero slots that bundles apply."""
    from flash_edge.components import build_wrappers
    from flash_edge.folding import folded, zero_slots
    from flash_edge.models import load_model
    from flash_edge.models.generation import generation_spec

    model = load_model(model_dir)
    spec = generation_spec(model, 512, 512, steps=4)
    wrapper = build_wrappers(model, ["transformer"])["transformer"]
    return wrapper, spec.component_specs()["transformer"], folded(wrapper, zero_slots(spec.text), spec.latent.tokens)


def reference(wrapper, component, chunks: list[int]):
    """Per asked chunk: (module, spec, feeds, PyTorch outputs)."""
    import torch

    from flash_edge.export.chunks import chunk_modules

    feeds = component.dummy_inputs(seed=0)
    feeds["timestep"] = np.array([TIMESTEP], dtype=np.float32)
    state = {k: torch.from_numpy(v) for k, v in feeds.items()}
    out = {}
    for i, (piece, piece_spec) in enumerate(chunk_modules(wrapper, component, CHUNKS)):
        inputs = {n: state[n].numpy().copy() for n in piece_spec.input_names}
        with torch.no_grad():
            outputs = piece(*(state[n] for n in piece_spec.input_names))
        state.update(zip(piece_spec.output_names, outputs))
        if i in chunks:
            out[i] = (piece, piece_spec, inputs, [o.numpy().copy() for o in outputs])
        if i >= max(chunks):
            break
    return out


def run(model_dir: str, chunks: list[int], repeats: int) -> list[dict]:
    import openvino as ov

    from flash_edge.bench.measure import time_runs
    from flash_edge.export import get_exporter
    from flash_edge.metrics import psnr
    from flash_edge.runtimes.openvino import compile_options

    rows = []
    wrapper, component, fold = load(model_dir)
    # one fold for the reference and the exports alike (a chunk exported unfolded weights the folded slot as one
    # token, not 256: every case then measured the same 55 dB against the folded reference)
    with fold, tempfile.TemporaryDirectory(prefix="openvino-chunk-", dir=Path(model_dir).parent) as tmp:
        for i, (piece, spec, feeds, ref) in reference(wrapper, component, chunks).items():
            art = get_exporter("onnx", "fp32").export_component("transformer_block", piece, spec, Path(tmp) / f"c{i}")
            files = {"fp32": Path(tmp) / f"c{i}" / art.path}
            files["int8 weights"] = compress_weights(files["fp32"], files["fp32"].with_name("w8.onnx"))
            for name, precision, group in CASES:
                if precision == "onnxruntime":  # the anchor: the same file on ONNX Runtime's CPU provider
                    request = compiled = ort_session(files[name], THREADS)

                    def infer():
                        return request.run(spec.output_names, feeds)
                else:
                    compiled = ov.Core().compile_model(str(files[name]), "CPU", {
                        **compile_options(precision, THREADS), "DYNAMIC_QUANTIZATION_GROUP_SIZE": group})
                    request = compiled.create_infer_request()
                    ports = [compiled.output(n) for n in spec.output_names]

                    def infer():
                        result = request.infer(feeds)
                        return [result[p].copy() for p in ports]

                got = infer()  # also the warm-up
                timing = time_runs(infer, repeats, warmup=0)
                row = {"chunk": i, "file": name, "precision": precision, "group": group,
                       "median_s": timing["median"], "times_s": timing["raw"],
                       "psnr_db": {n: psnr(r, g) for n, r, g in zip(spec.output_names, ref, got)}}
                rows.append(row)
                print(f"chunk {i} {name} {precision} group {group}: {row['median_s']:.3f} s, "
                      + ", ".join(f"{k} {v:.1f} dB" for k, v in row["psnr_db"].items()), flush=True)
                del request, compiled
                gc.collect()
    return rows


def markdown(results: dict) -> str:
    lines = ["# OpenVINO's precisions on real-size SD3.5-Medium transformer chunks", "",
             f"Command: `{results['command']}`  ", f"Machine: {results['machine_label']}  ",
             f"Load average at the start: {results['load_average_start']}", "",
             "Chunk i of the 5 an int8 bundle has (512², T5 slots folded), fed what the chunks before it compute in "
             f"PyTorch fp32 at timestep {TIMESTEP}; PSNR of each output against PyTorch fp32; median of "
             f"{results['repeats']} after one warm-up, {THREADS} threads.", "",
             "| chunk | file | run on | int8 activation groups | median s | PSNR per output (dB) |",
             "|---|---|---|---|---|---|"]
    for r in results["rows"]:
        psnrs = ", ".join(f"{k} {v:.1f}" for k, v in r["psnr_db"].items())
        runtime = "ONNX Runtime" if r["precision"] == "onnxruntime" else f"OpenVINO {r['precision']}"
        lines.append(f"| {r['chunk']} | {r['file']} | {runtime} | {r['group'] or '-'} | "
                     f"{r['median_s']:.3f} | {psnrs} |")
    return "\n".join(lines) + "\n\n" + results["findings"]


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(prog="python -m benchmarks.openvino_chunk", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="an SD3.5-Medium diffusers folder")
    p.add_argument("--chunks", type=int, nargs="+", default=[0, 2], help=f"which of the {CHUNKS} chunks")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=str(RESULTS / "openvino-chunk"))
    args = p.parse_args(argv)
    from flash_edge.bench.measure import machine_info
    from flash_edge.cli.common import quiet_libraries

    quiet_libraries()
    results = {"command": shlex.join(["python", "-m", "benchmarks.openvino_chunk", *argv]),
               "load_average_start": machine_info()["load_average"], "repeats": args.repeats,
               "timestep": TIMESTEP, "rows": run(args.model, args.chunks, args.repeats),
               "findings": kept_findings(Path(args.out).with_suffix(".md"))}
    write_results(results, args.out, markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
