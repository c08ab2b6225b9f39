"""Prompt -> token ids for a bundle's text encoders, with the ``tokenizers`` library alone (no torch,
no transformers). Reproduces what diffusers' SD3 pipeline gets from transformers' tokenizers:
``padding="max_length", max_length=N, truncation=True`` with the special tokens added.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import BundleError, InvalidInput


class PromptTokenizer:
    def __init__(self, tokenizer, max_length: int, pad_id: int):
        """``tokenizer``: a ``tokenizers.Tokenizer`` (copied, then set to pad/truncate to ``max_length``)."""
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_str(tokenizer.to_str())
        self._tok.no_padding()
        self._tok.enable_truncation(max_length)
        self._tok.enable_padding(length=max_length, pad_id=pad_id)
        self.max_length = max_length

    @classmethod
    def from_file(cls, tokenizer_json: str | Path, max_length: int, pad_id: int) -> "PromptTokenizer":
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
            raise BundleError(f"cannot read tokenizer file {path}: {e}") from None
        return cls(tok, max_length, pad_id)

    def __call__(self, prompt: str) -> np.ndarray:
        """int64 ids of shape (1, max_length)."""
        if not isinstance(prompt, str):
            raise InvalidInput(f"prompt must be a string, got {type(prompt).__name__}")
        return np.asarray(self._tok.encode(prompt).ids, dtype=np.int64)[None, :]
