"""The app contract (README "App contract", ``flash_edge/contract.py``): a client written from the README and the
manifest alone, as an app developer would write it (onnxruntime, the ``tokenizers`` library without the
manifest's rules applied for it, numpy, plain-Python noise), draws the same PNG as ``flash-generate``; the
manifest's contract keys cannot disagree with the rest of it; format 1 bundles are still read."""

from __future__ import annotations

import json
import math
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from flash_edge import contract
from flash_edge.bundle import Bundle
from flash_edge.errors import BundleError
from flash_edge.image import to_pil
from flash_edge.pipeline import FlashPipeline
from flash_edge.sampler import SamplerConfig

sys.path.insert(0, str(Path(__file__).parent))  # the shared test helpers beside this file (importlib mode)
from helpers import edit_manifest as _edit  # noqa: E402

pytestmark = pytest.mark.slow  # ONNX exports: left out of the quick subset (pytest -m 'not slow')

PROMPTS = ("a red circle on the left", "Two GREEN   diamonds!!", "ünïcödé ✨ emoji, tabs\tand\nnewlines",
           " ".join(["a blue square above a yellow triangle"] * 12))  # the last is cut to max_length


# ------------------------------------------------------------------ the client, from the README alone
def _mix64(z: int) -> int:
    m = (1 << 64) - 1
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
    return z ^ (z >> 31)


def noise(seed: int, stream: int, shape) -> np.ndarray:
    """splitmix64-boxmuller-v1, element by element in plain Python."""
    count, m = math.prod(shape), (1 << 64) - 1
    base = (seed + stream * 0xD1B54A32D192ED03) & m
    out = []
    for pair in range((count + 1) // 2):
        u1, u2 = (((_mix64((base + (j + 1) * 0x9E3779B97F4A7C15) & m) >> 11) + 1) / 2**53
                  for j in (2 * pair, 2 * pair + 1))
        r, theta = math.sqrt(-2 * math.log(u1)), 2 * math.pi * u2
        out += [r * math.cos(theta), r * math.sin(theta)]
    return np.asarray(out[:count], dtype=np.float64).astype(np.float32).reshape(shape)


def tokenize(tokenizer, rules: dict, prompt: str) -> np.ndarray:
    """The tokenizer's own ids (no specials, no truncation, no padding: what Swift/Kotlin tokenizers give),
    then the manifest's rules: keep the first ids, wrap in the special ids, pad on the right."""
    assert (rules["truncation"], rules["padding"]) == ("keep_first", "right")
    ids = tokenizer.encode(prompt, add_special_tokens=False).ids
    room = rules["max_length"] - len(rules["special_prefix"]) - len(rules["special_suffix"])
    ids = rules["special_prefix"] + ids[:room] + rules["special_suffix"]
    return np.asarray([ids + [rules["pad_id"]] * (rules["max_length"] - len(ids))], dtype=np.int64)


class Client:
    def __init__(self, bundle: Path, manifest: dict | None = None):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.m = manifest or json.loads((bundle / "manifest.json").read_text())
        g = self.m["generation"]
        self.sessions = {name: ort.InferenceSession(str(bundle / c["path"]), providers=["CPUExecutionProvider"])
                         for name, c in self.m["components"].items()}
        self.tokenizers = {}
        for name, t in g["tokenizers"].items():
            tok = Tokenizer.from_file(str(bundle / t["path"] / "tokenizer.json"))
            tok.no_padding()  # the file may carry its own padding/truncation blocks: the manifest's rules apply
            tok.no_truncation()
            self.tokenizers[name] = (tok, t)
        assert g["latent"]["decoder_applies_scaling"] is True  # so no scaling or shift here

    def run(self, name: str, **feeds) -> dict:
        session = self.sessions[name]
        return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))

    def conditioning(self, prompt: str) -> dict:
        g = self.m["generation"]
        outs = {name: self.run(name, input_ids=tokenize(tok, rules, prompt))
                for name, (tok, rules) in self.tokenizers.items()}
        cond = {}
        for key, layout in g["conditioning"].items():
            t = np.full(layout["shape"], layout["fill"], dtype=np.float32)
            for b in layout["blocks"]:
                component, output = b["source"].split(".")
                c0, c1 = b["columns"]
                if "rows" in b:
                    (r0, r1) = b["rows"]
                    t[0, r0:r1, c0:c1] = outs[component][output][0]
                else:
                    t[0, c0:c1] = outs[component][output][0]
            cond[key] = t
        return cond

    def generate(self, prompt: str, seed: int) -> np.ndarray:
        g = self.m["generation"]
        s, lat = g["sampler"], g["latent"]
        assert s["guidance_scale"] <= 1 and s["noise"] == "splitmix64-boxmuller-v1"
        shape = (1, lat["channels"], lat["height"], lat["width"])
        sig = np.asarray(s["sigmas"], dtype=np.float32)
        cond = self.conditioning(prompt)
        x = noise(seed, 0, shape)
        for i, t in enumerate(s["timesteps"]):
            v = self.run("transformer", latent=x, timestep=np.asarray([t], dtype=np.float32), **cond)["velocity"]
            if s["rule"] == "euler":
                x = x + (sig[i + 1] - sig[i]) * v
            else:
                x0 = x - sig[i] * v
                x = (np.float32(1) - sig[i + 1]) * x0 + sig[i + 1] * noise(seed, i + 1, shape)
        image = self.run("vae_decoder", latent=x)["image"]
        return np.round(np.clip(image[0].transpose(1, 2, 0), 0, 1).astype(np.float32) * np.float32(255)).astype(np.uint8)


