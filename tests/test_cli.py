"""The commands as a user runs them: flash-export -> flash-generate -> PNG, and every bad input as one line
on stderr with exit status 2 (no traceback, nothing half-written)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flash_edge.cli import export as export_cli
from flash_edge.cli import generate as generate_cli

sys.path.insert(0, str(Path(__file__).parent))  # the shared test helpers beside this file (importlib mode)
from helpers import assert_one_line_error, run_cli  # noqa: E402


def test_export_then_generate_writes_a_png_with_provenance(torch_bundle, tmp_path):
    out = tmp_path / "x.png"
    code, err = run_cli(generate_cli.main, "--bundle", torch_bundle, "--prompt", "a red circle", "--seed", 0,
                        "--out", out)
    assert code == 0, err
    assert "step 4/4" in err  # progress on stderr
    image = Image.open(out)
    assert image.size == (64, 64) and image.mode == "RGB"
    assert image.text == {"prompt": "a red circle", "seed": "0", "steps": "4", "backend": "torch", "model": "tiny",
                          "source": str(torch_bundle), "software": "flash-edge"}


def test_same_seed_gives_the_same_bytes_and_model_equals_bundle(torch_bundle, tmp_path):
    a, b, c, d = (tmp_path / f"{n}.png" for n in "abcd")
    for out in (a, b):
        assert run_cli(generate_cli.main, "--bundle", torch_bundle, "--prompt", "a blue square", "--out", out,
                       "--quiet")[0] == 0
    assert a.read_bytes() == b.read_bytes()
    assert run_cli(generate_cli.main, "--model", "tiny", "--prompt", "a blue square", "--out", c, "--quiet")[0] == 0
    # Same pixels (the text metadata names the source, so bytes differ only there).
    np.testing.assert_array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(c)))
    assert run_cli(generate_cli.main, "--bundle", torch_bundle, "--prompt", "a blue square", "--seed", 1,
                   "--out", d, "--quiet")[0] == 0
    assert not np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(d)))


def test_console_scripts_are_installed_and_show_an_example():
    for name in ("flash-export", "flash-generate"):
        exe = Path(sys.executable).with_name(name)
        out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, check=True).stdout
        assert "example:" in out and name in out


def test_manifest_records_every_constant(torch_bundle, tiny_dir):
    m = json.loads((torch_bundle / "manifest.json").read_text())
    assert m["format_version"] == 2 and m["target"] == "torch" and m["parity"]["status"] == "passed"
    g = m["generation"]
    vae = json.loads((tiny_dir / "vae" / "config.json").read_text())  # fitted on the training data, not 1 and 0
    assert vae["scaling_factor"] != 1.0 and vae["shift_factor"] != 0.0
    assert (g["latent"]["scaling_factor"], g["latent"]["shift_factor"]) == (vae["scaling_factor"], vae["shift_factor"])
    assert g["sampler"]["steps"] == 4 and len(g["sampler"]["sigmas"]) == 5 and g["sampler"]["sigmas"][-1] == 0
    assert g["text"]["t5"] == "zeros" and g["text"]["sequence_length"] == 77  # tiny's flash_edge.json: no T5 slot
    tr = m["components"]["transformer"]
    assert [t["name"] for t in tr["inputs"]] == ["latent", "timestep", "encoder_hidden_states", "pooled_projections"]
    assert tr["outputs"] == [{"name": "velocity", "shape": [1, 16, 8, 8], "dtype": "float32"}]
    # every file of the bundle is listed with size and sha256, the manifest itself excepted
    on_disk = {p.relative_to(torch_bundle).as_posix() for p in torch_bundle.rglob("*") if p.is_file()}
    assert set(m["files"]) == on_disk - {"manifest.json"}
    assert (torch_bundle / "tokenizer" / "tokenizer.json").is_file()
    assert (torch_bundle / "tokenizer" / "vocab.json").is_file() and (torch_bundle / "tokenizer" / "merges.txt").is_file()


# ----------------------------------------------------------------------------- bad input, one line each
@pytest.mark.parametrize("argv,pattern", [
    (["--target", "tensorrt"], r"unknown target 'tensorrt'; choose one of"),
    (["--target", "torch", "--precision", "int3"], r"target torch does not support precision 'int3'; choose one of fp32"),
    (["--target", "torch", "--model", "/nonexistent/model"], r"model folder /nonexistent/model does not exist"),
    (["--target", "torch", "--height", "100"], r"height must be a positive multiple of 16"),
    (["--target", "torch", "--steps", "9"], r"steps must be an integer from 1 to 8, got 9"),
    (["--target", "torch", "--steps", "0"], r"steps must be an integer from 1 to 8, got 0"),
    (["--target", "torch", "--steps", "two"], r"expected an integer, got 'two'"),
])
def test_export_bad_input(tmp_path, argv, pattern):
    out = tmp_path / "b"
    code, err = run_cli(export_cli.main, *argv, "--out", out, "--quiet")
    assert_one_line_error(code, err, pattern)
    assert not out.exists() and list(tmp_path.iterdir()) == []  # nothing half-written


def test_export_refuses_an_existing_output_without_force(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "keep.txt").write_text("mine")
    code, err = run_cli(export_cli.main, "--target", "torch", "--out", tmp_path / "b", "--quiet")
    assert_one_line_error(code, err, r"already exists; pass --force to replace it")
    assert (tmp_path / "b" / "keep.txt").read_text() == "mine"


def test_export_of_pickle_only_folder_is_refused(tiny_dir, tmp_path):
    import torch

    model = tmp_path / "model"
    shutil.copytree(tiny_dir, model)
    (model / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    torch.save({"w": torch.zeros(1)}, model / "vae" / "diffusion_pytorch_model.bin")
    code, err = run_cli(export_cli.main, "--target", "torch", "--model", model, "--out", tmp_path / "b", "--quiet")
    assert_one_line_error(code, err, r"vae holds only pickle weights .*safetensors only")
    assert not (tmp_path / "b").exists()


def test_failed_export_leaves_nothing_behind(tmp_path, monkeypatch):
    """A failure after artifacts were written (here: the parity gate) removes the temporary bundle."""
    from flash_edge.errors import ParityError
    from flash_edge.export import parity

    def failing_gate(*a, **k):
        raise ParityError("torch fp32 export fails the parity gate: image 12.0 dB < 60.0 dB")

    monkeypatch.setattr("flash_edge.export.build.run_gate", failing_gate)
    assert parity.run_gate is not failing_gate
    code, err = run_cli(export_cli.main, "--target", "torch", "--out", tmp_path / "b", "--quiet")
    assert_one_line_error(code, err, r"fails the parity gate: image 12.0 dB < 60.0 dB")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv,pattern", [
    (["--prompt", "   "], r"prompt is empty"),
    (["--prompt", "x", "--backend", "metal"], r"unknown backend 'metal'; choose one of: auto, torch"),
    (["--prompt", "x", "--steps", "3"], r"fixed in a bundle"),
])
def test_generate_bad_input(torch_bundle, tmp_path, argv, pattern):
    out = tmp_path / "x.png"
    code, err = run_cli(generate_cli.main, "--bundle", torch_bundle, *argv, "--out", out)
    assert_one_line_error(code, err, pattern)
    assert not out.exists()


@pytest.mark.parametrize("steps", [0, 1001])
def test_generate_model_steps_out_of_range(tmp_path, steps):
    code, err = run_cli(generate_cli.main, "--model", "tiny", "--prompt", "x", "--steps", steps,
                        "--out", tmp_path / "x.png")
    assert_one_line_error(code, err, rf"steps must be an integer from 1 to 1000, got {steps}")


def test_settings_outside_training_warn_in_one_line_and_still_run(tmp_path):
    """tiny's flash_edge.json says 4 steps at 64x64: 2 steps, or 128x128, are warned about (one line each,
    also with --quiet), not refused; the export's manifest keeps the warning."""
    out = tmp_path / "two.png"
    code, err = run_cli(generate_cli.main, "--model", "tiny", "--prompt", "a red circle on the left", "--steps", 2,
                        "--out", out, "--quiet")
    assert code == 0 and out.is_file()
    assert err.splitlines() == ["flash-generate: warning: tiny was distilled for 4 steps; at 2 it may draw a "
                                "weaker picture"]
    code, err = run_cli(export_cli.main, "--target", "torch", "--height", 128, "--width", 128, "--skip-parity",
                        "--out", tmp_path / "b", "--quiet")
    assert code == 0 and err.splitlines() == [
        "flash-export: warning: tiny was trained at 64x64; at 128x128 expect a broken picture"]
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert "tiny was trained at 64x64; at 128x128 expect a broken picture" in manifest["warnings"]
    code, err = run_cli(generate_cli.main, "--model", "tiny", "--prompt", "x", "--out", tmp_path / "four.png",
                        "--quiet")
    assert code == 0 and err == ""  # its own setting: nothing to say


