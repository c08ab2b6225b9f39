"""The manifest loader under seeded random mutation (``tests/manifest_fuzz.py``): whatever a hostile or
broken manifest says, only flash-edge's own one-line errors come out, or a finite picture of the right shape.

CI runs a few hundred cases per backend; ``FLASH_EDGE_FUZZ_CASES`` raises the count (thousands were run by hand
before release: see the README's "What a bundle can and cannot do")."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # the test helper beside this file (pytest runs importlib mode)
from manifest_fuzz import fuzz  # noqa: E402

CASES = int(os.environ.get("FLASH_EDGE_FUZZ_CASES", "200"))


@pytest.mark.slow
@pytest.mark.parametrize("backend,share", [("onnx", 1.0), ("torch", 0.5)])
def test_only_flash_edge_errors_come_out(request, tmp_path, backend, share):
    bundle = request.getfixturevalue("onnx_fp32_bundle" if backend == "onnx" else "torch_bundle")
    cases = max(1, int(CASES * share))
    result = fuzz(bundle, tmp_path / "work", cases, seed=12, backend=backend)
    assert result["foreign"] == [], result
    outcomes = result["outcomes"]
    assert sum(outcomes.values()) == cases
    # the fuzz reaches both sides: refusals, and mutations of what the SDK does not read that still run
    assert outcomes.get("flash_edge.BundleError", 0) > cases // 3 and outcomes.get("ran", 0) > 0, outcomes
