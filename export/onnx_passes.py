"""File-to-file passes over an exported ONNX model: ONNX Runtime's offline optimizer, int8 quantization
(dynamic or QDQ, onnxruntime.quantization) and fp16 conversion (onnxruntime.transformers.float16).

Each pass reads one model file and writes another, so models past protobuf's 2 GB limit go through them
with their weights in one external data file beside the model. Used by ``export/onnx.py`` only.
"""

from __future__ import annotations

import collections
import contextlib
import logging
from pathlib import Path

from ..errors import ExportError

PROTOBUF_LIMIT = 2**31  # bytes; a model whose weights come near it must keep them in external data
GRAPH_MARGIN = 64 << 20  # room for the graph itself next to the weights


def data_name(path: Path) -> str:
    return path.name + ".data"


def op_counts(path: Path) -> collections.Counter:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return collections.Counter(f"{n.domain + '.' if n.domain not in ('', 'ai.onnx') else ''}{n.op_type}"
                               for n in model.graph.node)


def save(model, path: Path, external: bool) -> list[Path]:
    """Write ``model`` to ``path``; with ``external``, every weight over 1 KB goes to one ``<name>.data``
    file beside it. Returns the files written."""
    import onnx
    from onnx import numpy_helper

    if external:  # external data needs raw_data; converters write fp16 weights as int32_data
        for t in model.graph.initializer:
            if not t.HasField("raw_data") and t.data_location != onnx.TensorProto.EXTERNAL:
                t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t), t.name))
    path.parent.mkdir(parents=True, exist_ok=True)
    data = path.with_name(data_name(path))
    data.unlink(missing_ok=True)  # save_model appends to an existing data file
    onnx.save_model(model, str(path), save_as_external_data=external, all_tensors_to_one_file=True,
                    location=data.name, size_threshold=1024, convert_attribute=False)
    return [path, data] if external and data.exists() else [path]


def load(path: Path):
    import onnx

    return onnx.load(str(path), load_external_data=True)


def optimize_offline(src: Path, dst: Path, external: bool) -> dict:
    """ONNX Runtime's basic-level graph optimizations (constant folding, redundant-node elimination and the
    semantics-preserving fusions), saved as a portable ONNX file: the extended/layout fusions are
    EP-specific and happen at load time on the device. Returns what changed, op by op."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.optimized_model_filepath = str(dst)
    if external:
        dst.with_name(data_name(dst)).unlink(missing_ok=True)
        so.add_session_config_entry("session.optimized_model_external_initializers_file_name", data_name(dst))
        so.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    try:
        ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - ORT's pybind errors share no base class
        raise ExportError(f"ONNX Runtime cannot load the exported {src.name}: {_first_line(e)}") from None
    before, after = op_counts(src), op_counts(dst)
    removed = {k: before[k] - after[k] for k in before if before[k] > after[k]}
    added = {k: after[k] - before[k] for k in after if after[k] > before[k]}
    return {"level": "basic", "nodes_before": sum(before.values()), "nodes_after": sum(after.values()),
            "removed": dict(sorted(removed.items())), "added": dict(sorted(added.items()))}


def quantize_int8(src: Path, dst: Path, external: bool, mode: str, op_types: tuple[str, ...],
                  calibration=None, exclude: tuple[str, ...] = (), weights: str = "u8",
                  const_b_only: bool = True) -> dict:
    """Weights 8-bit per output channel, ``weights`` ``u8`` (unsigned) or ``s8`` (signed). ``dynamic``:
    activations quantized at run time (no calibration); ``qdq``: static QuantizeLinear/DequantizeLinear pairs
    calibrated (min-max) on ``calibration`` feeds. Activations are uint8 either way.

    Why u8 by default: ONNX Runtime multiplies u8 activations by s8 weights on x86 CPUs without VNNI (AVX2,
    AVX-512 before Ice Lake, AMD before Zen 4) with ``vpmaddubsw``, whose int16 pair sums saturate: measured
    here on an AVX2-only EPYC, the tiny model's CLIP-L lost 16 dB (35.6 vs 51.3 dB) and the image fell to
    26 dB. u8 x u8 has no such path; ``s8`` keeps VNNI's u8 x s8 kernels for bundles meant for such CPUs.

    ``const_b_only`` (the default) quantizes only matmuls by a weight; without it, attention's activation by
    activation matmuls (QK^T and AV) are quantized too."""
    model = load(src)
    del model.graph.value_info[:]  # stale shapes trip the quantizer's own shape inference (stack probe)
    clean = src.with_name(src.stem + ".clean.onnx")
    save(model, clean, external)
    del model
    try:
        with _quiet_root_logger():
            _quantize(clean, dst, external, mode, op_types, calibration, list(exclude), weights, const_b_only)
    except ExportError:
        raise
    except Exception as e:  # noqa: BLE001 - a library failure becomes one line, nothing is written
        raise ExportError(f"int8 quantization ({mode}) of {src.name} failed: {_first_line(e)}") from None
    finally:
        clean.unlink(missing_ok=True)
        clean.with_name(data_name(clean)).unlink(missing_ok=True)
    counts = op_counts(dst)
    quantized = {k: v for k, v in counts.items()
                 if k in ("com.microsoft.DynamicQuantizeMatMul", "MatMulInteger", "ConvInteger", "DynamicQuantizeLinear",
                          "QuantizeLinear", "DequantizeLinear", "com.microsoft.GatherBlockQuantized")}
    return {"mode": mode, "weights": f"{weights} per-channel", "op_types": list(op_types), "ops": quantized}


def _quantize(src: Path, dst: Path, external: bool, mode: str, op_types, calibration, exclude, weights,
              const_b_only: bool) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, \
        quantize_static

    weight_type = {"u8": QuantType.QUInt8, "s8": QuantType.QInt8}[weights]
    if mode == "dynamic":
        quantize_dynamic(src, dst, op_types_to_quantize=list(op_types), per_channel=True, weight_type=weight_type,
                         use_external_data_format=external, nodes_to_exclude=exclude,
                         extra_options={"MatMulConstBOnly": const_b_only})
    elif mode == "qdq":
        feeds = iter(list(calibration or []))

        class Reader(CalibrationDataReader):
            def get_next(self):
                return next(feeds, None)

        quantize_static(src, dst, Reader(), quant_format=QuantFormat.QDQ, op_types_to_quantize=list(op_types),
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=weight_type,
                        use_external_data_format=external, nodes_to_exclude=exclude,
                        extra_options={"MatMulConstBOnly": const_b_only})
    else:
        raise ExportError(f"unknown int8 mode {mode!r}")


@contextlib.contextmanager
def _quiet_root_logger():
    """onnxruntime.quantization logs advice on the root logger ("consider pre-processing"): not for users."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


