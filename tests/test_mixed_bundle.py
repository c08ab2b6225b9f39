"""Bundles mixing targets (``flash-export --component-target``) and per-component backend choices
(``--backend onnx,vae_decoder=openvino``): what is written, what the gate checks, what runs, and every bad input
as one line before any work."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from flash_edge.cli import bench as bench_cli
from flash_edge.cli import export as export_cli
from flash_edge.cli import generate as generate_cli
from flash_edge.errors import InvalidInput
from flash_edge.export import get_exporter
from flash_edge.metrics import psnr
from flash_edge.pipeline import FlashPipeline
from flash_edge.runtimes import parse_choice

sys.path.insert(0, str(Path(__file__).parent))  # the shared test helpers beside this file (importlib mode)
from helpers import assert_one_line_error, run_cli  # noqa: E402

PROMPT = "a red circle above a blue square"
SLOW = pytest.mark.slow  # the mixed bundle's export includes an ExecuTorch lowering


@pytest.fixture(scope="module")
def mixed(tmp_path_factory, tiny_dir) -> Path:
    """ONNX fp32 for every component but CLIP-L, which is ExecuTorch fp32 (the cheapest ExecuTorch export of
    tiny); the real-size use is the other way round (ExecuTorch int8 with an ONNX VAE decoder)."""
    out = tmp_path_factory.mktemp("mixed") / "onnx-et"
    assert export_cli.main(["--quiet", "--target", "onnx", "--precision", "fp32", "--out", str(out),
                            "--component-target", "text_encoder=executorch:fp32"]) == 0
    return out


@SLOW
def test_manifest_names_each_components_target_and_both_targets_facts(mixed):
    m = json.loads((mixed / "manifest.json").read_text())
    targets = {name: (e["target"], e["precision"]) for name, e in m["components"].items()}
    assert targets == {"text_encoder": ("executorch", "fp32"), "text_encoder_2": ("onnx", "fp32"),
                       "transformer": ("onnx", "fp32"), "vae_decoder": ("onnx", "fp32")}
    assert (m["target"], m["precision"]) == ("onnx", "fp32")
    assert m["component_targets"] == {"text_encoder": {"target": "executorch", "precision": "fp32"}}
    assert m["executorch"]["delegate"] == "xnnpack" and m["onnx"]["opset"] >= 17  # each target's own facts
    assert m["components"]["text_encoder"]["path"].endswith(".pte")
    assert "executorch" in m["tools"] and "onnxruntime" in m["tools"]


@SLOW
def test_gate_runs_each_component_on_its_own_backend_against_its_own_floor(mixed):
    parity = json.loads((mixed / "manifest.json").read_text())["parity"]
    assert parity["status"] == "passed"
    assert parity["backend"] == {"text_encoder": "executorch", "text_encoder_2": "onnx", "transformer": "onnx",
                                 "vae_decoder": "onnx"}
    r = parity["results"]
    et, ort = get_exporter("executorch", "fp32"), get_exporter("onnx", "fp32")
    assert r["text_encoder"]["floor_db"] == et.parity_floor_db("text_encoder", "fp32")
    assert r["transformer"]["floor_db"] == ort.parity_floor_db("transformer", "fp32")
    assert r["image"]["floor_db"] == min(e.parity_floor_db("image", "fp32") for e in (et, ort))  # the looser
    assert all(v["psnr_db"] >= v["floor_db"] for v in r.values())


@SLOW
def test_auto_and_named_choices_draw_the_same_image(mixed):
    auto = FlashPipeline.from_bundle(mixed)
    assert auto.info["backends"]["text_encoder"] == "executorch" and auto.info["backends"]["vae_decoder"] == "onnx"
    image = np.asarray(auto.generate(PROMPT, seed=0))
    named = FlashPipeline.from_bundle(mixed, **parse_choice("onnx,text_encoder=executorch"))
    np.testing.assert_array_equal(np.asarray(named.generate(PROMPT, seed=0)), image)


@SLOW
def test_one_backend_for_a_mixed_bundle_is_refused_in_one_line(mixed):
    with pytest.raises(InvalidInput, match="backend 'onnx' cannot run executorch artifacts"):
        FlashPipeline.from_bundle(mixed, backend="onnx")
    with pytest.raises(InvalidInput, match="text_encoder_3, which bundle .* does not have"):
        FlashPipeline.from_bundle(mixed, backends={"text_encoder_3": "onnx"})


@SLOW
@pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="needs openvino (flash-edge[openvino])")
def test_generate_runs_the_decoder_on_openvino(mixed, tmp_path):
    out = tmp_path / "ov.png"
    code, err = run_cli(generate_cli.main, "--bundle", mixed, "--prompt", PROMPT, "--out", out,
                        "--backend", "vae_decoder=openvino")
    assert code == 0, err
    assert "text_encoder executorch" in err and "vae_decoder openvino" in err and "transformer onnx" in err
    from PIL import Image

    auto = np.asarray(FlashPipeline.from_bundle(mixed)(PROMPT, seed=0))  # the PIL image flash-generate saves
    # bf16 on CPUs with AVX-512 BF16 or AMX (57 dB measured on tiny, tests/test_openvino.py), f32 elsewhere
    assert psnr(auto, np.asarray(Image.open(out)), data_range=255) >= 45.0


@pytest.mark.parametrize("text, expected", [
    ("auto", {"backend": "auto"}),
    ("onnx", {"backend": "onnx"}),
    ("vae_decoder=openvino", {"backend": "auto", "backends": {"vae_decoder": "openvino"}}),
    ("executorch, vae_decoder=openvino,text_encoder=onnx",
     {"backend": "executorch", "backends": {"vae_decoder": "openvino", "text_encoder": "onnx"}}),
])
def test_backend_choice_syntax(text, expected):
    assert parse_choice(text) == expected


@pytest.mark.parametrize("text", ["onnx,executorch", "vae=onnx", "vae_decoder=", "vae_decoder=onnx,vae_decoder=torch",
                                  "vae_decoder=onnx,onnx", "auto,onnx", "", "onnx,"])
def test_bad_backend_choices_are_refused(text):
    with pytest.raises(InvalidInput, match="bad backend choice"):
        parse_choice(text)


@SLOW
def test_generate_and_bench_refuse_a_bad_choice_before_any_work(mixed, tmp_path):
    out = tmp_path / "x.png"
    code, err = run_cli(generate_cli.main, "--bundle", mixed, "--prompt", "x", "--out", out,
                        "--backend", "vae=openvino")
    assert_one_line_error(code, err, "bad backend choice 'vae=openvino'")
    assert not out.exists()
    code, err = run_cli(bench_cli.main, "--bundle", mixed, "--backend", "onnx,torch", "--out", tmp_path / "b")
    assert_one_line_error(code, err, "bad backend choice 'onnx,torch'")
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("args, pattern", [
    (["--target", "onnx", "--component-target", "vae_decoder"], "bad --component-target 'vae_decoder'"),
    (["--target", "onnx", "--component-target", "vae=executorch"], "bad --component-target 'vae=executorch'"),
    (["--target", "onnx", "--component-target", "vae_decoder=executorch", "--component-target",
      "vae_decoder=torch"], "once per component"),
    (["--target", "onnx", "--component-target", "vae_decoder=onnx:fp16"], "that is --target itself"),
    (["--target", "onnx", "--component-target", "vae_decoder=coreml"], "Core ML bundles are not mixed"),
    (["--target", "coreml", "--component-target", "vae_decoder=onnx"], "Core ML bundles are not mixed"),
    (["--target", "onnx", "--component-target", "vae_decoder=tflite"], "unknown target 'tflite'"),
    (["--target", "onnx", "--component-target", "vae_decoder=executorch:int4"], "precision"),
    (["--target", "onnx", "--component-target", "text_encoder_3=executorch"],
     "text_encoder_3, which this bundle will not have"),
])
def test_bad_component_targets_fail_in_one_line_and_write_nothing(tmp_path, tiny_dir, args, pattern):
    out = tmp_path / "b"
    code, err = run_cli(export_cli.main, "--quiet", "--out", out, *args)
    assert_one_line_error(code, err, pattern)
    assert not out.exists() and not list(tmp_path.iterdir())
