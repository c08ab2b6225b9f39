"""The OpenVINO backend on the tiny model's ONNX bundle: the same files as ONNX Runtime, its image, its
precision, the memory policies, a per-component choice and its one-line errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from flash_edge.errors import BundleError, InvalidInput
from flash_edge.metrics import psnr
from flash_edge.pipeline import FlashPipeline

pytest.importorskip("openvino", reason="the openvino backend needs the openvino package (pip install openvino)")

PROMPT, SEED = "a red circle on the left", 0


@pytest.fixture(scope="module")
def onnx_image(onnx_fp32_bundle):
    return FlashPipeline.from_bundle(onnx_fp32_bundle, backend="onnx").generate(PROMPT, seed=SEED)


def test_f32_draws_onnx_runtimes_image(onnx_fp32_bundle, onnx_image):
    """In f32 the two runtimes differ only in summation order: measured 138.8 dB; 100 dB is far above any real
    difference in the picture and far below what a wrong weight or op would give (< 30 dB)."""
    pipe = FlashPipeline.from_bundle(onnx_fp32_bundle, backend="openvino", inference_precision="f32")
    assert set(pipe.info["backends"].values()) == {"openvino"}
    image = pipe.generate(PROMPT, seed=SEED)
    assert image.shape == onnx_image.shape
    assert psnr(onnx_image, image, data_range=1.0) >= 100.0
    assert pipe.sessions["transformer"].inference_precision == "f32"


def test_default_precision_is_openvinos_choice_and_holds_the_image(onnx_fp32_bundle, onnx_image):
    """Without a hint OpenVINO picks bf16 on CPUs with AMX or AVX-512 BF16 and f32 elsewhere; the session says
    which. bf16 (8-bit mantissa) measured 57.0 dB against fp32 on this model; the floor is 45 dB (the SD3.5
    VAE decoder at real size: 48.2 dB)."""
    pipe = FlashPipeline.from_bundle(onnx_fp32_bundle, backend="openvino")
    assert pipe.sessions["vae_decoder"].inference_precision in ("bf16", "f16", "f32")
    assert psnr(onnx_image, pipe.generate(PROMPT, seed=SEED), data_range=1.0) >= 45.0


def test_every_memory_policy_draws_the_same_image(onnx_fp32_bundle):
    """Policies change when a compiled model exists, never what it computes."""
    images = {policy: FlashPipeline.from_bundle(onnx_fp32_bundle, backend="openvino", memory=policy)
              .generate(PROMPT, seed=SEED) for policy in ("fast", "low", "stream")}
    assert np.array_equal(images["fast"], images["low"]) and np.array_equal(images["fast"], images["stream"])


def test_one_component_on_openvino_the_rest_on_onnx_runtime(onnx_fp32_bundle, onnx_image):
    pipe = FlashPipeline.from_bundle(onnx_fp32_bundle, backend="onnx", backends={"vae_decoder": "openvino"},
                                     inference_precision="f32")
    assert pipe.info["backends"] == {"text_encoder": "onnx", "text_encoder_2": "onnx", "transformer": "onnx",
                                     "vae_decoder": "openvino"}
    assert psnr(onnx_image, pipe.generate(PROMPT, seed=SEED), data_range=1.0) >= 100.0


@pytest.mark.parametrize("options, message", [
    ({"inference_precision": "int4"}, "inference_precision must be one of bf16, f16, f32, got 'int4'"),
    ({"threads": 0}, "threads must be a positive integer, got 0"),
    ({"threads": "many"}, "threads must be a positive integer, got 'many'"),
    ({"dynamic_quantization_group_size": -1}, "dynamic_quantization_group_size must be an integer from 0"),
    ({"dynamic_quantization_group_size": "256"}, "dynamic_quantization_group_size must be an integer from 0")])
def test_bad_options_are_one_line_errors(onnx_fp32_bundle, options, message):
    with pytest.raises(InvalidInput, match=message):
        FlashPipeline.from_bundle(onnx_fp32_bundle, backend="openvino", **options).generate(PROMPT, seed=SEED)


def test_auto_never_picks_openvino(onnx_fp32_bundle):
    """``auto`` keeps ONNX Runtime for ONNX artifacts (OpenVINO's default precision differs), unless the manifest
    says a component prefers OpenVINO (weight-only int8, below)."""
    assert "openvino" not in FlashPipeline.from_bundle(onnx_fp32_bundle).info["backends"].values()


def test_a_model_that_disagrees_with_its_manifest_is_refused(onnx_fp32_bundle, tmp_path):
    """The decoder's file is swapped for the text encoder's (re-hashed, as an attacker controlling the manifest
    would): a one-line ``BundleError`` naming both sides, before anything runs."""
    from flash_edge.bundle import sha256_file

    bundle = tmp_path / "b"
    shutil.copytree(onnx_fp32_bundle, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    rel = manifest["components"]["vae_decoder"]["path"]
    shutil.copyfile(bundle / manifest["components"]["text_encoder"]["path"], bundle / rel)
    manifest["files"][rel] = {"size": (bundle / rel).stat().st_size, "sha256": sha256_file(bundle / rel)}
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"ONNX model of vae_decoder has inputs .* the manifest says") as e:
        FlashPipeline.from_bundle(bundle, backend="openvino").sessions["vae_decoder"]
    assert "\n" not in str(e.value)


def test_describe_names_the_version_and_the_precision_benchmarks_record():
    from flash_edge.runtimes.openvino import describe

    facts = describe()
    assert facts["version"].split(".")[0].isdigit() and facts["inference_precision"] in ("bf16", "f16", "f32")
    assert describe("f32")["inference_precision"] == "f32"


@pytest.mark.slow
def test_flash_bench_runs_one_bundle_on_two_backends(onnx_fp32_bundle):
    """One ``--backend`` per ``--bundle``: the same bundle measured on ONNX Runtime and OpenVINO in one run,
    against one reference; the OpenVINO row records its version and compute precision."""
    from flash_edge.bench.runner import Options, run_bench

    bundle = str(onnx_fp32_bundle)
    r = run_bench(Options(bundles=[bundle, bundle], backend=("onnx", "openvino"), repeats=1, warmup=0,
                          memory=False, diffusers=False, teacher="estimate", e2e_steps=(), prompts=(PROMPT,)))
    assert r["settings"]["backend"] == ["onnx", "openvino"] and len(r["baselines"]) == 1
    onnx_row, ov_row = r["bundles"]
    assert onnx_row["label"].endswith("(onnx)") and ov_row["label"].endswith("(openvino)")
    assert set(ov_row["backends"].values()) == {"openvino"} and set(onnx_row["backends"].values()) == {"onnx"}
    assert ov_row["openvino"]["inference_precision"] in ("bf16", "f16", "f32") and "openvino" not in onnx_row
    assert ov_row["quality"]["psnr_db_pooled"] >= 45.0  # the default-precision floor above, against the reference


def test_cache_dir_keeps_compiled_models_and_reads_them_back(onnx_fp32_bundle, tmp_path):
    """One cache subfolder per model file, written at the first open and read (not rewritten) at the next; the
    image is the uncached one bit for bit. A cache_dir that is a file is a one-line error."""
    cache = tmp_path / "ov-cache"
    uncached = FlashPipeline.from_bundle(onnx_fp32_bundle, backend="openvino").generate(PROMPT, seed=SEED)
    first = FlashPipeline.from_bundle(onnx_fp32_bundle, backend="openvino", cache_dir=cache).generate(PROMPT, seed=SEED)
    folders = [d for d in cache.iterdir() if d.is_dir()]
    assert len(folders) == 4  # two text encoders, the transformer, the decoder
    blobs = {f: f.stat().st_mtime_ns for d in folders for f in d.iterdir()}
    assert blobs and all(f.stat().st_size > 0 for f in blobs)
    again = FlashPipeline.from_bundle(onnx_fp32_bundle, backend="openvino", cache_dir=cache).generate(PROMPT, seed=SEED)
    assert {f: f.stat().st_mtime_ns for d in folders for f in d.iterdir()} == blobs
    assert np.array_equal(first, uncached) and np.array_equal(again, uncached)
    (tmp_path / "file").write_text("x")
    with pytest.raises(InvalidInput, match="cannot use cache_dir .*file"):
        FlashPipeline.from_bundle(onnx_fp32_bundle, backend="openvino", cache_dir=tmp_path / "file").generate(
            PROMPT, seed=SEED)


@pytest.mark.slow  # an export of its own
def test_an_fp16_bundle_whose_outputs_carry_two_names_runs(tmp_path_factory, onnx_image):
    """fp16 exports end in a Cast whose output OpenVINO names both after the cast and as the manifest does; the
    session finds the manifest's name among them. fp16 weights computed in f32 measured 72.3 dB against the fp32
    bundle; the 45 dB floor of bf16 above holds for them too."""
    from flash_edge.export import export_bundle

    bundle = export_bundle("tiny", "onnx", tmp_path_factory.mktemp("ov") / "fp16", "fp16")
    image = FlashPipeline.from_bundle(bundle, backend="openvino", inference_precision="f32").generate(PROMPT, seed=SEED)
    assert psnr(onnx_image, image, data_range=1.0) >= 45.0


# ------------------------------------------------------------------------ weight-only int8 (--int8-mode weights)
@pytest.fixture(scope="module")
def weights_bundle(tmp_path_factory):
    pytest.importorskip("nncf", reason="--int8-mode weights needs nncf (pip install 'flash-edge[openvino-export]')")
    from flash_edge.export import export_bundle

    return export_bundle("tiny", "onnx", tmp_path_factory.mktemp("ov") / "int8w", "int8", int8_mode="weights")


def _initializer_types(path) -> dict[str, int]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    inits = {t.name: t.data_type for t in model.graph.initializer}
    return {n.input[0]: inits.get(n.input[0]) for n in model.graph.node if n.op_type == "DequantizeLinear"}


@pytest.mark.slow
def test_weight_only_bundle_holds_s8_weights_and_says_who_runs_it(weights_bundle):
    """Every matmul weight of the transformer is an s8 initializer behind a DequantizeLinear; the patch
    embedding's convolution stays float (OpenVINO's ONNX reader refuses NNCF's [C, 1, 1] conv scales); the
    manifest says OpenVINO runs the quantized components and the gate ran there."""
    import onnx

    from flash_edge.bundle import Bundle

    bundle = Bundle.open(weights_bundle)
    m = bundle.manifest
    assert m["onnx"]["quantization"]["mode"] == "weights"
    assert m["onnx"]["quantization"]["weights"] == "s8 per-channel (symmetric)"
    assert "OpenVINO" in m["onnx"]["runtime"] and "execution_providers" not in m["onnx"]
    assert set(m["parity"]["backend"].values()) == {"openvino"} and m["parity"]["status"] == "passed"
    for name in ("text_encoder", "text_encoder_2", "transformer"):
        assert bundle.components[name].options["preferred_backend"] == "openvino"
    assert "preferred_backend" not in bundle.components["vae_decoder"].options  # fp32: ONNX Runtime under auto
    path = weights_bundle / bundle.components["transformer"].path
    dq = _initializer_types(path)
    assert len(dq) >= 30 and set(dq.values()) == {onnx.TensorProto.INT8}, dq
    graph = onnx.load(str(path), load_external_data=False).graph
    ops = {n.op_type for n in graph.node}
    assert not ops & {"MatMulInteger", "DynamicQuantizeLinear", "QuantizeLinear"}
    conv = [n for n in graph.node if n.op_type == "Conv"]
    assert conv and all(n.input[1] not in dq and not n.input[1].endswith("_dequantized") for n in conv)


@pytest.mark.slow
def test_auto_runs_weight_only_components_on_openvino_as_compressed_int8(weights_bundle):
    """``auto`` follows ``preferred_backend``; OpenVINO compiles each DequantizeLinear weight into a
    FullyConnected that keeps the int8 weight (its runtime model says so), and the image holds the gate's floor
    against the fp32 PyTorch reference (the gate measured 44.1 dB here)."""
    from flash_edge.export.onnx import FLOORS

    pipe = FlashPipeline.from_bundle(weights_bundle)
    assert pipe.info["backends"] == {"text_encoder": "openvino", "text_encoder_2": "openvino",
                                     "transformer": "openvino", "vae_decoder": "onnx"}
    compiled = pipe.sessions["transformer"].compiled
    layers = [op.get_rt_info() for op in compiled.get_runtime_model().get_ordered_ops()]
    fc = [i["runtimePrecision"].astype(str) for i in layers if i["layerType"].astype(str) == "FullyConnected"]
    assert len(fc) >= 30 and set(fc) <= {"i8", "u8"}, fc
    reference = FlashPipeline.from_model("tiny").generate(PROMPT, seed=SEED)
    assert psnr(reference, pipe.generate(PROMPT, seed=SEED), data_range=1.0) >= FLOORS[("int8", "weights")]["image"]


@pytest.mark.slow
def test_group_size_zero_turns_run_time_quantization_off(weights_bundle):
    """Group 0: the products run in the inference precision on dequantized weights, so the image moves closer
    to the reference than with int8 activations (measured on one SD3.5 block: 81.9 against 75.9 dB); both are
    one image of the same bundle, not a second model."""
    from flash_edge import cpu

    if cpu.x86_without_vnni():
        pytest.skip("OpenVINO quantizes activations at run time only on CPUs with int8 dot products (VNNI, AMX)")
    reference = FlashPipeline.from_model("tiny").generate(PROMPT, seed=SEED)
    q = FlashPipeline.from_bundle(weights_bundle, backend="openvino", inference_precision="f32")
    f = FlashPipeline.from_bundle(weights_bundle, backend="openvino", inference_precision="f32",
                                  dynamic_quantization_group_size=0)
    quantized, plain = q.generate(PROMPT, seed=SEED), f.generate(PROMPT, seed=SEED)
    assert not np.array_equal(quantized, plain)
    assert psnr(reference, plain, data_range=1.0) > psnr(reference, quantized, data_range=1.0)


@pytest.mark.slow
def test_onnx_runtime_runs_a_weight_only_bundle_and_warns(weights_bundle):
    """Without OpenVINO the files still run (ONNX Runtime dequantizes and multiplies in float), with one
    ``DeviceWarning`` per component saying why it is slow; the image holds the same floor."""
    from flash_edge.errors import DeviceWarning
    from flash_edge.export.onnx import FLOORS

    with pytest.warns(DeviceWarning, match="weight-only, exported for OpenVINO") as caught:
        image = FlashPipeline.from_bundle(weights_bundle, backend="onnx").generate(PROMPT, seed=SEED)
    assert sorted(str(w.message).split(":")[0] for w in caught if w.category is DeviceWarning) == [
        "text_encoder", "text_encoder_2", "transformer"]
    reference = FlashPipeline.from_model("tiny").generate(PROMPT, seed=SEED)
    assert psnr(reference, image, data_range=1.0) >= FLOORS[("int8", "weights")]["image"]
