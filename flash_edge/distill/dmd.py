"""Stage 2: distribution matching (DMD) with timestep sharing, plus a latent adversarial loss.

Per batch, the student rolls out (no grad) from noise to its trajectory point x_i at a random step i of its
schedule and predicts the clean latent x0 = x_i - sigma_i v_student(x_i) (with grad). The DMD gradient on
x0 is the gap between two x0-predictions at a noisy sample (x_t, t): the fake score model's (trained on the
student's outputs) minus the teacher's (with CFG), normalised per sample as in DMD.

* **timestep sharing** (default): t = sigma_{i+1}, the next noise level of the student's own schedule (clamped
  to its interior levels sigma_1 .. sigma_{k-1}), and x_t = x0 re-noised to it with fresh noise: exactly where
  the student's next step runs (the ``renoise`` rule), so real and fake scores are only queried at the
  student's interior timesteps, never at sigma = 1 (pure noise, where both scores only know the data mean; the
  first version compared them at the student's own point x_i, sigma_0 = 1 included, and DMD drifted: see
  ``benchmarks/results/distill-ablation.md``) and never at sigma = 0;
* random timesteps (the ablation): t ~ U(t_min, t_max), x_t = (1 - t) x0 + t noise.

The adversarial loss: a :class:`Discriminator` of small heads on the fake model's image-token features at a
few blocks (read with forward hooks) tells re-noised teacher samples from re-noised student samples (hinge).
The generator's update changes only the student; the fake model's update (flow matching on the student's
detached outputs) and the heads' update (hinge) change only the fake model and the heads.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .distributed import SINGLE, Dist, optimizer_step
from .flow import euler, noised, training_sigmas, x0_from
from .models import Family


@dataclass
class DMDConfig:
    share_timesteps: bool = True
    guidance: float = 4.0  # the teacher's CFG scale for the real score
    adv_weight: float = 0.1
    t_min: float = 0.02  # random-timestep range (share_timesteps=False)
    t_max: float = 0.98
    feature_layers: tuple[int, ...] | None = None  # fake-model blocks the heads read; default: every other one
    fake_updates: int = 1  # fake-model/heads updates per generator update (DMD2 uses 5)


class Discriminator(nn.Module):
    """One small head per feature layer: per-token MLP logit, averaged over tokens -> (B, heads)."""

    def __init__(self, dim: int, layers: tuple[int, ...]):
        super().__init__()
        self.layers = tuple(layers)
        self.heads = nn.ModuleList(nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, 1))
                                   for _ in self.layers)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([h(f).mean(dim=1) for h, f in zip(self.heads, features)], dim=-1)


def fake_features(family: Family, fake, x, sigma, cond, layers) -> list[torch.Tensor]:
    """Image-token hidden states after each block in ``layers`` of the fake model at (x, sigma)."""
    feats: dict[int, torch.Tensor] = {}
    hooks = [fake.transformer_blocks[k].register_forward_hook(
        lambda m, args, out, k=k: feats.__setitem__(k, out[1])) for k in layers]
    try:
        family.velocity(fake, x, sigma, cond)
    finally:
        for h in hooks:
            h.remove()
    return [feats[k] for k in layers]


@dataclass
class DMDState:
    student: nn.Module
    teacher: nn.Module
    fake: nn.Module
    disc: Discriminator
    sigmas: torch.Tensor  # the student's schedule (steps + 1, ending at 0)
    config: DMDConfig
    opt_student: torch.optim.Optimizer
    opt_fake: torch.optim.Optimizer

    @property
    def student_params(self):
        return [p for p in self.student.parameters() if p.requires_grad]

    @property
    def fake_params(self):
        return [p for p in self.fake.parameters() if p.requires_grad] + list(self.disc.parameters())


def make_state(student, teacher, sigmas: torch.Tensor, config: DMDConfig | None = None, lr_student: float = 1e-5,
               lr_fake: float = 1e-4) -> DMDState:
    """The fake score model starts as a copy of the teacher; the heads are new."""
    config = config or DMDConfig()
    fake = copy.deepcopy(teacher).train()
    n = len(fake.transformer_blocks)
    layers = tuple(config.feature_layers) if config.feature_layers is not None else tuple(range(0, n, 2))
    config.feature_layers = layers
    dim = fake.config.num_attention_heads * fake.config.attention_head_dim
    disc = Discriminator(dim, layers)
    for p in teacher.parameters():
        p.requires_grad_(False)
    teacher.eval()
    opt_s = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=lr_student, weight_decay=0.0,
                              betas=(0.0, 0.99))
    opt_f = torch.optim.AdamW([p for p in fake.parameters() if p.requires_grad] + list(disc.parameters()), lr=lr_fake,
                              weight_decay=0.0, betas=(0.0, 0.99))
    disc.to(next(fake.parameters()).device)
    sigmas = sigmas.to(next(student.parameters()).device)
    return DMDState(student.train(), teacher, fake, disc, sigmas, config, opt_s, opt_f)


def draw_batch(g: torch.Generator, batch: int, n_data: int, latent_shape: tuple[int, ...], steps: int) -> dict:
    """All randomness of one global DMD batch."""
    r = lambda: torch.randn(batch, *latent_shape, generator=g)  # noqa: E731
    return {"idx": torch.randint(n_data, (batch,), generator=g), "noise": r(),
            "step": torch.randint(steps, (batch,), generator=g), "t_random": torch.rand(batch, generator=g),
            "eps_dmd": r(), "eps_adv": r(), "eps_fake": r(), "t_fake": training_sigmas(batch, g), "eps_disc": r()}


def student_point(family: Family, state: DMDState, noise, cond, step) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_i, sigma_i): the student's own trajectory point at step ``step[b]`` (no grad)."""
    sig = state.sigmas
    with torch.no_grad():
        v = lambda x, s: family.velocity(state.student, x, s, cond)  # noqa: E731
        points = euler(v, noise, sig[:int(step.max()) + 1], keep=True)
    return points[torch.arange(len(step)), step], sig[step]


