"""The one validator of a bundle's manifest: types, required keys, ranges and paths, before anything reads it.

A manifest is untrusted input (an app downloads bundles, users share them). ``validate`` checks the whole
document and raises a ``BundleError`` naming the first key at fault; whatever passes can be read by
``GenerationSpec.from_dict``, ``ComponentEntry`` and the backends without a ``KeyError``, ``TypeError`` or an
allocation sized by a hostile number. Every number that sizes an allocation has a range here; every path
is relative, normalised and listed in ``files`` with its size and sha256 (``confine.py`` then holds it
inside the bundle on disk). Informational sections (``model``, ``tools``, ``parity``, ``warnings``) are
type-checked only where the SDK reads them.
"""

from __future__ import annotations

import json
import math
import re

from . import contract
from .configs import config_problem
from .confine import relative_path
from .conditioning import T5_MODES
from .errors import BundleError, FlashError
from .sampler import MAX_STEPS, NOISE_GENERATOR, STEP_RULES
from .spec import DTYPES, TORCH_CLASSES, ComponentSpec, GenerationSpec, TensorSpec, check_chain

TARGETS = ("torch", "onnx", "coreml", "executorch")
MAX_DIM = 1 << 16  # any one tensor dimension, token count or width
MAX_ELEMENTS = 1 << 28  # elements of any one tensor at the boundary (1 GiB of float32)
MAX_FILES = 100_000
MAX_FILE_BYTES = 1 << 40
LIMITS = {  # key -> (lowest, highest) for the numbers that size allocations
    "image.height": (8, 8192), "image.width": (8, 8192),
    "latent.channels": (1, 256), "latent.vae_scale_factor": (1, 64), "latent.patch_size": (1, 16),
    "text.clip_tokens": (1, 512), "text.t5_tokens": (0, 512), "text.joint_attention_dim": (1, MAX_DIM),
    "tokenizers.max_length": (1, 512), "tokenizers.vocab_size": (1, 1 << 20),
}
# what a bundle never carries: files that Python imports or unpickles, or native libraries
CODE_SUFFIXES = (".py", ".pyc", ".pyo", ".pyd", ".so", ".dylib", ".dll", ".pkl", ".pickle", ".pt", ".pth", ".ckpt")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def fail(key: str, problem: str) -> BundleError:
    return BundleError(f"manifest key {key} {problem}")


def obj(value, key: str) -> dict:
    if not isinstance(value, dict):
        raise fail(key, f"must be a JSON object, got {type(value).__name__}")
    return value


def only(d: dict, key: str, allowed) -> dict:
    unknown = sorted(map(str, set(d) - set(allowed)))
    if unknown:
        raise fail(key, f"has unknown keys {unknown[:5]} (it takes {', '.join(allowed)})")
    return d


def field(d: dict, name: str, key: str):
    if name not in d:
        raise fail(f"{key}.{name}" if key else name, "is missing")
    return d[name]


