"""The three distillation stages, each a few iterations on the smallest family member."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from flash_edge.distill import dmd, flow, split, trajectory
from flash_edge.distill.dataset import ShapesDataset
from flash_edge.distill.models import Family, tiny_test_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py

PROMPTS = [s for s in ShapesDataset(8, seed=0, size=32).arrays()[1]]


@pytest.fixture(scope="module")
def sigmas():
    return flow.schedule(4, 3.0)


@pytest.fixture(scope="module")
def pairs(family, sigmas):
    noise = torch.randn(8, 16, 4, 4, generator=torch.Generator().manual_seed(0))
    return trajectory.make_ode_pairs(family, family.transformer, PROMPTS, noise, sigmas, guidance=3.0, substeps=4), noise


def _recorder(model):
    """Record the timesteps a transformer is called with (forward pre-hook)."""
    seen = []
    h = model.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["timestep"].detach().clone()), with_kwargs=True)
    return seen, h


def _snapshot(m):
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def _same(m, snap):
    return all(torch.equal(v, snap[k]) for k, v in m.state_dict().items())


# ----------------------------------------------------------------------------- stage 1
def test_ode_pairs_start_at_the_noise_and_converge_with_substeps(family, sigmas, pairs):
    points, noise = pairs
    assert points.shape == (8, 5, 16, 4, 4) and torch.equal(points[:, 0], noise)
    cond, uncond = family.encode(PROMPTS[:2]), family.encode([""] * 2)
    v = flow.model_velocity(family, family.transformer, cond, uncond, 3.0)
    with torch.no_grad():
        coarse = trajectory.teacher_trajectory(v, noise[:2], sigmas, substeps=1)
        plain = flow.euler(v, noise[:2], sigmas)  # the teacher's own 4-step Euler run
        fine = trajectory.teacher_trajectory(v, noise[:2], sigmas, substeps=32)
        mid = trajectory.teacher_trajectory(v, noise[:2], sigmas, substeps=8)
    assert torch.allclose(coarse[:, -1], plain, atol=1e-6)
    assert (mid[:, -1] - fine[:, -1]).norm() < 0.5 * (coarse[:, -1] - fine[:, -1]).norm()  # first-order convergence


def test_trajectory_loss_decreases_on_a_fixed_batch(family, sigmas, pairs):
    points, _ = pairs
    student = copy.deepcopy(family.transformer)
    params = list(student.parameters())
    opt = torch.optim.AdamW(params, lr=3e-3)
    batch = trajectory.draw_steps(torch.Generator().manual_seed(0), 8, 8, [0, 1, 2, 3])
    losses = [trajectory.trajectory_step(family, student, points, PROMPTS, batch, sigmas, params, opt) for _ in range(10)]
    assert losses[-1] < 0.7 * losses[0], losses


def test_trajectory_target_is_the_teacher_jump(family, sigmas, pairs):
    """A student whose velocity is exactly the jump between the teacher's points has zero loss."""
    points, _ = pairs
    step = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    jump = (points[torch.arange(8), step + 1] - points[torch.arange(8), step]) / (
        sigmas[step + 1] - sigmas[step]).reshape(-1, 1, 1, 1)

    class Oracle(torch.nn.Module):
        def forward(self, hidden_states, **kw):
            return (jump,)

    fam = copy.copy(family)
    assert trajectory.trajectory_loss(fam, Oracle(), points, family.encode(PROMPTS), step, sigmas).item() < 1e-10
    assert trajectory.trajectory_loss(fam, family.transformer, points, family.encode(PROMPTS), step, sigmas).item() > 1e-4


# ----------------------------------------------------------------------------- stage 2
def _dmd_state(family, sigmas, **cfg):
    student = copy.deepcopy(family.transformer)
    teacher = copy.deepcopy(family.transformer)
    return dmd.make_state(student, teacher, sigmas, dmd.DMDConfig(**cfg), lr_student=1e-3, lr_fake=1e-3)


def _batch(sigmas, seed=0):
    return dmd.draw_batch(torch.Generator().manual_seed(seed), 8, 8, (16, 4, 4), len(sigmas) - 1)