def test_the_api_warns_too(tiny_dir):
    from flash_edge.errors import OutOfRangeWarning
    from flash_edge.pipeline import FlashPipeline

    with pytest.warns(OutOfRangeWarning, match="distilled for 4 steps; at 2"):
        FlashPipeline.from_model("tiny", steps=2)


def test_generate_refuses_to_overwrite_without_force(torch_bundle, tmp_path):
    out = tmp_path / "x.png"
    out.write_bytes(b"mine")
    code, err = run_cli(generate_cli.main, "--bundle", torch_bundle, "--prompt", "x", "--out", out)
    assert_one_line_error(code, err, r"already exists; pass --force")
    assert out.read_bytes() == b"mine"
    assert run_cli(generate_cli.main, "--bundle", torch_bundle, "--prompt", "x", "--out", out, "--force",
                   "--quiet")[0] == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def bundle_copy(torch_bundle, tmp_path):
    dst = tmp_path / "bundle"
    shutil.copytree(torch_bundle, dst)
    return dst


def _edit_manifest(bundle: Path, **changes) -> None:
    mf = bundle / "manifest.json"
    m = json.loads(mf.read_text())
    m.update(changes)
    mf.write_text(json.dumps(m))


@pytest.mark.parametrize("break_it,pattern", [
    (lambda b: _edit_manifest(b, format_version=3),
     r"has format version 3 .*reads versions 1 and 2: export the bundle again"),
    (lambda b: (b / "manifest.json").write_text("{oops"), r"manifest.json is not valid JSON"),
    (lambda b: (b / "manifest.json").unlink(), r"is not a flash-edge bundle: it has no manifest.json"),
    (lambda b: (b / "transformer" / "config.json").unlink(), r"bundle file .*transformer/config.json is missing"),
    (lambda b: (b / "transformer" / "config.json").write_text(
        (b / "transformer" / "config.json").read_text().replace('"num_layers": 6', '"num_layers": 7')),
     r"transformer/config.json does not match its sha256"),
    (lambda b: (b / "vae_decoder" / "diffusion_pytorch_model.safetensors").write_bytes(b"\0" * 10),
     r"diffusion_pytorch_model.safetensors has 10 bytes, the manifest says \d+: it is truncated"),
])
def test_broken_bundles_are_refused(bundle_copy, tmp_path, break_it, pattern):
    break_it(bundle_copy)
    code, err = run_cli(generate_cli.main, "--bundle", bundle_copy, "--prompt", "x", "--out", tmp_path / "x.png")
    assert_one_line_error(code, err, pattern)


