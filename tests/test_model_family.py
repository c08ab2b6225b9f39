"""The SD3 family's transformer variants load and match diffusers' pipeline: SD3-Medium (plain MMDiT, no
qk-norm), SD3.5-Large style (qk rms-norm, no dual attention) and SD3.5-Medium (MMDiT-X: both), as tiny
folders in the real on-disk format."""

import json
import shutil

import numpy as np
import pytest
import torch

from flash_edge.pipeline import FlashPipeline
from flash_edge.sampler import gaussian_noise

VARIANTS = {
    "sd3-medium": dict(dual_attention_layers=(), qk_norm=None),
    "sd3.5-large": dict(dual_attention_layers=(), qk_norm="rms_norm"),
    "sd3.5-medium": dict(dual_attention_layers=(0, 1, 2), qk_norm="rms_norm"),
}


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def variant_dir(request, tiny_dir, tmp_path_factory):
    from diffusers import SD3Transformer2DModel

    folder = tmp_path_factory.mktemp(request.param) / "model"
    shutil.copytree(tiny_dir, folder)
    cfg = {k: v for k, v in json.loads((folder / "transformer" / "config.json").read_text()).items()
           if not k.startswith("_")}
    cfg.update(VARIANTS[request.param])
    torch.manual_seed(1)
    shutil.rmtree(folder / "transformer")
    SD3Transformer2DModel(**cfg).save_pretrained(str(folder / "transformer"), safe_serialization=True)
    return request.param, folder


def test_variant_loads_and_equals_diffusers(variant_dir):
    from diffusers import StableDiffusion3Pipeline

    name, folder = variant_dir
    ours = FlashPipeline.from_model(folder, steps=2)
    tcfg = ours.sessions["transformer"].module.model.config
    assert tuple(tcfg.dual_attention_layers) == VARIANTS[name]["dual_attention_layers"]
    assert tcfg.qk_norm == VARIANTS[name]["qk_norm"]
    latents = gaussian_noise(11, ours.spec.latent.shape)
    mine = ours.generate("a purple hexagon", seed=11)
    ref = StableDiffusion3Pipeline.from_pretrained(str(folder), text_encoder_3=None, tokenizer_3=None,
                                                   torch_dtype=torch.float32)(
        "a purple hexagon", num_inference_steps=2, guidance_scale=1.0, output_type="np",
        latents=torch.from_numpy(latents), max_sequence_length=ours.spec.text.t5_tokens).images
    np.testing.assert_allclose(mine[0].transpose(1, 2, 0), ref[0], rtol=0, atol=1e-4)
