"""Quantization recipes of the ``executorch`` target, and which one each component gets.

Two libraries do the work (nothing here re-implements a quantizer):
- PT2E with executorch's ``XNNPACKQuantizer``: int8 per-channel weights with dynamic int8 activations
  (``int8-dynamic``) or static activations calibrated on the spec's dummy inputs (``int8-static``);
- torchao ``Int8DynamicActivationIntxWeightConfig``: 4-bit grouped weights, dynamic int8 activations (``8da4w``).

What lowers and runs with executorch 1.5.1 / torchao 0.18 (pinned in tests/test_executorch.py):
- torchao ``Int8DynamicActivationInt8WeightConfig`` does not lower (``aten._int_mm`` is not Core ATen);
- ``int8-dynamic`` on the VAE decoder lowers but fails at run time (XNNPACK cannot propagate the shapes of
  its dynamically quantized convolutions: ``execute() failed 0x1``), so the VAE decoder stays fp32 in the
  default ``int8`` precision; ``int8-static`` runs (34.7 dB on tiny) but is not the default.
"""

from __future__ import annotations

import copy

from ..errors import ExportError
from ..spec import STAYS_FLOAT

# precision -> {component kind -> recipe}; None = fp32. "other" covers text encoders and anything unnamed.
RECIPES = {
    "fp32": {"transformer": None, "vae_decoder": None, "other": None},
    "int8": {"transformer": "int8-dynamic", "vae_decoder": None, "other": "int8-dynamic"},
    "8da4w": {"transformer": "8da4w", "vae_decoder": None, "other": "int8-dynamic"},
}
RECIPE_PRECISION = {None: "fp32", "int8-dynamic": "int8", "int8-static": "int8", "8da4w": "8da4w"}
RECIPE_DESCRIPTION = {
    "int8-dynamic": "PT2E XNNPACKQuantizer: int8 symmetric per-channel weights, dynamic int8 per-token activations",
    "int8-static": "PT2E XNNPACKQuantizer: int8 symmetric per-channel weights, static int8 activations "
                   "(calibrated on the component spec's dummy inputs)",
    "8da4w": "torchao Int8DynamicActivationIntxWeightConfig: int4 symmetric weights in groups of 32, dynamic "
             "int8 activations",
}
GROUP_SIZE = 32
CALIBRATION_SEEDS = 4


def component_kind(name: str) -> str:
    if name.startswith("transformer"):  # the transformer, and single blocks of it (benchmarks)
        return "transformer"
    return "vae_decoder" if name in STAYS_FLOAT else "other"


def recipe_for(name: str, precision: str, override: str | None = None) -> str | None:
    """The quantization recipe for component ``name`` at bundle ``precision`` (``override`` wins)."""
    if override is not None:
        return None if override == "fp32" else override
    return RECIPES[precision][component_kind(name)]


def example_args(spec, seed: int = 0):
    import torch

    feeds = spec.dummy_inputs(seed=seed)
    return tuple(torch.from_numpy(feeds[n]) for n in spec.input_names)


def pt2e_quantize(program, spec, static: bool):
    """An exported program -> a quantized ``GraphModule`` (PT2E prepare, calibrate, convert)."""
    import torch
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = XNNPACKQuantizer()
    quantizer.set_global(get_symmetric_quantization_config(is_per_channel=True, is_dynamic=not static))
    prepared = prepare_pt2e(program.module(), quantizer)
    with torch.no_grad():
        for seed in range(CALIBRATION_SEEDS if static else 1):  # dynamic: one pass only sets up the observers
            prepared(*example_args(spec, seed))
    return convert_pt2e(prepared)


def torchao_quantize(module, config):
    """A deep copy of ``module`` with torchao's ``quantize_`` applied to its linear layers."""
    from torchao.quantization import quantize_

    module = copy.deepcopy(module)
    quantize_(module, config)
    return module


def config_8da4w():
    import torch
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, PerGroup

    return Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4, weight_granularity=PerGroup(GROUP_SIZE))


def check_8da4w(module) -> None:
    """torchao's int4 groups need every quantized linear's input width to be a multiple of the group size."""
    import torch

    bad = [n for n, m in module.named_modules() if isinstance(m, torch.nn.Linear) and m.in_features % GROUP_SIZE]
    if bad:
        raise ExportError(f"8da4w needs linear input widths divisible by {GROUP_SIZE}; {bad[0]} has "
                          f"{dict(module.named_modules())[bad[0]].in_features}: use --precision int8")


def quantize(module, program, spec, recipe: str | None):
    """Apply ``recipe`` and return the module to export again (or ``None`` for fp32: keep ``program``)."""
    if recipe is None:
        return None
    if recipe in ("int8-dynamic", "int8-static"):
        return pt2e_quantize(program, spec, static=recipe == "int8-static")
    if recipe == "8da4w":
        check_8da4w(module)
        return torchao_quantize(module, config_8da4w())
    raise ExportError(f"unknown executorch quantization recipe {recipe!r}; known: {', '.join(RECIPE_DESCRIPTION)}")
