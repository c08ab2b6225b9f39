"""The model family and the teacher's training: schedules, VAE, latent scaling, rectified flow, saving."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flash_edge.distill import flow, teacher
from flash_edge.distill.dataset import ShapesDataset
from flash_edge.distill.models import Family, tiny_test_config
from flash_edge.sampler import flow_sigmas

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


@pytest.fixture(scope="module")
def data():
    x, prompts = ShapesDataset(16, seed=0, size=32).arrays()
    return torch.from_numpy(x), prompts


@pytest.mark.parametrize("steps", [1, 2, 4, 8])
def test_schedule_is_the_sdk_sampler_schedule(steps):
    assert np.array_equal(flow.schedule(steps, 3.0).numpy(), flow_sigmas(steps, 3.0))


def test_teacher_schedule_extends_past_the_bundles_step_limit():
    s = flow.schedule(40, 3.0)
    assert s.shape == (41,) and s[0] == 1.0 and s[-1] == 0.0 and bool(torch.all(s[1:] < s[:-1]))
    assert np.array_equal(s.numpy(), flow_sigmas(40, 3.0))  # one schedule: the sampler's


def test_vae_loss_decreases_on_a_fixed_batch(family, data):
    images = data[0][:8]
    vae = family.vae.train()
    params = list(vae.parameters())
    opt = torch.optim.Adam(params, lr=2e-3)
    losses = []
    for _ in range(12):
        loss = teacher.vae_loss(family, images, torch.Generator().manual_seed(0))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    vae.eval()
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses


def test_latent_scaling_normalises_the_dataset(family, data):
    images = data[0]
    scale, shift = teacher.fit_latent_scaling(family, images)
    assert family.vae.config.scaling_factor == pytest.approx(scale)
    assert family.vae.config.shift_factor == pytest.approx(shift)
    z = teacher.encode_dataset(family, images)
    assert z.shape == (16, 16, 4, 4)
    assert abs(float(z.mean())) < 1e-4 and float(z.std()) == pytest.approx(1.0, abs=1e-4)


def test_flow_loss_decreases_and_trains_text_encoders(family, data):
    images, prompts = data
    teacher.fit_latent_scaling(family, images)
    latents = teacher.encode_dataset(family, images)
    params = teacher.teacher_params(family)
    te_before = family.text_encoder.text_model.embeddings.token_embedding.weight.detach().clone()
    opt = torch.optim.AdamW(params, lr=3e-3)
    batch = teacher.draw_batch(torch.Generator().manual_seed(0), 8, len(latents), tuple(latents.shape[1:]), dropout=0.25)
    losses = [teacher.teacher_step(family, latents, prompts, batch, params, opt) for _ in range(8)]
    assert losses[-1] < 0.85 * losses[0], losses
    assert not torch.equal(te_before, family.text_encoder.text_model.embeddings.token_embedding.weight)


def test_conditioning_is_the_sdk_layout(family):
    """Family.encode == flash_edge.conditioning.build_conditioning on the same CLIP outputs (what the SDK
    pipeline feeds the transformer), with zero padding from 32 CLIP features to joint_attention_dim 48."""
    from flash_edge.components import ClipTextEncoder
    from flash_edge.conditioning import TextLayout, build_conditioning

    prompt = "a red circle on the left"
    with torch.no_grad():
        h, p = family.encode([prompt])
        ids_l, ids_g = family.token_ids([prompt])
        outs = [tuple(t.numpy() for t in ClipTextEncoder(te)(ids))
                for te, ids in ((family.text_encoder, ids_l), (family.text_encoder_2, ids_g))]
        h2, _ = family.encode(["a blue circle on the left"])
    layout = TextLayout(clip_tokens=77, t5_tokens=0, joint_attention_dim=48, clip_hidden_dims=(16, 16), pooled_dims=(16, 16))
    ref_h, ref_p = build_conditioning(layout, outs[0], outs[1])
    assert h.shape == (1, 77, 48) and np.array_equal(h.numpy(), ref_h) and np.array_equal(p.numpy(), ref_p)
    assert h[..., 32:].abs().max() == 0 and not torch.allclose(h, h2)


def test_saved_family_loads_through_the_sdk_loader(family, tmp_path):
    from flash_edge.models import load_model

    family.save(tmp_path / "m")
    model = load_model(tmp_path / "m")
    back = Family.load(tmp_path / "m")
    x, s = torch.randn(2, 16, 4, 4), torch.tensor([0.7, 0.3])
    cond = family.encode(["a red circle on the left", "two blue squares"])
    with torch.no_grad():
        ref = family.velocity(family.transformer, x, s, cond)
        assert torch.allclose(back.velocity(back.transformer, x, s, back.encode(["a red circle on the left",
                                                                                "two blue squares"])), ref, atol=1e-6)
        sdk = model.transformer(hidden_states=x, timestep=s * 1000, encoder_hidden_states=cond[0],
                                pooled_projections=cond[1], return_dict=False)[0]
    assert torch.allclose(sdk, ref, atol=1e-6)
    assert model.vae.config.scaling_factor == pytest.approx(family.vae.config.scaling_factor)


def test_generate_makes_uint8_pictures(family):
    im = flow.generate(family, family.transformer, ["a red circle on the left"] * 2, [0, 1], steps=2, guidance=2.0)
    assert im.shape == (2, 32, 32, 3) and im.dtype == np.uint8
    assert not np.array_equal(im[0], im[1])  # different seeds, different starting noise


@pytest.mark.parametrize("ema", [0.0, 0.5])
def test_teacher_training_resumes_exactly(data, ema):
    """Stopping after 2 steps and resuming from the checkpointed state == 4 steps straight (with an EMA too:
    the checkpoint holds the average and the raw weights)."""
    images, prompts = data
    runs = []
    for split_at in (None, 2):
        fam = Family.build(tiny_test_config(32), seed=0)
        teacher.fit_latent_scaling(fam, images)
        latents = teacher.encode_dataset(fam, images)
        states = []
        if split_at:
            teacher.train_teacher(fam, latents, prompts, split_at, batch=4, seed=0, warmup=2,
                                  checkpoint=states.append, every=split_at, ema=ema)
            teacher.train_teacher(fam, latents, prompts, 4, batch=4, seed=0, warmup=2, resume=states[-1], ema=ema)
        else:
            teacher.train_teacher(fam, latents, prompts, 4, batch=4, seed=0, warmup=2, ema=ema)
        runs.append(fam)
    for (n, p), q in zip(runs[0].transformer.named_parameters(), runs[1].transformer.parameters()):
        assert torch.allclose(p, q, atol=1e-7), n


def test_ema_teacher_ends_with_the_average_and_checkpoints_it(data):
    """ema=0.5 over 3 steps: the average is w0/8 + w1/8 + w2/4 + w3/2 of the raw weights w_i after step i; each
    checkpoint sees the average while the raw weights travel in its state, and the family ends with it."""
    images, prompts = data
    fam = Family.build(tiny_test_config(32), seed=0)
    teacher.fit_latent_scaling(fam, images)
    latents = teacher.encode_dataset(fam, images)
    name, param = next((n, p) for n, p in fam.transformer.named_parameters() if p.dim() > 1)
    w0, seen = param.detach().clone(), []
    teacher.train_teacher(fam, latents, prompts, 3, batch=4, seed=0, warmup=2, ema=0.5, every=1,
                          checkpoint=lambda st: seen.append((param.detach().clone(), st["raw_weights"][0][name])))
    (a1, w1), (a2, w2), (a3, w3) = seen
    assert torch.allclose(a1, (w0 + w1) / 2, atol=1e-7) and torch.allclose(a3, w0 / 8 + w1 / 8 + w2 / 4 + w3 / 2,
                                                                             atol=1e-7)
    assert not torch.allclose(a3, w3)  # the checkpoint saw the average, not the raw weights
    assert torch.equal(param.detach(), a3)  # and the family keeps the average at the end
