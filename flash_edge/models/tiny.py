"""The built-in default model ``tiny``: a trained 4-step SD3.5-Flash student at a size that runs in milliseconds.

``flash_edge/models/tiny_model/`` is a real diffusers folder (safetensors, fp16 weights loaded as fp32) shipped
inside the package: the SD3.5-Medium classes (MMDiT-X dual-attention layers, qk rms-norm, 16-channel VAE with
fitted scaling and shift, CLIP-L/CLIP-G-style encoders with projection, no T5) trained on CPU with the paper's
recipe on the procedural shapes dataset (``flash_edge.distill``). Its ``flash_edge.json`` says it was trained
without the T5 slot (77 text tokens). ``python -m flash_edge.distill ship`` writes the folder from a training run;
``tiny_model/TRAINING.md`` records the command and seed that made it.

``tiny_folder(t5=True)`` is the same folder plus a T5 encoder and tokenizer with random weights from a fixed seed
(the student never saw T5 states) and diffusers' 256 T5 slots: it exercises the T5 export path and diffusers
parity, not picture quality. It is built once into the cache (``FLASH_EDGE_HOME``), keyed by the shipped weights'
hash.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from .tokenizer_files import shipped_vocab_and_merges

SHIPPED = Path(__file__).resolve().parent / "tiny_model"
T5_SEED = 20250925
T5 = dict(d_kv=16, d_ff=256, num_layers=2, num_heads=4, relative_attention_num_buckets=8,
          feed_forward_proj="gated-gelu")  # d_model = the transformer's joint_attention_dim, as in SD3 (4096)


def cache_root() -> Path:
    return Path(os.environ.get("FLASH_EDGE_HOME") or Path.home() / ".cache" / "flash-edge")


def shipped_digest() -> str:
    """Short hash of the shipped weights: the cache key of folders derived from them."""
    h = hashlib.sha256()
    for f in sorted(SHIPPED.glob("*/*.safetensors")):
        h.update(f.relative_to(SHIPPED).as_posix().encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:12]


def _t5_tokenizer(directory: Path):
    """A T5-style tokenizer (``</s>`` appended, ``<pad>`` = 0) over the same tiny word list."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab, _ = shipped_vocab_and_merges()
    words = ["<pad>", "</s>", "<unk>"] + sorted({w.removesuffix("</w>") for w in vocab if w.isalpha()})
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
                                   model_max_length=512)
    fast.save_pretrained(str(directory))
    return fast


def _add_t5(directory: Path) -> None:
    """Random-weight T5 encoder (``text_encoder_3``) and its tokenizer (``tokenizer_3``), registered in
    ``model_index.json`` as diffusers writes them."""
    import json

    import torch
    from transformers import T5Config, T5EncoderModel

    index = json.loads((directory / "model_index.json").read_text())
    joint = json.loads((directory / "transformer" / "config.json").read_text())["joint_attention_dim"]
    tok = _t5_tokenizer(directory / "tokenizer_3")
    torch.manual_seed(T5_SEED)
    T5EncoderModel(T5Config(**T5, d_model=joint, vocab_size=len(tok), pad_token_id=0, eos_token_id=1,
                            decoder_start_token_id=0)).save_pretrained(str(directory / "text_encoder_3"))
    index.update(text_encoder_3=["transformers", "T5EncoderModel"],
                 tokenizer_3=["transformers", "PreTrainedTokenizerFast"])
    (directory / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def build_tiny(directory: str | Path, t5: bool = False) -> Path:
    """Write the built-in model as a diffusers folder at ``directory`` (with a T5 encoder if ``t5``)."""
    directory = Path(directory)
    shutil.copytree(SHIPPED, directory, ignore=shutil.ignore_patterns("TRAINING.md"), dirs_exist_ok=True)
    if t5:
        _add_t5(directory)
        (directory / "flash_edge.json").unlink()  # T5 states need their slots: diffusers' 256 by default
    return directory


def tiny_folder(t5: bool = False) -> Path:
    """The diffusers folder of the built-in model: the shipped one, or (``t5``) its cached T5 variant."""
    if not t5:
        return SHIPPED
    target = cache_root() / f"tiny-t5-{shipped_digest()}"
    if (target / "model_index.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        build_tiny(tmp, t5=True)
        try:
            os.replace(tmp, target)
        except OSError:  # another process won the race; its folder is identical
            if not (target / "model_index.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