@pytest.mark.parametrize("share", [True, False])
def test_timestep_sharing_queries_the_teacher_where_the_students_next_step_runs(family, sigmas, share):
    """Sharing: the scores are compared at sigma_{i+1} of the student's own schedule (its interior levels only:
    never sigma = 1, never 0), on the student's x0 re-noised there with fresh noise. Random: anywhere in
    [0.02, 0.98], off the schedule."""
    state = _dmd_state(family, sigmas, share_timesteps=share)
    b = _batch(sigmas)
    seen, hook = _recorder(state.teacher)
    inputs = []
    h2 = state.teacher.register_forward_pre_hook(lambda m, a, kw: inputs.append(kw["hidden_states"].clone()),
                                                 with_kwargs=True)
    try:
        cond, uncond = family.encode([PROMPTS[i] for i in b["idx"].tolist()]), family.encode([""] * 8)
        _, logs = dmd.generator_loss(family, state, b, cond, uncond)
    finally:
        hook.remove(), h2.remove()
    assert len(seen) == 2  # cond + uncond (CFG)
    if share:
        k = len(sigmas) - 1
        expected_t = sigmas[(b["step"] + 1).clamp(1, k - 1)]
        assert all(torch.equal(t, expected_t * 1000.0) for t in seen)
        assert set(seen[0].tolist()) <= set((sigmas[1:-1] * 1000).tolist())  # interior levels only
        assert 1000.0 not in seen[0].tolist() and 0.0 not in seen[0].tolist()
        t = expected_t.reshape(-1, 1, 1, 1)
        assert torch.allclose(inputs[0], (1 - t) * logs["x0"] + t * b["eps_dmd"])  # x0 re-noised, fresh noise
    else:
        t = seen[0] / 1000.0
        assert not set(seen[0].tolist()) & set((sigmas[:-1] * 1000).tolist())
        assert bool(torch.all((t >= 0.02 - 1e-6) & (t <= 0.98 + 1e-6)))


def test_sharing_needs_interior_levels():
    one_step = flow.schedule(1, 3.0)
    with pytest.raises(ValueError, match="2 or more steps"):
        dmd.shared_timesteps(one_step, torch.tensor([0]))
    two = flow.schedule(2, 3.0)
    assert torch.equal(dmd.shared_timesteps(two, torch.tensor([0, 1])), two[[1, 1]])


def test_each_update_changes_only_its_own_weights(family, sigmas):
    state = _dmd_state(family, sigmas)
    snaps = {n: _snapshot(m) for n, m in (("student", state.student), ("teacher", state.teacher),
                                          ("fake", state.fake), ("disc", state.disc))}
    b = _batch(sigmas)
    cond, uncond = family.encode([PROMPTS[i] for i in b["idx"].tolist()]), family.encode([""] * 8)
    loss, logs = dmd.generator_loss(family, state, b, cond, uncond)
    from flash_edge.distill.distributed import optimizer_step

    optimizer_step(loss, state.student_params, state.opt_student)
    assert not _same(state.student, snaps["student"])
    assert all(_same(m, snaps[n]) for n, m in (("teacher", state.teacher), ("fake", state.fake), ("disc", state.disc)))
    snaps["student"] = _snapshot(state.student)
    floss, _ = dmd.fake_loss(family, state, logs["x0"], torch.randn(8, 16, 4, 4), b, cond, logs["t"].clamp(max=0.98))
    optimizer_step(floss, state.fake_params, state.opt_fake)
    assert not _same(state.fake, snaps["fake"]) and not _same(state.disc, snaps["disc"])
    assert _same(state.student, snaps["student"]) and _same(state.teacher, snaps["teacher"])


def test_dmd_gradient_vanishes_when_the_fake_score_is_the_real_score(family, sigmas):
    state = _dmd_state(family, sigmas, guidance=1.0, adv_weight=0.0)
    before = _snapshot(state.student)
    b = _batch(sigmas)
    cond = family.encode([PROMPTS[i] for i in b["idx"].tolist()])
    loss, _ = dmd.generator_loss(family, state, b, cond, None)
    grads = torch.autograd.grad(loss, state.student_params, allow_unused=True)
    assert max(float(g.abs().max()) for g in grads if g is not None) == 0.0
    # ...and is not zero once the fake model has moved off the teacher
    with torch.no_grad():
        for p in state.fake.parameters():
            p.add_(0.05 * torch.randn_like(p))
    loss, _ = dmd.generator_loss(family, state, b, cond, None)
    grads = torch.autograd.grad(loss, state.student_params, allow_unused=True)
    assert max(float(g.abs().max()) for g in grads if g is not None) > 0.0
    assert _same(state.student, before)


