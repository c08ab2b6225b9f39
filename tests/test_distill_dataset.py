"""The procedural shapes dataset: deterministic, on-grammar, in the tokenizer's vocabulary."""

from __future__ import annotations

import numpy as np
import pytest

from flash_edge.distill.dataset import KINDS, ShapesDataset, make_sample, parse_prompt, prompt_for
from flash_edge.errors import InvalidInput


def test_deterministic_and_seed_dependent():
    a, b, c = make_sample(7, 3), make_sample(7, 3), make_sample(8, 3)
    assert a.prompt == b.prompt and np.array_equal(a.image, b.image)
    assert not np.array_equal(a.image, c.image)
    assert make_sample(7, 3, size=96).image.shape == (96, 96, 3)


def test_prompts_round_trip_through_the_grammar():
    ds = ShapesDataset(200, seed=0)
    kinds = set()
    for i in range(len(ds)):
        p = ds[i].prompt
        claims = parse_prompt(p)
        kinds.add(claims.kind)
        assert prompt_for(claims) == p
    assert kinds == set(KINDS)


def test_every_prompt_word_is_one_token_of_the_shipped_tokenizer():
    from flash_edge.models.tokenizer_files import shipped_vocab_and_merges

    vocab, _ = shipped_vocab_and_merges()
    words = {w for i in range(300) for w in make_sample(0, i).prompt.split()}
    assert words and all(f"{w}</w>" in vocab for w in words), sorted(w for w in words if f"{w}</w>" not in vocab)


def test_arrays_are_in_vae_range():
    x, prompts = ShapesDataset(4, seed=0, size=32).arrays()
    assert x.shape == (4, 3, 32, 32) and x.dtype == np.float32 and len(prompts) == 4
    assert -1.0 <= x.min() < -0.5 and 0.5 < x.max() <= 1.0


def test_bad_size_and_prompt():
    with pytest.raises(InvalidInput, match="image size"):
        make_sample(0, 0, size=8)
    with pytest.raises(InvalidInput, match="not in the shapes grammar"):
        parse_prompt("a red cat on the left")
