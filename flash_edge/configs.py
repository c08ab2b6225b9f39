"""Config files of untrusted model folders and torch bundles (``config.json``, ``tokenizer_config.json``), checked
before diffusers or transformers read them.

* A config that names code (``auto_map``, ``custom_pipeline``) is refused: flash-edge loads only the classes it
  names itself, so transformers never asks whether to run a folder's ``.py`` file.
* Every number that sizes an allocation has a range (layer and head counts, widths, the position-embedding
  table, vocabularies): a config saying ``num_hidden_layers: 1e6`` is refused by key, before a library tries
  to build a million layers. Any other integer above ``MAX_INT`` is refused too.
Torch-free: the runtime's torch backend and the model loader both call it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from .errors import FlashError

MAX_CONFIG_BYTES = 1 << 20
MAX_INT = 1 << 20  # any integer in a config (vocabularies are the largest: T5 32,128, CLIP 49,408)
CODE_KEYS = ("auto_map", "custom_pipeline")
LIMITS = {  # key -> highest value; SD3.5-Large / T5-XXL / CLIP-G sit well inside
    "num_layers": 256, "num_hidden_layers": 256, "num_decoder_layers": 256, "num_attention_heads": 256,
    "num_heads": 256, "num_key_value_heads": 256, "layers_per_block": 16,
    "attention_head_dim": 4096, "hidden_size": 65536, "d_model": 65536, "d_ff": 262144, "d_kv": 4096,
    "intermediate_size": 262144, "projection_dim": 65536, "joint_attention_dim": 65536,
    "caption_projection_dim": 65536, "pooled_projection_dim": 65536, "in_channels": 1024, "out_channels": 1024,
    "latent_channels": 1024, "norm_num_groups": 1024, "patch_size": 16, "sample_size": 4096,
    "pos_embed_max_size": 1024, "max_position_embeddings": 16384, "vocab_size": MAX_INT,
    "relative_attention_num_buckets": 4096, "relative_attention_max_distance": 65536,
}
MAX_LIST = 4096
POS_TABLE_BYTES = 4 << 30  # diffusers builds the pos_embed_max_size^2 x width sin-cos table in float64


def check_config(path: Path, error: type[FlashError]) -> dict:
    """Read ``path`` (a JSON config) and check it as above; a problem is ``error`` naming the file and key."""
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise error(f"{path} is larger than {MAX_CONFIG_BYTES >> 10} kB: not a model config")
        data = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise error(f"{path} is missing") from None
    except (OSError, ValueError, RecursionError) as e:
        raise error(f"{path} is not valid JSON ({type(e).__name__})") from None
    if not isinstance(data, dict):
        raise error(f"{path} does not hold a JSON object")
    problem = config_problem(data)
    if problem:
        raise error(f"{path}: {problem}")
    return data


def config_problem(data: dict, prefix: str = "") -> str | None:
    """The first reason ``data`` (a parsed config) is refused, or None."""
    for key, value in data.items():
        name = f"{prefix}{key}"
        if key in CODE_KEYS and value:
            return (f"{name} names custom code, which flash-edge never runs; load the model with its standard "
                    f"diffusers/transformers classes")
        if isinstance(value, dict):
            problem = config_problem(value, f"{name}.")
            if problem:
                return problem
        elif isinstance(value, list):
            if len(value) > MAX_LIST:
                return f"{name} holds {len(value)} items, more than {MAX_LIST}"
            for item in value:
                if _too_big(item, MAX_INT):
                    return f"{name} holds {item!r}, beyond {MAX_INT}"
        elif isinstance(value, float) and not math.isfinite(value):
            return f"{name} is {value}, not a finite number"
        elif _too_big(value, LIMITS.get(key, MAX_INT)):
            return f"{name} is {value!r}; flash-edge accepts at most {LIMITS.get(key, MAX_INT)} there"
    side, heads, dim = data.get("pos_embed_max_size"), data.get("num_attention_heads"), data.get("attention_head_dim")
    if all(isinstance(v, int) and not isinstance(v, bool) for v in (side, heads, dim)) and \
            side * side * heads * dim * 8 > POS_TABLE_BYTES:
        return (f"{prefix}pos_embed_max_size {side} with a width of {heads * dim} makes a "
                f"{side * side * heads * dim * 8 / 2**30:.1f} GiB position table; at most {POS_TABLE_BYTES >> 30} GiB")
    return None


def _too_big(value, limit: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and abs(value) > limit
