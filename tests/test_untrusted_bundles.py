"""Bundles and model folders as an attacker would craft them: loading never runs their code, never reads
outside them, never allocates what a hostile number asks for, and never turns bad numbers into a silent
picture. Each test is built from a reproduction in issue 12."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from flash_edge.bundle import Bundle, sha256_file
from flash_edge.errors import BundleError, FlashError, GenerationError, InvalidInput, ModelLoadError
from flash_edge.pipeline import FlashPipeline

sys.path.insert(0, str(Path(__file__).parent))  # the shared test helpers beside this file (importlib mode)
from helpers import edit_manifest as edit  # noqa: E402

PROMPT = "a red circle on the left"


@pytest.fixture
def bundle(torch_bundle, tmp_path) -> Path:
    dst = tmp_path / "bundle"
    shutil.copytree(torch_bundle, dst)
    return dst


def relist(bundle: Path, rel: str) -> None:
    """List (or re-hash) ``rel`` in the manifest's files, as an attacker controlling the manifest would."""
    f = bundle / rel
    edit(bundle, lambda m: m["files"].__setitem__(rel, {"size": f.stat().st_size, "sha256": sha256_file(f)}))


def refused(bundle: Path, pattern: str, error=BundleError, **kw) -> str:
    with pytest.raises(error, match=pattern) as e:
        FlashPipeline.from_bundle(bundle, **kw)(PROMPT, seed=0)
    assert "\n" not in str(e.value)
    return str(e.value)


# ------------------------------------------------------------------------- 1. a bundle's own code never runs
def test_a_bundle_that_is_a_python_package_never_runs(bundle, tmp_path):
    """The manifest names the bundle itself as the class's module; a script beside it loads the bundle."""
    canary = tmp_path / "ran"
    (bundle / "__init__.py").write_text(f"open({str(canary)!r}, 'w').write('pwned')\n"
                                        "from transformers import CLIPTextModelWithProjection\n")
    edit(bundle, lambda m: m["components"]["text_encoder"]["options"].update({"class": "bundle.CLIPTextModelWithProjection"}))
    script = tmp_path / "app.py"
    script.write_text(textwrap.dedent("""
        import sys
        from flash_edge.errors import FlashError
        from flash_edge.pipeline import FlashPipeline
        try:
            FlashPipeline.from_bundle("bundle")("a red circle", seed=0)
        except FlashError as e:
            print(e); sys.exit(2)
    """))
    r = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and not canary.exists(), r.stdout + r.stderr
    assert "must be transformers.CLIPTextModelWithProjection" in r.stdout
    # listed or not, a code file in a bundle is refused
    edit(bundle, lambda m: m["components"]["text_encoder"]["options"].update(
        {"class": "transformers.CLIPTextModelWithProjection"}))
    refused(bundle, r"holds what its manifest does not list: __init__\.py")
    relist(bundle, "__init__.py")
    refused(bundle, r"files\['__init__\.py'\] is a code or pickle file")


@pytest.mark.parametrize("cls", ["transformers.AutoModel", "os.system", "diffusers.AutoencoderKL"])
def test_torch_classes_come_from_an_allowlist(bundle, cls):
    edit(bundle, lambda m: m["components"]["text_encoder"]["options"].update({"class": cls}))
    refused(bundle, r"components\.text_encoder\.options\.class must be transformers\.CLIPTextModelWithProjection")


def test_remote_code_in_a_component_config_is_refused(bundle, tmp_path):
    canary = tmp_path / "ran"
    cfg = bundle / "text_encoder" / "config.json"
    data = json.loads(cfg.read_text())
    data["auto_map"] = {"AutoModel": "evil.Model"}
    cfg.write_text(json.dumps(data))
    (bundle / "text_encoder" / "evil.py").write_text(f"open({str(canary)!r}, 'w')\n")
    relist(bundle, "text_encoder/config.json")
    refused(bundle, r"evil\.py")  # an unlisted file first
    (bundle / "text_encoder" / "evil.py").unlink()
    refused(bundle, r"text_encoder/config\.json: auto_map names custom code")
    assert not canary.exists()


