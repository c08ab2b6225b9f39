"""The ``onnx`` target: one ONNX file per component (static shapes, batch 1), run by ONNX Runtime.

Per component: torch.onnx (dynamo exporter) -> ONNX Runtime's offline basic optimizer (models under 2 GB; the
larger ones get the same fusions when a session loads them) -> the precision pass
(int8: onnxruntime.quantization on the transformer and text encoders, each file by itself; fp16:
onnxruntime.transformers.float16 with the overflow-prone ops kept fp32) -> ``<component>/model.onnx``,
checked with ``onnx.checker``. Weights go to one external data file (``model.onnx.data``) when the model
would pass protobuf's 2 GB limit (or always, with ``external_data="always"``).

A transformer whose fp32 weights pass 2 GB is exported for int8 in chunks (``export/chunks.py``;
``--chunks K`` forces K): ``transformer/chunk{i}/model.onnx``, each exported, quantized and checked by itself,
listed in the manifest's ``options.chunks`` and run one after another by the backend.

The transformer's position-embedding table is cropped to the bundle's resolution before export: diffusers'
``PatchEmbed`` slices a ``pos_embed_max_size``-square table at run time, and the dynamo exporter keeps the
whole table as a weight (906 MB for SD3.5-Medium), though one crop of it is all a static-shape graph uses.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from pathlib import Path

from ..errors import ExportError, InvalidInput
from ..spec import STAYS_FLOAT  # int8 quantizes every other component (and benchmark blocks)
from .base import CHUNKS_OPTION, Exporter, Program
from .onnx_passes import GRAPH_MARGIN, PROTOBUF_LIMIT, convert_fp16, data_name, optimize_offline, quantize_int8

OPSET = 20
OP_TYPES = {"vae_decoder": ("Conv", "MatMul", "Gemm")}  # int8 op types per component; default below
DEFAULT_OP_TYPES = ("MatMul", "Gemm")
CALIBRATION_BATCHES = 8  # qdq mode: seeded dummy feeds per component (min-max calibration)
OFFLINE_OPTIMIZER_SKIPPED = (
    "the model is over protobuf's 2 GB: ONNX Runtime's offline optimizer would hold the original and the "
    "optimized weights at once (2.6x the weights, measured on a 4-block SD3.5-Medium transformer: ~25 GB for "
    "the full fp32 one), and the same basic-level fusions run anyway when a session loads the model")

# Parity floors (dB PSNR vs the fp32 PyTorch reference): the measurements behind them are in README "Parity floors".
FLOORS = {
    ("fp32", "*"): {"*": 60.0},
    ("fp16", "*"): {"*": 35.0},
    ("int8", "dynamic"): {"text_encoder": 38.0, "text_encoder_2": 38.0, "text_encoder_3": 38.0,
                          "transformer": 50.0, "vae_decoder": 60.0, "image": 42.0},
    ("int8", "qdq"): {"text_encoder": 35.0, "text_encoder_2": 35.0, "text_encoder_3": 35.0,
                      "transformer": 45.0, "vae_decoder": 60.0, "image": 40.0},
}
FLOORS_QUANTIZED_VAE = {"dynamic": {"vae_decoder": 35.0, "image": 35.0}, "qdq": {"vae_decoder": 31.0, "image": 31.0}}


def _merged_optimizer(records: list[dict]) -> dict:
    """The offline optimizer's changes summed over a component's chunks (chunks it skipped are counted)."""
    ran = [r["optimizer"] for r in records if "removed" in r["optimizer"]]
    removed: dict[str, int] = {}
    for r in ran:
        for op, n in r["removed"].items():
            removed[op] = removed.get(op, 0) + n
    out = {"level": "basic" if ran else "skipped", "chunks_optimized": len(ran), "chunks": len(records)}
    return {**out, "removed": dict(sorted(removed.items()))} if ran else out


@contextlib.contextmanager
def cropped_position_embedding(module, spec):
    """Within the block, every ``PatchEmbed``-like submodule (diffusers: ``pos_embed_max_size`` set, a
    ``cropped_pos_embed`` method) holds only the crop of its table that the spec's latent size uses, and
    returns it as is; the original table and method are restored afterwards. Exact: same values, same op."""
    import torch

    latent = next((t for t in spec.inputs if t.name == "latent" and len(t.shape) == 4), None)
    patched = []
    try:
        for sub in (module.modules() if latent is not None else ()):
            if callable(getattr(sub, "cropped_pos_embed", None)) and getattr(sub, "pos_embed_max_size", None) \
                    and isinstance(getattr(sub, "pos_embed", None), torch.Tensor):
                full = sub.pos_embed
                crop = sub.cropped_pos_embed(*latent.shape[-2:]).detach().clone()
                sub.pos_embed = crop
                sub.cropped_pos_embed = lambda height, width, _crop=crop: _crop
                patched.append((sub, full, tuple(full.shape), tuple(crop.shape)))
        yield [(old, new) for _, _, old, new in patched]
    finally:
        for sub, full, _, _ in patched:
            sub.pos_embed = full
            del sub.cropped_pos_embed


class OnnxExporter(Exporter):
    target = "onnx"
    precisions = ("fp32", "fp16", "int8")
    default_precision = "int8"
    backend = "onnx"
    packages = ("torch", "onnx", "onnxruntime", "onnxscript")
    extra = "onnx"
    cli_options = {
        **CHUNKS_OPTION,
        "--quantize-vae": dict(action="store_true", default=False,
                               help="int8: quantize the VAE decoder too (default: it stays fp32; int8 costs it "
                                    "~8 dB PSNR and ConvInteger is slower than float conv on CPU)"),
        "--int8-mode": dict(choices=("dynamic", "qdq"), default="dynamic",
                            help="int8: activations quantized at run time (dynamic, default: no calibration, "
                                 "best accuracy, fastest on CPU) or static QDQ calibrated on dummy inputs "
                                 "(for NPU/EPs that need static quantization)"),
        "--int8-weights": dict(choices=("u8", "s8"), default="u8",
                               help="int8: weight type (u8, default: exact on every x86 CPU; s8: ONNX Runtime's "
                                    "u8 x s8 CPU kernels saturate on x86 CPUs without VNNI, costing 5-25 dB there, "
                                    "but are the fast path on VNNI CPUs)"),
        "--external-data": dict(choices=("auto", "always"), default="auto",
                                help="weights in a model.onnx.data file beside model.onnx: when over 2 GB (auto) "
                                     "or always"),
    }

    def __init__(self, precision=None, **options):
        super().__init__(precision, **options)  # unknown names and the declared choices are refused there
        if self.options["quantize_vae"] and self.precision != "int8":
            raise InvalidInput("--quantize-vae applies to --precision int8 only")
        self._calibration: list | None = None  # qdq int8 of a chunked component: feeds per chunk

    # ------------------------------------------------------------------ contract
    def parity_floor_db(self, component, precision):
        mode = self.options["int8_mode"] if precision == "int8" else "*"
        if precision == "int8" and self.options["quantize_vae"] and component in FLOORS_QUANTIZED_VAE[mode]:
            return FLOORS_QUANTIZED_VAE[mode][component]
        table = FLOORS[(precision, mode)]
        return table.get(component, table.get("*", 60.0))

    def candidate_options(self) -> dict:
        """Pre-packed weights under the gate's ``low`` policy too: unpacked s8 kernels round differently on
        AMX, and the gate must check ``fast``'s numbers."""
        return {"prepack": True}

    def quantized(self, component: str) -> bool:
        return self.precision == "int8" and (component not in STAYS_FLOAT or self.options["quantize_vae"])

    def auto_chunks(self, name) -> bool:
        # int8 only: ONNX Runtime's quantizer holds ~3x the fp32 model (measured: past 20 GB on SD3.5-Medium's
        # 9 GB); fp32/fp16 stay one file with external data
        return self.quantized(name)

    def begin_component(self, name, module, spec, parts):
        chunked = len(parts) > 1 and self._needs_calibration(name)
        self._calibration = self._chunk_calibration(parts, spec) if chunked else None

    def export_program(self, name, index, module, spec, root, folder) -> Program:
        calibration = self._calibration[index] if self._calibration else None
        files, record, precision = self._export_file(name, module, spec, folder / "model.onnx", calibration)
        return Program(path=files[0].relative_to(root).as_posix(), precision=precision, facts=record)

    def component_options(self, name, programs):
        records = [p.facts for p in programs]
        return {"opset": OPSET, "external_data": any(r["external_data"] for r in records),
                "optimizer": _merged_optimizer(records)}

    # ------------------------------------------------------------------ one file
    def _needs_calibration(self, name) -> bool:
        return self.quantized(name) and self.options["int8_mode"] == "qdq"

    @staticmethod
    def _chunk_calibration(parts, spec) -> list[list[dict]]:
        """qdq calibration feeds per chunk: the seeded dummy inputs run through the chunks before it in
        PyTorch, so a later chunk calibrates on hidden states, not on noise."""
        import torch

        per_chunk = [[] for _ in parts]
        for seed in range(CALIBRATION_BATCHES):
            state = {k: torch.from_numpy(v) for k, v in spec.dummy_inputs(seed=seed).items()}
            for i, (piece, piece_spec) in enumerate(parts):
                per_chunk[i].append({n: state[n].numpy() for n in piece_spec.input_names})
                with torch.no_grad():
                    state.update(zip(piece_spec.output_names, piece(*(state[n] for n in piece_spec.input_names))))
        return per_chunk

    def _export_file(self, name, module, spec, out: Path, calibration=None) -> tuple[list[Path], dict, str]:
        """``module`` -> ``out`` (and its data file) through every pass; returns the files, what was done and
        the precision written."""
        from .upcast import upcast

        record: dict = {"opset": OPSET}
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f".{name}-onnx-", dir=out.parent) as tmp:
            work = Path(tmp)
            with upcast(module):  # a bf16/fp16 model is traced in fp32 one piece at a time
                exported, external, crops = self._export_fp32(spec.name, module, spec, work / "exported.onnx")
            if crops:
                record["pos_embed_cropped"] = [{"from": list(a), "to": list(b)} for a, b in crops]
            if external:
                record["optimizer"] = {"level": "skipped", "reason": OFFLINE_OPTIMIZER_SKIPPED}
                current = exported
            else:
                record["optimizer"] = optimize_offline(exported, work / "optimized.onnx", external)
                current = work / "optimized.onnx"
            precision = "fp32"
            if self.quantized(name):
                feeds = calibration or [spec.dummy_inputs(seed=i) for i in range(CALIBRATION_BATCHES)]
                record["quantization"] = quantize_int8(current, work / "int8.onnx", external,
                                                       self.options["int8_mode"],
                                                       OP_TYPES.get(name, DEFAULT_OP_TYPES), calibration=feeds,
                                                       weights=self.options["int8_weights"])
                current, precision = work / "int8.onnx", "int8"
            elif self.precision == "fp16":
                record["fp16"] = convert_fp16(current, work / "fp16.onnx", external)
                current, precision = work / "fp16.onnx", "fp16"
            files = self._finalize(current, out, external)
        self._check(out)
        record["external_data"] = len(files) > 1
        return files, record, precision

    def manifest_extra(self) -> dict:
        extra = {"exporter": "torch.onnx dynamo", "opset": OPSET,
                 "offline_optimization": "ONNX Runtime basic level (portable); EP-specific fusions at load time"}
        if self.precision == "fp16":
            extra["execution_providers"] = ["CUDAExecutionProvider", "DmlExecutionProvider",
                                            "CoreMLExecutionProvider"]
            extra["note"] = ("fp16 is meant for GPU execution providers; on the CPU provider ONNX Runtime runs "
                             "many fp16 ops through casts and is slower than fp32 or int8")
        elif self.precision == "int8":
            extra["execution_providers"] = ["CPUExecutionProvider"]
            extra["quantization"] = {"mode": self.options["int8_mode"],
                                     "weights": f"{self.options['int8_weights']} per-channel",
                                     "components": [c for c in self.exported if self.quantized(c)],
                                     "float_components": [c for c in self.exported if not self.quantized(c)]}
        options = {c: a.options for c, a in self.exported.items()}
        extra["fused"] = {c: o["optimizer"].get("removed", "skipped (over 2 GB)") for c, o in options.items()}
        chunked = {c: len(o["chunks"]) for c, o in options.items() if "chunks" in o}
        if chunked:
            extra["chunks"] = chunked
        return extra

    # ------------------------------------------------------------------ steps
    def _export_fp32(self, name, module, spec, path: Path):
        import onnx
        import torch
        from onnx.external_data_helper import ExternalDataInfo, load_external_data_for_model, uses_external_data

        feeds = spec.dummy_inputs(seed=0)
        args = tuple(torch.from_numpy(feeds[n]) for n in spec.input_names)
        try:
            with cropped_position_embedding(module, spec) as crops, torch.no_grad():
                program = torch.onnx.export(module, args, dynamo=True, opset_version=OPSET, optimize=True,
                                            input_names=spec.input_names, output_names=spec.output_names,
                                            verbose=False)
        except Exception as e:  # noqa: BLE001 - torch.export/onnx failures become one line
            raise ExportError(f"torch.onnx could not export {name}: {' '.join(str(e).split())[:300]}") from None
        weights = sum(v.const_value.nbytes for v in program.model.graph.initializers.values()
                      if v.const_value is not None)
        external = self.options["external_data"] == "always" or weights + GRAPH_MARGIN >= PROTOBUF_LIMIT
        # Saved straight from the exporter's IR, which streams each weight from the module's own tensor to the
        # data file: ``program.model_proto`` would first copy every weight into one protobuf (9 GB for
        # SD3.5-Medium's fp32 transformer, on top of the module's 9 GB).
        program.save(str(path), external_data=external)
        del program
        model = onnx.load(str(path), load_external_data=False)  # the graph; external weights stay on disk
        moved = {ExternalDataInfo(t).location for t in model.graph.initializer if uses_external_data(t)}
        if moved and not external:
            # torch.onnx writes a data file by itself past its own 1.5 GB (SD3.5-Medium's first fp32 chunk at
            # 512^2); under the 2 GB limit the passes below take one self-contained file, so the weights go back in
            load_external_data_for_model(model, str(path.parent))
            for location in moved:
                (path.parent / location).unlink()
        for node in model.graph.node:  # the exporter's per-node stack traces and module paths: ~40% of a file
            del node.metadata_props[:]
            node.doc_string = ""
        self._check_io(name, model, spec)
        onnx.save_model(model, str(path))
        return path, external, crops

    @staticmethod
    def _check_io(name, model, spec):
        from onnx import helper

        got_in = [(i.name, [d.dim_value for d in i.type.tensor_type.shape.dim]) for i in model.graph.input]
        want_in = [(t.name, list(t.shape)) for t in spec.inputs]
        got_out = [(o.name, [d.dim_value for d in o.type.tensor_type.shape.dim]) for o in model.graph.output]
        want_out = [(t.name, list(t.shape)) for t in spec.outputs]
        if got_in != want_in or got_out != want_out:
            raise ExportError(f"exported {name} has inputs {got_in} and outputs {got_out}; the spec says "
                              f"{want_in} -> {want_out}")
        types = {helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type).name for i in model.graph.input}
        if not types <= {"float32", "int64"}:
            raise ExportError(f"exported {name} takes input types {sorted(types)}, expected float32/int64")

    @staticmethod
    def _finalize(src: Path, out: Path, external: bool) -> list[Path]:
        """Move the last pass's file (and its one data file, renamed to ``model.onnx.data``) into place."""
        import onnx
        from onnx.external_data_helper import ExternalDataInfo, uses_external_data

        out.parent.mkdir(parents=True, exist_ok=True)
        if not external:
            shutil.move(src, out)
            return [out]
        model = onnx.load(str(src), load_external_data=False)
        tensors = [t for t in model.graph.initializer if uses_external_data(t)]
        locations = {ExternalDataInfo(t).location for t in tensors}
        if len(locations) != 1:
            raise ExportError(f"{src.name} keeps its weights in {len(locations)} data files, expected one")
        data = out.with_name(data_name(out))
        shutil.move(src.with_name(locations.pop()), data)
        for t in tensors:
            for entry in t.external_data:
                if entry.key == "location":
                    entry.value = data.name
        onnx.save_model(model, str(out))
        return [out, data]

    @staticmethod
    def _check(path: Path) -> None:
        import onnx

        try:
            onnx.checker.check_model(str(path))  # a path: works past 2 GB, reads external data
        except onnx.checker.ValidationError as e:
            raise ExportError(f"{path.name} fails onnx.checker: {' '.join(str(e).split())[:300]}") from None
