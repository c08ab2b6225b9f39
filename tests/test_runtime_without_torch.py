"""The runtime layer never imports torch: an app ships numpy, its backend's runtime and a tokenizer library.

``sys.modules["torch"] = None`` is how Python spells "not installed": ``import torch`` raises
ModuleNotFoundError and ``importlib.util.find_spec("torch")`` returns None, exactly as on a phone or a
torch-free laptop install.
"""

import subprocess
import sys
import textwrap

BLOCK_TORCH = "import sys\nfor _m in ('torch', 'diffusers', 'transformers'):\n    sys.modules[_m] = None\n"


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK_TORCH + textwrap.dedent(code)], capture_output=True, text=True)


def test_runtime_modules_import_without_torch():
    r = run_python("""
        import flash_edge, flash_edge.runtimes, flash_edge.pipeline, flash_edge.bundle, flash_edge.sampler
        import flash_edge.conditioning, flash_edge.tokenization, flash_edge.image, flash_edge.metrics
        from flash_edge import FlashPipeline
        from flash_edge.runtimes import REGISTRY, backend_class
        print("ok", sorted(REGISTRY))
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ok")


def test_importing_the_runtime_does_not_load_torch():
    r = subprocess.run([sys.executable, "-c", "import sys, flash_edge.pipeline, flash_edge.runtimes; "
                        "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_torch_bundle_without_torch_is_a_clear_error(torch_bundle):
    r = run_python(f"""
        from flash_edge import FlashPipeline
        from flash_edge.bundle import Bundle
        from flash_edge.errors import BackendUnavailable
        b = Bundle.open({str(torch_bundle)!r})  # reading and verifying a bundle needs no torch
        assert b.spec.sampler.steps == 4
        try:
            FlashPipeline.from_bundle({str(torch_bundle)!r}, backend="auto")
        except BackendUnavailable as e:
            print("unavailable:", e)
    """)
    assert r.returncode == 0, r.stderr
    assert "unavailable: no backend here can run torch artifacts (torch: needs torch, diffusers, transformers: " \
           "pip install 'flash-edge[torch]')" in r.stdout
