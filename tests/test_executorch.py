"""The ExecuTorch target on the built-in tiny model: CLI export (int8 default, fp32), the parity gate, what
XNNPACK took, the Module-API record an app reads, external weights (.ptd), the pinned library failures, the
backend's errors, and the image through ``runtimes/executorch.py``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("executorch")

import torch  # noqa: E402

from flash_edge.bundle import Bundle  # noqa: E402
from flash_edge.errors import BackendUnavailable, BundleError, ExportError, InvalidInput  # noqa: E402
from flash_edge.metrics import psnr  # noqa: E402
from flash_edge.pipeline import FlashPipeline  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))  # the shared test helpers beside this file (importlib mode)
from helpers import cli_export as _cli_export  # noqa: E402

pytestmark = pytest.mark.slow  # ExecuTorch lowering (minutes per bundle): left out of the quick subset (pytest -m 'not slow')

PROMPT, SEED = "a red circle", 0  # conftest.reference_image draws the same


def _manifest(bundle: Path) -> dict:
    return json.loads((bundle / "manifest.json").read_text())


@pytest.fixture
def e8(et_int8_bundle) -> Path:
    return et_int8_bundle


@pytest.fixture
def e32(et_fp32_bundle) -> Path:
    return et_fp32_bundle


def _export_one(name, module, spec, root, precision="fp32", **options):
    from flash_edge.export.executorch import ExecuTorchExporter

    exporter = ExecuTorchExporter(precision, **options)
    return exporter, exporter.export_component(name, module, spec, root)


# ----------------------------------------------------------------------------- bundles and the gate
def test_precision_per_component(e8, e32):
    int8 = _manifest(e8)["components"]
    assert {c: e["precision"] for c, e in int8.items()} == {
        "text_encoder": "int8", "text_encoder_2": "int8", "transformer": "int8", "vae_decoder": "fp32"}
    assert int8["transformer"]["options"]["recipe"] == "int8-dynamic" and "per-channel" in \
        int8["transformer"]["options"]["quantization"]
    assert {e["precision"] for e in _manifest(e32)["components"].values()} == {"fp32"}
    for c, e in int8.items():
        assert e["path"] == f"{c}/model.pte" and e["files"] == [f"{c}/model.pte"]


def test_gate_passed_with_the_declared_floors(e8, e32):
    for bundle, image_floor in ((e32, 35.0), (e8, 38.0)):
        parity = _manifest(bundle)["parity"]
        assert parity["status"] == "passed" and set(parity["backend"].values()) == {"executorch"}
        assert parity["results"]["image"]["floor_db"] == image_floor
        assert all(r["psnr_db"] >= r["floor_db"] for r in parity["results"].values()), parity["results"]
    fp32 = _manifest(e32)["parity"]["results"]
    assert all(r["psnr_db"] > 80.0 for r in fp32.values())  # XNNPACK fp32: summation order only (measured 87.7-148 dB)


def test_images_against_the_torch_reference(e8, e32, reference_image):
    """The image through runtimes/executorch.py: fp32 >= 35 dB (measured ~114), int8 >= its floor and not
    bit-exact (a float model slipped into the int8 bundle would read ~114 dB too)."""
    got = {}
    for name, bundle in (("fp32", e32), ("int8", e8)):
        pipe = FlashPipeline.from_bundle(bundle, backend="executorch")
        assert set(pipe.info["backends"].values()) == {"executorch"}
        got[name] = psnr(reference_image, pipe.generate(PROMPT, seed=SEED), data_range=1.0)
    assert got["fp32"] >= 35.0
    assert _manifest(e8)["parity"]["results"]["image"]["floor_db"] <= got["int8"] < 80.0, got


def test_int8_transformer_pte_at_most_35_percent_of_fp32(e8, e32):
    size = {b: (b / "transformer/model.pte").stat().st_size for b in (e8, e32)}
    assert size[e8] <= 0.35 * size[e32], size


def test_generate_cli_writes_png_with_executorch(e8, tmp_path, generate_png_matches_the_api):
    generate_png_matches_the_api(e8, "executorch", tmp_path / "e8.png", PROMPT)


# ----------------------------------------------------------------------------- what an app reads
def test_delegation_is_reported_from_the_lowered_graph(e8):
    m = _manifest(e8)
    left = set()
    for c, e in m["components"].items():
        d = e["options"]["delegation"]
        assert d["delegated_subgraphs"] >= 1 and 0.5 < d["delegated_share"] <= 1.0, c
        assert d["delegated_ops"] + sum(d["undelegated_ops"].values()) == d["total_ops"]
        left |= set(d["undelegated_ops"])
    # what the probe saw XNNPACK leave to the portable kernels is still left (an upgrade that takes it shows here)
    assert {"aten.native_layer_norm_default", "aten.native_group_norm_default", "aten.embedding_default"} <= left
    assert m["executorch"]["kernels_needed"] == sorted(left)
    assert m["executorch"]["runtime_backend"] == "XnnpackBackend" and m["executorch"]["method"] == "forward"


def test_bmm_attention_leaves_no_copy_to_the_portable_kernels(e8):
    """The default attention rewrite: the transformer's unmasked SDPA has no expand_copy (nor the scale's
    mul.Scalar) left outside XNNPACK; CLIP's causal-masked attention keeps torch's decomposition and its copies."""
    comps = _manifest(e8)["components"]
    assert comps["transformer"]["options"]["attention"] == "bmm"
    left = comps["transformer"]["options"]["delegation"]["undelegated_ops"]
    assert "aten.expand_copy_default" not in left and "aten.mul_scalar" not in left
    assert comps["text_encoder"]["options"]["delegation"]["undelegated_ops"]["aten.expand_copy_default"] == 8


@pytest.mark.parametrize("scale", [None, 0.3])
def test_bmm_sdpa_equals_torch_sdpa(scale):
    from flash_edge.export.executorch_lowering import sdpa_decompositions

    sdpa = sdpa_decompositions("bmm")[torch.ops.aten.scaled_dot_product_attention.default]
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 4, n, 16, generator=g) for n in (24, 40, 40))
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=scale)
    torch.testing.assert_close(sdpa(q, k, v, scale=scale), want, rtol=0, atol=2e-6)
    mask = torch.rand(24, 40, generator=g) > 0.3  # a mask takes torch's own decomposition
    torch.testing.assert_close(sdpa(q, k, v, mask), torch.nn.functional.scaled_dot_product_attention(q, k, v, mask),
                               rtol=0, atol=2e-6)


def test_module_api_matches_the_program(e8):
    from executorch.runtime import Runtime

    m = _manifest(e8)
    for c, e in m["components"].items():
        api = e["options"]["module_api"]
        assert api["method"] == "forward" and api["program"] == e["path"] and api["data"] is None
        assert [t["name"] for t in api["inputs"]] == [t["name"] for t in e["inputs"]]
        assert [t["index"] for t in api["inputs"]] == list(range(len(e["inputs"])))
        meta = Runtime.get().load_program(e8 / e["path"]).metadata("forward")
        for i, t in enumerate(api["inputs"]):
            assert list(meta.input_tensor_meta(i).sizes()) == t["shape"] == e["inputs"][i]["shape"]
            assert t["executorch_dtype"] == {"float32": "Float", "int64": "Long"}[t["dtype"]]
        assert [t["shape"] for t in api["outputs"]] == [t["shape"] for t in e["outputs"]]
    ids = m["components"]["text_encoder"]["options"]["module_api"]["inputs"][0]
    assert ids["java"] == "Tensor.fromBlob(long[] data, long[] {1, 77})"


# ----------------------------------------------------------------------------- external weights
def test_external_weights_go_to_a_ptd_that_the_backend_loads(tiny_parts, tmp_path):
    from flash_edge.runtimes.executorch import ExecuTorchBackend

    wrappers, specs = tiny_parts
    name, spec = "text_encoder_2", specs["text_encoder_2"]
    _, inline = _export_one(name, wrappers[name], spec, tmp_path / "inline")
    _, external = _export_one(name, wrappers[name], spec, tmp_path / "external", external_weights="always")
    assert sorted(external.files) == [f"{name}/model.ptd", f"{name}/model.pte"] and inline.files == [f"{name}/model.pte"]
    assert external.options["data_file"] == f"{name}/model.ptd" and external.options["module_api"]["data"]
    pte, ptd = (tmp_path / "external" / name / f for f in ("model.pte", "model.ptd"))
    params = sum(p.numel() for p in wrappers[name].parameters()) * 4
    assert ptd.stat().st_size > 0.8 * params and pte.stat().st_size < 0.2 * params  # the weights moved
    feeds = spec.dummy_inputs(seed=1)
    backend = ExecuTorchBackend()
    a = backend.open(tmp_path / "inline", name, inline.entry("executorch", spec)).run(feeds)
    b = backend.open(tmp_path / "external", name, external.entry("executorch", spec)).run(feeds)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    ptd.unlink()
    with pytest.raises(BundleError, match=f"{name}/model.ptd is missing"):
        backend.open(tmp_path / "external", name, external.entry("executorch", spec))


# ----------------------------------------------------------------------------- 8da4w
def test_8da4w_transformer_int4_weights(tiny_parts, tmp_path):
    from flash_edge.runtimes.executorch import ExecuTorchBackend

    wrappers, specs = tiny_parts
    spec = specs["transformer"]
    exporter, art = _export_one("transformer", wrappers["transformer"], spec, tmp_path, "8da4w")
    assert art.precision == "8da4w" and "int4" in art.options["quantization"]
    feeds = spec.dummy_inputs(seed=0)
    with torch.no_grad():
        ref = wrappers["transformer"](*(torch.from_numpy(v) for v in feeds.values()))[0].numpy()
    got = ExecuTorchBackend().open(tmp_path, "transformer", art.entry("executorch", spec)).run(feeds)["velocity"]
    value = psnr(ref, got)
    assert exporter.parity_floor_db("transformer", "8da4w") <= value < 80.0, value


def test_8da4w_refuses_widths_off_the_group(tmp_path):
    from flash_edge.export.executorch_quantize import check_8da4w

    with pytest.raises(ExportError, match="divisible by 32.*has 48: use --precision int8"):
        check_8da4w(torch.nn.Sequential(torch.nn.Linear(48, 64)))


# ----------------------------------------------------------------------------- pinned library behaviour
def test_pinned_torchao_int8_weight_does_not_lower(tiny_parts):
    """torchao's Int8DynamicActivationInt8Weight lowers to ``aten._int_mm``, which is not Core ATen, so
    executorch 1.5.1 refuses it; the int8 recipe uses PT2E instead. If this starts passing, revisit
    ``executorch_quantize.RECIPES``."""
    from executorch.exir import to_edge_transform_and_lower
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig

    from flash_edge.export.executorch import make_partitioner
    from flash_edge.export.executorch_quantize import example_args, torchao_quantize

    wrappers, specs = tiny_parts
    module = torchao_quantize(wrappers["text_encoder"], Int8DynamicActivationInt8WeightConfig())
    args = example_args(specs["text_encoder"])
    with pytest.raises(Exception, match="_int_mm"):
        program = torch.export.export(module, args, strict=False)
        to_edge_transform_and_lower(program, partitioner=[make_partitioner("xnnpack")]).to_executorch()


def test_pinned_vae_dynamic_int8_fails_at_run_time(tiny_parts, tmp_path):
    """PT2E dynamic int8 on the VAE decoder lowers, then XNNPACK fails at run time (it cannot propagate the
    shapes of dynamically quantized convolutions): why the VAE stays fp32 in the int8 precision. If this
    starts passing, the VAE could go int8 (measure speed and quality first: ONNX's int8 VAE was slower)."""
    from flash_edge.runtimes.executorch import ExecuTorchBackend

    wrappers, specs = tiny_parts
    spec = specs["vae_decoder"]
    _, art = _export_one("vae_decoder", wrappers["vae_decoder"], spec, tmp_path, recipe="int8-dynamic")
    session = ExecuTorchBackend().open(tmp_path, "vae_decoder", art.entry("executorch", spec))
    with pytest.raises(BundleError, match=r"vae_decoder failed to run \(RuntimeError: .*(0x1|failed)"):
        session.run(spec.dummy_inputs(seed=0))  # the runtime's failure, as one line


# ----------------------------------------------------------------------------- bad input and the backend
def test_delegate_errors(tmp_path, capsys):
    from flash_edge.cli.export import main
    from flash_edge.export.executorch import ExecuTorchExporter

    with pytest.raises(BackendUnavailable, match="mps delegate needs macOS"):
        ExecuTorchExporter("fp32", delegate="mps")
    with pytest.raises(BackendUnavailable, match="qnn delegate needs the Qualcomm"):
        ExecuTorchExporter("fp32", delegate="qnn")
    assert main(["--quiet", "--target", "executorch", "--delegate", "mps", "--out", str(tmp_path / "a")]) == 2
    assert "use --delegate xnnpack here" in capsys.readouterr().err and not (tmp_path / "a").exists()
    assert main(["--quiet", "--target", "onnx", "--delegate", "xnnpack", "--out", str(tmp_path / "b")]) == 2
    assert "--delegate applies to --target executorch" in capsys.readouterr().err
    assert main(["--quiet", "--target", "executorch", "--precision", "fp16", "--out", str(tmp_path / "c")]) == 2
    assert "choose one of fp32, int8, 8da4w" in capsys.readouterr().err
    with pytest.raises(InvalidInput, match="unknown recipe"):
        ExecuTorchExporter("fp32", recipe="int3")


def test_backend_without_the_executorch_package(monkeypatch):
    import importlib.util

    from flash_edge.runtimes import choose_backend
    from flash_edge.runtimes.executorch import ExecuTorchBackend

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "executorch" else real(name, *a))
    assert "pip install 'flash-edge[executorch]'" in ExecuTorchBackend.unavailable_reason()
    with pytest.raises(BackendUnavailable, match="backend 'executorch' is not available here: needs the executorch"):
        choose_backend("executorch", "executorch")


def test_truncated_pte_is_one_line_error_naming_the_file(e32, truncated_artifact_is_refused):
    truncated_artifact_is_refused(e32, "executorch", "transformer/model.pte")


def test_threads_option_resizes_the_pool(e32):
    from flash_edge.runtimes.executorch import ExecuTorchBackend, set_threads

    bundle = Bundle.open(e32)
    feeds = bundle.spec.component_spec("transformer").dummy_inputs(seed=2)
    one = ExecuTorchBackend(threads=1).load(bundle, "transformer").run(feeds)["velocity"]
    from executorch.extension.pybindings import portable_lib

    assert portable_lib._threadpool_get_thread_count() == 1
    two = ExecuTorchBackend(threads=2).load(bundle, "transformer").run(feeds)["velocity"]
    assert set_threads(2) == 2 and psnr(one, two) > 90.0
