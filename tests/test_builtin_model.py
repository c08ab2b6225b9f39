"""The built-in ``tiny``: the trained 4-step student shipped in the package (flash_edge/models/tiny_model)."""

from __future__ import annotations

import numpy as np

from flash_edge.pipeline import FlashPipeline


def as_uint8(image: np.ndarray) -> np.ndarray:
    return (np.clip(image[0].transpose(1, 2, 0), 0, 1) * 255).round().astype(np.uint8)


def test_sdk_pipeline_draws_what_the_training_code_draws():
    """The SDK's numpy sampler + conditioning over the shipped folder and the training code's torch sampler over
    the same folder (flash_edge.distill.flow.generate) give the same pictures: the distillation table's
    numbers are the SDK's. Within one 8-bit level: only float summation order differs."""
    from flash_edge.distill.evaluate import eval_prompts
    from flash_edge.distill.flow import generate
    from flash_edge.distill.models import Family
    from flash_edge.models.tiny import SHIPPED

    family = Family.load(SHIPPED)
    prompts = eval_prompts(3)
    theirs = generate(family, family.transformer, prompts, [0, 1, 2], steps=4)
    pipe = FlashPipeline.from_model("tiny")
    assert pipe.spec.sampler.steps == 4 and pipe.spec.text.t5_tokens == 0
    for i, prompt in enumerate(prompts):
        mine = as_uint8(pipe.generate(prompt, seed=i))
        assert np.abs(mine.astype(int) - theirs[i].astype(int)).max() <= 1, prompt
