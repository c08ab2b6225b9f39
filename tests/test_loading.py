"""Loading diffusers folders: the tiny model round-trips; every broken folder gets a message naming the part."""

import json
import shutil

import pytest
import torch

from flash_edge.errors import InvalidInput, ModelLoadError
from flash_edge.models import load_model
from flash_edge.models.generation import generation_spec


@pytest.fixture
def folder(tiny_dir, tmp_path):
    dst = tmp_path / "model"
    shutil.copytree(tiny_dir, dst)
    return dst


def test_saved_tiny_folder_loads_into_diffusers_classes(tiny_dir):
    from diffusers import AutoencoderKL, SD3Transformer2DModel
    from transformers import CLIPTextModelWithProjection

    m = load_model(tiny_dir)
    assert isinstance(m.transformer, SD3Transformer2DModel)
    assert isinstance(m.vae, AutoencoderKL)
    assert isinstance(m.text_encoder, CLIPTextModelWithProjection)
    cfg = m.transformer.config
    assert cfg.qk_norm == "rms_norm" and tuple(cfg.dual_attention_layers) == (0, 1, 2)  # SD3.5-Medium features
    assert m.vae.config.latent_channels == 16 and m.vae.config.scaling_factor != 1.0  # fitted on its data
    # trained without the T5 slot, distilled for 4 steps at 64x64 (flash_edge.json)
    assert m.defaults == {"t5_tokens": 0, "steps": 4, "size": 64}
    assert m.text_encoder_3 is None and m.scheduler_config["shift"] == 3.0


def test_tiny_t5_variant_is_deterministic_and_keeps_the_shipped_weights(tmp_path):
    from flash_edge.models.tiny import SHIPPED, build_tiny

    a, b = build_tiny(tmp_path / "a", t5=True), build_tiny(tmp_path / "b", t5=True)
    assert (a / "text_encoder_3/model.safetensors").read_bytes() == (b / "text_encoder_3/model.safetensors").read_bytes()
    for sub in ("transformer/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors",
                "vae/diffusion_pytorch_model.safetensors", "tokenizer/tokenizer.json"):
        assert (a / sub).read_bytes() == (SHIPPED / sub).read_bytes(), sub
    m = load_model(a, t5=True)
    assert m.defaults == {} and generation_spec(m).text.t5_tokens == 256  # no flash_edge.json: diffusers' slots


@pytest.mark.parametrize("content,msg", [('{"t5_tokens": -1}', "t5_tokens must be an integer from 0 to 512"),
                                         ('{"t5_tokens": "none"}', "t5_tokens must be an integer"),
                                         ('{"steps": 9}', "steps must be an integer from 1 to 8, got 9"),
                                         ('{"size": true}', "size must be an integer from 8 to 8192, got True"),
                                         ("[1]", "does not hold a JSON object")])
def test_bad_defaults_file_is_refused(folder, content, msg):
    (folder / "flash_edge.json").write_text(content)
    with pytest.raises(ModelLoadError, match=msg):
        load_model(folder)


def test_missing_folder(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(tmp_path / "nope")


def test_not_a_diffusers_folder(tmp_path):
    with pytest.raises(ModelLoadError, match="model_index.json is missing"):
        load_model(tmp_path)


def test_missing_part_is_named(folder):
    shutil.rmtree(folder / "vae")
    with pytest.raises(ModelLoadError, match=r"incomplete: missing vae/"):
        load_model(folder)


def test_t5_requested_but_absent(folder):
    with pytest.raises(ModelLoadError, match=r"missing text_encoder_3/, tokenizer_3/ \(pass --no-t5"):
        load_model(folder, t5=True)


def test_pickle_only_weights_are_refused(folder):
    st = folder / "transformer" / "diffusion_pytorch_model.safetensors"
    torch.save({"w": torch.zeros(1)}, folder / "transformer" / "diffusion_pytorch_model.bin")
    st.unlink()
    with pytest.raises(ModelLoadError, match=r"only pickle weights \(diffusion_pytorch_model.bin\).*safetensors only"):
        load_model(folder)


def test_corrupt_safetensors(folder):
    f = folder / "text_encoder" / "model.safetensors"
    f.write_bytes(f.read_bytes()[:100])
    with pytest.raises(ModelLoadError, match=r"corrupt safetensors file .*text_encoder/model.safetensors"):
        load_model(folder)


def test_wrong_pipeline_class(folder):
    idx = json.loads((folder / "model_index.json").read_text())
    idx["_class_name"] = "StableDiffusionXLPipeline"
    (folder / "model_index.json").write_text(json.dumps(idx))
    with pytest.raises(ModelLoadError, match="StableDiffusionXLPipeline pipeline; flash-edge loads the SD3 family"):
        load_model(folder)


def test_bad_config_json(folder):
    (folder / "transformer" / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match=r"transformer/config.json is not valid JSON"):
        load_model(folder)


@pytest.mark.parametrize("h,w,msg", [(100, 128, "height must be a positive multiple of 16"),
                                     (128, 120, "width must be a positive multiple of 16"),
                                     (1024, 64, "exceeds what this model's position embedding covers")])
def test_bad_sizes(tiny_dir, h, w, msg):
    with pytest.raises(InvalidInput, match=msg):
        generation_spec(load_model(tiny_dir), h, w)


def test_non_square_size_within_position_embedding(tiny_dir):
    spec = generation_spec(load_model(tiny_dir), 96, 160)
    assert spec.latent.shape == (1, 16, 12, 20) and spec.component_spec("vae_decoder").outputs[0].shape == (1, 3, 96, 160)


def test_dynamic_shifting_scheduler_is_refused(folder):
    p = folder / "scheduler" / "scheduler_config.json"
    cfg = json.loads(p.read_text())
    cfg["use_dynamic_shifting"] = True
    p.write_text(json.dumps(cfg))
    with pytest.raises(InvalidInput, match="use_dynamic_shifting.*pass explicit sigmas"):
        generation_spec(load_model(folder))