def test_fake_score_and_heads_learn_on_a_fixed_batch(family, sigmas, pairs):
    state = _dmd_state(family, sigmas)
    b = _batch(sigmas)
    cond = family.encode([PROMPTS[i] for i in b["idx"].tolist()])
    with torch.no_grad():
        x0 = torch.randn(8, 16, 4, 4, generator=torch.Generator().manual_seed(3)) * 0.5 + 1.0  # "student outputs"
    real = pairs[0][:, -1]
    from flash_edge.distill.distributed import optimizer_step

    logs = []
    for _ in range(15):
        loss, lg = dmd.fake_loss(family, state, x0, real, b, cond, torch.full((8,), 0.3))
        optimizer_step(loss, state.fake_params, state.opt_fake)
        logs.append(lg)
    assert logs[-1]["fake_flow"] < 0.8 * logs[0]["fake_flow"] and logs[-1]["disc"] < logs[0]["disc"], logs


def test_train_dmd_runs_its_stage(family, sigmas, pairs):
    state = _dmd_state(family, sigmas)
    before = _snapshot(state.student)
    hist, variances = dmd.train_dmd(family, state, PROMPTS, pairs[0][:, -1], iters=2, batch=4, variance_at=(0, 2),
                                    variance_batches=2)
    assert len(hist) == 2 and {"dmd", "adv_g", "fake_flow", "disc"} <= set(hist[0])
    assert all(np.isfinite(v) for h in hist for v in h.values())
    assert not _same(state.student, before)
    assert [v["iteration"] for v in variances] == [0, 2]  # before the first update and after the last
    assert all(v[rule]["relative"] >= 0 for v in variances for rule in ("sharing", "random"))


def test_gradient_variance_is_the_spread_of_per_batch_gradients(family, sigmas, pairs):
    state = _dmd_state(family, sigmas)
    before = _snapshot(state.student)
    shape = tuple(pairs[0].shape[2:])
    one = dmd.gradient_variance(family, state, PROMPTS, shape, batches=1, batch=4, seed=3)
    assert one["sharing"]["variance"] <= 1e-9 * one["sharing"]["mean_norm2"]  # one batch: nothing to spread
    two = dmd.gradient_variance(family, state, PROMPTS, shape, batches=2, batch=4, seed=3)
    again = dmd.gradient_variance(family, state, PROMPTS, shape, batches=2, batch=4, seed=3)
    assert two == again  # seeded batches: the same numbers
    for rule in ("sharing", "random"):
        r = two[rule]
        assert r["mean_norm2"] > 0 and r["variance"] > 0 and np.isclose(r["relative"], r["variance"] / r["mean_norm2"])
    assert two["sharing"] != two["random"]  # the rules query the scores at different timesteps
    assert _same(state.student, before) and all(p.grad is None for p in state.student_params)  # measured, not trained


# ----------------------------------------------------------------------------- stage 3
def test_split_steps_follow_the_timestep_ranges(sigmas):
    low, high = split.split_steps(sigmas)
    t = sigmas[:-1] * 1000
    assert low and high and sorted(low + high) == list(range(4))
    assert all(0 < t[i] <= 500 for i in low) and all(t[i] > 500 for i in high)
    assert split.split_steps(flow.schedule(2, 3.0)) == ([1], [0])


def test_split_copies_only_see_their_own_timesteps(family, sigmas, pairs):
    points, _ = pairs
    student = copy.deepcopy(family.transformer)
    before = _snapshot(student)
    cond = family.encode(PROMPTS)
    seen: dict[int, list] = {}

    def loss_fn(model, steps, it):
        step = torch.tensor([steps[i % len(steps)] for i in range(8)])
        rec, h = _recorder(model)
        try:
            return trajectory.trajectory_loss(family, model, points, cond, step, sigmas)
        finally:
            h.remove()
            seen.setdefault(id(model), []).extend(float(x) for t in rec for x in t)

    low, high = split.split_finetune(student, sigmas, loss_fn, iters=3, lr=1e-3, anchor_rate=0.1)
    t_low, t_high = set(seen[id(low)]), set(seen[id(high)])
    assert t_low and t_high and max(t_low) <= 500 < min(t_high)
    assert _same(student, before) and not _same(low, before) and not _same(high, before)


