"""Prompt -> token ids for a bundle's text encoders, with the ``tokenizers`` library alone (no torch,
no transformers). Reproduces what diffusers' SD3 pipeline gets from transformers' tokenizers:
``padding="max_length", max_length=N, truncation=True`` with the special tokens added.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .contract import special_tokens
from .errors import BundleError, InvalidInput, first_line


def check_prompt(prompt, allow_empty: bool = False) -> str:
    """A prompt is a non-empty string (``allow_empty``: the negative prompt may be blank) that is valid
    Unicode: a stray byte from a non-UTF-8 terminal arrives as a lone surrogate and is refused here, not deep
    inside the tokenizer."""
    if not isinstance(prompt, str):
        raise InvalidInput(f"prompt must be a string, got {type(prompt).__name__}")
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InvalidInput(f"prompt is not valid UTF-8 text (undecodable byte at character {e.start}): "
                           f"re-type it or set the terminal to UTF-8") from None
    if not allow_empty and not prompt.strip():
        raise InvalidInput("prompt is empty: describe the image to generate")
    return prompt


class PromptTokenizer:
    def __init__(self, tokenizer, max_length: int, pad_id: int, vocab_size: int | None = None,
                 specials: tuple[tuple[int, ...], tuple[int, ...]] | None = None):
        """``tokenizer``: a ``tokenizers.Tokenizer`` (copied, then set to pad/truncate to ``max_length``);
        ``vocab_size``: the text encoder's embedding rows; an id at or past it is a ``BundleError``;
        ``specials``: the manifest's (special_prefix, special_suffix), which the tokenizer must add (the app
        contract states them so that apps need not read tokenizer.json's post-processor); a tokenizer that adds
        others is a ``BundleError``."""
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_str(tokenizer.to_str())
        self._tok.no_padding()
        self._tok.no_truncation()
        if specials is not None:
            found = special_tokens(lambda text: self._tok.encode(text).ids)
            if found != (tuple(specials[0]), tuple(specials[1])):
                raise BundleError(f"tokenizer.json adds the special ids {list(found[0])} before and "
                                  f"{list(found[1])} after a prompt, the manifest says {list(specials[0])} and "
                                  f"{list(specials[1])}: the tokenizer does not belong to this bundle")
        self._tok.enable_truncation(max_length)
        self._tok.enable_padding(length=max_length, pad_id=pad_id)
        self.max_length, self.vocab_size = max_length, vocab_size

    @classmethod
    def from_file(cls, tokenizer_json: str | Path, max_length: int, pad_id: int, vocab_size: int | None = None,
                  specials: tuple[tuple[int, ...], tuple[int, ...]] | None = None) -> "PromptTokenizer":
        try:
            from tokenizers import Tokenizer
        except ImportError as e:  # a core dependency; only a broken install lands here
            raise BundleError("the 'tokenizers' package is missing: pip install tokenizers") from e
        path = Path(tokenizer_json)
        if not path.is_file():
            raise BundleError(f"tokenizer file {path} is missing")
        try:
            tok = Tokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises a bare Exception on malformed JSON
            raise BundleError(f"cannot read tokenizer file {path}: {first_line(e)}") from None
        return cls(tok, max_length, pad_id, vocab_size, specials)

    def __call__(self, prompt: str) -> np.ndarray:
        """int64 ids of shape (1, max_length). A blank prompt is allowed (the negative prompt)."""
        check_prompt(prompt, allow_empty=True)
        ids = np.asarray(self._tok.encode(prompt).ids, dtype=np.int64)[None, :]
        if ids.shape[1] != self.max_length:
            raise BundleError(f"the tokenizer gave {ids.shape[1]} ids, not the manifest's max_length {self.max_length}")
        if self.vocab_size is not None and ids.size and int(ids.max()) >= self.vocab_size:
            raise BundleError(f"the tokenizer gave id {int(ids.max())}, past the manifest's vocab_size "
                              f"{self.vocab_size}: tokenizer.json does not belong to this text encoder")
        return ids
