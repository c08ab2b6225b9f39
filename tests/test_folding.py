"""Zero-slot folding (``flash_edge.folding``): T5's zero slots run as one token weighted by their count. It must
give the unfolded transformer's result up to rounding, in torch and in every exported bundle (whose parity gate
compares it with diffusers' unfolded processors), keep the bundle's inputs as they were, and fold nothing it
cannot fold exactly."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from flash_edge.conditioning import TextLayout
from flash_edge.folding import FoldedJointAttention, ZeroSlots, folded, joint_attentions, zero_slots
from flash_edge.metrics import psnr
from flash_edge.pipeline import FlashPipeline

sys.path.insert(0, str(Path(__file__).parent))
from helpers import cli_export  # noqa: E402

SLOTS = 256  # diffusers' T5 slots, what a real SD3.5 checkpoint without T5 runs with
IMAGE_TOKENS = 16  # an 8x8 latent in 2x2 patches


def _inputs(wrapper, slots: int = SLOTS, seed: int = 0):
    cfg = wrapper.model.config
    g = torch.Generator().manual_seed(seed)
    clip = torch.randn(1, 77, cfg.joint_attention_dim, generator=g)
    return (torch.randn(1, cfg.in_channels, 8, 8, generator=g), torch.tensor([700.0]),
            torch.cat([clip, torch.zeros(1, slots, cfg.joint_attention_dim)], dim=1),
            torch.randn(1, cfg.pooled_projection_dim, generator=g))


def test_folded_transformer_equals_the_unfolded_one(tiny_parts):
    """In exact arithmetic the two are equal; in fp32 they differ by rounding only (measured 6e-6 of outputs
    up to 7: a few ulps per block, summed in another order). 1e-5 of the output's scale allows that and no more:
    dropping the slots without the bias (the check below) is off by far more."""
    wrapper = tiny_parts[0]["transformer"]
    args = _inputs(wrapper)
    with torch.no_grad():
        want = wrapper(*args)[0]
        with folded(wrapper, ZeroSlots(keep=78, repeat=SLOTS), IMAGE_TOKENS):
            got = wrapper(*args)[0]
        again = wrapper(*args)[0]
    scale = want.abs().max().item()
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5 * scale)
    assert torch.equal(again, want)  # the model is as it was after the block
    dropped = wrapper(args[0], args[1], args[2][:, :78], args[3])[0]  # one slot, unweighted: not the same model
    assert (dropped - want).abs().max().item() > 1e-3 * scale


def test_folding_restores_the_processors_and_refuses_others(tiny_parts):
    from diffusers.models.attention_processor import AttnProcessor2_0, JointAttnProcessor2_0

    wrapper = tiny_parts[0]["transformer"]
    attentions = joint_attentions(wrapper.model)
    with folded(wrapper, ZeroSlots(keep=78, repeat=SLOTS), IMAGE_TOKENS):
        assert all(isinstance(a.processor, FoldedJointAttention) for a in attentions)
        assert wrapper.context_tokens == 78
        blocks = wrapper.model.transformer_blocks  # MMDiT-X's image-only attention is not folded
        assert all(type(b.attn2.processor) is not FoldedJointAttention for b in blocks if b.attn2 is not None)
    assert all(type(a.processor) is JointAttnProcessor2_0 for a in attentions) and wrapper.context_tokens is None
    before = attentions[0].processor
    attentions[0].set_processor(AttnProcessor2_0())
    try:
        with pytest.raises(TypeError, match="expects diffusers' JointAttnProcessor2_0, found"):
            with folded(wrapper, ZeroSlots(keep=78, repeat=SLOTS), IMAGE_TOKENS):
                pass
    finally:
        attentions[0].set_processor(before)


@pytest.mark.parametrize("t5,slots,want", [("zeros", 256, ZeroSlots(78, 256)), ("zeros", 2, ZeroSlots(78, 2)),
                                           ("zeros", 1, None), ("zeros", 0, None), ("encoder", 256, None)])
def test_only_equal_zero_slots_fold(t5, slots, want):
    layout = TextLayout(clip_tokens=77, t5_tokens=slots, joint_attention_dim=64, clip_hidden_dims=(32, 32),
                        pooled_dims=(32, 32), t5=t5)
    assert zero_slots(layout) == want


def test_bmm_attention_takes_the_key_bias():
    """The ExecuTorch ``bmm`` form adds a per-key bias to the scores (what folding lowers to) and equals torch's
    SDPA with that additive mask; masks of other shapes still take torch's own decomposition."""
    from flash_edge.export.executorch_lowering import sdpa_decompositions

    sdpa = sdpa_decompositions("bmm")[torch.ops.aten.scaled_dot_product_attention.default]
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 4, n, 16, generator=g) for n in (24, 40, 40))
    bias = FoldedJointAttention(SLOTS, keys=40).bias
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    torch.testing.assert_close(sdpa(q, k, v, bias), want, rtol=0, atol=2e-6)
    full = torch.randn(1, 4, 24, 40, generator=g)
    torch.testing.assert_close(sdpa(q, k, v, full), torch.nn.functional.scaled_dot_product_attention(q, k, v, full),
                               rtol=0, atol=2e-6)


