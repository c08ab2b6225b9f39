"""The native runner (apps/cpp, ``flash-edge-run``): built with CMake against the executorch wheel's C++ runtime,
it must draw the PNG ``flash-generate --backend executorch`` draws, tokenize as the ``tokenizers`` library does,
reproduce the noise generator bit for bit and refuse bad bundles in one line.

Building needs CMake >= 3.28 (the ``dev`` extra installs one) and Debian's libicu-dev, libpng-dev,
nlohmann-json3-dev and libssl-dev. Where they are missing the tests are skipped with the reason; ``.ci/run``
installs them and sets ``FLASH_EDGE_REQUIRE_NATIVE=1``, which turns that skip into a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from flash_edge.bundle import sha256_file
from flash_edge.sampler import gaussian_noise

sys.path.insert(0, str(Path(__file__).parent))  # the shared test helpers beside this file (importlib mode)
from helpers import edit_manifest as _edit  # noqa: E402

pytestmark = pytest.mark.slow  # builds the C++ runner: left out of the quick subset (pytest -m 'not slow')

ROOT = Path(__file__).resolve().parents[1]
SOURCE, BUILD = ROOT / "apps" / "cpp", ROOT / "build" / "native"


def _unavailable(reason: str):
    if os.environ.get("FLASH_EDGE_REQUIRE_NATIVE"):
        pytest.fail(f"the native runner must build here (FLASH_EDGE_REQUIRE_NATIVE is set): {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def runner() -> Path:
    """Configure and build apps/cpp into build/native (incremental across sessions); the flash-edge-run binary."""
    cmake = shutil.which("cmake", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    if cmake is None:
        _unavailable("no cmake (pip install 'cmake>=3.28', or the dev extra)")
    import executorch

    package = Path(executorch.__path__[0]) / "share" / "cmake"
    configure = subprocess.run([cmake, "-S", SOURCE, "-B", BUILD, "-DCMAKE_BUILD_TYPE=Release",
                                f"-Dexecutorch_DIR={package}"], capture_output=True, text=True)
    if configure.returncode:
        lines = [ln for ln in (configure.stdout + configure.stderr).splitlines() if ln.strip()]
        _unavailable("apps/cpp does not configure here: " + " | ".join(lines[-6:]))
    build = subprocess.run([cmake, "--build", BUILD, "-j", str(min(2, os.cpu_count() or 1))], capture_output=True,
                           text=True)
    assert build.returncode == 0, (build.stdout + build.stderr)[-4000:]
    return BUILD / "flash-edge-run"


def _run(runner: Path, *args, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(runner), *map(str, args)], capture_output=True, text=True, input=stdin, timeout=600)


# ------------------------------------------------------------------------------------------- noise
@pytest.mark.parametrize("seed,stream", [(0, 0), (1, 0), (0, 3), (12345, 1), (2**63, 2), (2**64 - 1, 0), (2**64 - 1, 7)])
def test_noise_equals_numpy(runner, seed, stream):
    done = _run(runner, "--noise", seed, stream, 1001)  # odd: the last pair's second half is dropped
    assert done.returncode == 0, done.stderr
    native = np.array([int(h, 16) for h in done.stdout.split()], dtype=np.uint32)
    assert np.array_equal(native, gaussian_noise(seed, (1001,), stream=stream).view(np.uint32))


# ------------------------------------------------------------------------------------------- tokenizer
SPLIT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
EDGE_PROMPTS = [
    "a red circle on the left", "A BLUE Square Above a yellow triangle.", "it's they're we've I'm you'll he'd",
    "two green diamonds!!!", "a!b?c...d", "100 cats and 7 dogs, 3.14159", "<|endoftext|> inside", "<|startoftext|>x",
    "!", "!!a!!", "   leading and trailing   ", "tabs\tnew\nlines\r\nand\u00a0nbsp\u3000ideographic\u2028sep",
    "café naïve résumé", "cafe\u0301 (combining accent, NFC)", "Straße ĞÜŞİÖÇ İstanbul", "ΣΑΣ ΟΔΥΣΣΕΥΣ σοφία",
    "Привет, мир", "東京タワーの夜景", "一只红色的猫", "한국어 문장", "مرحبا بالعالم", "नमस्ते दुनिया", "ﬁne ligature ＡＢＣ fullwidth",
    "emoji 🐱🚀👩‍👩‍👧 ✨", "math ∑∫√∞ ≤≥", "quotes “curly” ‘single’ «guillemets»", "em—dash – en-dash", "x" * 300,
    " ".join(["a blue square above a yellow triangle"] * 12), "ǅungla ǈ ǋ titlecase", "ﬀ ﬃ ß ẞ", "\u0130\u0131 dotted",
    "1234567890", "a1b2c3", "hello_world snake_case camelCase", "e-mail@example.com http://x.y/z?q=1", "#hash $5 %20 ^&*()",
    "zero\u200bwidth\u200djoiner", "\u00bd \u2153 fractions", "Ⅻ roman ⅻ", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 math letters", "a\u0000b",
]


def _prompts() -> list[str]:
    """520 prompts: the edge cases above, the dataset's own prompts and seeded random mixes of words, digits,
    punctuation and letters from many scripts."""
    from flash_edge.distill.dataset import prompt_for, sample_claims

    rng = np.random.default_rng(0)
    prompts = list(EDGE_PROMPTS)
    prompts += [prompt_for(sample_claims(rng)) for _ in range(200)]
    words = "red green blue circle square triangle left right above below two three photo cat of the a".split()
    blocks = [(0x20, 0x7E), (0xA0, 0x17F), (0x370, 0x3FF), (0x400, 0x4FF), (0x3040, 0x30FF), (0x4E00, 0x4FFF),
              (0x2000, 0x206F), (0x1F300, 0x1F64F), (0xAC00, 0xAD00)]
    while len(prompts) < 520:
        parts = []
        for _ in range(int(rng.integers(1, 30))):
            if rng.random() < 0.5:
                parts.append(str(rng.choice(words)).upper() if rng.random() < 0.2 else str(rng.choice(words)))
            else:
                lo, hi = blocks[int(rng.integers(len(blocks)))]
                parts.append("".join(chr(int(rng.integers(lo, hi + 1))) for _ in range(int(rng.integers(1, 6)))))
        prompts.append(str(rng.choice([" ", "  ", "\t", ""])).join(parts))
    return prompts


def _ids_from_python(bundle: Path, prompts: list[str]) -> list[dict]:
    from flash_edge.bundle import Bundle
    from flash_edge.tokenization import PromptTokenizer

    spec = Bundle.open(bundle, verify=False).spec
    toks = {c: PromptTokenizer.from_file(bundle / t.path / "tokenizer.json", t.max_length, t.pad_id, t.vocab_size,
                                         t.specials) for c, t in spec.tokenizers.items()}
    return [{c: tok(p)[0].tolist() for c, tok in toks.items()} for p in prompts]


def _tokenize_natively(runner: Path, bundle: Path, prompts: list[str]) -> list[dict]:
    done = _run(runner, "--bundle", bundle, "--tokenize", stdin="".join(json.dumps(p) + "\n" for p in prompts))
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def _retokenized(bundle: Path, out: Path) -> Path:
    """``bundle`` with both tokenizers replaced by a 3,000-token CLIP-pipeline BPE trained here on the README
    (the tiny model's own has 718 tokens and 430 merges: too few to exercise the merges), files re-hashed."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

    shutil.copytree(bundle, out)
    tok = Tokenizer(models.BPE(unk_token="<|endoftext|>", end_of_word_suffix="</w>"))
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "),
                                           normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(SPLIT), behavior="removed", invert=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    trainer = trainers.BpeTrainer(vocab_size=3000, special_tokens=["<|startoftext|>", "<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), end_of_word_suffix="</w>")
    tok.train_from_iterator((ROOT / "README.md").read_text(encoding="utf-8").splitlines(), trainer)
    tok.post_processor = processors.RobertaProcessing(("<|endoftext|>", 1), ("<|startoftext|>", 0),
                                                      trim_offsets=False, add_prefix_space=False)
    manifest = json.loads((out / "manifest.json").read_text())
    for t in manifest["generation"]["tokenizers"].values():
        folder = out / t["path"]
        tok.save(str(folder / "tokenizer.json"))
        model = json.loads(tok.to_str())["model"]
        (folder / "vocab.json").write_text(json.dumps(model["vocab"], ensure_ascii=False), encoding="utf-8")
        (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in model["merges"]),
                                           encoding="utf-8")
        t.update(vocab_size=tok.get_vocab_size(), pad_id=1, special_prefix=[0], special_suffix=[1])
        for name in ("tokenizer.json", "vocab.json", "merges.txt"):
            rel = f"{t['path']}/{name}"
            manifest["files"][rel] = {"size": (out / rel).stat().st_size, "sha256": sha256_file(out / rel)}
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def test_tokenizer_matches_the_tokenizers_library(runner, et_fp32_bundle, tmp_path):
    prompts = _prompts()
    assert len(prompts) >= 500
    for bundle in (et_fp32_bundle, _retokenized(et_fp32_bundle, tmp_path / "big-vocab")):
        native, python = _tokenize_natively(runner, bundle, prompts), _ids_from_python(bundle, prompts)
        wrong = [(p, n, q) for p, n, q in zip(prompts, native, python) if n != q]
        assert not wrong, f"{len(wrong)} of {len(prompts)} differ, first: {wrong[0]}"
        long_ids = python[prompts.index("x" * 300)]["text_encoder"]
        assert len(long_ids) == 77 and long_ids[-1] == 1  # cut to fit, EOS kept


# ------------------------------------------------------------------------------------------- images
def _with_rule(bundle: Path, out: Path, rule: str, steps: int | None = None) -> Path:
    """A copy of ``bundle`` run with another step rule (and the first ``steps`` + 1 of its sigmas' ends): the
    artifacts take any timestep, so only the manifest's sampler changes."""
    from flash_edge import contract

    shutil.copytree(bundle, out)
    manifest = json.loads((out / "manifest.json").read_text())
    s = manifest["generation"]["sampler"]
    if steps is not None:
        s["sigmas"] = [1.0, 0.6, 0.0] if steps == 2 else s["sigmas"]
        s["steps"], s["timesteps"] = len(s["sigmas"]) - 1, [x * s["timestep_scale"] for x in s["sigmas"][:-1]]
    s.update(rule=rule, update=contract.UPDATES[rule])
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


@pytest.fixture(scope="module")
def et_chunked_tiled_bundle(tmp_path_factory, tiny_dir) -> Path:
    """int8 in 2 chunks, tiled decode, and diffusers' 256 T5 slots folded into one (chunk 0 hands on 78 rows)."""
    from flash_edge.cli.export import main

    out = tmp_path_factory.mktemp("native") / "E8c2t"
    assert main(["--quiet", "--target", "executorch", "--chunks", "2", "--decode-tile", "32", "--decode-overlap",
                 "8", "--t5-tokens", "256", "--out", str(out)]) == 0
    chunk0 = json.loads((out / "manifest.json").read_text())["components"]["transformer"]["options"]["chunks"][0]
    assert {o["name"]: o["shape"][1] for o in chunk0["outputs"]}["context_0"] == 78
    return out


def _python_png(bundle: Path, prompt: str, seed: int) -> np.ndarray:
    from flash_edge.image import to_pil
    from flash_edge.pipeline import FlashPipeline

    return np.asarray(to_pil(FlashPipeline.from_bundle(bundle, backend="executorch").generate(prompt, seed=seed)))


@pytest.mark.parametrize("case", ["fp32-euler-4", "fp32-renoise-4", "fp32-renoise-2", "int8-euler-4",
                                  "int8-chunked-tiled", "int8-chunked-tiled-stream", "int8-chunked-tiled-fast"])
def test_png_equals_flash_generate(runner, case, et_fp32_bundle, et_int8_bundle, et_chunked_tiled_bundle, tmp_path):
    """Bit-exact: the same programs through the same runtime (ExecuTorch's C++ library, here without Python),
    float32 steps in the contract's order, the contract's rounding. Chunked: the transformer in 2 programs, its T5
    slots folded; tiled:
    the decoder at a 32-pixel tile, overlap 8, blended by the README's rule; stream: each chunk loaded per run;
    fast: every program kept loaded across two runs in one process (the runner checks both drew the same image)."""
    from PIL import Image

    bundle = {"fp32-euler-4": et_fp32_bundle, "int8-euler-4": et_int8_bundle}.get(case, et_chunked_tiled_bundle)
    if case.startswith("fp32-renoise"):
        bundle = _with_rule(et_fp32_bundle, tmp_path / "b", "renoise", int(case[-1]))
    prompt, seed = "a blue square above a yellow triangle", 2**64 - 2
    out, stats = tmp_path / "native.png", tmp_path / "stats.json"
    policy = {"stream": ["--memory", "stream"], "fast": ["--memory", "fast", "--repeat", "2"]}
    extra = policy.get(case.split("-")[-1], [])
    done = _run(runner, "--bundle", bundle, "--prompt", prompt, "--seed", seed, "--out", out, "--stats", stats, *extra)
    assert done.returncode == 0, done.stderr
    native = np.asarray(Image.open(out).convert("RGB"))
    assert np.array_equal(native, _python_png(bundle, prompt, seed)), case
    stats = json.loads(stats.read_text())
    assert set(stats["stages"]) == {"encode", "denoise", "decode"}
    assert all(s["peak_rss"] > 0 for s in stats["stages"].values())
    assert len(stats["runs"]) == (2 if case.endswith("fast") else 1)
    assert Image.open(out).text["prompt"] == prompt


# ------------------------------------------------------------------------------------------- weight cache
def _cache_names(bundle: Path) -> set[str]:
    """<sha256 prefix of the .pte>[-<of the .ptd>].xnnpack for every program the manifest lists."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    names = set()
    for entry in manifest["components"].values():
        for program in entry["options"].get("chunks") or [{"path": entry["path"],
                                                            "data_file": entry["options"].get("data_file")}]:
            name = manifest["files"][program["path"]]["sha256"][:32]
            if program.get("data_file"):
                name += "-" + manifest["files"][program["data_file"]]["sha256"][:32]
            names.add(name + ".xnnpack")
    return names


def test_weight_cache_is_written_once_and_reused_for_the_same_image(runner, et_chunked_tiled_bundle, tmp_path):
    """XNNPACK's packed weights land in one file per program, named by its sha256 in the manifest; a later
    process maps them instead of packing (no file changes), under every policy, and draws the same image as the
    run without a cache; a damaged cache file costs a re-pack, never the image."""
    from PIL import Image

    cache, prompt, seed = tmp_path / "cache", "a red circle on the left", 7
    cache.mkdir()
    plain = tmp_path / "plain.png"
    assert _run(runner, "--bundle", et_chunked_tiled_bundle, "--prompt", prompt, "--seed", seed, "--out", plain
                ).returncode == 0
    want = np.asarray(Image.open(plain).convert("RGB"))

    def draw(name: str, *extra) -> np.ndarray:
        done = _run(runner, "--bundle", et_chunked_tiled_bundle, "--prompt", prompt, "--seed", seed,
                    "--out", tmp_path / name, "--weight-cache", cache, *extra)
        assert done.returncode == 0, done.stderr
        return np.asarray(Image.open(tmp_path / name).convert("RGB"))

    assert np.array_equal(draw("first.png"), want)
    files = {f.name: f.stat() for f in cache.iterdir()}
    assert set(files) == _cache_names(et_chunked_tiled_bundle) and len(files) == 5  # 2 encoders, 2 chunks, decoder
    assert all(st.st_size > 0 for st in files.values())
    for policy in ("low", "stream", "fast"):
        assert np.array_equal(draw(f"{policy}.png", "--memory", policy, "--repeat", "2"), want), policy
    after = {f.name: f.stat() for f in cache.iterdir()}
    assert {n: (st.st_size, st.st_mtime_ns) for n, st in after.items()} == \
        {n: (st.st_size, st.st_mtime_ns) for n, st in files.items()}  # mapped, not packed and written again

    victim = sorted(cache.iterdir(), key=lambda f: f.stat().st_size)[-1]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 3])  # its index trailer is gone
    assert np.array_equal(draw("truncated.png"), want)
    victim.write_bytes(os.urandom(4096))
    assert np.array_equal(draw("garbage.png"), want)


def test_c_api_draws_the_cli_image_under_every_policy(runner, et_chunked_tiled_bundle, tmp_path):
    """The C API as a JNI or Swift bridge calls it (tools/c_api_check.c): open, set_memory, set_weight_cache,
    generate twice into buffers; the bytes are the CLI's PNG's under every policy, with and without the cache;
    a bad policy or cache folder comes back as the API's one-line message."""
    from PIL import Image

    check, prompt, seed = runner.parent / "c-api-check", "two green squares", 3
    png = tmp_path / "cli.png"
    assert _run(runner, "--bundle", et_chunked_tiled_bundle, "--prompt", prompt, "--seed", seed, "--out", png
                ).returncode == 0
    want = np.asarray(Image.open(png).convert("RGB"))
    cache = tmp_path / "cache"
    cache.mkdir()

    def call(policy: str, cache_dir) -> tuple[subprocess.CompletedProcess, Path]:
        out = tmp_path / f"{policy}.rgb"
        return subprocess.run([str(check), str(et_chunked_tiled_bundle), prompt, str(seed), policy, str(cache_dir),
                               "2", str(out)], capture_output=True, text=True), out

    for policy, cache_dir in [("low", "-"), ("stream", cache), ("fast", cache), ("low", cache)]:
        done, out = call(policy, cache_dir)
        assert done.returncode == 0, done.stderr
        assert np.array_equal(np.frombuffer(out.read_bytes(), np.uint8).reshape(want.shape), want), policy
    assert len(list(cache.iterdir())) == 5
    for policy, cache_dir, message in [("lowest", "-", "set_memory: unknown memory policy 'lowest'"),
                                       ("low", tmp_path / "absent", "set_weight_cache: weight cache directory")]:
        done, _ = call(policy, cache_dir)
        assert done.returncode == 2 and message in done.stderr and len(done.stderr.splitlines()) == 1, done.stderr


# ------------------------------------------------------------------------------------------- refusals
def _corrupt(rel: str):
    def corrupt(b: Path) -> None:
        data = bytearray((b / rel).read_bytes())
        data[len(data) // 2] ^= 0xFF
        (b / rel).write_bytes(bytes(data))
    return corrupt


BAD = {
    "no manifest": (lambda b: (b / "manifest.json").unlink(), "is not a flash-edge bundle: it has no manifest.json"),
    "not json": (lambda b: (b / "manifest.json").write_text("{oops"), "is not valid JSON"),
    "version 3": (lambda b: _edit(b, lambda m: m.update(format_version=3)), "has format version 3"),
    "changed weights": (_corrupt("transformer/model.pte"), "does not match its sha256"),
    "truncated weights": (lambda b: (b / "vae_decoder" / "model.pte").write_bytes(b"\0" * 10),
                          "has 10 bytes, the manifest says"),
    "path outside": (lambda b: _edit(b, lambda m: m["components"]["transformer"].update(path="../x.pte")),
                     "must be a normalised path relative to the bundle"),
    "symlink outside": (lambda b: ((b / "transformer" / "model.pte").unlink(),
                                   (b / "transformer" / "model.pte").symlink_to("/etc/passwd")),
                        "leads outside the bundle"),
    "stray file": (lambda b: (b / "transformer" / "extra.bin").write_bytes(b"x"), "holds what its manifest does not list"),
    "unknown key": (lambda b: _edit(b, lambda m: m["generation"]["image"].update(depth=3)), "has unknown key 'depth'"),
    "huge image": (lambda b: _edit(b, lambda m: m["generation"]["image"].update(height=1 << 20)),
                   "generation.image.height must be from 8 to 8192"),
    "rising sigmas": (lambda b: _edit(b, lambda m: m["generation"]["sampler"].update(sigmas=[0.5, 1.0, 0.0])),
                      "must decrease strictly"),
    "wrong shapes": (lambda b: _edit(b, lambda m: m["components"]["vae_decoder"]["inputs"][0].update(shape=[1, 16, 9, 9])),
                     "components.vae_decoder.inputs must be latent"),
    "tampered contract": (lambda b: _edit(b, lambda m: m["generation"]["sampler"].update(update="x = v")),
                          "generation.sampler.update must be"),
    "vocab mismatch": (lambda b: ((b / "tokenizer" / "vocab.json").write_text("{}"),
                                  _edit(b, lambda m: m["files"].update({"tokenizer/vocab.json": {
                                      "size": 2, "sha256": sha256_file(b / "tokenizer" / "vocab.json")}}))),
                       "vocab.json and tokenizer.json hold different vocabularies"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_a_bad_bundle_is_one_line_and_exit_2(runner, et_fp32_bundle, tmp_path, name):
    break_it, message = BAD[name]
    bundle = tmp_path / "b"
    shutil.copytree(et_fp32_bundle, bundle)
    break_it(bundle)
    done = _run(runner, "--bundle", bundle, "--prompt", "a red circle", "--out", tmp_path / "x.png")
    assert done.returncode == 2 and done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("flash-edge-run: error: ") and message in lines[0], done.stderr
    assert not (tmp_path / "x.png").exists()


def test_a_non_executorch_bundle_and_bad_arguments_are_refused(runner, onnx_fp32_bundle, et_fp32_bundle, tmp_path):
    cases = [(["--bundle", onnx_fp32_bundle, "--prompt", "a", "--out", tmp_path / "x.png"],
              "the native runner runs ExecuTorch bundles"),
             (["--bundle", et_fp32_bundle, "--prompt", "  ", "--out", tmp_path / "x.png"], "prompt is empty"),
             (["--bundle", et_fp32_bundle, "--prompt", "a", "--seed", "-1", "--out", tmp_path / "x.png"],
              "--seed must be an integer from 0 to 2^64 - 1"),
             (["--bundle", et_fp32_bundle, "--prompt", "a", "--seed", str(2**64), "--out", tmp_path / "x.png"],
              "--seed must be an integer from 0 to 2^64 - 1"),
             (["--bundle", et_fp32_bundle, "--prompt", "a", "--out", tmp_path / "x.jpg"], "--out must name a .png"),
             (["--bundle", et_fp32_bundle, "--prompt", "a", "--out", tmp_path / "x.png", "--memory", "lowest"],
              "unknown memory policy 'lowest': choose fast, low or stream"),
             (["--bundle", et_fp32_bundle, "--prompt", "a", "--out", tmp_path / "x.png", "--repeat", "0"],
              "--repeat must be from 1 to 100"),
             (["--bundle", et_fp32_bundle, "--prompt", "a", "--out", tmp_path / "x.png", "--weight-cache",
               tmp_path / "absent"], "does not exist or is not a directory"),
             (["--bundle", et_fp32_bundle, "--prompt", "a", "--out", tmp_path / "x.png", "--weight-cache", tmp_path,
               "--no-verify"], "the weight cache needs the bundle's hashes verified"),
             (["--bundle", et_fp32_bundle, "--prompt", "a", "--out", tmp_path / "x.png", "--weight-cache",
               "/" + "d" * 220], "weight cache directory path is too long")]
    for args, message in cases:
        done = _run(runner, *args)
        assert done.returncode == 2 and message in done.stderr and len(done.stderr.splitlines()) == 1, done.stderr