def test_export_refuses_a_model_folder_with_remote_tokenizer_code(tiny_dir, tmp_path):
    """transformers would ask "run custom code? [y/N]" for an auto_map tokenizer and copy its .py file."""
    from flash_edge.export import export_bundle

    model = tmp_path / "model"
    shutil.copytree(tiny_dir, model)
    cfg = model / "tokenizer" / "tokenizer_config.json"
    data = json.loads(cfg.read_text())
    data["auto_map"] = {"AutoTokenizer": ["tok.EvilTokenizer", None]}
    cfg.write_text(json.dumps(data))
    (model / "tokenizer" / "tok.py").write_text("raise SystemExit('ran')\n")
    with pytest.raises(ModelLoadError, match=r"tokenizer_config\.json: auto_map names custom code"):
        export_bundle(model, "torch", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    data.pop("auto_map")
    data["tokenizer_class"] = "EvilTokenizer"
    cfg.write_text(json.dumps(data))
    with pytest.raises(ModelLoadError, match=r"names tokenizer_class 'EvilTokenizer'; flash-edge reads CLIPTokenizer"):
        export_bundle(model, "torch", tmp_path / "out")


# ------------------------------------------------------------------------- 3. paths stay inside the bundle
@pytest.mark.parametrize("path", ["/etc", "../bundle/transformer", "transformer/../transformer", "./transformer",
                                  "transformer/", "C:/x", "trans\\former"])
def test_component_paths_must_be_normalised_and_relative(bundle, path):
    edit(bundle, lambda m: m["components"]["transformer"].update({"path": path}))
    refused(bundle, r"components\.transformer\.path must be a (non-empty|normalised path) relative")


@pytest.mark.parametrize("where", ["tokenizer", "files", "chunk"])
def test_other_paths_must_stay_inside(bundle, where):
    def change(m):
        if where == "tokenizer":
            m["generation"]["tokenizers"]["text_encoder"]["path"] = "../../etc"
        elif where == "files":
            m["files"]["../outside.txt"] = {"size": 1, "sha256": "0" * 64}
        else:
            e = m["components"]["transformer"]
            e["options"]["chunks"] = [{"path": "/etc/passwd", "inputs": e["inputs"], "outputs": e["outputs"]}]
    edit(bundle, change)
    refused(bundle, r"must be a normalised path relative to the bundle")


def test_symlinks_that_leave_the_bundle_are_refused(bundle, tmp_path):
    outside = tmp_path / "secret"
    outside.mkdir()
    shutil.copytree(bundle / "transformer", outside / "transformer")
    shutil.rmtree(bundle / "transformer")
    (bundle / "transformer").symlink_to(outside / "transformer", target_is_directory=True)
    refused(bundle, r"leads outside the bundle")
    (bundle / "transformer").unlink()
    shutil.copytree(outside / "transformer", bundle / "transformer")
    (bundle / "link").symlink_to("/etc/passwd")  # never read, still refused: a bundle is self-contained
    refused(bundle, r"link \(a symbolic link that leads outside the bundle\)")
    (bundle / "link").unlink()
    (bundle / "inner").symlink_to("transformer", target_is_directory=True)  # a link that stays inside is fine
    assert Bundle.open(bundle).path == bundle


def test_every_file_a_component_reads_is_listed_and_files_is_required(bundle):
    edit(bundle, lambda m: m["files"].pop("transformer/diffusion_pytorch_model.safetensors"))
    refused(bundle, r"components\.transformer\.files\[1\] names 'transformer/diffusion_pytorch_model.safetensors', "
                    r"which the manifest's files do not list")
    edit(bundle, lambda m: m.pop("files"))
    refused(bundle, r"manifest key files is missing")


def test_a_byte_flipped_model_without_files_never_runs(bundle):
    """Before: no 'files' key skipped the hash check, and a changed model drew another picture with exit 0."""
    f = bundle / "transformer" / "diffusion_pytorch_model.safetensors"
    data = bytearray(f.read_bytes())
    data[-5] ^= 0xFF
    f.write_bytes(bytes(data))
    refused(bundle, r"does not match its sha256")
    edit(bundle, lambda m: m.pop("files"))
    refused(bundle, r"manifest key files is missing")


def test_errors_do_not_reveal_files_outside(bundle, tmp_path):
    """The same message whether or not the outside file exists, and no size of it."""
    real = tmp_path / "real.bin"
    real.write_bytes(b"x" * 1234)
    messages = []
    for target in (real, tmp_path / "absent.bin"):
        (bundle / "peek").unlink(missing_ok=True)
        (bundle / "peek").symlink_to(target)
        edit(bundle, lambda m: m["files"].__setitem__("peek", {"size": 1, "sha256": "0" * 64}))
        messages.append(refused(bundle, r"leads outside the bundle").replace(str(bundle), "B"))
    assert messages[0] == messages[1] and "1234" not in messages[0]


# ------------------------------------------------------------------------- 4. sizes are bounded before allocating
@pytest.mark.parametrize("change,pattern", [
    (lambda m: m["generation"]["tokenizers"]["text_encoder"].update(max_length=10**9),
     r"generation\.tokenizers\.text_encoder\.max_length must be from 1 to 512, got 1000000000"),
    (lambda m: m["generation"]["image"].update(height=10**6), r"generation\.image\.height must be from 8 to 8192"),
    (lambda m: m["generation"]["text"].update(joint_attention_dim=2**40),
     r"generation\.text\.joint_attention_dim must be from 1 to 65536"),
    (lambda m: m["components"]["transformer"]["inputs"][0].update(shape=[1, 16, 8, 9]),
     r"components\.transformer\.inputs must be .*follow generation"),
    (lambda m: m["generation"]["tokenizers"]["text_encoder"].update(pad_id=10**6),
     r"generation\.tokenizers\.text_encoder\.pad_id must be from 0 to 717"),
])
def test_manifest_numbers_are_bounded(bundle, change, pattern):
    edit(bundle, change)
    refused(bundle, pattern)


@pytest.mark.parametrize("part,key,value,pattern", [
    ("text_encoder", "num_hidden_layers", 10**6, r"num_hidden_layers is 1000000; flash-edge accepts at most 256"),
    ("transformer", "pos_embed_max_size", 4096, r"pos_embed_max_size is 4096; flash-edge accepts at most 1024"),
    ("transformer", "pos_embed_max_size", 1000, r"pos_embed_max_size 1000 .* GiB position table"),
    ("vae_decoder", "block_out_channels", [10**7], r"block_out_channels holds 10000000"),
])
def test_config_numbers_are_bounded_before_a_library_allocates(bundle, part, key, value, pattern):
    cfg = bundle / part / "config.json"
    data = json.loads(cfg.read_text())
    data[key] = value
    if key == "pos_embed_max_size" and value == 1000:
        data.update(num_attention_heads=24, attention_head_dim=64)  # SD3.5-Medium's width
    cfg.write_text(json.dumps(data))
    relist(bundle, f"{part}/config.json")
    refused(bundle, pattern)


def test_an_empty_safetensors_file_is_one_line(bundle):
    (bundle / "vae_decoder" / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    relist(bundle, "vae_decoder/diffusion_pytorch_model.safetensors")
    refused(bundle, r"cannot load .*vae_decoder as AutoencoderKL")


def test_token_ids_past_the_vocabulary_are_refused(bundle):
    edit(bundle, lambda m: m["generation"]["tokenizers"]["text_encoder"].update(vocab_size=100, pad_id=1))
    refused(bundle, r"the tokenizer gave id \d+, past the manifest's vocab_size 100")


# ------------------------------------------------------------------------- silently wrong output becomes an error
@pytest.mark.parametrize("change,pattern", [
    (lambda m: m["generation"]["sampler"]["sigmas"].__setitem__(1, float("nan")),
     r"generation\.sampler\.sigmas\[1\] must be finite, got nan"),
    (lambda m: m["generation"]["sampler"].update(guidance_scale=1e308),
     r"generation\.sampler\.guidance_scale must be from 0 to 100, got 1e\+308"),
    (lambda m: m["generation"]["sampler"].update(timestep_scale=float("inf")),
     r"generation\.sampler\.timestep_scale must be finite"),
    (lambda m: m["generation"]["sampler"].update(steps=2), r"generation\.sampler\.steps \(2\) disagrees with the 5 sigmas"),
    (lambda m: m["generation"]["sampler"]["timesteps"].__setitem__(0, 999.0),
     r"generation\.sampler\.timesteps\[0\] \(999\.0\) must be sigmas\[0\] x timestep_scale"),
    (lambda m: m["components"]["vae_decoder"]["outputs"][0].update(shape=[1, 3, 32, 32]),
     r"components\.vae_decoder\.outputs must be"),
])
def test_bad_numbers_are_errors_not_black_pictures(bundle, change, pattern):
    edit(bundle, change)
    refused(bundle, pattern)


def test_non_finite_model_output_is_an_error(torch_bundle):
    pipe = FlashPipeline.from_bundle(torch_bundle)
    session = pipe.sessions["transformer"]
    real = session._run
    session._run = lambda inputs: [np.full_like(o, np.nan) for o in real(inputs)]
    with pytest.raises(GenerationError, match=r"transformer returned non-finite values \(NaN or inf\) at step 1 of 4"):
        pipe(PROMPT, seed=0)


def test_sigmas_and_steps_must_agree_at_export(tmp_path):
    from flash_edge.cli.export import main

    assert main(["--target", "torch", "--steps", "2", "--sigmas", "0.9", "0.6", "0.3", "--out", str(tmp_path / "b"),
                 "--quiet"]) == 2
    assert not (tmp_path / "b").exists()
    from flash_edge.export import export_bundle

    with pytest.raises(InvalidInput, match=r"steps 2 disagrees with the sigmas given, which make 3 step\(s\)"):
        export_bundle("tiny", "torch", tmp_path / "b", steps=2, sigmas=[0.9, 0.6, 0.3])


def test_a_manifest_nested_too_deep_is_one_line(bundle):
    (bundle / "manifest.json").write_text('{"format": "flash-edge-bundle", "x": ' + "[" * 100_000 + "]" * 100_000 + "}")
    refused(bundle, r"manifest\.json is not valid JSON \(RecursionError")


# ------------------------------------------------------------------------- 5. distillation resume never unpickles code
def test_a_planted_training_state_does_not_run(tmp_path):
    import pickle

    from flash_edge.distill.cli import load_state

    canary = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (open, (str(canary), "w"))

    state = tmp_path / "train_state.pt"
    state.write_bytes(pickle.dumps({"step": 1, "x": Evil()}))
    with pytest.raises(FlashError, match=r"train_state\.pt is not a training state this run wrote"):
        load_state(state)
    assert not canary.exists()
    import torch

    torch.save({"step": 3, "optimizer": {"state": {}, "param_groups": []}, "generator": torch.Generator().get_state()},
               state)
    assert load_state(state)["step"] == 3  # what the trainer writes still loads


@pytest.mark.parametrize("backend, pattern", [
    ("onnx", r"cannot load ONNX model .*External data path escapes model directory"),
    ("openvino", r"OpenVINO cannot load ONNX model .*outside the base directory")])
def test_onnx_external_data_outside_the_bundle_is_refused(onnx_fp32_bundle, tmp_path, backend, pattern):
    """ONNX keeps external-data locations inside the model file, out of the manifest's sight; ONNX Runtime and
    OpenVINO (which reads the same files) refuse those that leave the model's folder, and the refusal is one
    line."""
    import onnx

    if backend == "openvino":
        pytest.importorskip("openvino", reason="the openvino backend needs the openvino package")

    bundle = tmp_path / "bundle"
    shutil.copytree(onnx_fp32_bundle, bundle)
    rel = json.loads((bundle / "manifest.json").read_text())["components"]["vae_decoder"]["path"]
    model = onnx.load(str(bundle / rel))
    onnx.save_model(model, str(bundle / rel), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.data", size_threshold=1024)
    (bundle / Path(rel).parent / "weights.data").rename(tmp_path / "weights.data")
    model = onnx.load(str(bundle / rel), load_external_data=False)
    for t in model.graph.initializer:
        for entry in t.external_data:
            if entry.key == "location":
                entry.value = "../../weights.data"
    onnx.save_model(model, str(bundle / rel))
    relist(bundle, rel)
    refused(bundle, pattern, backend=backend)
