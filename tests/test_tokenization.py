"""The runtime tokenizer (``tokenizers`` alone) gives the ids diffusers gets from transformers."""

import numpy as np
import pytest

from flash_edge.tokenization import PromptTokenizer

PROMPTS = ["a red circle", "A  RED\tcircle on the LEFT!!", "two blue squares, above a yellow triangle.",
           "zebra café naïve 🎨 3d", "x " * 120, "it's a cat's toy", ""]


@pytest.mark.parametrize("sub", ["tokenizer", "tokenizer_2"])
def test_ids_equal_transformers(tiny_dir, sub):
    from transformers import CLIPTokenizer

    ref = CLIPTokenizer.from_pretrained(str(tiny_dir / sub))
    ours = PromptTokenizer.from_file(tiny_dir / sub / "tokenizer.json", 77, ref.pad_token_id)
    for p in PROMPTS:
        expected = ref(p, padding="max_length", max_length=77, truncation=True).input_ids
        np.testing.assert_array_equal(ours(p)[0], expected, err_msg=p)
        assert ours(p).shape == (1, 77) and ours(p).dtype == np.int64


def test_t5_ids_equal_transformers(tiny_t5_dir):
    from transformers import AutoTokenizer

    ref = AutoTokenizer.from_pretrained(str(tiny_t5_dir / "tokenizer_3"))
    ours = PromptTokenizer.from_file(tiny_t5_dir / "tokenizer_3" / "tokenizer.json", 256, ref.pad_token_id)
    for p in PROMPTS:
        expected = ref(p, padding="max_length", max_length=256, truncation=True, add_special_tokens=True).input_ids
        np.testing.assert_array_equal(ours(p)[0], expected, err_msg=p)


def test_shipped_vocabulary_is_clip_format():
    from flash_edge.models.tokenizer_files import BOS, EOS, shipped_vocab_and_merges

    vocab, merges = shipped_vocab_and_merges()
    assert BOS in vocab and EOS in vocab and "red</w>" in vocab and "circle</w>" in vocab
    assert all(len(m) == 2 for m in merges) and len(set(vocab.values())) == len(vocab)
