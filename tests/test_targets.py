"""The rule that a new target is two files (an exporter and a runtime backend) and one line in each registry,
held for every target in ``export.REGISTRY``: the built-in model exported to it opens, its manifest's component
I/O is the spec's, its parity gate is recorded, and where its runtime runs, ``flash-generate`` writes the PNG
the Python API draws."""

from __future__ import annotations

import json

import pytest

from flash_edge.bundle import Bundle
from flash_edge.export import REGISTRY
from flash_edge.manifest import TARGETS
from flash_edge.models import load_model
from flash_edge.models.generation import generation_spec
from flash_edge.runtimes import REGISTRY as BACKENDS, backend_class

pytestmark = pytest.mark.slow  # exports of every target (the session's shared bundles where they exist)

# target -> the session fixture holding its bundle (conftest.py), or None: exported here (Core ML fp16)
BUNDLES = {"torch": "torch_bundle", "onnx": "onnx_fp32_bundle", "executorch": "et_int8_bundle", "coreml": None}


def test_every_target_is_registered_on_both_sides():
    assert set(REGISTRY) == set(BUNDLES), "a new target: add its bundle to BUNDLES here"
    assert set(REGISTRY) == set(TARGETS)  # the manifest validator accepts exactly the targets that export
    for target in REGISTRY:  # and each has a runtime backend that reads its artifacts
        assert any(target in backend_class(b).formats for b in BACKENDS), target


@pytest.mark.parametrize("target", sorted(BUNDLES))
def test_a_target_keeps_the_bundle_contract(target, request, tmp_path_factory, tmp_path,
                                            generate_png_matches_the_api):
    if BUNDLES[target]:
        bundle = request.getfixturevalue(BUNDLES[target])
    else:
        from flash_edge.export import export_bundle

        bundle = export_bundle("tiny", target, tmp_path_factory.mktemp(target) / "b", "fp16")
    opened = Bundle.open(bundle)
    specs = generation_spec(load_model("tiny")).component_specs()
    assert set(opened.components) == set(specs)
    for name, entry in opened.components.items():
        assert entry.target == target
        # names, shapes and dtypes: the component contract
        assert entry.spec(name).io_dict() == specs[name].io_dict(), name
    parity = json.loads((bundle / "manifest.json").read_text())["parity"]
    backend = backend_class(target) if target in BACKENDS else None
    runnable = backend is not None and backend.unavailable_reason() is None
    if runnable:
        assert parity["status"] == "passed" and parity["results"]["image"]["passed"]
        generate_png_matches_the_api(bundle, target, tmp_path / "cli.png")
    else:  # Core ML off macOS: the gate ran the exporter's stand-in (PyTorch holding the written weights) and says so
        assert parity["status"] == "passed" and parity["results"]["image"]["passed"]
        assert all(b != target for b in parity["backend"].values()), parity["backend"]
