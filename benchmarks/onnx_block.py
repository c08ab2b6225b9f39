"""One SD3.5-Medium transformer block: PyTorch eager fp32 vs ONNX Runtime fp32 vs ONNX Runtime int8 (and the
variants tried on the way), medians over repeats, one process, the same thread count for every backend.

    nice -n 10 .venv/bin/python -m benchmarks.onnx_block --tokens 1024 --repeats 5
    nice -n 10 .venv/bin/python -m benchmarks.onnx_block --tokens 4096 --repeats 3 --variants base
    (results append to benchmarks/results/onnx-block.json; the .md table is written from it)

Variants (each an ONNX file exported by the same ``OnnxExporter`` that writes bundles, plus one change):
  base          fp32 and int8 (dynamic, per-channel) as bundles get them
  s8            int8 with signed weights (--int8-weights s8: ONNX Runtime's VNNI/AMX kernels)
  openvino      the fp32 file (and with s8, the s8 file) on OpenVINO as runtimes/openvino.py opens it, in its
                default precision (bf16 on AMX)
  mha           + ONNX Runtime's transformer optimizer (model_type "mmdit"): attention fused into the contrib
                MultiHeadAttention op, RMS norms into SimplifiedLayerNormalization, before quantizing
  float-attn    int8 with the attention projections (q/k/v/out) left float: only the MLPs and adaLN int8
  threads       int8 base with intra-op threads 1 and inter-op 2 (vs 2/1)
  opset23       export at opset 23, where torch.onnx may emit the standard Attention op
  int8-attn     int8 s8 dynamic with attention's activation matmuls (QK^T, AV) quantized too
  qdq           static QDQ int8, s8 weights, calibrated on 8 seeded feeds, on ONNX Runtime and on OpenVINO
                (onnxruntime's QDQ quantizer takes attention's matmuls too, whatever MatMulConstBOnly says)
  weights       weight-only int8 (NNCF's compress_weights, INT8_SYM: s8 DequantizeLinear weights; pip install
                nncf) on OpenVINO, which multiplies them in int8 with activations quantized at run time in groups
                (32: OpenVINO's default; 256), in bf16 and in f32; and on ONNX Runtime
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.block import HIDDEN, HEADS, TEXT_TOKENS, block_module, block_spec, flops
from benchmarks.sd35m_block import kept_findings

RESULTS = Path(__file__).parent / "results"
ALL_VARIANTS = ("base", "s8", "openvino", "mha", "float-attn", "threads", "opset23", "int8-attn", "qdq",
                "weights")
CALIBRATION_SEEDS = range(1, 9)  # qdq variants; the measured feed is seed 0


def median_time(fn, repeats: int) -> tuple[float, list[float]]:
    fn()  # warm-up: allocator, kernels, caches
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), times


def ort_session(path: Path, threads: int, inter: int = 1):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, inter
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def export(module, spec, root: Path, precision: str, **options) -> Path:
    from flash_edge.export import get_exporter

    art = get_exporter("onnx", precision, **options).export_component("block", module, spec, root)
    return root / art.path


def fuse_attention(src: Path, dst: Path) -> dict:
    """ONNX Runtime's transformer optimizer for MMDiT; returns the op counts it produced."""
    from onnxruntime.transformers.optimizer import optimize_model

    model = optimize_model(str(src), model_type="mmdit", num_heads=HEADS, hidden_size=HIDDEN, opt_level=0)
    model.save_model_to_file(str(dst))
    ops = {}
    for n in model.model.graph.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    return {k: ops[k] for k in ("MultiHeadAttention", "SimplifiedLayerNormalization", "LayerNormalization",
                                "SkipLayerNormalization", "MatMul") if k in ops}