def _uint8(image: np.ndarray) -> np.ndarray:
    return np.asarray(to_pil(image))  # what flash-generate writes into its PNG


# ------------------------------------------------------------------ tests
def test_the_manifest_states_the_contract(onnx_fp32_bundle):
    m = json.loads((onnx_fp32_bundle / "manifest.json").read_text())
    g = m["generation"]
    assert m["format_version"] == 2 == contract.VERSION
    text = g["text"]
    n, (dl, dg), (pl, pg) = text["clip_tokens"], text["clip_hidden_dims"], text["pooled_dims"]
    assert g["conditioning"]["encoder_hidden_states"] == {
        "shape": [1, text["sequence_length"], text["joint_attention_dim"]], "fill": 0.0,
        "blocks": [{"source": "text_encoder.hidden_states", "rows": [0, n], "columns": [0, dl]},
                   {"source": "text_encoder_2.hidden_states", "rows": [0, n], "columns": [dl, dl + dg]}]}
    assert g["conditioning"]["pooled_projections"]["blocks"][1] == {"source": "text_encoder_2.pooled",
                                                                    "columns": [pl, pl + pg]}
    from tokenizers import Tokenizer

    for name, rules in g["tokenizers"].items():
        tok = Tokenizer.from_file(str(onnx_fp32_bundle / rules["path"] / "tokenizer.json"))
        vocab = tok.get_vocab()
        assert rules["special_prefix"] == [vocab["<|startoftext|>"]] and rules["special_suffix"] == [vocab["<|endoftext|>"]]
    assert g["sampler"]["update"] == contract.UPDATES[g["sampler"]["rule"]]
    assert g["image"]["uint8"].startswith("round_half_even") and g["sampler"]["initial_noise"] == contract.INITIAL_NOISE


@pytest.mark.parametrize("rule", ["euler", "renoise"])
def test_a_client_from_the_readme_draws_the_same_png(onnx_fp32_bundle, rule):
    """Bit-exact: the same ONNX sessions, float32 in the documented order of operations, the documented
    rounding. Four prompts: plain, case and punctuation, unicode and whitespace, and one past max_length."""
    pipe = FlashPipeline.from_bundle(onnx_fp32_bundle, backend="onnx")
    manifest = json.loads((onnx_fp32_bundle / "manifest.json").read_text())
    if rule == "renoise":  # the same bundle run with the other rule, in the pipeline and in the client
        pipe.spec = replace(pipe.spec, sampler=SamplerConfig(sigmas=pipe.spec.sampler.sigmas, rule="renoise"))
        manifest["generation"]["sampler"].update(rule="renoise", update=contract.UPDATES["renoise"])
    client = Client(onnx_fp32_bundle, manifest)
    for k, prompt in enumerate(PROMPTS):
        for name, (tok, rules) in client.tokenizers.items():
            assert np.array_equal(tokenize(tok, rules, prompt), pipe.tokenizers[name](prompt)), (name, prompt)
        seed = (0, 7, 2**64 - 1, 12345)[k]
        assert np.array_equal(client.generate(prompt, seed), _uint8(pipe.generate(prompt, seed=seed))), (rule, prompt)


