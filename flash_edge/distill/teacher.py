"""Training the teacher from scratch: the VAE on the dataset's pictures, then the MMDiT-X transformer (with
both CLIP text encoders) on the rectified-flow objective, with caption dropout so it runs with CFG.

Each step draws one global batch from a seeded ``torch.Generator`` (the same on every rank), keeps this
rank's shard and averages gradients (``distributed.optimizer_step``): one loop for one or many processes.
"""

from __future__ import annotations

import contextlib
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .distributed import SINGLE, Dist, optimizer_step
from .flow import noised, training_sigmas
from .models import Family

Log = Callable[[int, dict], None]
KL_WEIGHT = 1e-3  # per latent element; small, as SD's VAEs: the latent stays close to deterministic
CAPTION_DROPOUT = 0.1  # share of prompts replaced by "" so the teacher learns the unconditional velocity too


# ----------------------------------------------------------------------------- VAE
def as_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, H, W) pictures (how the training set is kept in memory) -> float in [-1, 1]."""
    return images.float() / 127.5 - 1.0 if images.dtype == torch.uint8 else images


def vae_loss(family: Family, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Reconstruction (MSE + L1 on [-1, 1] pixels) through a sampled latent, plus a small KL term."""
    post = family.vae.encode(images).latent_dist
    z = post.mean + post.std * torch.randn(post.mean.shape, generator=generator).to(post.mean.device)
    rec = family.vae.decode(z).sample
    kl = 0.5 * (post.mean.pow(2) + post.var - 1.0 - post.logvar).mean()
    return F.mse_loss(rec, images) + 0.5 * F.l1_loss(rec, images) + KL_WEIGHT * kl


def train_vae(family: Family, images: torch.Tensor, steps: int, batch: int = 32, lr: float = 1e-3, seed: int = 0,
              ctx: Dist = SINGLE, log: Log | None = None) -> list[float]:
    """Train the VAE on ``images`` (N, 3, H, W), uint8 or float in [-1, 1]; returns the per-step (global) losses."""
    vae = family.vae.train()
    params = [p for p in vae.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed)
    losses = []
    for step in range(steps):
        idx = torch.randint(len(images), (batch,), generator=g)
        noise_g = torch.Generator().manual_seed(seed * 1_000_003 + step * 7 + ctx.rank)
        loss = vae_loss(family, as_float(ctx.shard(images[idx])).to(family.device), noise_g)
        losses.append(optimizer_step(loss, params, opt, ctx))
        if log:
            log(step, {"vae_loss": losses[-1]})
    vae.eval()
    return losses


@torch.no_grad()
def fit_latent_scaling(family: Family, images: torch.Tensor) -> tuple[float, float]:
    """SD3's latent normalisation from data: shift_factor = mean, scaling_factor = 1 / std (of the VAE's
    unscaled latents); written into the VAE config, returned as (scaling, shift)."""
    family.vae.register_to_config(scaling_factor=1.0, shift_factor=0.0)
    z = torch.cat([family.vae.encode(as_float(images[i:i + 64]).to(family.device)).latent_dist.mode()
                   for i in range(0, len(images), 64)])
    shift, scale = float(z.mean()), float(1.0 / z.std())
    family.vae.register_to_config(scaling_factor=scale, shift_factor=shift)
    return scale, shift