ATTENTION_WEIGHTS = ("to_q", "to_k", "to_v", "to_out", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")


def quantize(src: Path, dst: Path, exclude_attention: bool = False) -> int:
    """Dynamic int8 as the exporter does it; optionally leaving the attention projections float."""
    import onnx

    from flash_edge.export.onnx_passes import quantize_int8

    names = []
    if exclude_attention:
        model = onnx.load(str(src), load_external_data=False)
        names = [n.name for n in model.graph.node if n.op_type in ("MatMul", "Gemm")
                 and any(k in i for i in n.input for k in ATTENTION_WEIGHTS)]
    # the quantizer first splits each Gemm into MatMul + Add and names the MatMul "<gemm>_MatMul": exclude both
    quantize_int8(src, dst, False, "dynamic", ("MatMul", "Gemm"), exclude=tuple(names + [f"{n}_MatMul" for n in names]))
    return len(names)


def compress_weights(src: Path, dst: Path) -> Path:
    """Weight-only int8, as OpenVINO's own pipelines make it: NNCF's ``compress_weights`` (INT8_SYM, per output
    channel) turns every matmul weight into s8 behind a DequantizeLinear, which OpenVINO's CPU plugin reads as
    compressed weights."""
    import nncf
    import onnx
    from nncf.onnx.quantization.backend_parameters import BackendParameters
    from nncf.quantization.advanced_parameters import AdvancedCompressionParameters

    # weights left in their data file (a model past 2 GB cannot be one protobuf): NNCF reads them from there
    model = onnx.load(str(src), load_external_data=False)
    advanced = AdvancedCompressionParameters(backend_params={BackendParameters.EXTERNAL_DATA_DIR:
                                                             str(src.parent.resolve())})
    # convolutions stay float: NNCF compresses them with a [C, 1, 1] scale that OpenVINO's ONNX reader refuses
    scope = nncf.IgnoredScope(types=["Conv", "ConvTranspose"], validate=False)
    model = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_SYM, ignored_scope=scope,
                                  advanced_parameters=advanced)
    onnx.save_model(model, str(dst), save_as_external_data=True, location=dst.name + ".data")
    return dst


def psnr(ref, out) -> float:
    from flash_edge.metrics import psnr as _psnr

    return min(_psnr(r, o) for r, o in zip(ref, out))


