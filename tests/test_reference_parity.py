"""The reference pipeline (numpy sampler + conditioning over the torch components) must be diffusers'
StableDiffusion3Pipeline: same weights, sigmas and initial latents -> the same image within 1e-4."""

import numpy as np
import pytest
import torch

from flash_edge.pipeline import FlashPipeline
from flash_edge.sampler import gaussian_noise


def _diffusers_pipe(path, t5=False):
    from diffusers import StableDiffusion3Pipeline

    kw = {} if t5 else {"text_encoder_3": None, "tokenizer_3": None}
    return StableDiffusion3Pipeline.from_pretrained(str(path), torch_dtype=torch.float32, **kw)


@pytest.mark.parametrize("steps", [2, 4])
def test_image_equals_diffusers_pipeline(tiny_dir, steps):
    ours = FlashPipeline.from_model(tiny_dir, steps=steps)
    latents = gaussian_noise(7, ours.spec.latent.shape)
    prompt = "a red circle above a blue square"
    mine = ours.generate(prompt, seed=7)
    ref = _diffusers_pipe(tiny_dir)(prompt, num_inference_steps=steps, guidance_scale=1.0, output_type="np",
                                    latents=torch.from_numpy(latents), max_sequence_length=ours.spec.text.t5_tokens).images
    assert ref.shape == (1, 64, 64, 3)
    # 1e-4 on [0, 1] pixels: far below one 8-bit level (3.9e-3); only float summation order may differ.
    np.testing.assert_allclose(mine[0].transpose(1, 2, 0), ref[0], rtol=0, atol=1e-4)


def test_cfg_teacher_setting_equals_diffusers(tiny_dir):
    ours = FlashPipeline.from_model(tiny_dir, steps=3, guidance_scale=4.5)
    latents = gaussian_noise(1, ours.spec.latent.shape)
    mine = ours.generate("a green triangle", seed=1, negative_prompt="")
    ref = _diffusers_pipe(tiny_dir)("a green triangle", num_inference_steps=3, guidance_scale=4.5, output_type="np",
                                    latents=torch.from_numpy(latents), max_sequence_length=ours.spec.text.t5_tokens).images
    np.testing.assert_allclose(mine[0].transpose(1, 2, 0), ref[0], rtol=0, atol=1e-4)


def test_t5_encoder_path_equals_diffusers(tiny_t5_dir):
    ours = FlashPipeline.from_model(tiny_t5_dir, t5=True, steps=2)
    assert ours.spec.text.t5 == "encoder" and "text_encoder_3" in ours.sessions
    latents = gaussian_noise(2, ours.spec.latent.shape)
    mine = ours.generate("a blue square on the left", seed=2)
    ref = _diffusers_pipe(tiny_t5_dir, t5=True)("a blue square on the left", num_inference_steps=2,
                                                guidance_scale=1.0, output_type="np",
                                                latents=torch.from_numpy(latents), max_sequence_length=ours.spec.text.t5_tokens).images
    np.testing.assert_allclose(mine[0].transpose(1, 2, 0), ref[0], rtol=0, atol=1e-4)


def test_t5_zeros_equal_diffusers_without_t5(tiny_t5_dir):
    """--no-t5 on a folder that has T5: the same image as diffusers run with text_encoder_3=None."""
    ours = FlashPipeline.from_model(tiny_t5_dir, t5=False, steps=2)
    latents = gaussian_noise(4, ours.spec.latent.shape)
    mine = ours.generate("two red circles", seed=4)
    ref = _diffusers_pipe(tiny_t5_dir)("two red circles", num_inference_steps=2, guidance_scale=1.0,
                                       output_type="np", latents=torch.from_numpy(latents),
                                       max_sequence_length=ours.spec.text.t5_tokens).images
    np.testing.assert_allclose(mine[0].transpose(1, 2, 0), ref[0], rtol=0, atol=1e-4)


def test_tiny_runs_without_the_t5_slot_and_adding_zero_tokens_changes_the_image(tiny_dir):
    """tiny was trained with 77 text tokens (its flash_edge.json: t5_tokens 0), so that is its default; the 256
    zero T5 tokens diffusers adds by default are not free: attention over them moves the picture."""
    from flash_edge.metrics import psnr

    default = FlashPipeline.from_model(tiny_dir)
    assert default.spec.text.sequence_length == 77 and default.spec.text.t5_tokens == 0
    padded = FlashPipeline.from_model(tiny_dir, t5_tokens=256)
    assert padded.spec.text.sequence_length == 333
    value = psnr(default.generate("a red circle", seed=0), padded.generate("a red circle", seed=0), data_range=1.0)
    assert 5.0 < value < 200.0, value
