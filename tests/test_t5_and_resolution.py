"""T5 handling (``--no-t5`` bundles feed zeros of T5's shape exactly as diffusers does; ``--t5`` bundles carry
T5) and resolution (bundles at several square and non-square sizes from one model; sizes beyond
``pos_embed_max_size`` refused), on the tiny model, plus the size rules on the real SD3.5 configurations."""

from __future__ import annotations

import contextlib
import io
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from flash_edge import contract
from flash_edge.errors import InvalidInput
from flash_edge.metrics import psnr
from flash_edge.pipeline import FlashPipeline
from flash_edge.sampler import gaussian_noise

pytestmark = pytest.mark.slow  # exports at several sizes and diffusers runs: left out of the quick subset (pytest -m 'not slow')

PROMPT = "two red circles above a blue square"


def run_cli(main, *argv) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as e:
            code = e.code
    return code, err.getvalue()


def diffusers_image(path, t5: bool, seed: int, steps: int = 2, height: int = 64, width: int = 64,
                    t5_tokens: int = 256) -> np.ndarray:
    """diffusers' StableDiffusion3Pipeline with the bundle's initial latents: (1, 3, H, W) in [0, 1]."""
    from diffusers import StableDiffusion3Pipeline

    kw = {} if t5 else {"text_encoder_3": None, "tokenizer_3": None}  # diffusers then feeds T5-shaped zeros
    pipe = StableDiffusion3Pipeline.from_pretrained(str(path), torch_dtype=torch.float32, **kw)
    latents = torch.from_numpy(gaussian_noise(seed, (1, 16, height // 8, width // 8)))
    out = pipe(PROMPT, num_inference_steps=steps, guidance_scale=1.0, output_type="np", latents=latents,
               height=height, width=width, max_sequence_length=t5_tokens).images
    return out.transpose(0, 3, 1, 2)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, tiny_t5_dir):
    """The tiny-with-T5 folder exported twice through the CLI: --no-t5 and --t5."""
    from flash_edge.cli import export as export_cli

    root = tmp_path_factory.mktemp("t5-bundles")
    out = {}
    for flag in ("--no-t5", "--t5"):
        out[flag] = root / flag.strip("-")
        code, err = run_cli(export_cli.main, "--target", "torch", "--model", tiny_t5_dir, "--out", out[flag],
                            "--steps", 2, flag, "--quiet")
        assert code == 0, err
    return out


def test_no_t5_bundle_equals_diffusers_with_t5_zeroed(bundles, tiny_t5_dir):
    manifest = json.loads((bundles["--no-t5"] / "manifest.json").read_text())
    text = manifest["generation"]["text"]
    assert text["t5"] == "zeros" and text["sequence_length"] == 77 + 256
    assert "text_encoder_3" not in manifest["components"] and "tokenizer_3" not in manifest["generation"]["tokenizers"]
    assert not (bundles["--no-t5"] / "text_encoder_3").exists() and not (bundles["--no-t5"] / "tokenizer_3").exists()
    mine = FlashPipeline.from_bundle(bundles["--no-t5"]).generate(PROMPT, seed=5)
    zeroed = diffusers_image(tiny_t5_dir, t5=False, seed=5)
    # 1e-4 on [0, 1] pixels: far below one 8-bit level; only float summation order may differ.
    np.testing.assert_allclose(mine, zeroed, rtol=0, atol=1e-4)
    # ...and T5 matters in this fixture: with it the image is measurably another one.
    assert psnr(diffusers_image(tiny_t5_dir, t5=True, seed=5), mine, data_range=1.0) < 40.0


def test_t5_bundle_carries_t5_and_equals_diffusers_with_t5(bundles, tiny_t5_dir):
    b = bundles["--t5"]
    manifest = json.loads((b / "manifest.json").read_text())
    assert manifest["generation"]["text"]["t5"] == "encoder"
    entry = manifest["components"]["text_encoder_3"]
    assert entry["options"]["class"] == "transformers.T5EncoderModel"
    assert entry["inputs"] == [{"name": "input_ids", "shape": [1, 256], "dtype": "int64"}]
    assert entry["outputs"][0]["shape"] == [1, 256, 128]  # [1, t5 tokens, joint_attention_dim]
    assert any(f.startswith("text_encoder_3/") and f.endswith(".safetensors") for f in manifest["files"])
    assert (b / "tokenizer_3" / "tokenizer.json").is_file()
    assert manifest["model"]["parameters"]["text_encoder_3"] > 0
    mine = FlashPipeline.from_bundle(b).generate(PROMPT, seed=5)
    np.testing.assert_allclose(mine, diffusers_image(tiny_t5_dir, t5=True, seed=5), rtol=0, atol=1e-4)


# ----------------------------------------------------------------------------- resolution
@pytest.fixture(scope="module")
def sized_bundles(tmp_path_factory, tiny_dir):
    """One model, bundles at several sizes (tiny: pos_embed_max_size 16 patches = 256 px per side)."""
    from flash_edge.export import export_bundle

    root = tmp_path_factory.mktemp("sizes")
    sizes = [(128, 128), (256, 256), (96, 160)]  # 256 is the limit; the real sizes are checked below, on meta
    return {hw: export_bundle("tiny", "torch", root / f"{hw[0]}x{hw[1]}", height=hw[0], width=hw[1], steps=1)
            for hw in sizes}


def test_bundles_at_several_sizes_from_one_model(sized_bundles):
    for (h, w), path in sized_bundles.items():
        manifest = json.loads((path / "manifest.json").read_text())
        assert manifest["generation"]["image"] == {"height": h, "width": w, "uint8": contract.UINT8}
        comps = manifest["components"]
        assert comps["transformer"]["inputs"][0]["shape"] == [1, 16, h // 8, w // 8]
        assert comps["vae_decoder"]["outputs"][0]["shape"] == [1, 3, h, w]
        assert manifest["parity"]["status"] == "passed"
        assert FlashPipeline.from_bundle(path).generate("a red circle", seed=0).shape == (1, 3, h, w)


def test_non_square_bundle_equals_diffusers_at_that_size(sized_bundles, tiny_dir):
    """Height and width the right way round: 96 rows x 160 columns, as diffusers draws it."""
    mine = FlashPipeline.from_bundle(sized_bundles[(96, 160)]).generate(PROMPT, seed=2)
    ref = diffusers_image(tiny_dir, t5=False, seed=2, steps=1, height=96, width=160, t5_tokens=0)
    assert mine.shape == ref.shape == (1, 3, 96, 160)
    np.testing.assert_allclose(mine, ref, rtol=0, atol=1e-4)


def test_sizes_beyond_pos_embed_max_size_or_off_the_grid_are_refused(tmp_path):
    from flash_edge.cli import export as export_cli

    for h, w, pattern in ((272, 256, r"height 272 exceeds .* \(16 patches = 256 px\)"),
                          (256, 512, r"width 512 exceeds .* \(16 patches = 256 px\)"),
                          (200, 128, r"height must be a positive multiple of 16 .* got 200")):
        code, err = run_cli(export_cli.main, "--target", "torch", "--out", tmp_path / f"{h}x{w}", "--height", h,
                            "--width", w)
        assert code == 2 and "Traceback" not in err, err
        assert re.search(pattern, err), err
        assert not (tmp_path / f"{h}x{w}").exists()  # nothing half-written


# ----------------------------------------------------------------------------- real configurations, meta device
def real_architecture(arch: str, tiny_dir):
    """An SD3Model of the real SD3.5 configuration on the meta device (no memory), tiny's tokenizers."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: benchmarks/ holds the configs
    from benchmarks.configs import CLIP_G, CLIP_L, TRANSFORMERS, VAE
    from diffusers import AutoencoderKL, SD3Transformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from flash_edge.models.loading import SD3Model

    with torch.device("meta"):  # parameters and buffers (the 906 MB pos_embed of SD3.5-Medium) take no memory
        parts = dict(transformer=SD3Transformer2DModel(**TRANSFORMERS[arch]), vae=AutoencoderKL(**VAE),
                     text_encoder=CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_L)),
                     text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_G)))
    return SD3Model(name=arch, path=tiny_dir, text_encoder_3=None, scheduler_config={"shift": 3.0},
                    tokenizer_dirs={"text_encoder": tiny_dir / "tokenizer", "text_encoder_2": tiny_dir / "tokenizer_2"},
                    **parts)


@pytest.mark.parametrize("arch,limit", [("sd35-medium", 384 * 16), ("sd35-large", 192 * 16)])
def test_real_architectures_sizes_and_limits(arch, limit, tiny_dir):
    from flash_edge.models.generation import generation_spec

    model = real_architecture(arch, tiny_dir)
    assert generation_spec(model).height == 1024  # native: sample_size 128 x VAE factor 8
    for h, w in ((512, 512), (768, 768), (1024, 1024), (1216, 832), (832, 1216), (limit, 512)):
        spec = generation_spec(model, h, w)
        t = spec.component_spec("transformer")
        assert t.inputs[0].shape == (1, 16, h // 8, w // 8)
        assert t.inputs[2].shape == (1, 333, 4096) and t.inputs[3].shape == (1, 2048)
        assert spec.component_spec("vae_decoder").outputs[0].shape == (1, 3, h, w)
    with pytest.raises(InvalidInput, match=rf"height {limit + 16} exceeds .*= {limit} px"):
        generation_spec(model, limit + 16, 512)
    with pytest.raises(InvalidInput, match="multiple of 16"):
        generation_spec(model, 1000, 1000)