def test_anchor_pulls_back_to_the_start(family):
    m = copy.deepcopy(family.transformer)
    start = {n: p.detach().clone() for n, p in m.named_parameters()}
    with torch.no_grad():
        for p in m.parameters():
            p.add_(1.0)
    split.anchor(m, start, 0.25)
    assert all(torch.allclose(p, start[n] + 0.75) for n, p in m.named_parameters())


def test_merge_is_the_exact_weight_interpolation_and_ratio_is_chosen_on_the_metric(family):
    a, b = copy.deepcopy(family.transformer), copy.deepcopy(family.transformer)
    with torch.no_grad():
        for p in b.parameters():
            p.add_(torch.randn_like(p))
    m = split.merge(a, b, 0.3)
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    assert all(torch.equal(p, 0.3 * pa[n] + 0.7 * pb[n]) for n, p in m.named_parameters())
    assert all(torch.equal(p, pb[n]) for n, p in split.merge(a, b, 0.0).named_parameters())
    w = "pos_embed.proj.weight"
    target = (0.7 * pa[w] + 0.3 * pb[w]).detach()
    best, scores = split.choose_ratio(a, b, [0.0, 0.3, 0.5, 0.7, 1.0],
                                      lambda mod: -float((dict(mod.named_parameters())[w].detach() - target).norm()))
    assert best == 0.7 and len(scores) == 5
    with pytest.raises(ValueError, match="merge ratio"):
        split.merge(a, b, 1.5)


# ----------------------------------------------------------------------------- decoder fine-tuning
def test_decoder_finetune_trains_the_decoder_alone_and_keeps_the_latent_space(tmp_path):
    """The transformer was trained in the encoder's latent space: fine-tuning touches the decoder only (encoder
    weights, scaling and shift bit-identical), and the reconstruction loss on the training pictures falls."""
    from flash_edge.distill.cli import main
    from flash_edge.distill.decoder import finetune_decoder

    fam = Family.build(tiny_test_config(32), seed=0)
    images = torch.from_numpy(ShapesDataset(16, seed=0, size=32).arrays()[0])
    encoder = copy.deepcopy(fam.vae.encoder.state_dict())
    scale, shift = fam.vae.config.scaling_factor, fam.vae.config.shift_factor
    def reconstruction_error():  # the whole set, through the posterior means: no sampling noise
        with torch.no_grad():
            return float(((fam.vae.decode(fam.vae.encode(images).latent_dist.mean).sample - images) ** 2).mean())

    before = reconstruction_error()
    losses = finetune_decoder(fam, images, steps=100, batch=8, lr=2e-3, seed=0)
    assert len(losses) == 100 and reconstruction_error() < 0.75 * before
    for k, v in fam.vae.encoder.state_dict().items():
        assert torch.equal(v, encoder[k]), k
    assert (fam.vae.config.scaling_factor, fam.vae.config.shift_factor) == (scale, shift)

    # the command: a trained folder in, the same folder with the new decoder out (how it runs carried over)
    src = fam.save(tmp_path / "student-4step-x")
    (src / "flash_edge.json").write_text('{"t5_tokens": 0, "steps": 4, "size": 32}\n')
    assert main(["decoder", "--model", str(src), "--out", str(tmp_path / "out"), "--steps", "2", "--batch", "4",
                 "--train-images", "8", "--threads", "1"]) == 0
    new = Family.load(tmp_path / "out")
    assert (tmp_path / "out" / "flash_edge.json").read_text() == (src / "flash_edge.json").read_text()
    for k, v in new.transformer.state_dict().items():
        assert torch.equal(v, fam.transformer.state_dict()[k]), k  # the transformer is untouched
    assert any(not torch.equal(v, fam.vae.decoder.state_dict()[k]) for k, v in new.vae.decoder.state_dict().items())


def test_gradient_variance_of_a_one_step_student_measures_random_timesteps_only(family, pairs):
    """A 1-step schedule has no interior level to share: the measurement does not fail, it reports one rule."""
    state = _dmd_state(family, flow.schedule(1, 3.0), share_timesteps=False)
    measured = dmd.gradient_variance(family, state, PROMPTS, tuple(pairs[0].shape[2:]), batches=2, batch=4)
    assert "sharing" not in measured and measured["random"]["variance"] > 0