def shared_timesteps(sigmas: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """The noise level the student's next step re-noises to: sigma_{i+1} for step i, clamped to the interior
    levels sigma_1 .. sigma_{k-1} (never 1, never 0). A 1-step schedule has none: use random timesteps."""
    k = len(sigmas) - 1
    if k < 2:
        raise ValueError("timestep sharing needs a schedule of 2 or more steps (interior noise levels); use "
                         "--no-timestep-sharing for a 1-step student")
    return sigmas[(step + 1).clamp(1, k - 1)]


def dmd_noisy_sample(state: DMDState, x_i, sigma_i, x0, b: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Where the real and fake scores are compared: x0 re-noised to a shared (the student's next interior
    level) or a random timestep, with fresh noise."""
    c = state.config
    if c.share_timesteps:
        t = shared_timesteps(state.sigmas, b["step"].to(state.sigmas.device))
    else:
        t = c.t_min + (c.t_max - c.t_min) * b["t_random"]
    return noised(x0.detach(), b["eps_dmd"], t), t


def dmd_term(family: Family, state: DMDState, b: dict, cond, uncond) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(DMD loss, x0, t): the student's x0 at its trajectory point, pulled along (fake - real) x0-predictions at
    the noisy sample ``dmd_noisy_sample`` picks (the loss's gradient on x0 is that difference, normalised)."""
    x_i, sigma_i = student_point(family, state, b["noise"], cond, b["step"])
    x0 = x0_from(x_i, family.velocity(state.student, x_i, sigma_i, cond), sigma_i)
    x_t, t = dmd_noisy_sample(state, x_i, sigma_i, x0, b)
    with torch.no_grad():
        v_real = family.velocity(state.teacher, x_t, t, cond)
        if state.config.guidance > 1.0:
            v_u = family.velocity(state.teacher, x_t, t, uncond)
            v_real = v_u + state.config.guidance * (v_real - v_u)
        x0_real = x0_from(x_t, v_real, t)
        x0_fake = x0_from(x_t, family.velocity(state.fake, x_t, t, cond), t)
        weight = 1.0 / (x0 - x0_real).abs().mean(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)
        grad = (x0_fake - x0_real) * weight
    return 0.5 * F.mse_loss(x0, (x0 - grad).detach()), x0, t


def generator_loss(family: Family, state: DMDState, b: dict, cond, uncond) -> tuple[torch.Tensor, dict]:
    dmd, x0, t = dmd_term(family, state, b, cond, uncond)
    loss, logs = dmd, {"dmd": dmd.item()}
    if state.config.adv_weight:
        feats = fake_features(family, state.fake, noised(x0, b["eps_adv"], t), t, cond, state.config.feature_layers)
        adv = -state.disc(feats).mean()
        loss = loss + state.config.adv_weight * adv
        logs["adv_g"] = adv.item()
    return loss, {**logs, "x0": x0.detach(), "t": t}


def gradient_variance(family: Family, state: DMDState, prompts: list[str], latent_shape: tuple[int, ...],
                      batches: int = 8, batch: int = 32, seed: int = 0) -> dict:
    """How noisy the DMD gradient is, per timestep rule, at the current weights: the DMD term's gradient on the
    student's parameters for ``batches`` independent batches (no update), under timestep sharing and under
    random timesteps, on the same batches (same prompts, noise and steps; equal compute: one student rollout,
    one CFG teacher query and one fake query per sample either way).

    Per rule: ``mean_norm2`` (squared norm of the mean gradient), ``variance`` (mean squared distance of a
    batch's gradient to the mean: the covariance's trace) and ``relative`` = variance / mean_norm2, the
    scale-free number to compare (the rules' gradients differ in size). Over M batches it lies in [0, M - 1]:
    0 when every batch gives the same gradient, M - 1 when the batches' gradients share no direction (the mean
    is then only the noise's 1/M). The paper's claim is that sharing lowers it. A 1-step schedule has no
    interior level to share: only ``random`` is measured."""
    params = state.student_params
    out = {}
    rules = (True, False) if len(state.sigmas) - 1 >= 2 else (False,)  # a 1-step schedule has nothing to share
    for share in rules:
        rule = dataclasses.replace(state, config=dataclasses.replace(state.config, share_timesteps=share))
        g = torch.Generator().manual_seed(seed)
        total, total2 = None, 0.0
        for _ in range(batches):
            b = draw_batch(g, batch, len(prompts), latent_shape, len(state.sigmas) - 1)
            dev = state.sigmas.device
            b = {k: v.to(dev) for k, v in b.items()}
            ps = [prompts[i] for i in b["idx"].tolist()]
            with torch.no_grad():
                cond, uncond = family.encode(ps), family.encode([""] * len(ps))
            loss, _, _ = dmd_term(family, rule, b, cond, uncond)
            flat = torch.cat([x.reshape(-1) for x in torch.autograd.grad(loss, params)]).double()
            total = flat if total is None else total + flat
            total2 += float(flat.pow(2).sum())
        mean = total / batches
        mean_norm2 = float(mean.pow(2).sum())
        variance = total2 / batches - mean_norm2  # E||g||^2 - ||E g||^2
        out["sharing" if share else "random"] = {"mean_norm2": mean_norm2, "variance": variance,
                                                 "relative": variance / max(mean_norm2, 1e-30)}
    out["batches"], out["batch"] = batches, batch
    return out


def fake_loss(family: Family, state: DMDState, x0_gen: torch.Tensor, real: torch.Tensor, b: dict, cond,
              t_disc: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Flow matching of the fake model on the student's outputs + the heads' hinge loss (features no grad)."""
    flow = F.mse_loss(family.velocity(state.fake, noised(x0_gen, b["eps_fake"], b["t_fake"]), b["t_fake"], cond),
                      b["eps_fake"] - x0_gen)
    layers = state.config.feature_layers
    with torch.no_grad():
        f_real = fake_features(family, state.fake, noised(real, b["eps_disc"], t_disc), t_disc, cond, layers)
        f_gen = fake_features(family, state.fake, noised(x0_gen, b["eps_disc"], t_disc), t_disc, cond, layers)
    hinge = F.relu(1 - state.disc(f_real)).mean() + F.relu(1 + state.disc(f_gen)).mean()
    return flow + hinge, {"fake_flow": flow.item(), "disc": hinge.item()}


def dmd_step(family: Family, state: DMDState, prompts: list[str], real_latents: torch.Tensor, b: dict,
             ctx: Dist = SINGLE) -> dict:
    """One generator update, then ``fake_updates`` fake-model + heads updates on the new outputs."""
    b = {k: ctx.shard(v).to(real_latents.device) for k, v in b.items()}
    ps = [prompts[i] for i in b["idx"].tolist()]
    with torch.no_grad():
        cond, uncond = family.encode(ps), family.encode([""] * len(ps))
    loss, logs = generator_loss(family, state, b, cond, uncond)
    logs["generator"] = optimizer_step(loss, state.student_params, state.opt_student, ctx)
    x0_gen, t = logs.pop("x0"), logs.pop("t")
    real = real_latents[b["idx"]]
    for _ in range(state.config.fake_updates):
        floss, flogs = fake_loss(family, state, x0_gen, real, b, cond, t.clamp(max=state.config.t_max))
        logs.update(flogs, fake=optimizer_step(floss, state.fake_params, state.opt_fake, ctx))
    return logs


def train_dmd(family: Family, state: DMDState, prompts: list[str], real_latents: torch.Tensor, iters: int,
              batch: int = 32, seed: int = 0, ctx: Dist = SINGLE, log=None, variance_at: tuple[int, ...] = (),
              variance_batches: int = 8) -> tuple[list[dict], list[dict]]:
    """``real_latents[i]``: a teacher sample (ODE end point) for ``prompts[i]``, the adversarial "real" side.
    Before the iterations in ``variance_at`` (and after the last, when ``iters`` is listed) the DMD gradient's
    variance is measured under both timestep rules (``gradient_variance``, on the main process's own batches);
    returns (per-iteration logs, those measurements)."""
    g = torch.Generator().manual_seed(seed)
    history, variances = [], []
    shape = tuple(real_latents.shape[1:])
    for it in range(iters + 1):
        if it in variance_at and ctx.main:
            variances.append({"iteration": it, **gradient_variance(family, state, prompts, shape, variance_batches,
                                                                   batch, seed=seed + 7919 * (it + 1))})
            if log:
                log(it, {f"relvar_{k}": v["relative"] for k, v in variances[-1].items() if isinstance(v, dict)})
        if it == iters:
            break
        b = draw_batch(g, batch, len(prompts), shape, len(state.sigmas) - 1)
        history.append(dmd_step(family, state, prompts, real_latents, b, ctx))
        if log:
            log(it, history[-1])
    state.student.eval()
    return history, variances