@torch.no_grad()
def encode_dataset(family: Family, images: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    return torch.cat([family.to_latents(as_float(images[i:i + chunk]).to(family.device))
                      for i in range(0, len(images), chunk)])


# ----------------------------------------------------------------------------- transformer (teacher)
def draw_batch(g: torch.Generator, n_data: int, batch: int, latent_shape: tuple[int, ...],
               dropout: float = CAPTION_DROPOUT) -> dict:
    """One global batch's randomness: data indices, noise, noise levels, which prompts are dropped."""
    return {"idx": torch.randint(n_data, (batch,), generator=g), "noise": torch.randn(batch, *latent_shape, generator=g),
            "sigma": training_sigmas(batch, g), "drop": torch.rand(batch, generator=g) < dropout}


def flow_loss(family: Family, transformer, latents: torch.Tensor, prompts: list[str], noise: torch.Tensor,
              sigma: torch.Tensor) -> torch.Tensor:
    """Rectified flow: ||v(x_sigma, sigma, prompt) - (noise - x0)||^2, mean over the batch."""
    v = family.velocity(transformer, noised(latents, noise, sigma), sigma, family.encode(prompts))
    return F.mse_loss(v, noise - latents)


def teacher_params(family: Family, train_text: bool = True) -> list[torch.nn.Parameter]:
    mods = [family.transformer] + ([family.text_encoder, family.text_encoder_2] if train_text else [])
    return [p for m in mods for p in m.parameters() if p.requires_grad]


def teacher_step(family: Family, latents: torch.Tensor, prompts: list[str], batch: dict, params, opt,
                 ctx: Dist = SINGLE) -> float:
    idx = batch["idx"].tolist()
    ps = ["" if d else prompts[i] for i, d in zip(idx, batch["drop"].tolist())]
    dev = latents.device
    loss = flow_loss(family, family.transformer, ctx.shard(latents[batch["idx"].to(dev)]), ctx.shard(ps),
                     ctx.shard(batch["noise"]).to(dev), ctx.shard(batch["sigma"]).to(dev))
    return optimizer_step(loss, params, opt, ctx)


class EMA:
    """An exponential moving average of modules' float weights: what a diffusion model is sampled with (decay
    0.999 averages over ~1000 steps, smoothing the last steps' noise out of the weights)."""

    def __init__(self, modules, decay: float):
        self.modules, self.decay = list(modules), float(decay)
        self.shadow = [{k: v.detach().clone() for k, v in m.state_dict().items() if v.is_floating_point()}
                       for m in self.modules]

    @torch.no_grad()
    def update(self) -> None:
        for m, shadow in zip(self.modules, self.shadow):
            for k, v in m.state_dict().items():
                if k in shadow:
                    shadow[k].lerp_(v, 1.0 - self.decay)

    def load_state_dict(self, shadow: list[dict]) -> None:
        for mine, saved in zip(self.shadow, shadow):
            for k in mine:
                mine[k].copy_(saved[k])

    def apply(self) -> None:
        """The modules take the averaged weights, for good."""
        for m, shadow in zip(self.modules, self.shadow):
            m.load_state_dict(shadow, strict=False)

    @contextlib.contextmanager
    def applied(self):
        """The modules hold the averaged weights inside the block and their own again after it."""
        raw = [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in self.modules]
        self.apply()
        try:
            yield
        finally:
            for m, weights in zip(self.modules, raw):
                m.load_state_dict(weights)


def train_teacher(family: Family, latents: torch.Tensor, prompts: list[str], steps: int, batch: int = 32,
                  lr: float = 3e-4, seed: int = 0, ctx: Dist = SINGLE, train_text: bool = True,
                  log: Log | None = None, warmup: int = 100, resume: dict | None = None,
                  checkpoint: Callable[[dict], None] | None = None, every: int = 500, ema: float = 0.0) -> list[float]:
    """Train the transformer (and the text encoders) on precomputed latents; returns per-step losses.

    ``checkpoint(state)`` is called every ``every`` steps and at the end with the loop's state (step,
    optimizer, schedule, generator); pass such a state back as ``resume`` to continue where it stopped.
    ``ema`` > 0 keeps an exponential moving average of the trained weights (``EMA``): ``checkpoint`` is then
    called with the modules holding the averaged weights (what a saved teacher should be), the state carries
    the average and the raw weights (to resume exactly), and the family ends with the averaged weights."""
    modules = [family.transformer] + ([family.text_encoder, family.text_encoder_2] if train_text else [])
    for m in (family.transformer, family.text_encoder, family.text_encoder_2):
        m.train()
    average = EMA(modules, ema) if ema else None
    if resume and "raw_weights" in resume:  # the saved folder holds the average; training goes on from these
        for m, weights in zip(modules, resume["raw_weights"]):
            m.load_state_dict(weights)
    if average and resume and "ema" in resume:
        average.load_state_dict(resume["ema"])
    params = teacher_params(family, train_text)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(warmup, 1)))
    g = torch.Generator().manual_seed(seed)
    start = 0
    if resume:
        opt.load_state_dict(resume["optimizer"])
        sched.load_state_dict(resume["schedule"])
        g.set_state(resume["generator"])
        start = int(resume["step"])
    def state(step):
        out = {"step": step, "optimizer": opt.state_dict(), "schedule": sched.state_dict(), "generator": g.get_state()}
        if average:
            clone = lambda d: {k: v.detach().clone() for k, v in d.items()}  # noqa: E731 (a copy, not live tensors)
            out["ema"] = [clone(d) for d in average.shadow]
            out["raw_weights"] = [clone(m.state_dict()) for m in modules]
        return out

    losses = []
    for step in range(start, steps):
        b = draw_batch(g, len(latents), batch, tuple(latents.shape[1:]))
        losses.append(teacher_step(family, latents, prompts, b, params, opt, ctx))
        sched.step()
        if average:
            average.update()
        if log:
            log(step, {"teacher_loss": losses[-1]})
        if checkpoint and ((step + 1) % every == 0 or step + 1 == steps):
            current = state(step + 1)
            with average.applied() if average else contextlib.nullcontext():
                checkpoint(current)
    if average:
        average.apply()
    for m in (family.transformer, family.text_encoder, family.text_encoder_2):
        m.eval()
    return losses


def smoothed(losses: list[float], k: int = 10) -> np.ndarray:
    return np.convolve(np.asarray(losses), np.ones(k) / k, mode="valid")