def run(tokens: int, repeats: int, threads: int, variants: tuple[str, ...], text_tokens: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    spec = block_spec(tokens, text_tokens)
    module = block_module()
    feeds = spec.dummy_inputs(seed=0)
    args = [torch.from_numpy(feeds[n]) for n in spec.input_names]
    with torch.inference_mode():
        ref = [t.numpy() for t in module(*args)]
    rows = {}

    def eager():
        with torch.inference_mode():
            module(*args)

    t, ts = median_time(eager, repeats)
    rows["torch eager fp32"] = {"median_s": t, "times_s": ts}
    print(f"torch eager fp32: {t:.3f}s", flush=True)

    def measure(label, path, inter=1, intra=threads, note="", run=None):
        """Time ``run`` (default: an ONNX Runtime session on ``path``) and compare its outputs with eager fp32."""
        if run is None:
            sess = ort_session(path, intra, inter)
            run = lambda: sess.run(spec.output_names, feeds)  # noqa: E731
        out = run()
        t, ts = median_time(run, repeats)
        size = sum(f.stat().st_size for f in path.parent.iterdir() if f.name.startswith(path.name))
        rows[label] = {"median_s": t, "times_s": ts, "psnr_db": psnr(ref, out), "file_mb": size / 2**20,
                       "speedup_vs_eager": rows["torch eager fp32"]["median_s"] / t, "note": note}
        print(f"{label}: {t:.3f}s  x{rows[label]['speedup_vs_eager']:.2f}  {rows[label]['psnr_db']:.1f} dB  "
              f"{size / 2**20:.0f} MB", flush=True)
        del run
        gc.collect()

    openvino_runs = []  # measured after every ONNX Runtime case: OpenVINO's threads slowed ORT runs after them

    def openvino(label, path, note, **hints):
        """Queue ``path`` on OpenVINO in its default precision (bf16 on AVX-512 BF16 and AMX), as
        ``runtimes/openvino.py`` opens it, plus ``hints`` (compile properties: int8 weights' activation groups,
        a precision)."""
        openvino_runs.append((label, path, note, hints))

    def run_openvino(label, path, note, hints):
        import openvino as ov

        from flash_edge.runtimes.openvino import compile_options, describe

        config = {**compile_options(threads=threads), **hints}
        compiled = ov.Core().compile_model(str(path), "CPU", config)
        request = compiled.create_infer_request()
        ports = [compiled.output(n) for n in spec.output_names]

        def infer():  # one inference, then every output (indexing infer()'s result per output ran it twice)
            result = request.infer(feeds)
            return [result[q].copy() for q in ports]

        precision = hints.get("INFERENCE_PRECISION_HINT") or describe()["inference_precision"]
        measure(f"{label} ({precision})", path, note=note, run=infer)

    from flash_edge.export.onnx_passes import quantize_int8

    def quantized(name, mode, const_b_only):
        """``f32`` quantized with s8 weights as the exporter's pass does it, ``mode`` dynamic or qdq."""
        calibration = [spec.dummy_inputs(seed=s) for s in CALIBRATION_SEEDS] if mode == "qdq" else None
        out = tmp / f"{name}.onnx"
        quantize_int8(f32, out, False, mode, ("MatMul", "Gemm"), calibration=calibration, weights="s8",
                      const_b_only=const_b_only)
        return out

    def attempt(label, fn):
        """A variant that fails is a result too: record the error and go on with the others."""
        try:
            fn()
        except Exception as e:  # noqa: BLE001
            rows[label] = {"error": " ".join(str(e).split())[:300]}
            print(f"{label} failed: {rows[label]['error']}", flush=True)

    with tempfile.TemporaryDirectory(prefix="onnx-block-", dir=os.environ.get("FLASH_BENCH_TMP")) as tmp:
        tmp = Path(tmp)
        f32 = export(module, spec, tmp / "fp32", "fp32")
        measure("ort fp32", f32, note="bundle pipeline: dynamo export, ORT basic offline + all online")
        if "openvino" in variants:
            openvino("openvino fp32 file", f32, "the fp32 bundle's file")
        if "base" in variants or "threads" in variants:
            i8 = export(module, spec, tmp / "int8", "int8")
            if "base" in variants:
                measure("ort int8", i8, note="dynamic int8 per-channel, as bundles")
            if "threads" in variants:
                measure("ort int8, intra 1 / inter 2", i8, inter=2, intra=1, note="thread split")
                measure("ort int8, intra 2 / inter 2", i8, inter=2, intra=2, note="thread split")
            shutil.rmtree(tmp / "int8")
        if "s8" in variants:  # u8 x s8 kernels: the fast path on VNNI CPUs, saturating on AVX2-only ones
            s8 = export(module, spec, tmp / "s8", "int8", int8_weights="s8")
            measure("ort int8, s8 weights", s8, note="--int8-weights s8 (VNNI kernels where the CPU has them)")
            if "openvino" in variants:
                openvino("openvino s8 file", s8, "ONNX Runtime's dynamic-int8 graph, run by OpenVINO")
        if "float-attn" in variants:
            def float_attention():
                n = quantize(f32, tmp / "fa.onnx", exclude_attention=True)
                measure("ort int8, attention projections float", tmp / "fa.onnx",
                        note=f"{n} attention projections left float; MLP/adaLN int8")
                (tmp / "fa.onnx").unlink()

            attempt("ort int8, attention projections float", float_attention)
        if "mha" in variants:
            def mha():
                fused = fuse_attention(f32, tmp / "mha.onnx")
                rows["mha fusion ops"] = fused
                print("mha fusion:", fused, flush=True)
                measure("ort fp32 + MHA fusion", tmp / "mha.onnx", note="ORT transformer optimizer mmdit")
                quantize(tmp / "mha.onnx", tmp / "mha8.onnx")
                measure("ort int8 + MHA fusion", tmp / "mha8.onnx", note="fused, then dynamic int8")

            attempt("ort int8 + MHA fusion", mha)
        if "opset23" in variants:
            import flash_edge.export.onnx as onnx_target

            saved = onnx_target.OPSET
            onnx_target.OPSET = 23
            try:
                p23 = export(module, spec, tmp / "op23", "int8")
                from flash_edge.export.onnx_passes import op_counts

                rows["opset23 ops"] = {k: v for k, v in op_counts(p23).items() if "Attention" in k or k == "Softmax"}
                print("opset23:", rows["opset23 ops"], flush=True)
                measure("ort int8, opset 23", p23, note="torch.onnx at opset 23")
            except Exception as e:  # noqa: BLE001 - record the failure as a result
                rows["ort int8, opset 23"] = {"error": " ".join(str(e).split())[:300]}
                print("opset23 failed:", e, flush=True)
            finally:
                onnx_target.OPSET = saved
        if "int8-attn" in variants:
            def int8_attention():
                path = quantized("i8attn", "dynamic", const_b_only=False)
                measure("ort int8 s8, attention matmuls int8", path, note="dynamic, MatMulConstBOnly off")

            attempt("ort int8 s8, attention matmuls int8", int8_attention)
        if "qdq" in variants:
            def qdq():
                path = quantized("qdq", "qdq", const_b_only=True)
                attempt("ort static QDQ s8", lambda: measure("ort static QDQ s8", path, note="calibrated on 8 feeds"))
                openvino("openvino static QDQ s8", path, "the same file")

            attempt("qdq", qdq)
        if "weights" in variants:
            def weight_only():
                path = compress_weights(f32, tmp / "w8.onnx")
                attempt("ort weight-only int8", lambda: measure("ort weight-only int8", path,
                                                                note="float products on dequantized weights"))
                for precision, group in (("bf16", 32), ("bf16", 256), ("f32", 256)):
                    openvino(f"openvino weight-only int8, groups of {group}", path,
                             f"NNCF INT8_SYM; activations int8 in groups of {group}",
                             DYNAMIC_QUANTIZATION_GROUP_SIZE=group, INFERENCE_PRECISION_HINT=precision)

            attempt("weights", weight_only)
        for label, path, note, hints in openvino_runs:
            attempt(label, lambda: run_openvino(label, path, note, hints))
    return {"image_tokens": tokens, "text_tokens": text_tokens, "threads": threads, "repeats": repeats,
            "gflop": flops(tokens, text_tokens) / 1e9, "rows": rows}


def markdown(results: list[dict], findings: str) -> str:
    """One table per run (image tokens): median seconds, speed-up over eager fp32, PSNR, file size, note."""
    parts = ["# ONNX Runtime on one SD3.5-Medium block\n",
             "Each run: `" + "`, `".join(sorted({r.get("command", "") for r in results})) + "`. Medians over the "
             "repeats after one warm-up; 'vs eager' > 1 means faster than PyTorch eager fp32 at the same thread "
             "count; PSNR of the block's outputs vs eager fp32.\n"]
    for r in results:
        parts.append(f"## {r['image_tokens']} image + {r['text_tokens']} text tokens ({r['gflop']:.0f} GFLOP), "
                     f"{r['threads']} threads, {r['repeats']} repeats, {r['date']}, {r['machine']}\n")
        parts.append("| variant | median s | vs eager fp32 | PSNR dB | file MB | note |\n|---|---|---|---|---|---|")
        for label, row in r["rows"].items():
            if "error" in row:
                parts.append(f"| {label} | failed | | | | {row['error'][:160]} |")
            elif "median_s" in row:
                parts.append(f"| {label} | {row['median_s']:.3f} | {row.get('speedup_vs_eager', 1.0):.2f}x | "
                             f"{row.get('psnr_db', float('inf')):.1f} | {row.get('file_mb', 0):.0f} | "
                             f"{row.get('note', '')} |")
            else:  # op counts recorded by a variant
                parts.append(f"| {label} | | | | | {', '.join(f'{k} {v}' for k, v in row.items())} |")
        parts.append("")
    return "\n".join(parts) + "\n" + findings


def write(results: list[dict]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "onnx-block.json").write_text(json.dumps(results, indent=2) + "\n")
    md = RESULTS / "onnx-block.md"
    findings = kept_findings(md)
    md.write_text(markdown(results, findings))


def _openvino_version() -> str | None:
    try:
        import openvino
    except ImportError:
        return None
    return openvino.get_version()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=1024, help="image tokens: 1024 (512^2) or 4096 (1024^2)")
    p.add_argument("--text-tokens", type=int, default=TEXT_TOKENS)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--variants", nargs="+", default=list(ALL_VARIANTS), choices=ALL_VARIANTS)
    args = p.parse_args(argv)
    path = RESULTS / "onnx-block.json"
    results = json.loads(path.read_text()) if path.is_file() else []
    record = run(args.tokens, args.repeats, args.threads, tuple(args.variants), args.text_tokens)
    import onnxruntime
    import torch

    from flash_edge import cpu

    record.update(command="nice -n 5 .venv/bin/python -m benchmarks.onnx_block " + " ".join(argv or sys.argv[1:]),
                  machine=f"{platform.machine()} {os.cpu_count()} cores, {'/'.join(cpu.flags() or []) or 'no AVX'}",
                  load_avg=os.getloadavg(),
                  versions={"torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
                            **({"openvino": _openvino_version()} if "openvino" in args.variants else {})},
                  date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), variants=list(args.variants))
    results.append(record)
    write(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