def integer(value, key: str, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise fail(key, f"must be an integer, got {type(value).__name__}")
    if not low <= value <= high:
        raise fail(key, f"must be from {low} to {high}, got {value}")
    return value


def number(value, key: str, low: float, high: float) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise fail(key, f"must be a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise fail(key, f"must be finite, got {value}")
    if not low <= value <= high:
        raise fail(key, f"must be from {low:g} to {high:g}, got {value:g}")
    return float(value)


def string(value, key: str, choices=None) -> str:
    if not isinstance(value, str):
        raise fail(key, f"must be a string, got {type(value).__name__}")
    if choices is not None and value not in choices:
        raise fail(key, f"must be one of {', '.join(choices)}, got {value[:80]!r}")
    return value


def array(value, key: str, low: int, high: int) -> list:
    if not isinstance(value, list):
        raise fail(key, f"must be a list, got {type(value).__name__}")
    if not low <= len(value) <= high:
        raise fail(key, f"must hold {low} to {high} items, got {len(value)}")
    return value


def limited(d: dict, section: str, name: str, where: str | None = None) -> int:
    low, high = LIMITS[f"{section}.{name}"]
    return integer(field(d, name, where or section), f"{where or section}.{name}", low, high)


# --------------------------------------------------------------------------------------------- generation
def check_generation(g, version: int = contract.VERSION) -> GenerationSpec:
    """``version``: the manifest's format version; format 2 adds the app contract's keys (``contract.py``),
    which must equal what the rest of ``generation`` implies; format 1 has none of them."""
    v2 = version >= contract.VERSION
    g = only(obj(g, "generation"), "generation", ("image", "latent", "sampler", "text", "tokenizers", "decode")
             + (("conditioning",) if v2 else ()))
    image = only(obj(field(g, "image", "generation"), "generation.image"), "generation.image",
                 ("height", "width") + (("uint8",) if v2 else ()))
    height, width = (limited(image, "image", s, "generation.image") for s in ("height", "width"))
    lat = only(obj(field(g, "latent", "generation"), "generation.latent"), "generation.latent",
               ("channels", "height", "width", "scaling_factor", "shift_factor", "vae_scale_factor", "patch_size")
               + (("decoder_applies_scaling",) if v2 else ()))
    for name in ("channels", "vae_scale_factor", "patch_size"):
        limited(lat, "latent", name, "generation.latent")
    factor, patch = lat["vae_scale_factor"], lat["patch_size"]
    for side, pixels in (("height", height), ("width", width)):
        cells = integer(field(lat, side, "generation.latent"), f"generation.latent.{side}", 1, MAX_DIM)
        if cells * factor != pixels or cells % patch:
            raise fail(f"generation.latent.{side}", f"({cells}) must be generation.image.{side} ({pixels}) / "
                       f"vae_scale_factor ({factor}) and a multiple of patch_size ({patch})")
    number(field(lat, "scaling_factor", "generation.latent"), "generation.latent.scaling_factor", 1e-6, 1e3)
    number(field(lat, "shift_factor", "generation.latent"), "generation.latent.shift_factor", -1e3, 1e3)
    if "decode" in g:
        _check_decode(g["decode"], min(lat["height"], lat["width"]))
    _check_sampler(obj(field(g, "sampler", "generation"), "generation.sampler"), v2)
    text = _check_text(obj(field(g, "text", "generation"), "generation.text"))
    _check_tokenizers(obj(field(g, "tokenizers", "generation"), "generation.tokenizers"), text, v2)
    if v2:
        _equal(image, "uint8", contract.UINT8, "generation.image")
        _equal(lat, "decoder_applies_scaling", True, "generation.latent")
    try:
        spec = GenerationSpec.from_dict(g)
    except FlashError as e:  # the dataclasses' own rules (strictly decreasing sigmas, ...)
        raise BundleError(f"manifest key generation is inconsistent: {e}") from None
    if v2:
        _equal(g, "conditioning", contract.conditioning(spec.text, "text_encoder_3" in spec.text_encoders),
               "generation")
    for name, tensor in ((n, t) for c in spec.component_specs().values() for n, t in
                         ((c.name, t) for t in (*c.inputs, *c.outputs))):
        if math.prod(tensor.shape) > MAX_ELEMENTS:
            raise fail("generation", f"makes {name}'s {tensor.name} {list(tensor.shape)}: more than "
                       f"{MAX_ELEMENTS} elements")
    return spec


def _check_decode(d, cells: int) -> None:
    key = "generation.decode"
    d = only(obj(d, key), key, ("tile", "overlap"))
    tile = integer(field(d, "tile", key), f"{key}.tile", 1, cells)  # latent cells; one tile per decoder run
    integer(field(d, "overlap", key), f"{key}.overlap", 0, tile // 2)


def _equal(d: dict, name: str, expected, key: str) -> None:
    """A derived key of the app contract: present and equal to what the manifest's own numbers imply."""
    if field(d, name, key) != expected:
        raise fail(f"{key}.{name}", f"must be {json.dumps(expected)[:300]} (the app contract, derived from the "
                   f"rest of the manifest), got {json.dumps(d[name])[:300]}")


def _check_sampler(s: dict, v2: bool) -> None:
    key = "generation.sampler"
    only(s, key, ("sigmas", "rule", "timestep_scale", "shift", "guidance_scale", "noise", "steps", "timesteps")
         + (("initial_noise", "update", "guidance") if v2 else ()))
    sigmas = array(field(s, "sigmas", key), f"{key}.sigmas", 2, MAX_STEPS + 1)
    for i, v in enumerate(sigmas):
        number(v, f"{key}.sigmas[{i}]", 0.0, 1.0)
    rule = string(s.get("rule", "euler"), f"{key}.rule", STEP_RULES)
    if v2:
        _equal(s, "initial_noise", contract.INITIAL_NOISE, key)
        _equal(s, "update", contract.UPDATES[rule], key)
        _equal(s, "guidance", contract.GUIDANCE, key)
    scale = number(s.get("timestep_scale", 1000.0), f"{key}.timestep_scale", 1e-3, 1e5)
    if s.get("shift") is not None:
        number(s["shift"], f"{key}.shift", 1e-3, 1e3)
    number(s.get("guidance_scale", 1.0), f"{key}.guidance_scale", 0.0, 100.0)
    string(s.get("noise", NOISE_GENERATOR), f"{key}.noise", (NOISE_GENERATOR,))
    if "steps" in s and integer(s["steps"], f"{key}.steps", 1, MAX_STEPS) != len(sigmas) - 1:
        raise fail(f"{key}.steps", f"({s['steps']}) disagrees with the {len(sigmas)} sigmas "
                   f"({len(sigmas) - 1} steps)")
    if "timesteps" in s:
        ts = array(s["timesteps"], f"{key}.timesteps", len(sigmas) - 1, len(sigmas) - 1)
        for i, (t, sigma) in enumerate(zip(ts, sigmas)):
            number(t, f"{key}.timesteps[{i}]", 0.0, 1e5)
            if abs(t - sigma * scale) > 1e-4 * scale:
                raise fail(f"{key}.timesteps[{i}]", f"({t}) must be sigmas[{i}] x timestep_scale "
                           f"({sigma * scale})")


def _check_text(t: dict) -> dict:
    key = "generation.text"
    only(t, key, ("clip_tokens", "t5_tokens", "joint_attention_dim", "clip_hidden_dims", "pooled_dims", "t5",
                  "sequence_length", "pooled_dim"))
    for name in ("clip_tokens", "t5_tokens", "joint_attention_dim"):
        limited(t, "text", name, key)
    for name in ("clip_hidden_dims", "pooled_dims"):
        for i, v in enumerate(array(field(t, name, key), f"{key}.{name}", 2, 2)):
            integer(v, f"{key}.{name}[{i}]", 1, MAX_DIM)
    string(field(t, "t5", key), f"{key}.t5", T5_MODES)
    derived = {"sequence_length": t["clip_tokens"] + t["t5_tokens"], "pooled_dim": sum(t["pooled_dims"])}
    for name, value in derived.items():
        if name in t and t[name] != value:
            raise fail(f"{key}.{name}", f"({t[name]!r}) must be {value}")
    return t


def _check_tokenizers(toks: dict, text: dict, v2: bool) -> None:
    wanted = ["text_encoder", "text_encoder_2"] + (["text_encoder_3"] if text["t5"] == "encoder" else [])
    if sorted(toks) != sorted(wanted):
        raise fail("generation.tokenizers", f"must have exactly {wanted}, got {sorted(toks)}")
    for comp in wanted:
        key = f"generation.tokenizers.{comp}"
        tok = obj(toks[comp], key)
        relative_path(field(tok, "path", key), f"{key}.path")
        length = limited(tok, "tokenizers", "max_length", key)
        expected = text["t5_tokens"] if comp == "text_encoder_3" else text["clip_tokens"]
        if length != expected:
            raise fail(f"{key}.max_length", f"({length}) must equal the text layout's token count ({expected})")
        vocab = limited(tok, "tokenizers", "vocab_size", key)
        integer(field(tok, "pad_id", key), f"{key}.pad_id", 0, vocab - 1)
        only(tok, key, ("path", "max_length", "pad_id", "vocab_size")
             + (("special_prefix", "special_suffix", "truncation", "padding") if v2 else ()))
        if v2:
            specials = 0
            for name in ("special_prefix", "special_suffix"):
                ids = array(field(tok, name, key), f"{key}.{name}", 0, 4)
                for i, v in enumerate(ids):
                    integer(v, f"{key}.{name}[{i}]", 0, vocab - 1)
                specials += len(ids)
            if specials >= length:
                raise fail(key, f"leaves no room for the prompt: {specials} special ids in max_length {length}")
            _equal(tok, "truncation", contract.TRUNCATION, key)
            _equal(tok, "padding", contract.PADDING, key)


# --------------------------------------------------------------------------------------------- files
def check_files_table(files) -> dict:
    files = obj(files, "files")
    if not files:
        raise fail("files", "is empty: a bundle lists every file with its size and sha256")
    if len(files) > MAX_FILES:
        raise fail("files", f"lists {len(files)} files, more than {MAX_FILES}")
    for rel, meta in files.items():
        key = f"files[{rel[:80]!r}]"
        relative_path(rel, key)
        if rel.lower().endswith(CODE_SUFFIXES):
            raise fail(key, "is a code or pickle file: bundles never carry code")
        meta = obj(meta, key)
        integer(field(meta, "size", key), f"{key}.size", 0, MAX_FILE_BYTES)
        if not isinstance(meta.get("sha256"), str) or not _SHA256.fullmatch(meta["sha256"]):
            raise fail(f"{key}.sha256", "must be 64 lower-case hex digits")
    return files


def _listed(value, key: str, files: dict) -> str:
    """A file path that ``files`` lists (so its size and hash are checked)."""
    rel = relative_path(value, key)
    if rel not in files:
        raise fail(key, f"names {rel!r}, which the manifest's files do not list")
    return rel


def _artifact_path(value, key: str, owned: list[str]) -> str:
    """A component's (or chunk's) ``path``: one of its files, or a folder holding some of them."""
    rel = relative_path(value, key)
    if rel not in owned and not any(f.startswith(rel + "/") for f in owned):
        raise fail(key, f"({rel!r}) is neither one of the component's files nor a folder holding them")
    return rel


def _file_list(value, key: str, files: dict) -> list[str]:
    listed = array(value, key, 1, MAX_FILES)
    for i, f in enumerate(listed):
        _listed(f, f"{key}[{i}]", files)
    if len(set(listed)) != len(listed):
        raise fail(key, "lists a file twice")
    return listed


# --------------------------------------------------------------------------------------------- components
def _tensors(value, key: str) -> list[dict]:
    out = []
    for i, t in enumerate(array(value, key, 1, 64)):
        where = f"{key}[{i}]"
        t = obj(t, where)
        string(field(t, "name", where), f"{where}.name")
        shape = array(field(t, "shape", where), f"{where}.shape", 0, 8)
        for j, d in enumerate(shape):
            integer(d, f"{where}.shape[{j}]", 1, MAX_DIM)
        if math.prod(shape) > MAX_ELEMENTS:
            raise fail(f"{where}.shape", f"{shape} has more than {MAX_ELEMENTS} elements")
        string(field(t, "dtype", where), f"{where}.dtype", DTYPES)
        out.append({"name": t["name"], "shape": list(shape), "dtype": t["dtype"]})
    return out


def _check_program(p: dict, key: str, files: dict, owned: list[str]) -> None:
    """What a backend reads of one program (an unchunked entry's options or one chunk)."""
    for name in ("data_file", "compiled"):
        if p.get(name) is not None:
            if name == "compiled":
                _artifact_path(p[name], f"{key}.{name}", owned)
            else:
                _listed(p[name], f"{key}.{name}", files)
    if "runtime_backend" in p:
        string(p["runtime_backend"], f"{key}.runtime_backend")
    if "compute_units" in p:
        string(p["compute_units"], f"{key}.compute_units")
    if "module_api" in p:
        method = obj(p["module_api"], f"{key}.module_api").get("method", "forward")
        if not isinstance(method, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,63}", method):
            raise fail(f"{key}.module_api.method", "must be a method name")


def check_component(name: str, entry, spec: GenerationSpec, files: dict) -> None:
    key = f"components.{name}"
    entry = obj(entry, key)
    only(entry, key, ("target", "precision", "path", "files", "inputs", "outputs", "options"))
    target = string(field(entry, "target", key), f"{key}.target", TARGETS)
    string(field(entry, "precision", key), f"{key}.precision")
    owned = _file_list(field(entry, "files", key), f"{key}.files", files)
    _artifact_path(field(entry, "path", key), f"{key}.path", owned)
    expected = spec.component_spec(name).io_dict()
    for side in ("inputs", "outputs"):
        if _tensors(field(entry, side, key), f"{key}.{side}") != expected[side]:
            raise fail(f"{key}.{side}", f"must be {expected[side]}: the component's shapes follow "
                       f"generation (image size, latent, text layout)")
    options = obj(entry.get("options", {}), f"{key}.options")
    if target == "torch":
        cls = string(field(options, "class", f"{key}.options"), f"{key}.options.class")
        if cls != TORCH_CLASSES[name]:
            raise fail(f"{key}.options.class", f"must be {TORCH_CLASSES[name]} (the only class a {name} loads "
                       f"into; bundles never name code to import), got {cls[:80]!r}")
    _check_program(options, f"{key}.options", files, owned)
    if options.get("chunks") is not None:
        _check_chunks(options["chunks"], f"{key}.options.chunks", name, spec, files, owned)


def _check_chunks(chunks, key: str, name: str, spec: GenerationSpec, files: dict, owned: list[str]) -> None:
    pieces = []
    for i, c in enumerate(array(chunks, key, 1, 256)):
        where = f"{key}[{i}]"
        c = obj(c, where)
        chunk_files = _file_list(c["files"], f"{where}.files", files) if "files" in c else []
        if any(f not in owned for f in chunk_files):
            raise fail(f"{where}.files", "names a file that the component's files do not list")
        _artifact_path(field(c, "path", where), f"{where}.path", owned)
        _check_program(c, where, files, owned)
        io = [tuple(TensorSpec.from_dict(t) for t in _tensors(field(c, side, where), f"{where}.{side}"))
              for side in ("inputs", "outputs")]
        pieces.append(ComponentSpec(f"{name}.chunk{i}", *io))
    check_chain(spec.component_spec(name), pieces)


def validate(manifest: dict) -> GenerationSpec:
    """Check a parsed manifest whole (format and version are checked by the caller); returns its spec."""
    spec = check_generation(field(manifest, "generation", ""), manifest.get("format_version", contract.VERSION))
    files = check_files_table(field(manifest, "files", ""))
    components = obj(field(manifest, "components", ""), "components")
    if sorted(components) != sorted(spec.components):
        raise fail("components", f"must have exactly {list(spec.components)} (from generation.text.t5), "
                   f"got {sorted(components)}")
    for name in spec.components:
        check_component(name, components[name], spec, files)
    for comp, tok in spec.tokenizers.items():
        _listed(f"{tok.path}/tokenizer.json", f"generation.tokenizers.{comp}.path", files)
    model = obj(manifest.get("model", {}), "model")
    for name in ("name", "source"):
        if name in model:
            string(model[name], f"model.{name}")
    for name in ("transformer", "parameters"):
        if name in model:
            obj(model[name], f"model.{name}")
    problem = config_problem(model.get("transformer", {}), "model.transformer.")  # flash-bench counts FLOPs from it
    if problem:
        raise BundleError(f"manifest key {problem}")
    for name in ("parity", "tools", "component_targets"):
        if name in manifest:
            obj(manifest[name], name)
    if "warnings" in manifest and not all(isinstance(w, str) for w in array(manifest["warnings"], "warnings",
                                                                             0, 1000)):
        raise fail("warnings", "must be a list of strings")
    return spec