# Ops that stay fp32 in an fp16 model, on top of the converter's default list (ops without fp16 kernels):
# normalizations and softmax, whose reductions (sums of squares, exp-sums) overflow fp16's 65504 on real
# activations (SD3's residual stream reaches the hundreds: 300^2 > 65504). The exporter decomposes RMS norm
# (qk-norm) into Pow -> ReduceMean -> Add -> Sqrt -> Reciprocal -> Mul -> Mul; that whole chain is kept fp32
# by node name (casting 1/rms back to fp16 alone loses it to subnormals when activations are large).
FP16_KEEP_FP32 = ("LayerNormalization", "SimplifiedLayerNormalization", "InstanceNormalization",
                  "GroupNormalization", "ReduceMean", "Pow", "Sqrt", "Softmax")
NORM_CHAIN = ("ReduceMean", "Add", "Sqrt", "Reciprocal", "Div", "Mul")  # Pow -> ... -> x * (1/rms) * weight


def norm_chain_nodes(model) -> list[str]:
    """Names of the nodes from each ``Pow`` through the decomposed RMS norm, up to the weight ``Mul``."""
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    names = []
    for node in model.graph.node:
        if node.op_type != "Pow":
            continue
        frontier = [node]
        for _ in range(6):
            frontier = [c for n in frontier for o in n.output for c in consumers.get(o, []) if c.op_type in NORM_CHAIN]
            names += [n.name for n in frontier]
    return sorted(set(names))


def convert_fp16(src: Path, dst: Path, external: bool, keep_fp32: tuple[str, ...] = FP16_KEEP_FP32) -> dict:
    """Weights and activations fp16; inputs/outputs stay fp32 (the spec's dtypes); ``keep_fp32`` ops in fp32."""
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    chains = norm_chain_nodes(onnx.load(str(src), load_external_data=False)) if keep_fp32 else []
    try:
        # a path (not a ModelProto) lets the converter run path-based shape inference: no 2 GB limit
        model = convert_float_to_float16(str(src), keep_io_types=True, node_block_list=chains,
                                         op_block_list=list(DEFAULT_OP_BLOCK_LIST) + list(keep_fp32))
        _drop_duplicate_casts(model)
        OnnxModel(model).topological_sort()  # the converter appends the casts it inserts at the graph's end
    except Exception as e:  # noqa: BLE001
        raise ExportError(f"fp16 conversion of {src.name} failed: {_first_line(e)}") from None
    save(model, dst, external)
    counts = op_counts(dst)
    kept = sorted(k for k in keep_fp32 if counts.get(k))
    return {"kept_fp32_ops": kept, "kept_fp32_norm_nodes": len(chains), "io": "float32 (cast inside the graph)",
            "casts": counts.get("Cast", 0)}


def _drop_duplicate_casts(model) -> int:
    """onnxruntime 1.31's converter inserts one Cast per consumer of a tensor that feeds two kept-fp32 nodes,
    all with the same output name (the graph is then not SSA). The copies are identical: keep the first."""
    seen, keep, dropped = set(), [], 0
    for node in model.graph.node:
        key = (node.op_type, tuple(node.input), tuple(node.output))
        if node.op_type == "Cast" and key in seen:
            dropped += 1
            continue
        seen.add(key)
        keep.append(node)
    if dropped:
        del model.graph.node[:]
        model.graph.node.extend(keep)
    return dropped


def _first_line(e: Exception) -> str:
    text = " ".join(str(e).split())
    return (text[:300] + "...") if len(text) > 300 else text or type(e).__name__
