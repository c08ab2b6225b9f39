"""Backend choice per device and per component, and the session contract (inputs checked against the spec)."""

import numpy as np
import pytest

from flash_edge.errors import BackendUnavailable, InvalidInput
from flash_edge.pipeline import FlashPipeline
from flash_edge.runtimes import REGISTRY, choose_backend
from flash_edge.runtimes.device import Device, preference

MAC = Device("Darwin", "arm64", cuda=False)
ANDROID = Device("Android", "aarch64", cuda=False)
LINUX = Device("Linux", "x86_64", cuda=False)


def test_preference_per_device():
    assert preference(MAC)[0] == "coreml"
    assert preference(ANDROID)[0] == "executorch"
    assert preference(LINUX)[0] == "onnx"
    assert preference(Device("Darwin", "x86_64", cuda=False))[0] == "onnx"  # Intel Macs: no ANE


def test_auto_picks_a_backend_that_reads_the_artifact():
    # On any device, torch artifacts can only be run by the torch backend.
    for device in (MAC, ANDROID, LINUX):
        assert choose_backend("torch", "auto", device).name == "torch"


def test_explicit_backend_must_read_the_target():
    with pytest.raises(InvalidInput, match="backend 'torch' cannot run onnx artifacts"):
        choose_backend("onnx", "torch")
    with pytest.raises(InvalidInput, match="unknown backend 'tpu'; choose one of: auto, torch"):
        choose_backend("torch", "tpu")


def test_no_backend_for_an_unknown_artifact_format():
    with pytest.raises(BackendUnavailable, match="no backend here can run tflite artifacts"):
        choose_backend("tflite", "auto", LINUX)


def test_per_component_override_and_info(torch_bundle):
    pipe = FlashPipeline.from_bundle(torch_bundle, backend="auto", backends={"vae_decoder": "torch"})
    assert pipe.info["backends"] == {c: "torch" for c in ("text_encoder", "text_encoder_2", "transformer",
                                                         "vae_decoder")}
    assert "torch" in REGISTRY


def test_session_checks_inputs_against_the_spec(torch_bundle):
    pipe = FlashPipeline.from_bundle(torch_bundle)
    vae = pipe.sessions["vae_decoder"]
    with pytest.raises(InvalidInput, match=r"vae_decoder input latent has shape \(1, 16, 16, 16\), expected \(1, 16, 8, 8\)"):
        vae.run({"latent": np.zeros((1, 16, 16, 16), np.float32)})
    with pytest.raises(InvalidInput, match=r"vae_decoder takes inputs \['latent'\], got \['x'\]"):
        vae.run({"x": np.zeros((1, 16, 8, 8), np.float32)})
    image = vae.run({"latent": np.zeros((1, 16, 8, 8), np.float32)})["image"]
    assert image.shape == (1, 3, 64, 64) and image.dtype == np.float32 and 0 <= image.min() <= image.max() <= 1


def test_bundle_and_reference_agree_stage_by_stage(torch_bundle):
    """The fp32 torch bundle reloads the same weights: every stage equals the in-memory reference."""
    bundle, ref = FlashPipeline.from_bundle(torch_bundle), FlashPipeline.from_model("tiny")
    a, b = bundle.encode("a yellow star"), ref.encode("a yellow star")
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, rtol=0, atol=1e-6)
    np.testing.assert_allclose(bundle.denoise(a, seed=3), ref.denoise(b, seed=3), rtol=0, atol=1e-5)
