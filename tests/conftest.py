"""Shared fixtures: the tiny model is built once per session into a temporary FLASH_EDGE_HOME, so tests
never depend on (or write to) the user's cache, and load it back through the real loader."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def flash_home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("flash-home")
    os.environ["FLASH_EDGE_HOME"] = str(home)
    return home


@pytest.fixture(scope="session")
def tiny_dir(flash_home) -> Path:
    from flash_edge.models.tiny import tiny_folder

    return tiny_folder()


@pytest.fixture(scope="session")
def tiny_t5_dir(flash_home) -> Path:
    from flash_edge.models.tiny import tiny_folder

    return tiny_folder(t5=True)


@pytest.fixture(scope="session")
def torch_bundle(tmp_path_factory, tiny_dir) -> Path:
    from flash_edge.export import export_bundle

    return export_bundle("tiny", "torch", tmp_path_factory.mktemp("bundles") / "torch")


@pytest.fixture(scope="session")
def tiny_parts(tiny_dir):
    """The built-in model's export wrappers and their component specs (the exporters' inputs)."""
    from flash_edge.components import build_wrappers
    from flash_edge.models import load_model
    from flash_edge.models.generation import generation_spec

    model = load_model("tiny")
    spec = generation_spec(model)
    return build_wrappers(model, spec.components), spec.component_specs()


@pytest.fixture
def generate_png_matches_the_api():
    """A check: ``flash-generate --bundle B --backend X`` writes the PNG the Python API draws, marked with X."""
    def check(bundle: Path, backend: str, out: Path, prompt: str = "a red circle") -> None:
        import numpy as np
        from PIL import Image

        from flash_edge.cli.generate import main
        from flash_edge.pipeline import FlashPipeline

        assert main(["--quiet", "--bundle", str(bundle), "--backend", backend, "--prompt", prompt, "--seed", "0",
                     "--out", str(out)]) == 0
        img = Image.open(out)
        assert img.size == (64, 64) and img.text["backend"] == backend
        expected = FlashPipeline.from_bundle(bundle, backend=backend)(prompt, seed=0)
        assert np.array_equal(np.asarray(img.convert("RGB")), np.asarray(expected))

    return check


@pytest.fixture
def truncated_artifact_is_refused(tmp_path):
    """A check: a copy of ``bundle`` whose ``rel`` file is cut in half is refused with a one-line
    ``BundleError`` naming the file, by the manifest's size check and, with hashes and sizes skipped, by the
    backend's own load failure mapped to one line. Returns the broken copy."""
    import shutil

    from flash_edge.bundle import Bundle
    from flash_edge.errors import BundleError
    from flash_edge.pipeline import FlashPipeline

    def check(bundle: Path, backend: str, rel: str) -> Path:
        broken = tmp_path / "truncated"
        shutil.copytree(bundle, broken)
        f = broken / rel
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
        with pytest.raises(BundleError) as e:
            FlashPipeline.from_bundle(broken, backend=backend, verify=False)  # the runtime's own failure, mapped
        assert rel in str(e.value) and "\n" not in str(e.value)
        with pytest.raises(BundleError, match=f"{rel} has .* bytes"):
            Bundle.open(broken)  # the manifest's size check comes first
        return broken

    return check


@pytest.fixture(scope="session")
def et_int8_bundle(tmp_path_factory, tiny_dir) -> Path:
    """``flash-export --target executorch`` (int8 is its default precision): shared by the ExecuTorch and the
    native-runner tests."""
    from flash_edge.cli.export import main

    out = tmp_path_factory.mktemp("executorch") / "E8"
    assert main(["--quiet", "--target", "executorch", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="session")
def et_fp32_bundle(tmp_path_factory, tiny_dir) -> Path:
    from flash_edge.cli.export import main

    out = tmp_path_factory.mktemp("executorch") / "E32"
    assert main(["--quiet", "--target", "executorch", "--precision", "fp32", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="session")
def onnx_fp32_bundle(tmp_path_factory, tiny_dir) -> Path:
    from flash_edge.export import export_bundle

    return export_bundle("tiny", "onnx", tmp_path_factory.mktemp("bundles") / "onnx-fp32", "fp32")


@pytest.fixture(scope="session")
def reference_image(tiny_dir):
    """The PyTorch reference's picture of "a red circle", seed 0 (the ONNX and ExecuTorch tests' PROMPT, SEED)."""
    from flash_edge.pipeline import FlashPipeline

    return FlashPipeline.from_model("tiny").generate("a red circle", seed=0)


# ----------------------------------------------------------------------------- distillation tests
@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models on a shared 2-core machine: one intra-op thread is several times faster than two."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def family():
    """A tiny teacher/student family at 32² (``distill.models.Family``), seeded."""
    from flash_edge.distill.models import Family, tiny_test_config

    return Family.build(tiny_test_config(32), seed=0)
