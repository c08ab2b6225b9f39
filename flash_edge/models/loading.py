"""Load an SD3-family diffusers folder (SD3-Medium, SD3.5-Medium/Large, their few-step students).

The folder is checked before anything heavy happens, so a bad one fails with a message naming the
missing or broken part: no model_index.json, a missing sub-folder, pickle-only weights (refused:
safetensors only), a corrupt safetensors file, a scheduler flash-edge cannot reproduce.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..configs import check_config
from ..errors import ModelLoadError, first_line
from ..spec import COMPONENTS

REQUIRED = ("transformer", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler")
# sub-folder -> the class real SD3 checkpoints load into (spec.COMPONENTS; the VAE folder feeds vae_decoder)
MODEL_PARTS = {c.part: c.torch_class for c in COMPONENTS.values()}
# tokenizer_config.json's tokenizer_class -> the class that reads it (default per component: CLIP, T5)
# (TokenizersBackend: transformers 5's name for PreTrainedTokenizerFast, which it writes into saved configs)
TOKENIZER_CLASSES = ("CLIPTokenizer", "CLIPTokenizerFast", "T5Tokenizer", "T5TokenizerFast", "PreTrainedTokenizerFast",
                     "TokenizersBackend")
PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl")
# Optional file beside model_index.json: how the model was trained to be run, where diffusers' files cannot say
# it: "t5_tokens" (0 for a model trained without the T5 slot, as flash-edge's distilled students, which then run
# with 77 text tokens unless the user asks otherwise), "steps" (the step count a student was distilled for: the
# default, and a warning at another) and "size" (the square image side it was trained at: a warning at another).
DEFAULTS_FILE = "flash_edge.json"


@dataclass
class SD3Model:
    """The loaded parts of an SD3-family pipeline (torch modules in eval mode, float32 by default)."""

    name: str
    path: Path
    transformer: object
    vae: object
    text_encoder: object
    text_encoder_2: object
    text_encoder_3: object | None
    scheduler_config: dict
    tokenizer_dirs: dict[str, Path] = field(default_factory=dict)  # keyed by text-encoder component
    defaults: dict = field(default_factory=dict)  # from the folder's DEFAULTS_FILE (see read_defaults)

    def tokenizer(self, component: str):
        """The transformers tokenizer diffusers would use for ``component``: the class its
        tokenizer_config.json names, from ``TOKENIZER_CLASSES`` only (never transformers' Auto classes)."""
        folder = self.tokenizer_dirs[component]
        config = check_config(folder / "tokenizer_config.json", ModelLoadError) \
            if (folder / "tokenizer_config.json").is_file() else {}
        default = "T5TokenizerFast" if component == "text_encoder_3" else "CLIPTokenizer"
        name = config.get("tokenizer_class") or default
        if name not in TOKENIZER_CLASSES:
            raise ModelLoadError(f"{folder}/tokenizer_config.json names tokenizer_class {str(name)[:80]!r}; "
                                 f"flash-edge reads {', '.join(TOKENIZER_CLASSES)}")
        cls = tokenizer_classes()[name]
        try:
            return cls.from_pretrained(str(folder), local_files_only=True)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ModelLoadError(f"cannot read tokenizer {folder} as {name}: {first_line(e)}") from None

    def modules(self) -> dict[str, object]:
        mods = {"text_encoder": self.text_encoder, "text_encoder_2": self.text_encoder_2,
                "transformer": self.transformer, "vae": self.vae}
        if self.text_encoder_3 is not None:
            mods["text_encoder_3"] = self.text_encoder_3
        return mods


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelLoadError(f"{what}: {path} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelLoadError(f"{what}: {path} is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{what}: {path} does not hold a JSON object")
    return data


def check_weights(folder: Path) -> list[Path]:
    """The safetensors files of a model sub-folder, each opened once to prove its header is sound."""
    from safetensors import safe_open

    tensors = sorted(folder.glob("*.safetensors"))
    if not tensors:
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise ModelLoadError(
                f"{folder} holds only pickle weights ({', '.join(pickles)}); flash-edge loads safetensors only, "
                f"since pickle files can run code: convert them with diffusers/transformers "
                f"`save_pretrained(..., safe_serialization=True)`")
        raise ModelLoadError(f"{folder} has no weights (*.safetensors)")
    for f in tensors:
        try:
            with safe_open(str(f), framework="pt") as st:
                st.keys()
        except Exception as e:  # safetensors raises SafetensorError/OSError with terse messages
            raise ModelLoadError(f"corrupt safetensors file {f}: {e}") from None
    return tensors


def read_defaults(path: Path) -> dict:
    """The folder's generation defaults (``DEFAULTS_FILE``), checked; {} when it has none."""
    file = path / DEFAULTS_FILE
    if not file.is_file():
        return {}
    data = _read_json(file, f"model folder {path} has a bad {DEFAULTS_FILE}")
    out = {}
    for key, lo, hi in (("t5_tokens", 0, 512), ("steps", 1, 8), ("size", 8, 8192)):
        value = data.get(key, None)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
            raise ModelLoadError(f"{file}: {key} must be an integer from {lo} to {hi}, got {value!r}")
        out[key] = value
    return out


def check_folder(path: Path, t5: bool) -> dict:
    """Validate the folder layout; returns model_index.json."""
    if not path.exists():
        raise ModelLoadError(f"model folder {path} does not exist")
    if not path.is_dir():
        raise ModelLoadError(f"{path} is not a folder; flash-edge loads diffusers-format model folders")
    index = _read_json(path / "model_index.json", f"{path} is not a diffusers model folder")
    cls = index.get("_class_name", "")
    if "StableDiffusion3" not in cls:
        raise ModelLoadError(f"{path} holds a {cls or 'unknown'} pipeline; flash-edge loads the SD3 family "
                             f"(StableDiffusion3Pipeline)")
    needed = list(REQUIRED) + (["text_encoder_3", "tokenizer_3"] if t5 else [])
    missing = [p for p in needed if not (path / p).is_dir()]
    if missing:
        hint = " (pass --no-t5 to run without T5)" if set(missing) & {"text_encoder_3", "tokenizer_3"} else ""
        raise ModelLoadError(f"model folder {path} is incomplete: missing {', '.join(p + '/' for p in missing)}{hint}")
    for part in MODEL_PARTS:
        if part in needed:
            _read_json(path / part / "config.json", f"model folder {path} is incomplete")
            check_config(path / part / "config.json", ModelLoadError)
            check_weights(path / part)
    for tok in ("tokenizer", "tokenizer_2", "tokenizer_3"):
        if tok in needed and (path / tok / "tokenizer_config.json").is_file():
            check_config(path / tok / "tokenizer_config.json", ModelLoadError)
    return index


def load_part(path: Path, part: str, dtype):
    """``path/part`` (a diffusers/transformers folder) as ``MODEL_PARTS[part]``, weights memory-mapped from
    safetensors where the dtype allows (``low_cpu_mem_usage``), in eval mode without gradients."""
    return from_pretrained(MODEL_PARTS[part], path / part, dtype, ModelLoadError)


def part_classes() -> dict[str, type]:
    """The classes named in ``spec.TORCH_CLASSES``, imported by name in code (never by a name read from a file)."""
    from diffusers import AutoencoderKL, SD3Transformer2DModel
    from transformers import CLIPTextModelWithProjection, T5EncoderModel

    classes = (SD3Transformer2DModel, AutoencoderKL, CLIPTextModelWithProjection, T5EncoderModel)
    return {f"{c.__module__.split('.')[0]}.{c.__name__}": c for c in classes}


def tokenizer_classes() -> dict[str, type]:
    import transformers

    return {name: getattr(transformers, name) for name in TOKENIZER_CLASSES}


def from_pretrained(class_name: str, folder: Path, dtype, error=ModelLoadError):
    """``folder`` (a diffusers/transformers folder, its config checked by ``configs.check_config``) loaded as
    ``class_name`` (a ``TORCH_CLASSES`` value): safetensors only, local files only, no remote code, weights
    memory-mapped where the dtype allows (``low_cpu_mem_usage``), in eval mode without gradients. Any failure
    is one line of ``error``."""
    check_config(folder / "config.json", error)
    cls = part_classes()[class_name]
    lib = class_name.split(".")[0]
    kwargs = {"torch_dtype": dtype} if lib == "diffusers" else {"dtype": dtype, "trust_remote_code": False}
    try:
        module = cls.from_pretrained(str(folder), use_safetensors=True, low_cpu_mem_usage=True,
                                     local_files_only=True, **kwargs)
    except Exception as e:  # noqa: BLE001 - OSError, SafetensorError, RuntimeError...: the folder is broken
        raise error(f"cannot load {folder} as {cls.__name__}: {first_line(e)}") from None
    return module.eval().requires_grad_(False)


def source_paths(source: str | Path = "tiny", config=None) -> list[Path]:
    """What loading ``source`` reads (the built-in model's folder and cache, a model folder, a single file and
    its config folder), for refusing an export destination among them before anything is written."""
    from .single_file import is_single_file

    if str(source) == "tiny":
        from .tiny import SHIPPED, cache_root

        return [SHIPPED, cache_root()]
    path = Path(source).expanduser()
    if is_single_file(source):
        return [path, Path(config).expanduser() if config is not None else path.parent]
    return [path]


def load_model(source: str | Path = "tiny", t5: bool = False, dtype=None, config=None) -> SD3Model:
    """Load ``source``: ``"tiny"`` (the built-in model), the path of an SD3-family diffusers folder, or an SD3
    single-file ``.safetensors`` checkpoint (``config``: its diffusers config folder; see ``single_file``).

    ``t5=False`` (the default for device bundles) leaves T5 on disk: it is 4.7B parameters the Flash
    students do without.
    """
    import torch

    from .single_file import is_single_file, load_single_file

    if is_single_file(source):
        return load_single_file(source, config=config, t5=t5, dtype=dtype)
    if config is not None:
        raise ModelLoadError(f"a config folder applies to single-file .safetensors checkpoints, not to {source}")
    if str(source) == "tiny":
        from .tiny import tiny_folder

        path, name = tiny_folder(), "tiny"
    else:
        path, name = Path(source).expanduser(), Path(source).name
    check_folder(path, t5)
    defaults = read_defaults(path)
    scheduler = _read_json(path / "scheduler" / "scheduler_config.json", f"model folder {path} is incomplete")
    dtype = dtype or torch.float32
    from ..quiet import quiet

    with quiet():  # transformers' "Loading weights" bars, diffusers' torchao notice
        parts = {p: load_part(path, p, dtype) for p in MODEL_PARTS if p != "text_encoder_3" or t5}
    tok_dirs = {n: path / c.tokenizer for n, c in COMPONENTS.items() if c.tokenizer and n in parts}
    return SD3Model(name=name, path=path, transformer=parts["transformer"], vae=parts["vae"],
                    text_encoder=parts["text_encoder"], text_encoder_2=parts["text_encoder_2"],
                    text_encoder_3=parts.get("text_encoder_3"), scheduler_config=scheduler, tokenizer_dirs=tok_dirs,
                    defaults=defaults)