def test_missing_bundle(tmp_path):
    code, err = run_cli(generate_cli.main, "--bundle", tmp_path / "nope", "--prompt", "x", "--out", tmp_path / "x.png")
    assert_one_line_error(code, err, r"does not exist or is not a directory")


@pytest.mark.parametrize("command", ["export", "generate", "bench"])
def test_every_command_says_its_version(command, capsys):
    import importlib

    from flash_edge import __version__

    main = importlib.import_module(f"flash_edge.cli.{command}").main
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"flash-{command} (flash-edge {__version__})"


# ----------------------------------------------------------------------------- batch generation
def test_batch_generation_loads_once_and_equals_single_runs(torch_bundle, tmp_path):
    """2 prompts x 2 seeds from a prompts file: one load, four PNGs named by prompt and seed, each equal to the
    single-picture command's; the contact sheet holds them (a row per prompt, a column per seed)."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# shapes\na red circle on the left\n\na blue square at the top\n")
    code, err = run_cli(generate_cli.main, "--bundle", torch_bundle, "--prompts", prompts, "--seeds", "3,7",
                        "--out", tmp_path / "b.png", "--grid", tmp_path / "grid.png")
    assert code == 0, err
    assert err.count("loading bundle") == 1 and "backends: text_encoder torch" in err
    names = sorted(p.name for p in tmp_path.glob("b-*.png"))
    assert names == ["b-p1-s3.png", "b-p1-s7.png", "b-p2-s3.png", "b-p2-s7.png"]
    sheet = np.asarray(Image.open(tmp_path / "grid.png"))
    assert sheet.shape == (2 * 64 + 2, 2 * 64 + 2, 3)
    for i, prompt in enumerate(("a red circle on the left", "a blue square at the top")):
        for j, seed in enumerate((3, 7)):
            one = tmp_path / f"one-{i}-{seed}.png"
            assert run_cli(generate_cli.main, "--bundle", torch_bundle, "--prompt", prompt, "--seed", seed,
                           "--out", one, "--quiet")[0] == 0
            single = np.asarray(Image.open(one))
            np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / f"b-p{i + 1}-s{seed}.png")), single)
            np.testing.assert_array_equal(sheet[i * 66:i * 66 + 64, j * 66:j * 66 + 64], single)
    assert Image.open(tmp_path / "b-p2-s7.png").text["prompt"] == "a blue square at the top"


def test_num_images_counts_from_seed(torch_bundle, tmp_path):
    code, err = run_cli(generate_cli.main, "--bundle", torch_bundle, "--prompt", "a red circle", "--seed", 5,
                        "--num-images", 3, "--out", tmp_path / "r.png", "--quiet")
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.glob("r-*.png")) == ["r-s5.png", "r-s6.png", "r-s7.png"]


@pytest.mark.parametrize("argv,pattern", [
    (["--prompt", "x", "--seeds", "0-2", "--num-images", "2"], r"--num-images counts from --seed"),
    (["--prompt", "x", "--seeds", "4-1"], r"--seeds range '4-1' runs backwards"),
    (["--prompt", "x", "--seeds", "1,1"], r"lists a seed twice"),
    (["--prompt", "x", "--seeds", "a-b"], r"--seeds takes integers and ranges"),
    (["--prompt", "x", "--seeds", "0-20000"], r"more than 10000 pictures"),
    (["--prompt", "x", "--num-images", "0"], r"--num-images must be at least 1"),
    (["--prompt", "x", "--threads", "0"], r"--threads must be a positive integer"),
    (["--prompts", "EMPTY"], r"holds no prompt"),
    (["--prompts", "MISSING"], r"prompts file .* does not exist"),
])
def test_batch_bad_input(torch_bundle, tmp_path, argv, pattern):
    (tmp_path / "EMPTY").write_text("# nothing\n\n")
    argv = [str(tmp_path / a) if a in ("EMPTY", "MISSING") else a for a in argv]
    code, err = run_cli(generate_cli.main, "--bundle", torch_bundle, *argv, "--out", tmp_path / "x.png")
    assert_one_line_error(code, err, pattern)
    assert list(tmp_path.glob("*.png")) == []


# ----------------------------------------------------------------------------- flash-inspect
def test_inspect_shows_what_the_manifest_holds_and_verifies_files(torch_bundle, tmp_path, capsys):
    from flash_edge.cli import inspect as inspect_cli

    bundle = tmp_path / "b"
    shutil.copytree(torch_bundle, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert inspect_cli.main([str(bundle), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["components"].keys() == manifest["components"].keys()
    for name, c in d["components"].items():
        entry = manifest["components"][name]
        assert (c["target"], c["precision"]) == (entry["target"], entry["precision"])
        assert c["bytes"] == sum(manifest["files"][f]["size"] for f in entry["files"]) > 0
    assert d["bytes"] == sum((bundle / f).stat().st_size for f in manifest["files"])
    assert d["sampler"]["sigmas"] == manifest["generation"]["sampler"]["sigmas"]
    assert d["parity"]["status"] == manifest["parity"]["status"]
    assert d["verified"] == {"files": len(manifest["files"]), "sha256": True}

    assert inspect_cli.main([str(bundle)]) == 0
    text = capsys.readouterr().out
    assert "transformer     torch" in text and "sizes and sha256 match the manifest" in text
    assert f"parity      {manifest['parity']['status']}" in text

    # one changed byte: inspect says which file, in one line, exit 2; --no-verify still describes it
    f = bundle / manifest["components"]["transformer"]["files"][0]
    data = bytearray(f.read_bytes())
    data[-1] ^= 1
    f.write_bytes(bytes(data))
    code, err = run_cli(inspect_cli.main, bundle)
    assert_one_line_error(code, err, r"does not match its sha256 in the manifest")
    assert inspect_cli.main([str(bundle), "--no-verify"]) == 0
    assert "sha256 not checked: --no-verify" in capsys.readouterr().out


def test_inspect_refuses_what_is_not_a_bundle(tmp_path):
    from flash_edge.cli import inspect as inspect_cli

    code, err = run_cli(inspect_cli.main, tmp_path)
    assert_one_line_error(code, err, r"is not a flash-edge bundle: it has no manifest.json")


# ----------------------------------------------------------------------------- exporter options, declared once
@pytest.mark.parametrize("target", ["torch", "onnx", "coreml", "executorch"])
def test_a_misspelled_exporter_option_is_refused_not_ignored(target):
    """Each exporter class declares its options (flags and API-only ones) once; the base class refuses any other
    name and holds the API to the flags' choices, so ``compute_unit="CPU_ONLY"`` is an error, not the default."""
    from flash_edge.errors import InvalidInput
    from flash_edge.export import exporter_class, get_exporter

    with pytest.raises(InvalidInput, match=rf"unknown {target} option\(s\) \['chunk'\]; the {target} target takes"):
        get_exporter(target, None, chunk=2)
    defaults = exporter_class(target).option_defaults()
    assert get_exporter(target, None).options == defaults  # nothing given: every declared default


def test_api_options_follow_the_flags_choices():
    from flash_edge.errors import InvalidInput
    from flash_edge.export import get_exporter

    with pytest.raises(InvalidInput, match="--external-weights must be one of auto, always, never, got 'sometimes'"):
        get_exporter("executorch", None, external_weights="sometimes")
    with pytest.raises(InvalidInput, match="--compute-units must be one of"):
        get_exporter("coreml", None, compute_units="GPU")
    assert get_exporter("executorch", None).options["attention"] == "bmm"  # an API-only option, declared