def _manifest(bundle: Path) -> dict:
    return json.loads((bundle / "manifest.json").read_text())


@pytest.fixture(scope="module")
def onnx_pair(tmp_path_factory, tiny_dir):
    """tiny with diffusers' 256 zero slots as ONNX fp32 (exact: no int8 rounding between the two), in 2 chunks,
    folded (the default) and not."""
    root = tmp_path_factory.mktemp("fold")
    for name, extra in (("folded", ()), ("unfolded", ("--no-fold",))):
        assert cli_export("--target", "onnx", "--precision", "fp32", "--model", tiny_dir, "--t5-tokens", SLOTS,
                          "--chunks", 2, "--out", root / name, *extra) == 0
    return root / "folded", root / "unfolded"


def test_folded_bundle_keeps_its_inputs_and_says_what_it_folded(onnx_pair):
    folded_bundle, unfolded = onnx_pair
    m, u = _manifest(folded_bundle), _manifest(unfolded)
    entry = m["components"]["transformer"]
    assert entry["inputs"] == u["components"]["transformer"]["inputs"]  # apps feed all 77 + 256 tokens as before
    assert [i["shape"] for i in entry["inputs"] if i["name"] == "encoder_hidden_states"][0][1] == 77 + SLOTS
    assert entry["options"]["folded_t5_slots"] == {"t5_slots": SLOTS, "kept": 1, "logit_bias": math.log(SLOTS)}
    assert "folded_t5_slots" not in u["components"]["transformer"]["options"]
    carried = {o["name"]: o["shape"] for c in entry["options"]["chunks"][:-1] for o in c["outputs"]}
    assert carried["context_0"][1] == 78
    assert {o["name"]: o["shape"] for o in u["components"]["transformer"]["options"]["chunks"][0]["outputs"]}[
        "context_0"][1] == 77 + SLOTS
    assert m["parity"]["status"] == "passed"  # against diffusers' unfolded processors


def test_inspect_says_the_slots_are_folded(onnx_pair):
    from flash_edge.inspection import describe, render

    folded_bundle, unfolded = onnx_pair
    assert describe(folded_bundle)["text"]["folded"] is True and describe(unfolded)["text"]["folded"] is False
    assert "T5 zeros (256 slots, folded into one in the transformer)" in render(describe(folded_bundle))
    assert "T5 zeros (256 slots)" in render(describe(unfolded))


def test_folded_bundle_draws_the_unfolded_image(onnx_pair):
    """Same seed and prompt: the two bundles' images differ by rounding only. 60 dB is the torch target's bar
    for "the same fp32 computation in another order"; the gate's own floor for ONNX fp32 is lower."""
    images = [FlashPipeline.from_bundle(b, backend="onnx")("a red circle", seed=0) for b in onnx_pair]
    assert psnr(np.asarray(images[0], np.float32) / 255, np.asarray(images[1], np.float32) / 255,
                data_range=1.0) >= 60.0


def test_torch_target_does_not_fold(torch_bundle):
    """The torch target saves diffusers' weights and runs diffusers' processors: nothing to fold there."""
    assert "folded_t5_slots" not in _manifest(torch_bundle)["components"]["transformer"]["options"]


@pytest.mark.slow
def test_executorch_folded_bundle_keeps_attention_delegated(tmp_path, tiny_dir):
    """The key bias is one more add inside XNNPACK's attention: nothing new is left to the portable kernels."""
    out = {}
    for name, extra in (("folded", ()), ("unfolded", ("--no-fold",))):
        assert cli_export("--target", "executorch", "--precision", "fp32", "--model", tiny_dir, "--t5-tokens",
                          SLOTS, "--out", tmp_path / name, *extra) == 0
        out[name] = _manifest(tmp_path / name)
    f, u = (out[k]["components"]["transformer"]["options"] for k in ("folded", "unfolded"))
    assert f["folded_t5_slots"]["t5_slots"] == SLOTS and out["folded"]["parity"]["status"] == "passed"
    assert f["delegation"]["undelegated_ops"] == u["delegation"]["undelegated_ops"]
    assert f["delegation"]["delegated_subgraphs"] == u["delegation"]["delegated_subgraphs"]
