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
    ({"threads": "many"}, "threads must be a positive integer, got 'many'")])
def test_bad_options_are_one_line_errors(onnx_fp32_bundle, options, message):
    with pytest.raises(InvalidInput, match=message):
        FlashPipeline.from_bundle(onnx_fp32_bundle, backend="openvino", **options).generate(PROMPT, seed=SEED)


def test_auto_never_picks_openvino(onnx_fp32_bundle):
    """By name only: ``auto`` keeps ONNX Runtime for ONNX artifacts (OpenVINO's default precision differs)."""
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
