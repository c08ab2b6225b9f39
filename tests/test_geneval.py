"""mini-GenEval: validated on held-out real dataset images, and shown to reject mismatched pairs."""

from __future__ import annotations

import numpy as np
import pytest

from flash_edge.distill.dataset import ShapesDataset, make_sample
from flash_edge.errors import InvalidInput
from flash_edge.eval.geneval import CATEGORIES, detect, score


@pytest.fixture(scope="module")
def held_out():
    ds = ShapesDataset(300, seed=12345, size=64)  # training uses other seeds
    samples = [ds[i] for i in range(len(ds))]
    return [s.image for s in samples], [s.prompt for s in samples]


def test_accuracy_on_held_out_real_images(held_out):
    images, prompts = held_out
    s = score(images, prompts)
    assert s.overall >= 0.95, s.as_dict()
    assert set(s.per_category) == set(CATEGORIES)
    assert all(v >= 0.95 for v in s.per_category.values()), s.as_dict()


def test_accuracy_survives_blur_and_noise(held_out):
    """Generated pictures are soft and noisy: a VAE-like blur plus pixel noise must not break the scorer."""
    from scipy import ndimage

    images, prompts = held_out
    rng = np.random.default_rng(0)
    soft = [np.clip(ndimage.gaussian_filter(im.astype(np.float32), sigma=(0.8, 0.8, 0)) + rng.normal(0, 8, im.shape),
                    0, 255).astype(np.uint8) for im in images]
    assert score(soft, prompts).overall >= 0.95


def test_rejects_shuffled_prompts(held_out):
    images, prompts = held_out
    perm = np.random.default_rng(1).permutation(len(prompts))
    s = score(images, [prompts[j] for j in perm])
    assert s.overall < 0.1, s.as_dict()
    assert s.per_category["shape"] < 0.3 and s.per_category["position"] < 0.3


def test_rejects_a_blank_image_and_a_wrong_claim():
    blank = np.full((64, 64, 3), 250, np.uint8)
    assert score([blank], ["a red circle on the left"]).overall == 0.0
    s = make_sample(3, 0, 64, kind="single")  # one object: each altered claim must fail on its own category
    colour, shape, place = s.shapes[0].colour, s.shapes[0].shape, s.prompt.split(f"{s.shapes[0].shape} ")[1]
    other_colour = "blue" if colour != "blue" else "red"
    other_shape = "square" if shape != "square" else "circle"
    other_place = "on the right" if place != "on the right" else "on the left"
    assert score([s.image], [s.prompt]).overall == 1.0
    assert score([s.image], [f"a {other_colour} {shape} {place}"]).per_category["colour"] == 0.0
    assert score([s.image], [s.prompt.replace(shape, other_shape)]).per_category["shape"] == 0.0
    assert score([s.image], [s.prompt.replace(place, other_place)]).per_category["position"] == 0.0


def test_count_and_float_images():
    s = make_sample(5, 0, 64, kind="count")
    objs = detect(s.image)
    assert len(objs) == len(s.shapes) and {d.colour for d in objs} == {s.shapes[0].colour}
    chw = s.image.transpose(2, 0, 1)[None].astype(np.float32) / 255.0  # what the pipeline's decode returns
    assert score([chw], [s.prompt]).overall == 1.0
    n = len(s.shapes)
    wrong = s.prompt.replace({2: "two", 3: "three"}[n], {2: "three", 3: "two"}[n])
    assert score([s.image], [wrong]).per_category["count"] == 0.0


def test_bad_input_is_a_clear_error():
    with pytest.raises(InvalidInput, match="not in the shapes grammar"):
        score([np.zeros((64, 64, 3), np.uint8)], ["a photo of a cat"])
    with pytest.raises(InvalidInput, match="1 images but 2 prompts"):
        score([np.zeros((64, 64, 3), np.uint8)], ["a red circle on the left"] * 2)
    with pytest.raises(InvalidInput, match="RGB image"):
        score([np.zeros((64, 64), np.uint8)], ["a red circle on the left"])