def _copy(bundle: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "b"
    shutil.copytree(bundle, dst)
    return dst


def to_format_1(m: dict) -> None:
    g = m["generation"]
    m["format_version"] = 1
    del g["conditioning"], g["image"]["uint8"], g["latent"]["decoder_applies_scaling"]
    for k in ("initial_noise", "update", "guidance"):
        del g["sampler"][k]
    for t in g["tokenizers"].values():
        for k in ("special_prefix", "special_suffix", "truncation", "padding"):
            del t[k]


def test_a_format_1_bundle_is_read_and_draws_the_same_image(onnx_fp32_bundle, tmp_path):
    old = _copy(onnx_fp32_bundle, tmp_path)
    _edit(old, to_format_1)
    image = FlashPipeline.from_bundle(old, backend="onnx").generate(PROMPTS[0], seed=3)
    assert np.array_equal(image, FlashPipeline.from_bundle(onnx_fp32_bundle, backend="onnx").generate(PROMPTS[0], seed=3))

    def mixed(m):  # format 1 with a format 2 key: not a manifest any version wrote
        to_format_1(m)
        m["generation"]["image"]["uint8"] = contract.UINT8
    mixed_bundle = _copy(onnx_fp32_bundle, tmp_path / "mixed")
    _edit(mixed_bundle, mixed)
    with pytest.raises(BundleError, match=r"generation.image has unknown keys \['uint8'\]"):
        Bundle.open(mixed_bundle)


@pytest.mark.parametrize("edit,pattern", [
    (lambda g: g["conditioning"]["encoder_hidden_states"]["blocks"][1].update(columns=[0, 64]),
     r"generation.conditioning must be .*the app contract, derived from the rest of the manifest"),
    (lambda g: g["sampler"].update(update=contract.UPDATES["renoise"]), r"generation.sampler.update must be"),
    (lambda g: g["image"].update(uint8="floor(x * 255)"), r"generation.image.uint8 must be"),
    (lambda g: g["latent"].update(decoder_applies_scaling=False), r"generation.latent.decoder_applies_scaling must be"),
    (lambda g: g["tokenizers"]["text_encoder"].update(truncation="keep_last"),
     r"generation.tokenizers.text_encoder.truncation must be"),
    (lambda g: g["tokenizers"]["text_encoder"].update(special_prefix=[]) or g.pop("conditioning"),
     r"generation.conditioning is missing"),
    (lambda g: g["tokenizers"]["text_encoder_2"].update(special_suffix=[0, 1, 2, 3, 4]),
     r"special_suffix must hold 0 to 4 items"),
])
def test_contract_keys_that_disagree_are_refused(onnx_fp32_bundle, tmp_path, edit, pattern):
    b = _copy(onnx_fp32_bundle, tmp_path)
    _edit(b, lambda m: edit(m["generation"]))
    with pytest.raises(BundleError, match=pattern):
        Bundle.open(b)


def test_special_ids_the_tokenizer_does_not_add_are_refused(onnx_fp32_bundle, tmp_path):
    b = _copy(onnx_fp32_bundle, tmp_path)
    _edit(b, lambda m: m["generation"]["tokenizers"]["text_encoder"].update(special_prefix=[]))
    with pytest.raises(BundleError, match=r"tokenizer.json adds the special ids \[\d+\] before and \[\d+\] after a "
                                          r"prompt, the manifest says \[\] and"):
        FlashPipeline.from_bundle(b, backend="onnx")
